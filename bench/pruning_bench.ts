/**
 * Doing less work per image: a DeiT-Tiny-shaped ViT (224², patch 16, dim 192, depth 12,
 * heads 3, MLP 768; random weights) at batch 1, plain vs ATS at two budgets vs
 * PatchMerger after block 6 → 8 tokens. Prints the tokens each variant carries per layer,
 * then `deno bench` times the forward passes (group baseline: the plain model).
 *
 *     deno bench --allow-read --allow-env bench/pruning_bench.ts
 *     deno run --allow-read --allow-env bench/pruning_bench.ts 15   # 15 interleaved rounds, medians
 *     EDGEVIT_BENCH_BACKEND=reference deno bench ...   # another backend
 *
 * @module
 */

import { resolveBackend } from "../src/model.ts";
import { interleavedMedians } from "./_rounds.ts";
import { createAtsHooks } from "../src/models/ats_vit.ts";
import { PatchMerger, patchMergerHooks } from "../src/models/patch_merger.ts";
import type { ForwardOutput } from "../src/models/types.ts";
import {
  randomVitWeights,
  seededRandom,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../src/models/vit.ts";

const choice = (Deno.env.get("EDGEVIT_BENCH_BACKEND") ?? "wasm") as "wasm";
const { backend } = await resolveBackend(choice);

const DEPTH = 12;
const plainConfig: VitConfig = standardVitConfig({
  imageSize: 224,
  patchSize: 16,
  dim: 192,
  depth: DEPTH,
  heads: 3,
  mlpDim: 768,
  numClasses: 1000,
});
const weights = randomVitWeights(plainConfig, 7);

/** ATS budgets: keep all tokens in the first 3 blocks, then at most K patch tokens. */
const atsSchedule = (k: number) => Array.from({ length: DEPTH }, (_, l) => (l < 3 ? null : k));
const BUDGETS = [64, 32] as const;

const plain = VitModel.create(backend, plainConfig, weights);
const ats = BUDGETS.map((k) =>
  VitModel.create(backend, plainConfig, weights, {
    hooks: createAtsHooks(plainConfig, { maxTokensPerDepth: atsSchedule(k) }),
  })
);
// PatchMerger: vit_with_patch_merger has no CLS token and mean-pools.
const mergerConfig: VitConfig = { ...plainConfig, classToken: false, pool: "mean" };
const random = seededRandom(3);
const merger = PatchMerger.create(backend, {
  queries: new Float32Array(8 * 192).map(() => random() * 2 - 1),
  norm: { gamma: new Float32Array(192).fill(1), beta: new Float32Array(192) },
}, 1e-6);
const merged = VitModel.create(backend, mergerConfig, randomVitWeights(mergerConfig, 7), {
  hooks: () => patchMergerHooks(merger, 5),
});

const pixels = new Float32Array(3 * 224 * 224).map(() => random() * 2 - 1);
const shape = [1, 3, 224, 224] as const;

/** Tokens entering each block (CLS included), from the kept ids ATS reports. */
function atsTokens(out: ForwardOutput): number[] {
  const kept = out.tokenIds!.map((layer) => layer[0].length + 1);
  return [197, ...kept.slice(0, -1)];
}
const plainOut = await plain.forward(pixels, shape);
const lines = [`backend: ${backend.name}`, `plain: 197 tokens in each of ${DEPTH} blocks`];
for (const [i, k] of BUDGETS.entries()) {
  const out = await ats[i].forward(pixels, shape, { returnTokenIds: true });
  lines.push(`ATS K=${k} from block 4: tokens per block ${atsTokens(out).join(" ")}`);
}
const mergedOut = await merged.forward(pixels, shape);
lines.push(
  `PatchMerger after block 6: tokens per block ${
    Array.from({ length: DEPTH }, (_, l) => (l < 6 ? 196 : 8)).join(" ")
  } (mean ${mergedOut.tokensPerImage[0].toFixed(1)})`,
);
console.log(lines.join("\n"));
if (plainOut.logits.some((v) => !Number.isFinite(v))) throw new Error("non-finite logits");

Deno.bench(
  "plain ViT, 197 tokens",
  { group: "pruning", baseline: true, n: 20, warmup: 2 },
  async () => {
    await plain.forward(pixels, shape);
  },
);
for (const [i, k] of BUDGETS.entries()) {
  Deno.bench(`ATS, K=${k} from block 4`, { group: "pruning", n: 20, warmup: 2 }, async () => {
    await ats[i].forward(pixels, shape);
  });
}
Deno.bench(
  "PatchMerger after block 6 → 8 tokens",
  { group: "pruning", n: 20, warmup: 2 },
  async () => {
    await merged.forward(pixels, shape);
  },
);

if (import.meta.main) {
  await interleavedMedians([
    { name: "plain ViT, 197 tokens", run: () => plain.forward(pixels, shape) },
    ...BUDGETS.map((k, i) => ({
      name: `ATS, K=${k} from block 4`,
      run: () => ats[i].forward(pixels, shape),
    })),
    { name: "PatchMerger after block 6 → 8 tokens", run: () => merged.forward(pixels, shape) },
  ], Number(Deno.args[0] ?? 15));
}
