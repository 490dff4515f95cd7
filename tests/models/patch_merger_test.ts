import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { buildPatchMergerVit, PatchMerger } from "../../src/models/patch_merger.ts";
import { seededRandom, segmentsFromLengths } from "../../src/models/vit.ts";
import { maxAbsDiff, readCase, testBackends } from "./_fixtures.ts";

const fixture = await readCase("vitpytorch-patchmerger");
const pixels = fixture.input("pixel_values");
const shape = pixels.shape as [number, number, number, number];

const backends = await testBackends();

/** The merge written out on the host: softmax(q · LN(x)ᵀ · dim^-½) · LN(x), per image. */
function hostMerge(
  x: Float32Array,
  lengths: number[],
  queries: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  dim: number,
): Float32Array {
  const m = queries.length / dim;
  const out = new Float32Array(lengths.length * m * dim);
  let start = 0;
  lengths.forEach((length, image) => {
    const normed: number[][] = [];
    for (let r = 0; r < length; r++) {
      const row = Array.from(x.subarray((start + r) * dim, (start + r + 1) * dim));
      const mean = row.reduce((a, b) => a + b, 0) / dim;
      const variance = row.reduce((a, b) => a + (b - mean) ** 2, 0) / dim;
      normed.push(
        row.map((v, c) => ((v - mean) / Math.sqrt(variance + 1e-5)) * gamma[c] + beta[c]),
      );
    }
    for (let q = 0; q < m; q++) {
      const logits = normed.map((row) =>
        row.reduce((sum, v, c) => sum + v * queries[q * dim + c], 0) / Math.sqrt(dim)
      );
      const max = Math.max(...logits);
      const weights = logits.map((l) => Math.exp(l - max));
      const total = weights.reduce((a, b) => a + b, 0);
      for (let c = 0; c < dim; c++) {
        let sum = 0;
        for (let r = 0; r < length; r++) sum += (weights[r] / total) * normed[r][c];
        out[(image * m + q) * dim + c] = sum;
      }
    }
    start += length;
  });
  return out;
}

for (const [name, create] of backends) {
  Deno.test(`vit_with_patch_merger.ViT matches vit-pytorch (${name})`, async () => {
    const model = buildPatchMergerVit(await create(), fixture.config.kwargs, fixture.weights());
    const out = await model.forward(pixels.data, shape);
    assert.ok(maxAbsDiff(out.logits, fixture.expected("logits").data) <= fixture.case.atol);
    // block 0 sees 64 patches, block 1 the 8 merged tokens
    assert.deepEqual(out.tokensPerImage, [36, 36]);
    model.dispose();
  });

  Deno.test(`PatchMerger on its own merges each image of a packed batch (${name})`, async () => {
    const backend = await create();
    const dim = 12;
    const random = seededRandom(4);
    const values = (n: number, scale = 1) =>
      new Float32Array(n).map(() => (random() * 2 - 1) * scale);
    const queries = values(5 * dim);
    const gamma = values(dim, 0.2).map((v) => 1 + v);
    const beta = values(dim, 0.1);
    const merger = PatchMerger.create(backend, { queries, norm: { gamma, beta } });
    assert.equal(merger.tokens, 5);
    const lengths = [7, 1, 33];
    const host = values(41 * dim, 2);
    const x = backend.upload(host, [41, dim]);
    const merged = merger.apply({ x, segments: segmentsFromLengths(lengths) });
    assert.deepEqual(merged.x.shape, [15, dim]);
    assert.deepEqual([...merged.segments.offsets], [0, 5, 10, 15]);
    const expected = hostMerge(host, lengths, queries, gamma, beta, dim);
    assert.ok(maxAbsDiff(await backend.read(merged.x), expected) <= 1e-5);
    // an image with no tokens cannot be merged
    assert.throws(
      () => merger.apply({ x, segments: segmentsFromLengths([41, 0]) }),
      EdgeVitError,
    );
    backend.release(x);
    backend.release(merged.x);
    merger.dispose();
  });
}

Deno.test("PatchMerger merges after the first patch_merge_layer blocks, as vit-pytorch", async () => {
  const kwargs = fixture.config.kwargs;
  const tokens = async (patchMergeLayer: number) => {
    const model = buildPatchMergerVit(
      new ReferenceBackend(),
      { ...kwargs, patch_merge_layer: patchMergeLayer },
      fixture.weights(),
    );
    const out = await model.forward(pixels.data.subarray(0, 3 * 32 * 32), [1, 3, 32, 32]);
    model.dispose();
    return out.tokensPerImage[0];
  };
  assert.equal(await tokens(0), 64); // index -1: never merges
  assert.equal(await tokens(1), (64 + 8) / 2);
  assert.equal(await tokens(2), 64); // after the last block: every block saw 64 tokens
  // the default is depth // 2 = 1
  const { patch_merge_layer: _, ...withoutLayer } = kwargs;
  const model = buildPatchMergerVit(new ReferenceBackend(), withoutLayer, fixture.weights());
  const out = await model.forward(pixels.data, shape);
  assert.ok(maxAbsDiff(out.logits, fixture.expected("logits").data) <= fixture.case.atol);
  model.dispose();
});

Deno.test("vit_with_patch_merger.ViT rejects kwargs that disagree with the weights", () => {
  const kwargs = fixture.config.kwargs;
  const build = (extra: Record<string, unknown>) =>
    buildPatchMergerVit(new ReferenceBackend(), { ...kwargs, ...extra }, fixture.weights());
  assert.throws(() => build({ patch_merge_num_tokens: 4 }), /patch_merger\.queries/);
  assert.throws(() => build({ patch_merge_layer: -1 }), /non-negative integer/);
  assert.throws(() => build({ dim: 32 }), EdgeVitError);
  assert.throws(() => build({ image_size: [32, 30] }), EdgeVitError);
});
