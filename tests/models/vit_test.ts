import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { sincos2dPositions } from "../../src/models/simple_vit.ts";
import { quantizePerChannel } from "../../src/backends/reference/reference_backend.ts";
import {
  convToPatchLinear,
  dequantizeLinear,
  type EncoderHooks,
  foldLayerScale,
  fuseQkv,
  patchify,
  randomVitWeights,
  scaleLinear,
  seededRandom,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../../src/models/vit.ts";
import { CountingBackend } from "./_counting_backend.ts";

const BASE: VitConfig = standardVitConfig({
  imageSize: [8, 12],
  patchSize: 4,
  dim: 16,
  depth: 2,
  heads: 2,
  mlpDim: 24,
  numClasses: 5,
});

const VARIANTS: Record<string, Partial<VitConfig>> = {
  "cls pooling": {},
  "mean pooling without prefix tokens": { classToken: false, pool: "mean" },
  "mean pooling over patches with a class token and fc_norm": { pool: "mean", finalNorm: "pooled" },
  "a distilled head": { distillationToken: true, head: "distilled" },
  "vit-pytorch style patch norms and pre-norm": {
    patchEmbedding: "norm_linear_norm",
    preNorm: true,
  },
};

function randomPixels(count: number, seed: number): Float32Array {
  const random = seededRandom(seed);
  return Float32Array.from({ length: count }, () => random() * 2 - 1);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("patchify orders each patch's values as (p1 p2 c), patches in raster order", () => {
  // value = 100·c + 10·y + x for a 2-channel 2×4 image, 2×2 patches
  const pixels = new Float32Array(2 * 2 * 4);
  for (let c = 0; c < 2; c++) {
    for (let y = 0; y < 2; y++) {
      for (let x = 0; x < 4; x++) pixels[c * 8 + y * 4 + x] = 100 * c + 10 * y + x;
    }
  }
  const rows = patchify(pixels, 1, 2, 2, 4, 2, 2);
  assert.deepEqual(Array.from(rows.subarray(0, 8)), [0, 100, 1, 101, 10, 110, 11, 111]);
  assert.deepEqual(Array.from(rows.subarray(8, 16)), [2, 102, 3, 103, 12, 112, 13, 113]);
});

Deno.test("a conv patch embedding rewritten as a linear layer gives the strided conv's output", () => {
  const [dim, channels, p, h, w] = [5, 3, 3, 6, 9];
  const random = seededRandom(7);
  const weight = Float32Array.from({ length: dim * channels * p * p }, () => random() - 0.5);
  const image = Float32Array.from({ length: channels * h * w }, () => random() - 0.5);
  const linear = convToPatchLinear(weight, dim, channels, p, p);
  const rows = patchify(image, 1, channels, h, w, p, p);
  const patchDim = channels * p * p;
  for (let gy = 0; gy < h / p; gy++) {
    for (let gx = 0; gx < w / p; gx++) {
      const row = gy * (w / p) + gx;
      for (let d = 0; d < dim; d++) {
        let conv = 0;
        for (let c = 0; c < channels; c++) {
          for (let ky = 0; ky < p; ky++) {
            for (let kx = 0; kx < p; kx++) {
              conv += weight[((d * channels + c) * p + ky) * p + kx] *
                image[c * h * w + (gy * p + ky) * w + gx * p + kx];
            }
          }
        }
        let viaLinear = 0;
        for (let k = 0; k < patchDim; k++) {
          viaLinear += linear[d * patchDim + k] * rows[row * patchDim + k];
        }
        assert.ok(Math.abs(conv - viaLinear) < 1e-5, `patch ${row} channel ${d}`);
      }
    }
  }
});

for (const [name, change] of Object.entries(VARIANTS)) {
  Deno.test(`a batch gives each image the logits it gets alone (${name})`, async () => {
    const config = { ...BASE, ...change };
    const model = VitModel.create(new ReferenceBackend(), config, randomVitWeights(config, 3));
    const size = 3 * 8 * 12;
    const pixels = randomPixels(3 * size, 11);
    const batch = await model.forward(pixels, [3, 3, 8, 12]);
    assert.deepEqual(batch.tokensPerImage, [
      config.classToken ? 7 + (config.distillationToken ? 1 : 0) : 6,
      config.classToken ? 7 + (config.distillationToken ? 1 : 0) : 6,
      config.classToken ? 7 + (config.distillationToken ? 1 : 0) : 6,
    ]);
    for (let i = 0; i < 3; i++) {
      const alone = await model.forward(pixels.slice(i * size, (i + 1) * size), [1, 3, 8, 12]);
      const row = batch.logits.subarray(i * 5, (i + 1) * 5);
      assert.ok(maxAbsDiff(alone.logits, row) < 1e-5, `image ${i}`);
    }
    model.dispose();
  });
}

Deno.test("forward releases every intermediate and dispose frees every parameter", async () => {
  for (const change of Object.values(VARIANTS)) {
    const backend = new CountingBackend();
    const config = { ...BASE, ...change };
    const model = VitModel.create(backend, config, randomVitWeights(config, 5));
    const loaded = backend.liveTensors;
    assert.ok(loaded > 0 && backend.liveLinears > 0);
    await model.forward(randomPixels(2 * 3 * 8 * 12, 1), [2, 3, 8, 12]);
    await model.forward(randomPixels(3 * 8 * 12, 2), [1, 3, 8, 12]);
    assert.equal(backend.liveTensors, loaded, "tensors left alive after forward");
    model.dispose();
    assert.equal(backend.liveTensors, 0);
    assert.equal(backend.liveLinears, 0);
  }
});

Deno.test("the distilled head averages the class-token head and the distillation-token head", async () => {
  const config: VitConfig = { ...BASE, distillationToken: true, head: "distilled" };
  const weights = randomVitWeights(config, 9);
  const pixels = randomPixels(2 * 3 * 8 * 12, 4);
  const shape = [2, 3, 8, 12] as const;
  const distilled = VitModel.create(new ReferenceBackend(), config, weights);
  const both = (await distilled.forward(pixels, shape)).logits;
  // Heads hold ½·W each, so one head alone on its own token gives half that head's logits.
  const single = { ...config, head: "single" as const };
  const clsOnly = VitModel.create(new ReferenceBackend(), single, {
    ...weights,
    heads: [weights.heads[0]],
  });
  // Attention does not care about token order: swapping the two prefix rows puts the
  // distillation token first, where a single head reads it.
  const dim = config.dim;
  const swapped = new Float32Array(weights.prefixTokens!);
  swapped.set(weights.prefixTokens!.subarray(dim, 2 * dim), 0);
  swapped.set(weights.prefixTokens!.subarray(0, dim), dim);
  const distOnly = VitModel.create(new ReferenceBackend(), single, {
    ...weights,
    prefixTokens: swapped,
    heads: [weights.heads[1]],
  });
  const a = (await clsOnly.forward(pixels, shape)).logits;
  const b = (await distOnly.forward(pixels, shape)).logits;
  const sum = a.map((value, i) => value + b[i]);
  assert.ok(maxAbsDiff(both, sum) < 1e-5);
  assert.ok(maxAbsDiff(a, b) > 1e-3, "the two heads should differ on random weights");
});

Deno.test("hooks see CLS attention rows that sum to one and can keep a subset of rows", async () => {
  const backend = new CountingBackend();
  const config = { ...BASE, depth: 2 };
  const model = VitModel.create(backend, config, randomVitWeights(config, 13));
  const loaded = backend.liveTensors;
  const seen: number[] = [];
  const hooks: EncoderHooks = {
    wantsClsAttention: (layer) => layer === 0,
    async afterAttention(context) {
      if (context.layer !== 0) return null;
      assert.ok(context.clsAttention);
      const attention = await context.backend.read(context.clsAttention);
      // [keys, heads]: each segment's column sums to 1 over its own keys
      for (let s = 0; s < 2; s++) {
        for (let h = 0; h < context.heads; h++) {
          let total = 0;
          for (let j = context.segments.offsets[s]; j < context.segments.offsets[s + 1]; j++) {
            total += attention[j * context.heads + h];
          }
          assert.ok(Math.abs(total - 1) < 1e-5);
        }
      }
      // keep CLS and the first two patches of each image
      const rows = Int32Array.from([0, 1, 2, 7, 8, 9]);
      seen.push(rows.length);
      return {
        rows,
        segments: { ids: Int32Array.from([0, 0, 0, 1, 1, 1]), offsets: Int32Array.from([0, 3, 6]) },
      };
    },
  };
  const output = await model.forwardWithHooks(
    randomPixels(2 * 3 * 8 * 12, 3),
    [2, 3, 8, 12],
    hooks,
  );
  assert.deepEqual(seen, [6]);
  // 7 tokens in layer 0, 3 in layer 1
  assert.deepEqual(output.tokensPerImage, [5, 5]);
  assert.equal(output.logits.length, 10);
  assert.equal(backend.liveTensors, loaded);
  model.dispose();
});

Deno.test("forward rejects pixels whose shape does not fit the model", async () => {
  const model = VitModel.create(new ReferenceBackend(), BASE, randomVitWeights(BASE, 1));
  const cases: [Float32Array, number[]][] = [
    [new Float32Array(3 * 8 * 12), [1, 3, 12, 8]],
    [new Float32Array(3 * 8 * 12), [1, 1, 8, 12]],
    [new Float32Array(10), [1, 3, 8, 12]],
    [new Float32Array(0), [0, 3, 8, 12]],
    [new Float32Array(3 * 8 * 12), [1, 3, 8]],
  ];
  for (const [pixels, shape] of cases) {
    await assert.rejects(
      () => model.forward(pixels, shape as unknown as [number, number, number, number]),
      (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
      `shape ${shape}`,
    );
  }
  model.dispose();
});

Deno.test("weights that disagree with the config are rejected when the model is created", () => {
  const weights = randomVitWeights(BASE, 1);
  weights.blocks[1].fc1 = {
    ...weights.blocks[1].fc1,
    outFeatures: 7,
    weight: new Float32Array(7 * 16),
  };
  assert.throws(
    () => VitModel.create(new ReferenceBackend(), BASE, weights),
    (error: unknown) =>
      error instanceof EdgeVitError && error.code === "invalid_checkpoint" &&
      /block 1 fc1/.test(error.message),
  );
  assert.throws(
    () =>
      VitModel.create(
        new ReferenceBackend(),
        { ...BASE, imageWidth: 10 },
        randomVitWeights(BASE, 1),
      ),
    (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_config",
  );
});

Deno.test("int8 weights keep the logits close to float32", async () => {
  const config = { ...BASE, dim: 32, headDim: 16, mlpDim: 64 };
  const weights = randomVitWeights(config, 21);
  const pixels = randomPixels(2 * 3 * 8 * 12, 8);
  const f32 = await VitModel.create(new ReferenceBackend(), config, weights).forward(pixels, [
    2,
    3,
    8,
    12,
  ]);
  const int8Model = VitModel.create(new ReferenceBackend(), config, weights, { precision: "int8" });
  assert.equal(int8Model.precision, "int8");
  const int8 = await int8Model.forward(pixels, [2, 3, 8, 12]);
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < f32.logits.length; i++) {
    dot += f32.logits[i] * int8.logits[i];
    na += f32.logits[i] ** 2;
    nb += int8.logits[i] ** 2;
  }
  assert.ok(dot / Math.sqrt(na * nb) > 0.999, `cosine ${dot / Math.sqrt(na * nb)}`);
});

Deno.test("sin-cos positions follow vit-pytorch's posemb_sincos_2d layout", () => {
  const dim = 8;
  const positions = sincos2dPositions(2, 3, dim);
  // patch (y=1, x=2): omega = [1, 1/10000]; [sin x·ω, cos x·ω, sin y·ω, cos y·ω]
  const row = Array.from(positions.subarray((1 * 3 + 2) * dim, (1 * 3 + 3) * dim));
  const expected = [
    Math.sin(2),
    Math.sin(2e-4),
    Math.cos(2),
    Math.cos(2e-4),
    Math.sin(1),
    Math.sin(1e-4),
    Math.cos(1),
    Math.cos(1e-4),
  ];
  row.forEach((value, i) => assert.ok(Math.abs(value - expected[i]) < 1e-6, `column ${i}`));
  assert.throws(() => sincos2dPositions(2, 2, 6), EdgeVitError);
});

Deno.test("qkv fusion, head halving and layer-scale folding keep int8 layers int8 and exact", () => {
  const random = seededRandom(17);
  const linear = (out: number) => ({
    weight: Float32Array.from({ length: out * 6 }, () => random() - 0.5),
    bias: Float32Array.from({ length: out }, () => random() - 0.5),
    outFeatures: out,
    inFeatures: 6,
  });
  const [q, k, v] = [linear(4), linear(4), linear(4)];
  const gamma = Float32Array.from([0.5, -2, 1.5, -0.25]);
  const float = [fuseQkv(q, k, v), scaleLinear(q, 0.5), foldLayerScale(q, gamma)];
  const int8 = [
    fuseQkv(quantizePerChannel(q), quantizePerChannel(k), quantizePerChannel(v)),
    scaleLinear(quantizePerChannel(q), 0.5),
    foldLayerScale(quantizePerChannel(q), gamma),
  ];
  int8.forEach((params, n) => {
    assert.ok(params.weight instanceof Int8Array, `case ${n} stays int8`);
    assert.ok((params as { scales: Float32Array }).scales.every((s) => s > 0));
    const exact = dequantizeLinear(params);
    const reference = float[n];
    assert.deepEqual(Array.from(exact.bias!), Array.from(reference.bias!));
    // int8 rounding: within half a quantization step of the float weights
    exact.weight.forEach((w, i) =>
      assert.ok(Math.abs(w - reference.weight[i]) < 0.05, `${n}:${i}`)
    );
  });
});
