/**
 * The int8 checkpoint format (src/loaders/quantized.ts) and its writer
 * (src/loaders/quantize_cli.ts): what the quantizer stores, how the weight store hands
 * int8 weights to loaders, the load-time rewrites on int8 rows, and every malformed case.
 */

import assert from "node:assert/strict";
import type { LinearSource, QuantizedLinearSource } from "../../src/backends/backend.ts";
import { quantizePerChannel } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import {
  parseQuantizeArgs,
  quantizeCheckpoint,
  writeQuantizedCheckpoint,
} from "../../src/loaders/quantize_cli.ts";
import {
  INT8_QUANTIZATION,
  linearFromMatrix,
  matrixRows,
  patchLinearFromConv,
  readQuantization,
  stackMatrices,
} from "../../src/loaders/quantized.ts";
import {
  parseSafetensors,
  type SafetensorsInput,
  serializeSafetensors,
  toFloat32,
} from "../../src/loaders/safetensors.ts";
import { type QuantizedHostTensor, WeightStore } from "../../src/loaders/weights.ts";
import { loadModel } from "../../src/model.ts";
import { convToPatchLinear, seededRandom } from "../../src/models/vit.ts";

const PARITY = new URL("../../../shared/fixtures/parity/", import.meta.url);
const fixture = (name: string) => new URL(`${name}/`, PARITY).pathname;

function isError(code: string, pattern?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof EdgeVitError, `not an EdgeVitError: ${error}`);
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    return true;
  };
}

function randomFloats(length: number, seed: number): Float32Array {
  const random = seededRandom(seed);
  return Float32Array.from({ length }, () => random() * 2 - 1);
}

/** A store over serialized tensors, as a checkpoint file would give it. */
function storeOf(tensors: Record<string, SafetensorsInput>): WeightStore {
  const file = parseSafetensors(serializeSafetensors(tensors), "test.safetensors");
  return WeightStore.fromSafetensors(file.tensors.values(), "test");
}

function int8Tensors(name: string, rows: number, cols: number, seed = 1) {
  const q = quantizePerChannel({
    weight: randomFloats(rows * cols, seed),
    bias: null,
    outFeatures: rows,
    inFeatures: cols,
  });
  return {
    [name]: { dtype: "I8", shape: [rows, cols], data: q.weight },
    [`${name}_scale`]: { dtype: "F32", shape: [rows], data: q.scales },
  } satisfies Record<string, SafetensorsInput>;
}

Deno.test("the quantization marker is read, and unknown methods or activations are refused", () => {
  assert.equal(readQuantization({}), null);
  assert.deepEqual(readQuantization({ quantization: { ...INT8_QUANTIZATION } }), INT8_QUANTIZATION);
  assert.throws(
    () => readQuantization({ quantization: { method: "w4-groupwise" } }, "c.json"),
    isError("unsupported", /c\.json: quantization method "w4-groupwise"/),
  );
  assert.throws(
    () => readQuantization({ quantization: { method: "w8-per-channel", activations: "static" } }),
    isError("unsupported", /activations "static"/),
  );
  assert.throws(() => readQuantization({ quantization: "int8" }), isError("invalid_config"));
});

Deno.test("an I8 weight with its _scale comes out of the store as an int8 linear layer", () => {
  const store = storeOf({
    ...int8Tensors("fc.weight", 3, 5),
    "fc.bias": { dtype: "F32", shape: [3], data: new Float32Array([1, 2, 3]) },
  });
  assert.deepEqual(store.names(), ["fc.weight", "fc.bias"], "the scale is part of its weight");
  assert.ok(store.isQuantized("fc.weight"));
  assert.deepEqual(store.shapeOf("fc.weight"), [3, 5]);
  const linear = store.linear("fc", 3, 5) as QuantizedLinearSource;
  assert.ok(linear.weight instanceof Int8Array);
  assert.equal(linear.scales.length, 3);
  assert.deepEqual(Array.from(linear.bias!), [1, 2, 3]);
  assert.deepEqual(store.linearWeightNames(), ["fc.weight"]);
  store.assertAllUsed();
});

Deno.test("int8 weights read as float32, or with bad scales, fail with the tensor's name", () => {
  const store = storeOf(int8Tensors("w", 2, 4));
  assert.throws(() => store.get("w"), isError("invalid_checkpoint", /"w" is int8/));
  assert.throws(
    () => store.linearWeight("w", [4, 2]),
    isError("invalid_checkpoint", /"w" has shape \[2,4\], the config implies \[4,2\]/),
  );
  const badScales: [string, SafetensorsInput, RegExp][] = [
    ["shape", { dtype: "F32", shape: [3], data: new Float32Array(3).fill(1) }, /expected \[2\]/],
    ["zero", { dtype: "F32", shape: [2], data: new Float32Array([1, 0]) }, /positive/],
    ["NaN", { dtype: "F32", shape: [2], data: new Float32Array([NaN, 1]) }, /positive/],
  ];
  for (const [what, scale, pattern] of badScales) {
    const bad = storeOf({ w: int8Tensors("w", 2, 4).w, w_scale: scale });
    assert.throws(
      () => bad.linearWeight("w", [2, 4]),
      isError("invalid_checkpoint", pattern),
      what,
    );
  }
  const orphan = storeOf({ w: int8Tensors("w", 2, 4).w });
  assert.ok(!orphan.isQuantized("w"), "an I8 tensor without scales is not a quantized weight");
  assert.throws(() => orphan.linearWeight("w", [2, 4]), isError("unsupported", /I8/));
});

Deno.test("int8 row splits, stacks and conv rewrites equal quantizing the float result", () => {
  const [rows, cols] = [6, 12];
  const floats = randomFloats(rows * cols, 7);
  const whole = quantizePerChannel({
    weight: floats,
    bias: null,
    outFeatures: rows,
    inFeatures: cols,
  });
  const int8: QuantizedHostTensor = {
    shape: [rows, cols],
    data: whole.weight,
    scales: whole.scales,
  };
  // Rows 4…5 then rows 0…1 (NaViT's q with the k half of to_kv), stacked.
  const stacked = stackMatrices([matrixRows(int8, 4, 6), matrixRows(int8, 0, 2)]);
  const floatStacked = new Float32Array(4 * cols);
  floatStacked.set(floats.subarray(4 * cols, 6 * cols));
  floatStacked.set(floats.subarray(0, 2 * cols), 2 * cols);
  const expected = quantizePerChannel({
    weight: floatStacked,
    bias: null,
    outFeatures: 4,
    inFeatures: cols,
  });
  const got = linearFromMatrix(stacked, null) as QuantizedLinearSource;
  assert.deepEqual(got.weight, expected.weight);
  assert.deepEqual(got.scales, expected.scales);
  assert.throws(
    () => stackMatrices([int8, { shape: [rows, cols], data: floats }]),
    isError("invalid_checkpoint", /mixes int8 and float32/),
  );

  // A conv [dim, c, ph, pw] quantized per output channel, then permuted to (p1 p2 c).
  const [dim, channels, p] = [3, 3, 2];
  const conv = randomFloats(dim * channels * p * p, 9);
  const convQ = quantizePerChannel({
    weight: conv,
    bias: null,
    outFeatures: dim,
    inFeatures: channels * p * p,
  });
  const fromInt8 = patchLinearFromConv(
    { shape: [dim, channels, p, p], data: convQ.weight, scales: convQ.scales },
    null,
    dim,
    channels,
    p,
    p,
  ) as QuantizedLinearSource;
  const fromFloat = quantizePerChannel(
    patchLinearFromConv(
      { shape: [dim, channels, p, p], data: conv },
      null,
      dim,
      channels,
      p,
      p,
    ) as LinearSource,
  );
  assert.deepEqual(fromInt8.weight, fromFloat.weight);
  assert.deepEqual(fromInt8.scales, fromFloat.scales);
  assert.deepEqual(
    (patchLinearFromConv(
      { shape: [dim, channels, p, p], data: conv },
      null,
      dim,
      channels,
      p,
      p,
    ) as LinearSource).weight,
    convToPatchLinear(conv, dim, channels, p, p),
  );
});

Deno.test("the quantizer stores exactly the model's linear weights as I8, the rest as F32", async () => {
  // name → number of linear weights its loader takes
  const expected: Record<string, number> = {
    "vitpytorch-vit-cls": 10, // patch, 2 × (qkv, out, fc1, fc2), head
    "vitpytorch-simplevit": 10,
    // patch, 2 × (q, kv, out, ff1, ff2), pool q, kv, out, head: 15, but q/k gains ≈13 make
    // its attention sharp, so all but the pool's out and the head stay float32
    // (tests/models/int8_test.ts).
    "vitpytorch-navit": 2,
    "hf-vit": 14, // conv patch, 2 × (q, k, v, out, fc1, fc2), classifier
    "timm-vit": 10,
  };
  for (const [name, count] of Object.entries(expected)) {
    const result = await quantizeCheckpoint(fixture(name));
    assert.equal(result.quantized.length, count, name);
    assert.deepEqual(result.config.quantization, INT8_QUANTIZATION);
    const source = parseSafetensors(
      await Deno.readFile(`${fixture(name)}/model.safetensors`),
    ).tensors;
    const written = parseSafetensors(result.weights).tensors;
    assert.equal(written.size, source.size + count, `${name}: one scale per int8 weight`);
    for (const [tensor, entry] of source) {
      const out = written.get(tensor);
      assert.ok(out, `${name}: ${tensor} was dropped`);
      assert.deepEqual(out.shape, entry.shape);
      if (result.quantized.includes(tensor)) {
        assert.equal(out.dtype, "I8", tensor);
        assert.equal(out.bytes.byteLength * 4, entry.bytes.byteLength, tensor);
        const scale = written.get(`${tensor}_scale`)!;
        assert.deepEqual(scale.shape, [entry.shape[0]]);
        // dequantized weights are within half a step of the float ones
        const floats = toFloat32(entry);
        const scales = toFloat32(scale);
        const ints = new Int8Array(out.bytes.buffer, out.bytes.byteOffset, out.bytes.byteLength);
        const cols = floats.length / entry.shape[0];
        for (let i = 0; i < floats.length; i++) {
          const step = scales[Math.floor(i / cols)];
          assert.ok(Math.abs(ints[i] * step - floats[i]) <= step / 2 + 1e-7, `${tensor}[${i}]`);
        }
      } else {
        assert.equal(out.dtype, "F32", tensor);
        assert.deepEqual(toFloat32(out), toFloat32(entry), tensor);
      }
    }
  }
});

Deno.test("a quantized checkpoint loads at int8 even when float32 is asked, and is not re-quantized", async () => {
  const result = await quantizeCheckpoint(fixture("vitpytorch-vit-mean"));
  const model = await loadModel(
    { config: result.config, weights: result.weights },
    { backend: "reference", precision: "f32" },
  );
  try {
    assert.equal(model.precision, "int8");
  } finally {
    model.close();
  }
  await assert.rejects(
    () => quantizeCheckpoint({ config: result.config, weights: result.weights }),
    isError("invalid_argument", /already quantized/),
  );
  // Without the marker, int8 tensors still make it an int8 model.
  const { quantization: _, ...unmarked } = result.config;
  const bare = await loadModel({ config: unmarked, weights: result.weights }, {
    backend: "reference",
  });
  assert.equal(bare.precision, "int8");
  bare.close();
});

Deno.test("a checkpoint the loader refuses is not quantized", async () => {
  const source = parseSafetensors(
    await Deno.readFile(`${fixture("vitpytorch-vit-cls")}/model.safetensors`),
  );
  const tensors: Record<string, SafetensorsInput> = {};
  for (const [name, entry] of source.tensors) {
    tensors[name] = { dtype: "F32", shape: entry.shape, data: toFloat32(entry) };
  }
  tensors["extra.weight"] = { dtype: "F32", shape: [2, 2], data: new Float32Array(4) };
  const config = JSON.parse(
    await Deno.readTextFile(`${fixture("vitpytorch-vit-cls")}/config.json`),
  );
  await assert.rejects(
    () => quantizeCheckpoint({ config, weights: serializeSafetensors(tensors) }),
    isError("invalid_checkpoint", /unexpected tensor.*"extra\.weight"/),
  );
});

Deno.test("writeQuantizedCheckpoint writes a folder that loadModel reads", async () => {
  const out = await Deno.makeTempDir({ prefix: "edgevit-int8-" });
  try {
    const result = await writeQuantizedCheckpoint(fixture("timm-vit"), `${out}/q`);
    const names = [...Deno.readDirSync(`${out}/q`)].map((entry) => entry.name).sort();
    assert.deepEqual(names, ["config.json", "model.safetensors"]);
    assert.equal((await Deno.stat(`${out}/q/model.safetensors`)).size, result.weights.byteLength);
    const model = await loadModel(`${out}/q`, { backend: "reference" });
    assert.equal(model.precision, "int8");
    assert.equal(model.numClasses, 10);
    model.close();
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("deno task quantize's flags are checked, and the command writes an int8 folder", async () => {
  assert.deepEqual(parseQuantizeArgs(["--model", "a", "--out=b", "--json"]), {
    model: "a",
    out: "b",
    json: true,
    help: false,
  });
  assert.equal(parseQuantizeArgs(["-h"]).help, true);
  assert.throws(() => parseQuantizeArgs(["--model", "a"]), isError("invalid_argument", /--out/));
  assert.throws(() => parseQuantizeArgs(["--model"]), isError("invalid_argument", /needs a value/));
  assert.throws(() => parseQuantizeArgs(["--model=a", "--out=a/"]), isError("invalid_argument"));
  assert.throws(() => parseQuantizeArgs(["--fast"]), isError("invalid_argument", /--fast/));

  const out = await Deno.makeTempDir({ prefix: "edgevit-int8-cli-" });
  try {
    const cli = new URL("../../src/loaders/quantize_cli.ts", import.meta.url).pathname;
    const config = new URL("../../deno.json", import.meta.url).pathname;
    const run = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "--config", config, "--allow-read", "--allow-write", cli, ...args],
        env: { DENO_NO_PACKAGE_JSON: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
    const ok = await run("--model", fixture("hf-vit"), "--out", `${out}/q`, "--json");
    assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
    const figures = JSON.parse(new TextDecoder().decode(ok.stdout));
    assert.equal(figures.quantizedTensors, 14);
    assert.ok(figures.ratio < 0.35, `ratio ${figures.ratio}`);
    const again = await run("--model", `${out}/q`, "--out", `${out}/qq`);
    assert.equal(again.code, 1);
    assert.match(new TextDecoder().decode(again.stderr), /already quantized/);
    const usage = await run("--nope");
    assert.equal(usage.code, 2);
    assert.match(new TextDecoder().decode(usage.stderr), /Usage: deno task quantize/);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("bfloat16 and sharded checkpoints quantize to one file that loads like quantizing at load", async () => {
  const dir = fixture("vitpytorch-vit-cls");
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
  // bfloat16 (exact on the way back to float32) in two shards with an index
  const shards: Record<string, SafetensorsInput>[] = [{}, {}];
  const weightMap: Record<string, string> = {};
  let i = 0;
  for (const [name, entry] of file.tensors) {
    const bits = new Uint32Array(toFloat32(entry).buffer);
    const data = new Uint16Array(bits.length).map((_, j) => bits[j] >>> 16);
    shards[i % 2][name] = { dtype: "BF16", shape: entry.shape, data };
    weightMap[name] = `model-0000${(i % 2) + 1}-of-00002.safetensors`;
    i++;
  }
  const bundle = {
    config,
    weights: {
      "model-00001-of-00002.safetensors": serializeSafetensors(shards[0]),
      "model-00002-of-00002.safetensors": serializeSafetensors(shards[1]),
    },
    index: { weight_map: weightMap },
  };
  const q = await quantizeCheckpoint(bundle);
  const written = parseSafetensors(q.weights).tensors;
  for (const [name, entry] of written) {
    assert.equal(entry.dtype, q.quantized.includes(name) ? "I8" : "F32", name);
  }
  const input = new Float32Array(2 * 3 * 32 * 32).map((_, j) => Math.sin(j));
  const logits = async (source: typeof bundle | { config: unknown; weights: Uint8Array }) => {
    const model = await loadModel(source as never, { backend: "reference", precision: "int8" });
    try {
      return await model.forward(input, [2, 3, 32, 32]);
    } finally {
      model.close();
    }
  };
  assert.deepEqual(await logits({ config: q.config, weights: q.weights }), await logits(bundle));
});
