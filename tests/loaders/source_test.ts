import assert from "node:assert/strict";
import { EdgeVitError, type ErrorCode } from "../../src/errors.ts";
import {
  parseSafetensors,
  type SafetensorsInput,
  serializeSafetensors,
} from "../../src/loaders/safetensors.ts";
import { loadModel } from "../../src/model.ts";

const PARITY = new URL("../../../shared/fixtures/parity/", import.meta.url);
const VIT_CLS = new URL("vitpytorch-vit-cls/", PARITY);

const config = JSON.parse(Deno.readTextFileSync(new URL("config.json", VIT_CLS)));
const weightBytes = Deno.readFileSync(new URL("model.safetensors", VIT_CLS));
const inputs = parseSafetensors(Deno.readFileSync(new URL("inputs.safetensors", VIT_CLS)));
const pixelsEntry = inputs.tensors.get("pixel_values")!;
const pixels = new Float32Array(pixelsEntry.bytes.slice().buffer);
const shape = pixelsEntry.shape as [number, number, number, number];

/** The fixture's tensors, as serializeSafetensors inputs. */
function fixtureTensors(): Record<string, SafetensorsInput> {
  const out: Record<string, SafetensorsInput> = {};
  for (const [name, entry] of parseSafetensors(weightBytes).tensors) {
    out[name] = { dtype: entry.dtype, shape: entry.shape, data: entry.bytes.slice() };
  }
  return out;
}

async function referenceLogits(): Promise<Float32Array> {
  const model = await loadModel(VIT_CLS, { backend: "reference" });
  try {
    return await model.forward(pixels, shape);
  } finally {
    model.close();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

async function loadRejects(
  source: Parameters<typeof loadModel>[0],
  code: ErrorCode,
  pattern: RegExp,
): Promise<void> {
  await assert.rejects(
    () => loadModel(source, { backend: "reference" }),
    (error: unknown) => {
      assert.ok(error instanceof EdgeVitError, `not an EdgeVitError: ${error}`);
      assert.equal(error.code, code, error.message);
      assert.match(error.message, pattern);
      return true;
    },
  );
}

async function withFolder(
  files: Record<string, Uint8Array | string>,
  body: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-source-" });
  try {
    for (const [name, content] of Object.entries(files)) {
      if (typeof content === "string") await Deno.writeTextFile(`${dir}/${name}`, content);
      else await Deno.writeFile(`${dir}/${name}`, content);
    }
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("a folder path, a file: URL and a path to config.json load the same model", async () => {
  const expected = await referenceLogits();
  const path = decodeURIComponent(VIT_CLS.pathname);
  for (const source of [path, VIT_CLS.href, `${path}config.json`]) {
    const model = await loadModel(source, { backend: "reference" });
    assert.ok(maxAbsDiff(await model.forward(pixels, shape), expected) === 0, source);
    model.close();
  }
});

Deno.test("a model loads from bytes without a file system, with its labels", async () => {
  const expected = await referenceLogits();
  const labels = Array.from({ length: 10 }, (_, i) => `label ${i}`);
  const model = await loadModel(
    { config: JSON.stringify(config), weights: weightBytes, labels },
    { backend: "reference" },
  );
  assert.deepEqual(model.labels, labels);
  assert.equal(maxAbsDiff(await model.forward(pixels, shape), expected), 0);
  model.close();
});

Deno.test("sharded checkpoints load through model.safetensors.index.json", async () => {
  const expected = await referenceLogits();
  const tensors = fixtureTensors();
  const names = Object.keys(tensors);
  const first: Record<string, SafetensorsInput> = {};
  const second: Record<string, SafetensorsInput> = {};
  const weightMap: Record<string, string> = {};
  names.forEach((name, i) => {
    const file = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    (i % 2 ? second : first)[name] = tensors[name];
    weightMap[name] = file;
  });
  const shards = {
    "model-00001-of-00002.safetensors": serializeSafetensors(first),
    "model-00002-of-00002.safetensors": serializeSafetensors(second),
  };
  const index = { metadata: { total_size: weightBytes.length }, weight_map: weightMap };
  await withFolder({
    "config.json": JSON.stringify(config),
    "model.safetensors.index.json": JSON.stringify(index),
    ...shards,
  }, async (dir) => {
    const model = await loadModel(dir, { backend: "reference" });
    assert.equal(maxAbsDiff(await model.forward(pixels, shape), expected), 0);
    model.close();
  });
  // bytes: shards as a list, or by name with the index
  for (const weights of [Object.values(shards), shards]) {
    const model = await loadModel(
      { config, weights, index: Array.isArray(weights) ? undefined : index },
      { backend: "reference" },
    );
    assert.equal(maxAbsDiff(await model.forward(pixels, shape), expected), 0);
    model.close();
  }
  // an index that disagrees with its shards
  const wrong = { weight_map: { ...weightMap, [names[0]]: "model-00002-of-00002.safetensors" } };
  await loadRejects(
    { config, weights: shards, index: wrong },
    "invalid_checkpoint",
    /index puts it/,
  );
  await loadRejects(
    {
      config,
      weights: [
        shards["model-00001-of-00002.safetensors"],
        shards["model-00001-of-00002.safetensors"],
      ],
    },
    "invalid_checkpoint",
    /is in both/,
  );
  await withFolder({
    "config.json": JSON.stringify(config),
    "model.safetensors.index.json": JSON.stringify({ weight_map: { a: "../escape.safetensors" } }),
  }, (dir) => loadRejects(dir, "invalid_checkpoint", /not a plain file name/));
  await withFolder({
    "config.json": JSON.stringify(config),
    "model.safetensors.index.json": JSON.stringify(index),
    "model-00001-of-00002.safetensors": shards["model-00001-of-00002.safetensors"],
  }, (dir) => loadRejects(dir, "invalid_checkpoint", /which is missing/));
});

Deno.test("float16 and bfloat16 checkpoints are converted at load", async () => {
  const expected = await referenceLogits();
  for (const dtype of ["F16", "BF16"] as const) {
    const tensors = fixtureTensors();
    for (const [name, tensor] of Object.entries(tensors)) {
      const values = new Float32Array(tensor.data.buffer as ArrayBuffer);
      const narrow = new Uint16Array(values.length);
      const bits = new Uint32Array(values.buffer);
      for (let i = 0; i < values.length; i++) {
        narrow[i] = dtype === "BF16" ? bits[i] >>> 16 : toHalfBits(values[i]);
      }
      tensors[name] = { dtype, shape: tensor.shape, data: narrow };
    }
    const model = await loadModel(
      { config, weights: serializeSafetensors(tensors) },
      { backend: "reference" },
    );
    const logits = await model.forward(pixels, shape);
    const diff = maxAbsDiff(logits, expected);
    // rounding every weight to 11 (F16) or 8 (BF16) significant bits moves logits a little
    assert.ok(diff > 0 && diff < (dtype === "F16" ? 0.02 : 0.2), `${dtype}: ${diff}`);
    model.close();
  }
});

/** float32 → binary16 bits, round to nearest even (normal range is enough here). */
function toHalfBits(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
  let mantissa = bits & 0x7fffff;
  if (exponent <= 0) return sign; // flush tiny values: the fixtures have none
  const roundBit = 1 << 12;
  if ((mantissa & roundBit) && ((mantissa & (roundBit - 1)) || (mantissa & (roundBit << 1)))) {
    mantissa += roundBit << 1;
  }
  let half = sign | (exponent << 10) | (mantissa >>> 13);
  if (mantissa & 0x800000) half = sign | ((exponent + 1) << 10);
  return half;
}

Deno.test("a model folder over http(s) loads like a local one", async () => {
  const expected = await referenceLogits();
  const controller = new AbortController();
  const requests: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: controller.signal, onListen: () => {} },
    async (request) => {
      const name = new URL(request.url).pathname.replace(/^\/models\/vit\//, "");
      requests.push(name);
      try {
        return new Response(await Deno.readFile(new URL(name, VIT_CLS)));
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  try {
    const url = `http://127.0.0.1:${server.addr.port}/models/vit`;
    const model = await loadModel(url, { backend: "reference" });
    assert.equal(maxAbsDiff(await model.forward(pixels, shape), expected), 0);
    model.close();
    assert.ok(requests.includes("config.json") && requests.includes("model.safetensors"));
    await loadRejects(
      `http://127.0.0.1:${server.addr.port}/nothing/`,
      "invalid_config",
      /no config\.json/,
    );
  } finally {
    controller.abort();
    await server.finished;
  }
});

Deno.test("a tensor missing from the checkpoint is named in the error", async () => {
  const tensors = fixtureTensors();
  delete tensors["transformer.layers.1.1.net.4.weight"];
  await loadRejects(
    { config, weights: serializeSafetensors(tensors) },
    "invalid_checkpoint",
    /missing tensor "transformer\.layers\.1\.1\.net\.4\.weight"/,
  );
});

Deno.test("tensors the model does not use are reported as extra", async () => {
  const tensors = fixtureTensors();
  tensors["transformer.layers.2.0.norm.weight"] = {
    dtype: "F32",
    shape: [64],
    data: new Float32Array(64),
  };
  await loadRejects(
    { config, weights: serializeSafetensors(tensors) },
    "invalid_checkpoint",
    /1 unexpected tensor.*transformer\.layers\.2\.0\.norm\.weight/,
  );
});

Deno.test("tensor shapes that disagree with the config are rejected", async () => {
  const wider = { ...config, kwargs: { ...config.kwargs, mlp_dim: 256 } };
  await loadRejects(
    { config: wider, weights: weightBytes },
    "invalid_checkpoint",
    /net\.1\.weight" has shape \[128,64\], the config implies \[256,64\]/,
  );
  const deeper = { ...config, kwargs: { ...config.kwargs, depth: 3 } };
  await loadRejects({ config: deeper, weights: weightBytes }, "invalid_checkpoint", /layers\.2/);
  const bigger = { ...config, kwargs: { ...config.kwargs, image_size: 40 } };
  await loadRejects(
    { config: bigger, weights: weightBytes },
    "invalid_checkpoint",
    /pos_embedding/,
  );
});

Deno.test("an unknown architecture or library is reported as unsupported", async () => {
  await loadRejects(
    { config: { ...config, architecture: "CrossViT" }, weights: weightBytes },
    "unsupported",
    /vit-pytorch architecture "CrossViT" is not supported/,
  );
  await loadRejects(
    { config: { ...config, library: "keras" }, weights: weightBytes },
    "unsupported",
    /library "keras"/,
  );
  await loadRejects(
    {
      config: { architectures: ["SwinForImageClassification"], model_type: "swin" },
      weights: weightBytes,
    },
    "unsupported",
    /SwinForImageClassification/,
  );
  await loadRejects(
    { config: { architecture: "resnet50" }, weights: weightBytes },
    "unsupported",
    /resnet50/,
  );
});

Deno.test("malformed config JSON is rejected with the file named", async () => {
  await withFolder({
    "config.json": '{"library": "vit-pytorch",',
    "model.safetensors": weightBytes,
  }, (dir) => loadRejects(dir, "invalid_config", /config\.json is not valid JSON/));
  await withFolder(
    { "config.json": "[1]", "model.safetensors": weightBytes },
    (dir) => loadRejects(dir, "invalid_config", /not a JSON object/),
  );
  await loadRejects({ config: "{", weights: weightBytes }, "invalid_config", /not valid JSON/);
  await loadRejects(
    { config: {}, weights: weightBytes },
    "invalid_config",
    /cannot tell the checkpoint layout/,
  );
  for (const [key, value] of [["dim", "64"], ["depth", 0], ["image_size", [32]], ["pool", "max"]]) {
    await loadRejects(
      {
        config: { ...config, kwargs: { ...config.kwargs, [key as string]: value } },
        weights: weightBytes,
      },
      "invalid_config",
      new RegExp(`"${key}" must be`),
    );
  }
});

Deno.test("a folder without weights or without config is rejected clearly", async () => {
  await withFolder(
    { "config.json": JSON.stringify(config) },
    (dir) => loadRejects(dir, "invalid_checkpoint", /neither model\.safetensors nor/),
  );
  await withFolder(
    { "model.safetensors": weightBytes },
    (dir) => loadRejects(dir, "invalid_config", /no config\.json/),
  );
  await withFolder({
    "config.json": JSON.stringify(config),
    "model.safetensors": weightBytes.subarray(0, 1000),
  }, (dir) => loadRejects(dir, "invalid_checkpoint", /model\.safetensors/));
  await loadRejects({ config } as never, "invalid_argument", /both "config" and "weights"/);
  await loadRejects(42 as never, "invalid_argument", /folder path, a URL/);
});

Deno.test("loading options are validated", async () => {
  await assert.rejects(
    () => loadModel(VIT_CLS, { backend: "tpu" as never }),
    (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
  );
  await assert.rejects(
    () => loadModel(VIT_CLS, { backend: "reference", precision: "f16" as never }),
    (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
  );
  await assert.rejects(
    () => loadModel(VIT_CLS, { backend: "reference", labels: ["only one"] }),
    (error: unknown) =>
      error instanceof EdgeVitError && /1 labels for 10 classes/.test(error.message),
  );
});
