/**
 * Patch n' Pack (NaViT, Dehghani et al., 2023, arXiv 2307.06304): images of different
 * sizes become token sequences of different lengths, packed into sequences of at most
 * a maximum length. edgevit runs one packed sequence per pass; segment ids keep the
 * images apart inside it, so packing decides only how much work one pass does (GEMM rows,
 * scratch memory), never a result.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/**
 * Greedy first-fit-decreasing packing: images are taken longest first (ties in input
 * order) and each goes into the first sequence it still fits in, else opens a new one.
 * Within a sequence, image indices are listed ascending.
 *
 * First-fit decreasing never needs more than 11/9·OPT + 1 sequences, where the
 * next-fit grouping of vit-pytorch's `group_images_by_max_seq_len` can need up to twice
 * the optimum, and fewer passes means larger, faster GEMMs.
 *
 * @param lengths tokens of each image
 * @param maxLength most tokens one sequence may hold
 * @returns groups of image indices; every image appears in exactly one group
 * @throws {EdgeVitError} `invalid_argument` when an image alone is longer than `maxLength`
 *   or a length is not a positive integer
 *
 * @example
 * ```ts
 * import { packGreedy } from "./packing.ts";
 * console.log(packGreedy([40, 30, 20, 10], 50)); // [[0, 3], [1, 2]]
 * ```
 */
export function packGreedy(lengths: readonly number[], maxLength: number): number[][] {
  if (!Number.isInteger(maxLength) || maxLength < 1) {
    throw new EdgeVitError(
      "invalid_argument",
      `the maximum sequence length must be a positive integer, got ${maxLength}`,
    );
  }
  lengths.forEach((length, i) => {
    if (!Number.isInteger(length) || length < 1) {
      throw new EdgeVitError(
        "invalid_argument",
        `image ${i} has ${length} tokens; a positive integer is needed`,
      );
    }
    if (length > maxLength) {
      throw new EdgeVitError(
        "invalid_argument",
        `image ${i} has ${length} tokens, more than the maximum sequence length ${maxLength}`,
      );
    }
  });
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b] - lengths[a] || a - b);
  const groups: number[][] = [];
  const used: number[] = [];
  for (const image of order) {
    let target = used.findIndex((filled) => filled + lengths[image] <= maxLength);
    if (target < 0) {
      target = groups.length;
      groups.push([]);
      used.push(0);
    }
    groups[target].push(image);
    used[target] += lengths[image];
  }
  for (const group of groups) group.sort((a, b) => a - b);
  return groups;
}

/**
 * Checks caller-given groups: every image exactly once, indices in range, no empty group.
 *
 * @param groups groups of image indices
 * @param images number of images
 * @throws {EdgeVitError} `invalid_argument` describing the first problem found
 *
 * @example
 * ```ts
 * import { validateGroups } from "./packing.ts";
 * validateGroups([[0, 2], [1]], 3); // passes
 * ```
 */
export function validateGroups(groups: readonly (readonly number[])[], images: number): void {
  const seen = new Uint8Array(images);
  groups.forEach((group, g) => {
    if (group.length === 0) throw new EdgeVitError("invalid_argument", `group ${g} is empty`);
    for (const index of group) {
      if (!Number.isInteger(index) || index < 0 || index >= images) {
        throw new EdgeVitError(
          "invalid_argument",
          `group ${g} names image ${index}, but there are ${images} images`,
        );
      }
      if (seen[index]) {
        throw new EdgeVitError("invalid_argument", `image ${index} appears in two groups`);
      }
      seen[index] = 1;
    }
  });
  const missing = seen.indexOf(0);
  if (missing >= 0) {
    throw new EdgeVitError("invalid_argument", `image ${missing} is in no group`);
  }
}
