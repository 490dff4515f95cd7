/**
 * Every model family at int8 (issue 6): each parity fixture through
 * `loadModel(dir, { precision: "int8" })` against its own float32 logits, on the
 * reference backend (int8 weights, float activations) and on the wasm backend (its int8
 * GEMM: int8 weights, activations quantized per token to 7 bits). Also: a checkpoint
 * saved by the quantizer gives exactly the logits of quantizing at load, in a quarter of
 * the bytes, and int8 weights take a quarter of the backend memory.
 */

import assert from "node:assert/strict";
import type {
  AttentionOptions,
  Backend,
  LinearSource,
  Precision,
  Tensor,
} from "../../src/backends/backend.ts";
import { quantizePerChannel } from "../../src/backends/reference/reference_backend.ts";
import { describeCheckpoint, parseConfigJson } from "../../src/loaders/config.ts";
import { quantizeCheckpoint, type QuantizedCheckpoint } from "../../src/loaders/quantize_cli.ts";
import {
  parseSafetensors,
  type SafetensorsInput,
  serializeSafetensors,
  toFloat32,
} from "../../src/loaders/safetensors.ts";
import type { ModelSource } from "../../src/loaders/source.ts";
import { type BackendChoice, loadModel } from "../../src/model.ts";
import { findArchitecture } from "../../src/models/registry.ts";
import {
  randomVitWeights,
  seededRandom,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../../src/models/vit.ts";

/** The target for int8 vs float32 logits on the parity fixtures. */
const COSINE_TARGET = 0.999;

const ROOTS = [
  new URL("../../../shared/fixtures/parity/", import.meta.url),
  new URL("../fixtures/parity/", import.meta.url),
];

interface Case {
  name: string;
  dir: URL;
  spec: {
    call: "forward" | "forwardPacked";
    input?: string;
    images?: string[];
    groups?: number[][];
  };
}

function readCases(): Case[] {
  const cases: Case[] = [];
  for (const root of ROOTS) {
    for (const entry of Deno.readDirSync(root)) {
      if (!entry.isDirectory) continue;
      const dir = new URL(`${entry.name}/`, root);
      const info = describeCheckpoint(
        parseConfigJson(Deno.readTextFileSync(new URL("config.json", dir))),
        entry.name,
      );
      if (!findArchitecture(info.library, info.architecture)) continue;
      const spec = JSON.parse(Deno.readTextFileSync(new URL("case.json", dir)));
      cases.push({ name: entry.name, dir, spec });
    }
  }
  return cases.sort((a, b) => a.name.localeCompare(b.name));
}

const cases = readCases();
const backends: BackendChoice[] = ["reference"];
const hasWasm = await Deno.stat(
  new URL("../../src/backends/wasm/wasm_backend.ts", import.meta.url),
).then(() => true, () => false);
if (hasWasm) backends.push("wasm");

async function logitsOf(
  c: Case,
  source: ModelSource,
  backend: BackendChoice | Backend,
  precision: Precision,
): Promise<{ logits: Float32Array; precision: Precision }> {
  const model = await loadModel(source, { backend, precision });
  try {
    const inputs = parseSafetensors(await Deno.readFile(new URL("inputs.safetensors", c.dir)))
      .tensors;
    if (c.spec.call === "forward") {
      const input = inputs.get(c.spec.input!)!;
      return {
        logits: await model.forward(toFloat32(input), input.shape),
        precision: model.precision,
      };
    }
    const images = c.spec.images!.map((name) => {
      const tensor = inputs.get(name)!;
      return { data: toFloat32(tensor), height: tensor.shape[1], width: tensor.shape[2] };
    });
    return {
      logits: await model.forwardPacked(images, c.spec.groups),
      precision: model.precision,
    };
  } finally {
    model.close();
  }
}

function cosine(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

const quantized = new Map<string, Promise<QuantizedCheckpoint>>();
function quantizedOf(c: Case): Promise<QuantizedCheckpoint> {
  if (!quantized.has(c.name)) quantized.set(c.name, quantizeCheckpoint(c.dir.pathname));
  return quantized.get(c.name)!;
}

Deno.test("int8 runs every registered parity family, ViT to NaViT, HF and timm", () => {
  const names = cases.map((c) => c.name);
  for (
    const name of [
      "vitpytorch-vit-cls",
      "vitpytorch-simplevit",
      "vitpytorch-navit",
      "vitpytorch-ats",
      "vitpytorch-patchmerger",
      "hf-vit",
      "timm-vit",
    ]
  ) {
    assert.ok(names.includes(name), `${name} is not a registered parity case`);
  }
});

for (const backend of backends) {
  for (const c of cases) {
    Deno.test(
      `${c.name} at int8 keeps cosine ≥ ${COSINE_TARGET} with its float32 logits on the ${backend} backend`,
      async () => {
        const f32 = await logitsOf(c, c.dir, backend, "f32");
        const int8 = await logitsOf(c, c.dir, backend, "int8");
        assert.equal(int8.precision, "int8");
        const similarity = cosine(int8.logits, f32.logits);
        assert.ok(similarity >= COSINE_TARGET, `cosine ${similarity}`);
        assert.notDeepEqual(int8.logits, f32.logits, "int8 changed nothing: not quantized?");
      },
    );
    Deno.test(
      `${c.name}: its saved int8 checkpoint gives the logits of quantizing at load on the ${backend} backend`,
      async () => {
        const q = await quantizedOf(c);
        const saved = await logitsOf(
          c,
          { config: q.config, weights: q.weights, preprocessorConfig: q.preprocessorConfig },
          backend,
          "f32", // the checkpoint's marker wins: it has no float weights to run
        );
        const atLoad = await logitsOf(c, c.dir, backend, "int8");
        assert.equal(saved.precision, "int8");
        assert.deepEqual(saved.logits, atLoad.logits);
      },
    );
  }
}

for (const c of cases.filter((c) => c.name !== "vitpytorch-navit")) {
  Deno.test(`${c.name}: the int8 checkpoint is under 0.35× the float one (linears 4× smaller)`, async () => {
    const q = await quantizedOf(c);
    const ratio = q.weights.byteLength / q.sourceBytes;
    // Tiny fixtures (dim 64) spend a larger share on norms, biases and positions than
    // real ViTs (DeiT-Tiny: 0.26×, see models/README.md).
    assert.ok(ratio <= 0.35, `${c.name}: ${ratio}`);
  });
}

// ─── NaViT ─────────────────────────────────────────────────────────────────────────

const navit = cases.find((c) => c.name === "vitpytorch-navit");

/** A reference backend whose float weights are nudged by uniform noise of ±`fraction` of an int8 step. */
function nudgedReference(fraction: number): Promise<Backend> {
  return import("../../src/backends/reference/reference_backend.ts").then(
    ({ ReferenceBackend }) => {
      const random = seededRandom(11);
      return new class extends ReferenceBackend {
        override prepareLinear(source: LinearSource, options?: { precision?: Precision }) {
          const { scales } = quantizePerChannel(source);
          const cols = source.inFeatures;
          const weight = source.weight.map((value, i) =>
            value + (random() * 2 - 1) * fraction * scales[Math.floor(i / cols)]
          );
          return super.prepareLinear({ ...source, weight }, options);
        }
      }();
    },
  );
}

/** The NaViT fixture with vit-pytorch's initial q/k norm gains (1) instead of ≈13. */
async function navitWithUnitGains(c: Case): Promise<ModelSource> {
  const file = parseSafetensors(await Deno.readFile(new URL("model.safetensors", c.dir)));
  const tensors: Record<string, SafetensorsInput> = {};
  for (const [name, entry] of file.tensors) {
    const data = /[qk]_norm\.gamma$/.test(name) ? toFloat32(entry).fill(1) : toFloat32(entry);
    tensors[name] = { dtype: "F32", shape: entry.shape, data };
  }
  return {
    config: await Deno.readTextFile(new URL("config.json", c.dir)),
    weights: serializeSafetensors(tensors),
  };
}

if (navit) {
  Deno.test("the NaViT fixture's attention is an argmax: float32 weights nudged by an eighth of an int8 step already miss the cosine target", async () => {
    const f32 = await logitsOf(navit, navit.dir, "reference", "f32");
    const nudged = await logitsOf(navit, navit.dir, await nudgedReference(1 / 8), "f32");
    const similarity = cosine(nudged.logits, f32.logits);
    assert.ok(similarity < COSINE_TARGET, `cosine ${similarity}`);
  });

  Deno.test("int8 keeps the NaViT fixture's linears upstream of its sharp attention float32, and says so; its checkpoint stores them float32", async () => {
    const model = await loadModel(navit.dir, { backend: "reference", precision: "int8" });
    const kept = model.architecture.keptFloat;
    model.close();
    // 16 linears: patch, 5 per block (qk, v, out, fc1, fc2), pool q, k, v, out, head. The
    // last sharp attention is the pool's, so only its v and out and the head go int8.
    assert.equal(kept?.of, 16);
    assert.equal(kept?.layers, 13);
    assert.match(kept!.reason, /±\d+/);
    const q = await quantizedOf(navit);
    assert.deepEqual(q.quantized.sort(), ["attn_pool.to_out.0.weight", "mlp_head.1.weight"]);
  });

  Deno.test("the trained navit-fmnist runs every linear at int8: its gains bound the logits far below the sharp limit", async () => {
    const model = await loadModel(new URL("../../models/navit-fmnist/", import.meta.url), {
      backend: "reference",
      precision: "int8",
    });
    assert.equal(model.architecture.keptFloat, null);
    model.close();
  });

  for (const backend of backends) {
    // With unit gains nothing is kept float. The reference keeps activations in float32;
    // the wasm int8 GEMM quantizes them per token to 7 bits (the relaxed dot's unsigned
    // operand), which even unit-gain attention (q·k up to 16) amplifies on these random
    // weights: 0.9948 measured; 8-bit activations would give 0.9991.
    const target = backend === "reference" ? COSINE_TARGET : 0.99;
    Deno.test(`NaViT with unit q/k norm gains runs all-int8 and keeps cosine ≥ ${target} with float32 on the ${backend} backend`, async () => {
      const source = await navitWithUnitGains(navit);
      const f32 = await logitsOf(navit, source, backend, "f32");
      const int8 = await logitsOf(navit, source, backend, "int8");
      const similarity = cosine(int8.logits, f32.logits);
      assert.ok(similarity >= target, `cosine ${similarity}`);
      const model = await loadModel(source, { backend, precision: "int8" });
      assert.equal(model.architecture.keptFloat, null);
      model.close();
      const q = await quantizeCheckpoint(source);
      assert.equal(q.quantized.length, 15, "every linear file tensor is int8");
    });
  }
}

// ─── Memory ────────────────────────────────────────────────────────────────────────

if (hasWasm) {
  Deno.test("int8 weights hold under 0.3× the wasm bytes of float32 ones, and packing them never grows memory to float size (DeiT-Tiny blocks)", async () => {
    const { WasmBackend } = await import("../../src/backends/wasm/wasm_backend.ts");
    const config: VitConfig = standardVitConfig({
      imageSize: 224,
      patchSize: 16,
      dim: 192,
      depth: 2,
      heads: 3,
      mlpDim: 768,
      numClasses: 1000,
    });
    const weights = randomVitWeights(config, 3);
    const resident: Record<Precision, { inUse: number; memory: number }> = {
      f32: { inUse: 0, memory: 0 },
      int8: { inUse: 0, memory: 0 },
    };
    for (const precision of ["f32", "int8"] as const) {
      const backend = await WasmBackend.create();
      const before = backend.kernels.bytesInUse;
      const memoryBefore = backend.kernels.memoryBytes;
      const model = VitModel.create(backend, config, weights, { precision });
      resident[precision] = {
        inUse: backend.kernels.bytesInUse - before,
        memory: backend.kernels.memoryBytes - memoryBefore,
      };
      model.dispose();
      assert.equal(backend.kernels.bytesInUse, before, "dispose frees every weight");
      backend.dispose();
    }
    const ratio = resident.int8.inUse / resident.f32.inUse;
    assert.ok(ratio <= 0.3, `int8 holds ${ratio.toFixed(3)}× the float32 bytes`);
    // Wasm memory never shrinks, so a float copy on the way would stay resident; growth
    // itself rounds up (geometric, plus the transient int8 copies packing frees).
    assert.ok(
      resident.int8.memory <= 0.5 * resident.f32.memory,
      `memory grew ${resident.int8.memory} bytes for int8, ${resident.f32.memory} for float32`,
    );
  });
}

Deno.test("int8 ViTs with head dim 64 run the int8 attention and keep cosine ≥ 0.999", async () => {
  const { WasmBackend } = await import("../../src/backends/wasm/wasm_backend.ts");
  // The parity fixtures' heads are 16 wide (float32 attention); DeiT and ViT-B heads are 64.
  const config: VitConfig = standardVitConfig({
    imageSize: 64,
    patchSize: 8,
    dim: 128,
    depth: 3,
    heads: 2,
    mlpDim: 256,
    numClasses: 10,
  });
  const weights = randomVitWeights(config, 11);
  const random = seededRandom(12);
  const images = 3;
  const pixels = Float32Array.from({ length: images * 3 * 64 * 64 }, () => random() * 2 - 1);
  const shape = [images, 3, 64, 64] as const;
  const backend = await WasmBackend.create();
  const run = async (precision: Precision, attention: Precision) => {
    const attend = backend.attention.bind(backend);
    const seen: (Precision | undefined)[] = [];
    // A proxy that records each attention's precision (and can force float32).
    const spy = new Proxy(backend, {
      get(target, prop) {
        if (prop === "attention") {
          return (q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions) => {
            seen.push(options.precision);
            return attend(q, k, v, {
              ...options,
              precision: attention === "f32" ? "f32" : options.precision,
            });
          };
        }
        const value = Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const model = VitModel.create(spy, config, weights, { precision });
    try {
      return { logits: (await model.forward(pixels, shape)).logits, seen };
    } finally {
      model.dispose();
    }
  };
  const float = await run("f32", "f32");
  const int8 = await run("int8", "int8");
  const int8FloatAttention = await run("int8", "f32");
  assert.deepEqual(int8.seen, ["int8", "int8", "int8"], "every int8 block asks for int8 attention");
  assert.deepEqual(float.seen, ["f32", "f32", "f32"]);
  assert.notDeepEqual(int8.logits, int8FloatAttention.logits, "the int8 attention kernel ran");
  for (
    const [name, logits] of [["int8", int8.logits], [
      "int8, f32 attention",
      int8FloatAttention.logits,
    ]] as const
  ) {
    for (let image = 0; image < images; image++) {
      const rows = (x: Float32Array) => x.subarray(image * 10, image * 10 + 10);
      const similarity = cosine(rows(logits), rows(float.logits));
      assert.ok(similarity >= COSINE_TARGET, `${name}, image ${image}: cosine ${similarity}`);
    }
  }
  backend.dispose();
});
