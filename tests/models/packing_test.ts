import assert from "node:assert/strict";
import { packGreedy, validateGroups } from "../../src/models/packing.ts";
import { EdgeVitError } from "../../src/errors.ts";

Deno.test("packGreedy fills sequences longest first into the first that has room", () => {
  assert.deepEqual(packGreedy([40, 30, 20, 10], 50), [[0, 3], [1, 2]]);
  assert.deepEqual(packGreedy([64, 64, 64], 64), [[0], [1], [2]]);
  assert.deepEqual(packGreedy([8, 8, 8, 8], 64), [[0, 1, 2, 3]]);
  // next-fit in input order would need 3 sequences here: [30], [40, 20], [30]
  assert.deepEqual(packGreedy([30, 40, 20, 30], 60), [[1, 2], [0, 3]]);
});

Deno.test("packGreedy puts every image in exactly one sequence within the maximum length", () => {
  let seed = 7;
  const random = () => ((seed = (seed * 69069 + 1) % 4294967296) / 4294967296);
  for (let trial = 0; trial < 100; trial++) {
    const max = 16 + Math.floor(random() * 200);
    const lengths = Array.from(
      { length: 1 + Math.floor(random() * 30) },
      () => 1 + Math.floor(random() * max),
    );
    const groups = packGreedy(lengths, max);
    validateGroups(groups, lengths.length);
    for (const group of groups) {
      assert.ok(group.reduce((sum, i) => sum + lengths[i], 0) <= max);
      for (let i = 1; i < group.length; i++) assert.ok(group[i] > group[i - 1]);
    }
    // first fit: no two sequences could have been merged
    const fill = groups.map((group) => group.reduce((sum, i) => sum + lengths[i], 0));
    for (let a = 0; a < fill.length; a++) {
      for (let b = a + 1; b < fill.length; b++) assert.ok(fill[a] + fill[b] > max);
    }
  }
});

Deno.test("packGreedy rejects an image longer than a sequence and bad lengths", () => {
  assert.throws(() => packGreedy([10, 65], 64), EdgeVitError);
  assert.throws(() => packGreedy([0], 64), EdgeVitError);
  assert.throws(() => packGreedy([4], 0), EdgeVitError);
});

Deno.test("validateGroups rejects duplicated, missing, out-of-range images and empty groups", () => {
  validateGroups([[1], [0, 2]], 3);
  assert.throws(() => validateGroups([[0, 1], [1, 2]], 3), /two groups/);
  assert.throws(() => validateGroups([[0, 1]], 3), /no group/);
  assert.throws(() => validateGroups([[0, 3]], 3), /there are 3 images/);
  assert.throws(() => validateGroups([[0, 1, 2], []], 3), /empty/);
});
