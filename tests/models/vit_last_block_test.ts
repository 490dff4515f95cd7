/**
 * The last encoder block computed only for the rows the head reads (CLS pooling), against
 * the full block (`fullLastBlock: true`), on every test backend.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { AttentionOptions, Backend, Precision, Tensor } from "../../src/backends/backend.ts";
import { createAtsHooks } from "../../src/models/ats_vit.ts";
import {
  type EncoderHooks,
  randomVitWeights,
  seededRandom,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../../src/models/vit.ts";
import { maxAbsDiff, testBackends } from "./_fixtures.ts";
import { CountingBackend } from "./_counting_backend.ts";

const backends = await testBackends();

// 12×20 pixels in 4×4 patches: 15 patches, so 16 or 17 tokens per image (odd shapes).
const BASE: VitConfig = standardVitConfig({
  imageSize: [12, 20],
  patchSize: 4,
  dim: 24,
  depth: 3,
  heads: 3,
  mlpDim: 40,
  numClasses: 7,
});
const PATCHES = 15;
const IMAGE = 3 * 12 * 20;

const CLS_CONFIGS: Record<string, Partial<VitConfig>> = {
  "a ViT with cls pooling": {},
  "a distilled DeiT": { distillationToken: true, head: "distilled" },
  "a DeiT with a distillation token read by no head": { distillationToken: true },
  "vit-pytorch style with pre-norm, a pooled final norm and no qkv bias": {
    patchEmbedding: "norm_linear_norm",
    preNorm: true,
    finalNorm: "pooled",
    qkvBias: false,
  },
};

const MEAN_CONFIGS: Record<string, Partial<VitConfig>> = {
  "mean pooling without prefix tokens": { classToken: false, pool: "mean" },
  "mean pooling over patches with a class token": { pool: "mean", finalNorm: "pooled" },
};

function randomPixels(images: number, seed: number): Float32Array {
  const random = seededRandom(seed);
  return Float32Array.from({ length: images * IMAGE }, () => random() * 2 - 1);
}

/** Wraps a backend so every attention call's query and key row counts are recorded. */
function recordAttention(
  backend: Backend,
): { backend: Backend; calls: { queries: number; keys: number }[] } {
  const calls: { queries: number; keys: number }[] = [];
  const wrapped = new Proxy(backend, {
    get(target, property) {
      const value = Reflect.get(target, property, target);
      if (property === "attention") {
        return (q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions) => {
          calls.push({ queries: q.shape[0], keys: k.shape[0] });
          return target.attention(q, k, v, options);
        };
      }
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { backend: wrapped, calls };
}

function maxAbs(values: Float32Array): number {
  return values.reduce((max, value) => Math.max(max, Math.abs(value)), 0);
}

for (const [backendName, create] of backends) {
  for (const precision of ["f32", "int8"] as Precision[]) {
    for (const [name, change] of Object.entries(CLS_CONFIGS)) {
      Deno.test(`the last block over the read rows only gives the full block's logits (${name}, ${precision}, ${backendName})`, async () => {
        const config = { ...BASE, ...change };
        const tokens = 1 + (config.distillationToken ? 1 : 0) + PATCHES;
        const readRows = config.head === "distilled" ? 2 : 1;
        const weights = randomVitWeights(config, 31);
        const recorded = recordAttention(await create());
        const fast = VitModel.create(recorded.backend, config, weights, { precision });
        const full = VitModel.create(recorded.backend, config, weights, {
          precision,
          fullLastBlock: true,
        });
        for (const images of [1, 4]) {
          const pixels = randomPixels(images, 7 + images);
          const shape = [images, 3, 12, 20] as const;
          recorded.calls.length = 0;
          const got = await fast.forward(pixels, shape);
          // the last attention has the read rows of each image as queries, every row as keys
          assert.deepEqual(recorded.calls.map((call) => call.queries), [
            images * tokens,
            images * tokens,
            images * readRows,
          ]);
          assert.deepEqual(recorded.calls.map((call) => call.keys), [
            images * tokens,
            images * tokens,
            images * tokens,
          ]);
          recorded.calls.length = 0;
          const expected = await full.forward(pixels, shape);
          assert.deepEqual(recorded.calls.map((call) => call.queries), [
            images * tokens,
            images * tokens,
            images * tokens,
          ]);
          const diff = maxAbsDiff(got.logits, expected.logits);
          const bound = 1e-5 * maxAbs(expected.logits);
          assert.ok(diff <= bound, `batch ${images}: diff ${diff} > ${bound}`);
          // every layer's input tokens are still counted, the last one's too
          assert.deepEqual(got.tokensPerImage, expected.tokensPerImage);
          assert.deepEqual(got.tokensPerImage, new Array(images).fill(tokens));
        }
        fast.dispose();
        full.dispose();
      });
    }

    Deno.test(`mean pooling models compute every row of the last block (${precision}, ${backendName})`, async () => {
      for (const change of Object.values(MEAN_CONFIGS)) {
        const config = { ...BASE, ...change };
        const tokens = (config.classToken ? 1 : 0) + PATCHES;
        const weights = randomVitWeights(config, 32);
        const recorded = recordAttention(await create());
        const model = VitModel.create(recorded.backend, config, weights, { precision });
        const full = VitModel.create(recorded.backend, config, weights, {
          precision,
          fullLastBlock: true,
        });
        const pixels = randomPixels(3, 5);
        const got = await model.forward(pixels, [3, 3, 12, 20]);
        assert.deepEqual(recorded.calls.map((call) => call.queries), new Array(3).fill(3 * tokens));
        const expected = await full.forward(pixels, [3, 3, 12, 20]);
        // the option changes nothing here: the same ops on the same rows
        assert.deepEqual(got.logits, expected.logits);
        model.dispose();
        full.dispose();
      }
    });
  }

  Deno.test(`hooks that act on layers keep the last block whole (${backendName})`, async () => {
    const weights = randomVitWeights(BASE, 33);
    const recorded = recordAttention(await create());
    const model = VitModel.create(recorded.backend, BASE, weights);
    const pixels = randomPixels(2, 6);
    const shape = [2, 3, 12, 20] as const;
    const tokens = 1 + PATCHES;
    const probes: [string, EncoderHooks][] = [
      ["afterAttention", { afterAttention: () => null }],
      ["afterBlock", { afterBlock: () => null }],
      ["wantsClsAttention", { wantsClsAttention: () => false }],
    ];
    const fullModel = VitModel.create(await create(), BASE, weights, { fullLastBlock: true });
    const full = await fullModel.forward(pixels, shape);
    fullModel.dispose();
    for (const [name, hooks] of probes) {
      recorded.calls.length = 0;
      const out = await model.forwardWithHooks(pixels, shape, hooks);
      assert.deepEqual(
        recorded.calls.map((call) => call.queries),
        [2 * tokens, 2 * tokens, 2 * tokens],
        name,
      );
      assert.deepEqual(out.logits, full.logits, name);
    }
    // a hook that only adds output fields does not touch the layers
    recorded.calls.length = 0;
    await model.forwardWithHooks(pixels, shape, { finish: () => ({}) });
    assert.equal(recorded.calls[2].queries, 2);
    model.dispose();
  });

  Deno.test(`an ATS-switchable ViT skips the dead rows only on passes that do not prune (${backendName})`, async () => {
    const config = BASE;
    const weights = randomVitWeights(config, 34);
    const recorded = recordAttention(await create());
    const model = VitModel.create(recorded.backend, config, weights, {
      hooks: createAtsHooks(config),
    });
    const pixels = randomPixels(2, 8);
    const shape = [2, 3, 12, 20] as const;
    const plain = await model.forward(pixels, shape);
    assert.equal(recorded.calls[2].queries, 2);
    recorded.calls.length = 0;
    const pruned = await model.forward(pixels, shape, { tokenBudget: 4 });
    // ATS hooks run on every layer, so the last one is whole (its pruned rows included)
    assert.ok(recorded.calls[2].queries > 2);
    assert.equal(pruned.logits.length, plain.logits.length);
    model.dispose();
  });
}

Deno.test("the shortened last block releases every intermediate it creates", async () => {
  for (const change of Object.values(CLS_CONFIGS)) {
    const backend = new CountingBackend();
    const config = { ...BASE, ...change };
    const model = VitModel.create(backend, config, randomVitWeights(config, 35));
    const loaded = backend.liveTensors;
    await model.forward(randomPixels(3, 9), [3, 3, 12, 20]);
    assert.equal(backend.liveTensors, loaded, "tensors left alive after forward");
    model.dispose();
    assert.equal(backend.liveTensors, 0);
  }
});
