/**
 * The public Model API end to end: classify on real photos against PyTorch/PIL's own
 * preprocessing, batches of images, NaViT through classify, topK, errors, close().
 */

import assert from "node:assert/strict";
import { ReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../src/errors.ts";
import { type SafetensorsInput, serializeSafetensors } from "../src/loaders/safetensors.ts";
import { loadModel, topClasses } from "../src/model.ts";
import { seededRandom } from "../src/models/vit.ts";

const IMAGES = new URL("./fixtures/images/", import.meta.url);
const PARITY = new URL("../../shared/fixtures/parity/", import.meta.url);
const chelsea = Deno.readFileSync(new URL("chelsea.jpg", IMAGES));
const astronaut = Deno.readFileSync(new URL("astronaut.webp", IMAGES));

async function gunzip(url: URL): Promise<Uint8Array> {
  const stream = new Blob([Deno.readFileSync(url)]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A random vit-pytorch ViT for 48×64 RGB images, as a bundle under the library's names. */
function randomVitPytorchBundle(preprocess: Record<string, unknown>) {
  const random = seededRandom(42);
  const kwargs = {
    image_size: [48, 64],
    patch_size: 16,
    num_classes: 6,
    dim: 32,
    depth: 2,
    heads: 2,
    dim_head: 16,
    mlp_dim: 64,
    pool: "cls",
  };
  const tensors: Record<string, SafetensorsInput> = {};
  const add = (name: string, shape: number[], around = 0, scale = 0.3) => {
    const size = shape.reduce((a, b) => a * b, 1);
    tensors[name] = {
      dtype: "F32",
      shape,
      data: Float32Array.from({ length: size }, () => around + (random() - 0.5) * scale),
    };
  };
  add("cls_token", [1, 32], 0, 1);
  add("pos_embedding", [13, 32], 0, 1);
  add("to_patch_embedding.1.weight", [768], 1);
  add("to_patch_embedding.1.bias", [768]);
  add("to_patch_embedding.2.weight", [32, 768], 0, 0.1);
  add("to_patch_embedding.2.bias", [32]);
  add("to_patch_embedding.3.weight", [32], 1);
  add("to_patch_embedding.3.bias", [32]);
  for (let i = 0; i < 2; i++) {
    const l = `transformer.layers.${i}`;
    add(`${l}.0.norm.weight`, [32], 1);
    add(`${l}.0.norm.bias`, [32]);
    add(`${l}.0.to_qkv.weight`, [96, 32]);
    add(`${l}.0.to_out.0.weight`, [32, 32]);
    add(`${l}.0.to_out.0.bias`, [32]);
    add(`${l}.1.net.0.weight`, [32], 1);
    add(`${l}.1.net.0.bias`, [32]);
    add(`${l}.1.net.1.weight`, [64, 32]);
    add(`${l}.1.net.1.bias`, [64]);
    add(`${l}.1.net.4.weight`, [32, 64]);
    add(`${l}.1.net.4.bias`, [32]);
  }
  add("transformer.norm.weight", [32], 1);
  add("transformer.norm.bias", [32]);
  add("mlp_head.weight", [6, 32], 0, 2);
  add("mlp_head.bias", [6]);
  return {
    config: {
      library: "vit-pytorch",
      architecture: "ViT",
      kwargs,
      labels: ["cat", "dog", "rocket", "coffee", "astronaut", "logo"],
      preprocess,
    },
    weights: serializeSafetensors(tensors),
  };
}

const PLAIN = { interpolation: "bicubic", mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };

Deno.test("classify on a real photo gives the softmax of PyTorch/PIL-preprocessed logits", async () => {
  const model = await loadModel(randomVitPytorchBundle(PLAIN), { backend: "reference" });
  try {
    // refs/02: torchvision Resize((48, 64), bicubic) + ToTensor + Normalize(0.5, 0.5) of chelsea.jpg
    const bytes = await gunzip(new URL("refs/02_plain_chelsea.f32.gz", IMAGES));
    const pixels = new Float32Array(bytes.buffer, 0, bytes.length / 4);
    const logits = await model.forward(pixels, [1, 3, 48, 64]);
    const expected = topClasses(logits, model.labels, 6);
    const top = await model.classify(chelsea, { topK: 6 });
    assert.deepEqual(top.map((c) => c.index), expected.map((c) => c.index));
    assert.deepEqual(top.map((c) => c.label), expected.map((c) => c.label));
    top.forEach((c, i) => assert.ok(Math.abs(c.score - expected[i].score) < 1e-5));
    const total = top.reduce((sum, c) => sum + c.score, 0);
    assert.ok(Math.abs(total - 1) < 1e-5, `scores sum to ${total}`);
    for (let i = 1; i < top.length; i++) assert.ok(top[i - 1].score >= top[i].score);
    assert.equal((await model.classify(chelsea)).length, 5, "topK defaults to 5");
    assert.equal((await model.classify(chelsea, { topK: 50 })).length, 6, "topK is capped");
  } finally {
    model.close();
  }
});

Deno.test("classify of a list answers one list per image, in order", async () => {
  const model = await loadModel(randomVitPytorchBundle(PLAIN), { backend: "reference" });
  try {
    const [a, b, c] = await model.classify([chelsea, astronaut, chelsea], { topK: 2 });
    assert.deepEqual(a, await model.classify(chelsea, { topK: 2 }));
    assert.deepEqual(b, await model.classify(astronaut, { topK: 2 }));
    assert.deepEqual(c, a);
    assert.notDeepEqual(a, b);
  } finally {
    model.close();
  }
});

Deno.test("classify works for an any-resolution NaViT through packing", async () => {
  const model = await loadModel(new URL("vitpytorch-navit/", PARITY), { backend: "reference" });
  try {
    assert.equal(model.config.inputSize, null);
    assert.equal(model.config.preprocess.kind, "native");
    const prepared = await model.preprocess(chelsea);
    assert.equal(prepared.height % 8, 0);
    assert.equal(prepared.width % 8, 0);
    assert.ok(prepared.width > prepared.height, "the landscape photo stays landscape");
    const logits = await model.forwardPacked([prepared]);
    const top = await model.classify(chelsea, { topK: 3 });
    assert.deepEqual(top, topClasses(logits, model.labels, 3));
  } finally {
    model.close();
  }
});

Deno.test("bad images get typed errors and the model keeps working", async () => {
  const model = await loadModel(randomVitPytorchBundle(PLAIN), {
    backend: "reference",
    maxPixels: 100_000,
  });
  try {
    const cases: [Uint8Array, string][] = [
      [new Uint8Array(0), "invalid_image"],
      [chelsea.subarray(0, 600), "invalid_image"],
      [new TextEncoder().encode("GIF89a not really"), "unsupported_media_type"],
    ];
    for (const [bytes, code] of cases) {
      await assert.rejects(
        () => model.classify(bytes),
        (error: unknown) => error instanceof EdgeVitError && error.code === code,
        code,
      );
    }
    // chelsea is 360×240 = 86,400 px; a tighter limit refuses it from the header
    const strict = await loadModel(randomVitPytorchBundle(PLAIN), {
      backend: "reference",
      maxPixels: 80_000,
    });
    await assert.rejects(
      () => strict.classify(chelsea),
      (error: unknown) => error instanceof EdgeVitError && error.code === "too_large",
    );
    strict.close();
    await assert.rejects(
      () => model.classify(chelsea, { topK: 0 }),
      (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
    );
    await assert.rejects(
      () => model.classify([]),
      (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
    );
    assert.equal((await model.classify(chelsea, { topK: 1 })).length, 1);
  } finally {
    model.close();
  }
});

Deno.test("a model reports what it is and refuses work after close()", async () => {
  const backend = new ReferenceBackend();
  const model = await loadModel(new URL("hf-vit/", PARITY), { backend });
  assert.equal(model.backend, "reference");
  assert.equal(model.precision, "f32");
  assert.equal(model.numClasses, 10);
  assert.equal(model.labels[9], "class_9");
  assert.equal(model.config.library, "transformers");
  assert.equal(model.config.architecture, "ViTForImageClassification");
  assert.deepEqual(model.config.inputSize, { height: 32, width: 32 });
  assert.equal(model.config.preprocess.kind, "fixed");
  model.close();
  model.close(); // twice is harmless
  await assert.rejects(
    () => model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]),
    (error: unknown) => error instanceof EdgeVitError && /closed/.test(error.message),
  );
  // a backend passed in stays usable for the caller
  const x = backend.upload(new Float32Array([1, 2]), [1, 2]);
  assert.deepEqual(Array.from(await backend.read(x)), [1, 2]);
});

Deno.test("int8 precision loads through loadModel and stays close to float32", async () => {
  const dir = new URL("timm-vit/", PARITY);
  const f32 = await loadModel(dir, { backend: "reference" });
  const int8 = await loadModel(dir, { backend: "reference", precision: "int8" });
  assert.equal(int8.precision, "int8");
  const pixels = Float32Array.from({ length: 3 * 32 * 32 }, (_, i) => Math.sin(i));
  const a = await f32.forward(pixels, [1, 3, 32, 32]);
  const b = await int8.forward(pixels, [1, 3, 32, 32]);
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] ** 2;
    nb += b[i] ** 2;
  }
  assert.ok(dot / Math.sqrt(na * nb) > 0.999);
  f32.close();
  int8.close();
});

Deno.test("the ats option prunes tokens of a plain ViT checkpoint", async () => {
  const dir = new URL("hf-vit/", PARITY);
  const plain = await loadModel(dir, { backend: "reference" });
  const pruned = await loadModel(dir, { backend: "reference", ats: { maxTokensPerDepth: 6 } });
  const pixels = Float32Array.from({ length: 2 * 3 * 32 * 32 }, (_, i) => Math.cos(i * 0.3));
  const a = await plain.run(pixels, [2, 3, 32, 32]);
  const b = await pruned.run(pixels, [2, 3, 32, 32]);
  assert.deepEqual(a.tokensPerImage, [17, 17]);
  b.tokensPerImage.forEach((tokens) => assert.ok(tokens < 17, `${tokens} tokens`));
  assert.equal(b.logits.length, 20);
  plain.close();
  pruned.close();
  await assert.rejects(
    () =>
      loadModel(new URL("vitpytorch-simplevit/", PARITY), {
        backend: "reference",
        ats: { maxTokensPerDepth: 4 },
      }),
    (error: unknown) => error instanceof EdgeVitError && error.code === "unsupported",
  );
});
