/**
 * Adaptive Token Sampling (Fayyaz et al., 2021, arXiv 2111.15667), the deterministic
 * rule of `shared/specs/ats-sampling.md`: inverse-transform sampling of the patch tokens
 * at fixed, evenly spaced points, so a served model gives the same answer for the same
 * image every time (the paper's training-time Gumbel sampling is random).
 *
 * These are pure functions over host arrays; `ats_vit.ts` feeds them the CLS attention
 * and value norms that the backend's attention and `headNorms` ops return.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/** Added to the significance sum before normalizing, as the reference rule does. */
export const ATS_EPS = 1e-6;

/**
 * Significance of the patch tokens of one image: `s_j = Σ_h A[h, 0, j] · ‖V[h, j, :]‖₂`.
 *
 * @param clsAttention `[rows, heads]`: attention the image's CLS query pays to each key row
 *   (the backend attention's `clsAttention`)
 * @param valueNorms `[rows, heads]`: per-head L2 norms of V (the backend's `headNorms`)
 * @param heads number of heads
 * @param firstPatchRow row of the image's first patch token (its CLS row + 1)
 * @param patches number of patch tokens of the image
 * @returns `[patches]` unnormalized significance, in float64
 *
 * @example
 * ```ts
 * import { atsSignificance } from "./ats.ts";
 * // one head, rows: CLS, two patches
 * const s = atsSignificance(
 *   new Float32Array([0.5, 0.25, 0.25]),
 *   new Float32Array([1, 2, 4]),
 *   1,
 *   1,
 *   2,
 * );
 * console.log(s); // Float64Array [0.5, 1]
 * ```
 */
export function atsSignificance(
  clsAttention: Float32Array,
  valueNorms: Float32Array,
  heads: number,
  firstPatchRow: number,
  patches: number,
): Float64Array {
  const significance = new Float64Array(patches);
  for (let j = 0; j < patches; j++) {
    const base = (firstPatchRow + j) * heads;
    let sum = 0;
    for (let h = 0; h < heads; h++) sum += clsAttention[base + h] * valueNorms[base + h];
    significance[j] = sum;
  }
  return significance;
}

/**
 * The deterministic ATS sampling rule for one image and one layer.
 *
 * With `n` patch tokens and budget `K`: when `n ≤ K` every token is kept. Otherwise the
 * significance is normalized (`s / (Σs + 1e-6)`), the tokens are ordered by it
 * ascending (a stable sort: ties keep the lower index first), and each point
 * `u_i = (i + 0.5) / K`, `i = 0 … K-1`, picks the first position whose cumulative sum
 * reaches `u_i` (the last position when none does). The distinct picks are returned in
 * ascending order, so at most `K` tokens are kept, often fewer.
 *
 * @param significance `[n]` nonnegative significance of the patch tokens (CLS excluded)
 * @param budget `K`, the layer's maximum number of patch tokens (≥ 1)
 * @returns the kept patch positions (0-based among the patch tokens), ascending
 * @throws {EdgeVitError} `invalid_argument` for a budget below 1 or a non-finite significance
 *
 * @example
 * ```ts
 * import { sampleTokens } from "./ats.ts";
 * // five tokens, budget 4: token 2 holds most of the mass and takes two of the points
 * const kept = sampleTokens([0.1, 0.1, 0.6, 0.1, 0.1], 4);
 * console.log(kept); // Int32Array [1, 2, 4]
 * ```
 */
export function sampleTokens(
  significance: ArrayLike<number>,
  budget: number,
): Int32Array {
  if (!Number.isInteger(budget) || budget < 1) {
    throw new EdgeVitError(
      "invalid_argument",
      `ATS budget must be a positive integer, got ${budget}`,
    );
  }
  const n = significance.length;
  if (n <= budget) return Int32Array.from({ length: n }, (_, i) => i);
  let total = 0;
  for (let j = 0; j < n; j++) {
    const value = significance[j];
    if (!Number.isFinite(value)) {
      throw new EdgeVitError("invalid_argument", `ATS significance of token ${j} is ${value}`);
    }
    total += value;
  }
  const denominator = total + ATS_EPS;
  const order = Int32Array.from({ length: n }, (_, i) => i);
  // Explicit index tie-break: the rule needs a stable order, not just any sort.
  order.sort((a, b) => significance[a] - significance[b] || a - b);
  const cumulative = new Float64Array(n);
  let running = 0;
  for (let p = 0; p < n; p++) {
    running += significance[order[p]] / denominator;
    cumulative[p] = running;
  }
  const picked = new Uint8Array(n);
  // The points increase with i, so the first position reaching u_i never moves back.
  let position = 0;
  for (let i = 0; i < budget; i++) {
    const u = (i + 0.5) / budget;
    while (position < n - 1 && cumulative[position] < u) position++;
    picked[order[position]] = 1;
  }
  const kept: number[] = [];
  for (let j = 0; j < n; j++) if (picked[j]) kept.push(j);
  return Int32Array.from(kept);
}

/**
 * Effective per-layer budgets: the checkpoint's budgets lowered by a request's
 * `tokenBudget` (one number for every layer, or one per layer), never raised.
 *
 * @param configured the checkpoint's budget per layer (`null`: that layer does not prune)
 * @param requested a request's `tokenBudget`, or undefined
 * @returns budget per layer (`null`: no pruning in that layer)
 * @throws {EdgeVitError} `invalid_argument` for a budget that is not a positive integer or
 *   a per-layer list of the wrong length
 *
 * @example
 * ```ts
 * import { effectiveBudgets } from "./ats.ts";
 * console.log(effectiveBudgets([48, 24], 32)); // [32, 24]
 * ```
 */
export function effectiveBudgets(
  configured: readonly (number | null)[],
  requested?: number | readonly number[],
): (number | null)[] {
  if (requested === undefined) return [...configured];
  const perLayer = typeof requested === "number" ? configured.map(() => requested) : [...requested];
  if (perLayer.length !== configured.length) {
    throw new EdgeVitError(
      "invalid_argument",
      `tokenBudget lists ${perLayer.length} budgets for ${configured.length} layers`,
    );
  }
  return configured.map((budget, layer) => {
    const wanted = perLayer[layer];
    if (!Number.isInteger(wanted) || wanted < 1) {
      throw new EdgeVitError(
        "invalid_argument",
        `tokenBudget for layer ${layer} must be a positive integer, got ${wanted}`,
      );
    }
    return budget === null ? wanted : Math.min(budget, wanted);
  });
}
