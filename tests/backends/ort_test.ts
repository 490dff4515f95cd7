/**
 * ONNX models through onnxruntime-web. The fixture tests/fixtures/onnx/vitpytorch-vit-cls
 * is ../shared/fixtures/parity/vitpytorch-vit-cls exported by models/export/export_onnx.py
 * (CI has no Python, so the .onnx is committed); its logits must match the parity
 * fixture's expected logits.
 */

import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { isOnnxSource, loadOnnxModel, wantsOrt } from "../../src/backends/ort/ort_model.ts";
import { loadModel } from "../../src/model.ts";
import { loadServedModel } from "../../src/server/model_loader.ts";
import { parseSafetensors, toFloat32 } from "../../src/loaders/safetensors.ts";

const ONNX_DIR = new URL("../fixtures/onnx/vitpytorch-vit-cls/", import.meta.url);
const PARITY_DIR = new URL("../../../shared/fixtures/parity/vitpytorch-vit-cls/", import.meta.url);

async function parity() {
  const read = async (file: string, key: string) => {
    const parsed = parseSafetensors(await Deno.readFile(new URL(file, PARITY_DIR)), file);
    const entry = parsed.tensors.get(key)!;
    return { data: toFloat32(entry), shape: entry.shape };
  };
  const caseJson = JSON.parse(await Deno.readTextFile(new URL("case.json", PARITY_DIR)));
  const input = await read("inputs.safetensors", caseJson.input);
  const expected = await read("expected.safetensors", caseJson.output);
  return { input, expected, atol: caseJson.atol as number };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function asShape(shape: readonly number[]): [number, number, number, number] {
  assert.equal(shape.length, 4);
  return [shape[0], shape[1], shape[2], shape[3]];
}

async function rejectsWith(promise: Promise<unknown>, code: string, pattern: RegExp) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof EdgeVitError, `expected EdgeVitError, got ${error}`);
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    return true;
  });
}

Deno.test("onnxruntime-web's logits for the exported vit-pytorch ViT match the parity fixture", async () => {
  const { input, expected, atol } = await parity();
  assert.ok(atol <= 1e-4);
  const model = await loadOnnxModel(ONNX_DIR, { device: "wasm" });
  try {
    assert.equal(model.device, "wasm");
    assert.equal(model.numClasses, 10);
    assert.deepEqual(model.inputSize, { height: 32, width: 32 });
    assert.equal(model.channels, 3);
    assert.equal(model.config.architecture, "ViT");
    const logits = await model.forward(input.data, asShape(input.shape));
    assert.equal(logits.length, expected.data.length);
    const diff = maxAbsDiff(logits, expected.data);
    assert.ok(diff <= atol, `max abs diff ${diff} > ${atol}`);
  } finally {
    model.close();
  }
});

Deno.test("a batch gives each image the logits it gets alone", async () => {
  const { input } = await parity();
  const model = await loadOnnxModel(new URL("model.onnx", ONNX_DIR), { device: "wasm" });
  try {
    const [n, c, h, w] = asShape(input.shape);
    assert.ok(n >= 2);
    const batch = await model.forward(input.data, [n, c, h, w]);
    const per = c * h * w;
    for (let i = 0; i < n; i++) {
      const alone = await model.forward(input.data.slice(i * per, (i + 1) * per), [1, c, h, w]);
      const row = batch.subarray(i * model.numClasses, (i + 1) * model.numClasses);
      assert.ok(maxAbsDiff(alone, row) <= 1e-5);
    }
  } finally {
    model.close();
  }
});

Deno.test("the model loads the same from a folder, a .onnx path, a file URL, bytes and HTTP", async () => {
  const { input, expected } = await parity();
  const shape = asShape(input.shape);
  const folderPath = decodeURIComponent(ONNX_DIR.pathname);
  const bytes = await Deno.readFile(new URL("model.onnx", ONNX_DIR));
  const config = JSON.parse(await Deno.readTextFile(new URL("config.json", ONNX_DIR)));
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const name = new URL(request.url).pathname.split("/").pop()!;
    if (name !== "model.onnx" && name !== "config.json") return new Response("no", { status: 404 });
    return new Response(await Deno.readFile(new URL(name, ONNX_DIR)));
  });
  try {
    const base = `http://127.0.0.1:${server.addr.port}/vit`;
    const sources: [string, Parameters<typeof loadOnnxModel>][] = [
      ["folder path", [folderPath, { device: "wasm" }]],
      ["folder path with slash", [`${folderPath}/`, { device: "wasm" }]],
      [".onnx path", [`${folderPath}model.onnx`, { device: "wasm" }]],
      ["file URL string", [new URL("model.onnx", ONNX_DIR).href, { device: "wasm" }]],
      ["bytes with config", [bytes, { device: "wasm", config }]],
      ["ArrayBuffer", [bytes.slice().buffer, { device: "wasm", config }]],
      ["http folder", [base, { device: "wasm" }]],
    ];
    for (const [what, args] of sources) {
      const model = await loadOnnxModel(...args);
      try {
        assert.equal(model.config.architecture, "ViT", what);
        const diff = maxAbsDiff(await model.forward(input.data, shape), expected.data);
        assert.ok(diff <= 1e-4, `${what}: ${diff}`);
      } finally {
        model.close();
      }
    }
  } finally {
    await server.shutdown();
  }
});

Deno.test("labels come from the config beside the model or from options", async () => {
  const bytes = await Deno.readFile(new URL("model.onnx", ONNX_DIR));
  const names = Array.from({ length: 10 }, (_, i) => `class ${i}`);
  const fromConfig = await loadOnnxModel(bytes, {
    device: "wasm",
    config: { id2label: Object.fromEntries(names.map((name, i) => [String(i), name])) },
  });
  assert.deepEqual(fromConfig.labels, names);
  fromConfig.close();
  const fromOptions = await loadOnnxModel(bytes, { device: "wasm", labels: names.toReversed() });
  assert.deepEqual(fromOptions.labels, names.toReversed());
  fromOptions.close();
  const plain = await loadOnnxModel(bytes, { device: "wasm" });
  assert.deepEqual(plain.labels, names.map((_, i) => `class_${i}`));
  assert.deepEqual(plain.config, {});
  plain.close();
  await rejectsWith(
    loadOnnxModel(bytes, { device: "wasm", labels: ["a", "b"] }),
    "invalid_config",
    /2 labels for 10 classes/,
  );
});

Deno.test("bad model sources fail with clear errors", async () => {
  const bytes = await Deno.readFile(new URL("model.onnx", ONNX_DIR));
  await rejectsWith(
    loadOnnxModel(new Uint8Array([1, 2, 3, 4, 5]), { device: "wasm" }),
    "invalid_checkpoint",
    /onnxruntime cannot load it/,
  );
  await rejectsWith(
    loadOnnxModel(bytes.subarray(0, bytes.length >> 1), { device: "wasm" }),
    "invalid_checkpoint",
    /onnxruntime cannot load it/,
  );
  await rejectsWith(
    loadOnnxModel("/nonexistent/edgevit/model.onnx", { device: "wasm" }),
    "invalid_argument",
    /no ONNX model at/,
  );
  await rejectsWith(
    loadOnnxModel("", { device: "wasm" }),
    "invalid_argument",
    /path, URL or bytes/,
  );
  await rejectsWith(
    // deno-lint-ignore no-explicit-any
    loadOnnxModel(bytes, { device: "tpu" as any }),
    "invalid_argument",
    /device must be/,
  );
  await rejectsWith(
    loadOnnxModel(bytes, { device: "wasm", threads: 0 }),
    "invalid_argument",
    /threads must be a positive integer/,
  );
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(new URL("model.onnx", ONNX_DIR), `${dir}/model.onnx`);
    await Deno.writeTextFile(`${dir}/config.json`, "{not json");
    await rejectsWith(loadOnnxModel(dir, { device: "wasm" }), "invalid_config", /config\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("forward rejects pixels that do not fit the model, and a closed model", async () => {
  const model = await loadOnnxModel(ONNX_DIR, { device: "wasm" });
  const image = new Float32Array(3 * 32 * 32);
  await assert.rejects(
    async () => await model.forward(image, [2, 3, 32, 32]),
    (e: unknown) => e instanceof EdgeVitError && /holds 6144 values/.test(e.message),
  );
  await assert.rejects(
    async () => await model.forward(new Float32Array(3 * 30 * 30), [1, 3, 30, 30]),
    (e: unknown) => e instanceof EdgeVitError && /32×32 images, got 30×30/.test(e.message),
  );
  await assert.rejects(
    async () => await model.forward(new Float32Array(32 * 32), [1, 1, 32, 32]),
    (e: unknown) => e instanceof EdgeVitError && /3 channels, got 1/.test(e.message),
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    async () => await model.forward(image, [1, 3, 32] as any),
    (e: unknown) => e instanceof EdgeVitError && e.code === "invalid_argument",
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    async () => await model.forward(Array.from(image) as any, [1, 3, 32, 32]),
    (e: unknown) => e instanceof EdgeVitError && /Float32Array/.test(e.message),
  );
  // Still usable after rejected calls.
  assert.equal((await model.forward(image, [1, 3, 32, 32])).length, 10);
  model.close();
  await assert.rejects(
    async () => await model.forward(image, [1, 3, 32, 32]),
    (e: unknown) => e instanceof EdgeVitError && /closed/.test(e.message),
  );
});

Deno.test("the thread count of onnxruntime-web cannot change once its wasm runs", async () => {
  const bytes = await Deno.readFile(new URL("model.onnx", ONNX_DIR));
  // Earlier tests instantiated the wasm with onnxruntime-web's default count.
  const first = await loadOnnxModel(bytes, { device: "wasm" });
  first.close();
  const ort = await import("onnxruntime-web");
  const running = ort.env.wasm.numThreads ?? 1;
  const same = await loadOnnxModel(bytes, { device: "wasm", threads: running });
  same.close();
  await rejectsWith(
    loadOnnxModel(bytes, { device: "wasm", threads: running + 1 }),
    "unsupported",
    /cannot switch/,
  );
});

Deno.test("the WebGPU provider matches the fixture when an adapter exists, else is refused clearly", async () => {
  const { input, expected } = await parity();
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  if (!adapter) {
    await rejectsWith(
      loadOnnxModel(ONNX_DIR, { device: "webgpu" }),
      "unsupported",
      /no GPU adapter/,
    );
    return;
  }
  const model = await loadOnnxModel(ONNX_DIR, { device: "webgpu" });
  try {
    assert.equal(model.device, "webgpu");
    const diff = maxAbsDiff(await model.forward(input.data, asShape(input.shape)), expected.data);
    assert.ok(diff <= 1e-4, `max abs diff ${diff}`);
  } finally {
    model.close();
  }
});

/** Engine backends to compare with: the reference, and wasm once it exists in the checkout. */
async function engineBackends(): Promise<("reference" | "wasm")[]> {
  const wasm = new URL("../../src/backends/wasm/wasm_backend.ts", import.meta.url);
  try {
    await Deno.stat(wasm);
    return ["reference", "wasm"];
  } catch {
    return ["reference"];
  }
}

Deno.test("loadModel runs a .onnx through onnxruntime and agrees with edgevit's engine on the same weights", async () => {
  const { input, expected } = await parity();
  const shape = asShape(input.shape);
  const onnx = await loadModel(new URL("model.onnx", ONNX_DIR), { ort: { device: "wasm" } });
  try {
    assert.equal(onnx.backend, "ort");
    assert.equal(onnx.precision, "f32");
    assert.equal(onnx.numClasses, 10);
    assert.equal(onnx.config.library, "vit-pytorch");
    assert.equal(onnx.config.architecture, "ViT");
    assert.deepEqual(onnx.config.inputSize, { height: 32, width: 32 });
    assert.equal(onnx.config.patchSize, 8);
    const ortLogits = await onnx.forward(input.data, shape);
    assert.ok(maxAbsDiff(ortLogits, expected.data) <= 1e-4);
    for (const backend of await engineBackends()) {
      const engine = await loadModel(decodeURIComponent(PARITY_DIR.pathname), { backend });
      try {
        assert.deepEqual(engine.labels, onnx.labels);
        const diff = maxAbsDiff(await engine.forward(input.data, shape), ortLogits);
        assert.ok(diff <= 1e-4, `${backend} vs onnxruntime: max abs diff ${diff}`);
      } finally {
        engine.close();
      }
    }
  } finally {
    onnx.close();
  }
});

Deno.test("classify on an ONNX model preprocesses like the engine and ranks the same classes", async () => {
  const images = await Promise.all(
    ["chelsea.jpg", "coffee_alpha.png", "astronaut.webp"].map((name) =>
      Deno.readFile(new URL(`../fixtures/images/${name}`, import.meta.url))
    ),
  );
  const onnx = await loadModel(decodeURIComponent(ONNX_DIR.pathname), {
    backend: "ort",
    ort: { device: "wasm" },
  });
  const engine = await loadModel(decodeURIComponent(PARITY_DIR.pathname), { backend: "reference" });
  try {
    assert.deepEqual(onnx.config.preprocess, engine.config.preprocess);
    const fromOnnx = await onnx.classify(images, { topK: 3 });
    const fromEngine = await engine.classify(images, { topK: 3 });
    assert.equal(fromOnnx.length, images.length);
    for (let i = 0; i < images.length; i++) {
      assert.deepEqual(fromOnnx[i].map((c) => c.index), fromEngine[i].map((c) => c.index));
      for (let k = 0; k < 3; k++) {
        assert.equal(fromOnnx[i][k].label, fromEngine[i][k].label);
        assert.ok(Math.abs(fromOnnx[i][k].score - fromEngine[i][k].score) < 1e-5);
      }
    }
    const single = await onnx.classify(images[0], { topK: 1 });
    assert.equal(single.length, 1);
    assert.equal(single[0].index, fromOnnx[0][0].index);
  } finally {
    onnx.close();
    engine.close();
  }
});

Deno.test("loadModel takes ONNX bytes and bundles, with the config given in options or the bundle", async () => {
  const bytes = await Deno.readFile(new URL("model.onnx", ONNX_DIR));
  const config = {
    library: "vit-pytorch",
    architecture: "ViT",
    kwargs: { image_size: 32, patch_size: 8 },
    labels: Array.from({ length: 10 }, (_, i) => `c${i}`),
    preprocess: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
  };
  const fromBytes = await loadModel(bytes, { ort: { device: "wasm", config } });
  const fromBundle = await loadModel({ onnx: bytes, config: JSON.stringify(config) }, {
    ort: { device: "wasm" },
  });
  const bare = await loadModel(bytes, { ort: { device: "wasm" } });
  try {
    for (const model of [fromBytes, fromBundle]) {
      assert.equal(model.labels[3], "c3");
      const pipeline = model.config.preprocess;
      assert.equal(pipeline.kind, "fixed");
      if (pipeline.kind === "fixed") {
        assert.deepEqual(pipeline.config.mean, [0.5, 0.5, 0.5]);
        assert.deepEqual(pipeline.config.std, [0.25, 0.25, 0.25]);
      }
    }
    // No config at all: the graph's input size, pixels scaled to [0, 1].
    assert.equal(bare.config.architecture, "onnx");
    assert.equal(bare.labels[0], "class_0");
    const pipeline = bare.config.preprocess;
    assert.ok(pipeline.kind === "fixed" && pipeline.config.resize?.mode === "exact");
    assert.ok(pipeline.kind === "fixed" && pipeline.config.mean.every((m) => m === 0));
    const png = await Deno.readFile(
      new URL("../fixtures/images/coffee_alpha.png", import.meta.url),
    );
    assert.equal((await bare.classify(png, { topK: 2 })).length, 2);
  } finally {
    fromBytes.close();
    fromBundle.close();
    bare.close();
  }
});

Deno.test("loadModel refuses ONNX models on other backends, int8, and ATS options", async () => {
  const onnxPath = decodeURIComponent(new URL("model.onnx", ONNX_DIR).pathname);
  assert.equal(isOnnxSource(onnxPath), true);
  assert.equal(isOnnxSource(decodeURIComponent(ONNX_DIR.pathname)), false);
  assert.equal(wantsOrt(decodeURIComponent(ONNX_DIR.pathname), "ort"), true);
  assert.equal(wantsOrt(decodeURIComponent(PARITY_DIR.pathname), undefined), false);
  await rejectsWith(loadModel(onnxPath, { backend: "reference" }), "unsupported", /backend "ort"/);
  await rejectsWith(
    loadModel(onnxPath, { precision: "int8", ort: { device: "wasm" } }),
    "unsupported",
    /float32/,
  );
  // A folder without model.onnx, named for onnxruntime.
  await rejectsWith(
    loadModel(decodeURIComponent(PARITY_DIR.pathname), { backend: "ort" }),
    "invalid_argument",
    /no ONNX model/,
  );
  const model = await loadModel(onnxPath, { ort: { device: "wasm" } });
  try {
    await rejectsWith(
      model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32], { tokenBudget: 4 }),
      "unsupported",
      /token budget/,
    );
    await rejectsWith(
      model.classify(new Uint8Array([1, 2, 3])),
      "unsupported_media_type",
      /./,
    );
  } finally {
    model.close();
  }
});

Deno.test("the server serves an ONNX model named with backend ort", async () => {
  const served = await loadServedModel(decodeURIComponent(ONNX_DIR.pathname), {
    name: "vit-onnx",
    backend: "ort",
  });
  const model = await loadModel(decodeURIComponent(ONNX_DIR.pathname), { backend: "ort" });
  try {
    assert.equal(served.backend, "ort");
    assert.equal(served.numClasses, 10);
    assert.equal(served.packed, false);
    await served.warmup();
    const jpeg = await Deno.readFile(new URL("../fixtures/images/chelsea.jpg", import.meta.url));
    const image = await served.preprocess(jpeg);
    assert.deepEqual([image.channels, image.height, image.width], [3, 32, 32]);
    assert.equal(image.tokens, 16);
    const out = await served.infer([image, image], {});
    const direct = await model.forward(image.data, [1, 3, 32, 32]);
    assert.ok(maxAbsDiff(out.logits.subarray(0, 10), direct) <= 1e-6);
    assert.ok(maxAbsDiff(out.logits.subarray(10, 20), direct) <= 1e-6);
  } finally {
    served.close();
    model.close();
  }
});
