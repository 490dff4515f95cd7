/**
 * int8 vs float32, end to end (issue 6): forward speed and resident memory of the same
 * model loaded through `loadModel` at each precision, on the wasm backend.
 *
 * - Speed: DeiT-Tiny-shaped (and optionally ViT-B/16-shaped) random timm checkpoints,
 *   batch 1 and 8, float32 and int8 models loaded side by side and timed interleaved
 *   (run f32, run int8, repeat) so machine load hits both alike; medians of wall and
 *   process CPU time per image.
 * - Memory: one fresh subprocess per way of loading (float32; int8 quantized at load;
 *   the int8 checkpoint `deno task quantize` writes), each loading from a folder on disk:
 *   the backend's weight bytes (wasm blocks in use after load), the wasm memory's growth,
 *   the RSS growth over a child that loads nothing once the load's garbage is collected
 *   (noisy: V8's heap moves by megabytes), and whether the checkpoint's bytes (the float
 *   weights, for float checkpoints) were collected after loading.
 *
 * ```sh
 * deno run --allow-read --allow-write --allow-env --allow-run bench/int8.ts \
 *   [--models deit-tiny,vit-b16] [--batches 1,8] [--runs 7] [--skip-memory] [--skip-speed]
 * deno run --allow-read --allow-env bench/int8.ts --fixtures   # int8 vs f32 cosine per fixture
 * deno run --allow-read --allow-env bench/int8.ts --ops [--batch 8]   # CPU time per op
 * deno run --allow-read --allow-write --allow-env bench/int8.ts --accuracy \
 *   [--model-dirs models/vit-fmnist,...] [--limit N]   # Fashion-MNIST, f32 vs int8
 * deno run --allow-read --allow-env bench/int8.ts --activation-stats [--limit 200]
 * ```
 *
 * @module
 */

import process from "node:process";
import type {
  Backend,
  LinearSource,
  LinearWeights,
  Precision,
  Tensor,
} from "../src/backends/backend.ts";
import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { quantizeCheckpoint, writeQuantizedCheckpoint } from "../src/loaders/quantize_cli.ts";
import { loadModel, resolveBackend } from "../src/model.ts";
import { seededRandom } from "../src/models/vit.ts";
import type { SHAPES } from "./forward_bench.ts";

// forward_bench.ts registers its benches and loads a model when imported: only the
// parent process imports it (lazily), so the memory children measure nothing of it.
const forwardBench = () => import("./forward_bench.ts");

type ShapeName = keyof typeof SHAPES;
const IMAGE = 224;

function option(flag: string, fallback: string): string {
  const i = Deno.args.indexOf(flag);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

function median(values: number[]): number {
  return [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
}

function randomPixels(batch: number): Float32Array {
  const random = seededRandom(batch);
  return Float32Array.from({ length: batch * 3 * IMAGE * IMAGE }, () => random() * 4 - 2);
}

// ─── Speed ──────────────────────────────────────────────────────────────────────────

interface SpeedRow {
  shape: ShapeName;
  batch: number;
  f32: { wall: number; cpu: number };
  int8: { wall: number; cpu: number };
}

async function speed(shapes: ShapeName[], batches: number[], runs: number): Promise<SpeedRow[]> {
  const rows: SpeedRow[] = [];
  for (const shape of shapes) {
    const checkpoint = (await forwardBench()).randomTimmCheckpoint(shape);
    const models: Record<"f32" | "int8", Awaited<ReturnType<typeof loadModel>>> = {
      f32: await loadModel(checkpoint, { backend: "wasm", precision: "f32" }),
      int8: await loadModel(checkpoint, { backend: "wasm", precision: "int8" }),
    };
    for (const batch of batches) {
      const pixels = randomPixels(batch);
      const shape4 = [batch, 3, IMAGE, IMAGE] as const;
      const times = { f32: { wall: [] as number[], cpu: [] as number[] } };
      const all: Record<"f32" | "int8", { wall: number[]; cpu: number[] }> = {
        ...times,
        int8: { wall: [], cpu: [] },
      };
      for (const precision of ["f32", "int8"] as const) {
        await models[precision].forward(pixels, shape4); // warm-up: pools, JIT
      }
      for (let r = 0; r < runs; r++) {
        for (const precision of ["f32", "int8"] as const) {
          const cpu0 = process.cpuUsage();
          const t0 = performance.now();
          await models[precision].forward(pixels, shape4);
          all[precision].wall.push((performance.now() - t0) / batch);
          const cpu = process.cpuUsage(cpu0);
          all[precision].cpu.push((cpu.user + cpu.system) / 1000 / batch);
        }
      }
      const row: SpeedRow = {
        shape,
        batch,
        f32: { wall: median(all.f32.wall), cpu: median(all.f32.cpu) },
        int8: { wall: median(all.int8.wall), cpu: median(all.int8.cpu) },
      };
      rows.push(row);
      console.error(
        `${shape} b${batch}: f32 ${row.f32.cpu.toFixed(1)} ms CPU/image, int8 ${
          row.int8.cpu.toFixed(1)
        } → ${(row.f32.cpu / row.int8.cpu).toFixed(2)}× (wall ${
          (row.f32.wall / row.int8.wall).toFixed(2)
        }×)`,
      );
    }
    models.f32.close();
    models.int8.close();
  }
  return rows;
}

// ─── Memory ─────────────────────────────────────────────────────────────────────────

type LoadWay = "f32" | "int8-at-load" | "int8-checkpoint";

/** What one child process measured, in bytes. */
interface ChildMeasure {
  way: LoadWay;
  fileBytes: number;
  /** wasm blocks in use after the load (the packed weights, norms, positions). */
  weightBytes: number;
  wasmGrowth: number;
  /**
   * What the model itself holds: its wasm blocks plus the growth of the JS heap and of
   * external (ArrayBuffer) memory across the load.
   */
  modelBytes: number;
  /** RSS growth across the first load, after a full GC. */
  rssOfLoad: number;
  /** RSS growth across loading a second copy beside the first, after a full GC. */
  rssOfSecondCopy: number;
  /** Whether the checkpoint's bytes were garbage-collected once the models were loaded. */
  checkpointFreed: boolean;
}

/** Full GCs with pauses between them: V8 frees dead ArrayBuffers' memory on a background task. */
async function settle(gc: () => void): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Runs in a fresh process: loads `dir` one way and reports what stays resident. A tiny
 * model is loaded and closed first, so the once-per-process costs of loading anything
 * fall outside the measurement; the checkpoint's bytes are read before the first sample
 * and kept until the last, so no transient file buffer is counted. Then a second copy is
 * loaded beside the first: its RSS growth is a loaded model's marginal resident size in
 * a warm process (the loader's hot loops were compiled during the first copy).
 */
async function memoryChild(way: LoadWay, dir: string): Promise<ChildMeasure> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run the memory child with --v8-flags=--expose-gc");
  const backend = await WasmBackend.create();
  await warmUpLoad(way, backend);
  let weights: Uint8Array | null = await Deno.readFile(`${dir}/model.safetensors`);
  const config = await Deno.readTextFile(`${dir}/config.json`);
  const fileBytes = weights.byteLength;
  const precision = way === "int8-at-load" ? "int8" : "f32";
  await settle(gc);
  const usage0 = Deno.memoryUsage();
  const inUse0 = backend.kernels.bytesInUse;
  const memory0 = backend.kernels.memoryBytes;
  const first = await loadModel({ config, weights }, { backend, precision });
  if (first.precision !== (way === "f32" ? "f32" : "int8")) {
    throw new Error(`${way} loaded at ${first.precision}`);
  }
  await settle(gc);
  const usage1 = Deno.memoryUsage();
  const weightBytes = backend.kernels.bytesInUse - inUse0;
  const wasmGrowth = backend.kernels.memoryBytes - memory0;
  const second = await loadModel({ config, weights }, { backend, precision });
  await settle(gc);
  const usage2 = Deno.memoryUsage();
  const bytes = new WeakRef(weights);
  weights = null;
  await settle(gc);
  const row: ChildMeasure = {
    way,
    fileBytes,
    weightBytes,
    wasmGrowth,
    modelBytes: weightBytes + usage1.heapUsed - usage0.heapUsed + usage1.external -
      usage0.external,
    rssOfLoad: usage1.rss - usage0.rss,
    rssOfSecondCopy: usage2.rss - usage1.rss,
    checkpointFreed: bytes.deref() === undefined,
  };
  first.close();
  second.close();
  backend.dispose();
  return row;
}

/** The tiny timm fixture (dim 64, depth 2, 0.3 MB) that pays a process's first-load costs. */
const WARM_UP_MODEL = new URL("../../shared/fixtures/parity/timm-vit/", import.meta.url);

/** Loads and closes the tiny model `way`'s way: float32, int8 at load, or an int8 checkpoint. */
async function warmUpLoad(way: LoadWay, backend: WasmBackend): Promise<void> {
  const config = await Deno.readTextFile(new URL("config.json", WARM_UP_MODEL));
  const weights = await Deno.readFile(new URL("model.safetensors", WARM_UP_MODEL));
  const source = way === "int8-checkpoint"
    ? await quantizeCheckpoint({ config, weights }).then((q) => ({
      config: q.config,
      weights: q.weights,
    }))
    : { config, weights };
  const precision = way === "f32" ? "f32" : "int8";
  (await loadModel(source, { backend, precision })).close();
}

async function memory(shape: ShapeName): Promise<ChildMeasure[]> {
  const root = await Deno.makeTempDir({ prefix: "edgevit-int8-bench-" });
  try {
    const float = `${root}/f32`;
    const int8 = `${root}/int8`;
    const checkpoint = (await forwardBench()).randomTimmCheckpoint(shape);
    await Deno.mkdir(float);
    await Deno.writeTextFile(`${float}/config.json`, JSON.stringify(checkpoint.config));
    await Deno.writeFile(`${float}/model.safetensors`, checkpoint.weights);
    await writeQuantizedCheckpoint(float, int8);
    const measures: ChildMeasure[] = [];
    const ways: [LoadWay, string][] = [
      ["f32", float],
      ["int8-at-load", float],
      ["int8-checkpoint", int8],
    ];
    for (const [way, dir] of ways) {
      const output = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--v8-flags=--expose-gc",
          "--allow-read",
          "--allow-env",
          new URL(import.meta.url).pathname,
          "--memory-child",
          way,
          dir,
        ],
        // A fixed mmap threshold makes glibc hand large freed buffers back to the OS, so
        // RSS shows what is live rather than what the allocator kept.
        env: { MALLOC_MMAP_THRESHOLD_: "16384", MALLOC_TRIM_THRESHOLD_: "131072" },
        stdout: "piped",
        stderr: "inherit",
      }).output();
      if (output.code !== 0) throw new Error(`memory child ${way} failed`);
      measures.push(JSON.parse(new TextDecoder().decode(output.stdout)));
    }
    return measures;
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

// ─── Where the time goes ────────────────────────────────────────────────────────────

/** A backend whose ops add their process CPU time to `times` (linears by shape). */
function timedBackend(backend: Backend, times: Map<string, number>): Backend {
  return new Proxy(backend, {
    get(target, prop) {
      const value = Reflect.get(target, prop);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const cpu0 = process.cpuUsage();
        const result = value.apply(target, args);
        const cpu = process.cpuUsage(cpu0);
        let key = String(prop);
        if (prop === "linear") {
          const [x, w] = args as [Tensor, LinearWeights];
          key = `linear ${x.shape[0]}×${w.inFeatures}×${w.outFeatures}`;
        }
        times.set(key, (times.get(key) ?? 0) + (cpu.user + cpu.system) / 1000);
        return result;
      };
    },
  });
}

/** CPU ms per image of each op of a DeiT-Tiny forward, float32 and int8, and GELU's share. */
async function ops(batch: number, runs: number): Promise<void> {
  const checkpoint = (await forwardBench()).randomTimmCheckpoint("deit-tiny");
  const pixels = randomPixels(batch);
  const perOp: Record<"f32" | "int8", Map<string, number>> = { f32: new Map(), int8: new Map() };
  for (const precision of ["f32", "int8"] as const) {
    const backend = await WasmBackend.create();
    const times = perOp[precision];
    const model = await loadModel(checkpoint, { backend: timedBackend(backend, times), precision });
    await model.forward(pixels, [batch, 3, IMAGE, IMAGE]);
    times.clear();
    for (let r = 0; r < runs; r++) await model.forward(pixels, [batch, 3, IMAGE, IMAGE]);
    model.close();
    backend.dispose();
  }
  const keys = [...new Set([...perOp.f32.keys(), ...perOp.int8.keys()])]
    .sort((a, b) => (perOp.f32.get(b) ?? 0) - (perOp.f32.get(a) ?? 0));
  const per = (ms: number | undefined) => ((ms ?? 0) / runs / batch).toFixed(2);
  console.log(`\nDeiT-Tiny, batch ${batch}: CPU ms per image of each op (${runs} runs)\n`);
  console.log("| op | f32 | int8 |");
  console.log("| --- | --- | --- |");
  for (const key of keys) {
    console.log(`| ${key} | ${per(perOp.f32.get(key))} | ${per(perOp.int8.get(key))} |`);
  }
  const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
  console.log(`| total | ${per(total(perOp.f32))} | ${per(total(perOp.int8))} |`);

  // fc1's shape alone, with and without its fused GELU, and GELU as its own op.
  const backend = await WasmBackend.create();
  const random = seededRandom(5);
  const [m, k, n] = [197 * batch, 192, 768];
  const x = backend.upload(Float32Array.from({ length: m * k }, () => random() * 2 - 1), [m, k]);
  const source = {
    weight: Float32Array.from({ length: n * k }, () => (random() * 2 - 1) / Math.sqrt(k)),
    bias: new Float32Array(n),
    outFeatures: n,
    inFeatures: k,
  };
  const cpuMs = (fn: () => void) => {
    fn();
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < 10; i++) fn();
    const cpu = process.cpuUsage(cpu0);
    return (cpu.user + cpu.system) / 1000 / 10;
  };
  console.log(`\n${m}×${k}×${n} linear, CPU ms per call\n`);
  console.log("| precision | no activation | fused GELU |");
  console.log("| --- | --- | --- |");
  for (const precision of ["f32", "int8"] as const) {
    const w = backend.prepareLinear(source, { precision });
    const plain = cpuMs(() => backend.release(backend.linear(x, w)));
    const gelu = cpuMs(() => backend.release(backend.linear(x, w, "gelu")));
    console.log(`| ${precision} | ${plain.toFixed(2)} | ${gelu.toFixed(2)} |`);
    backend.releaseLinear(w);
  }
  const y = backend.upload(Float32Array.from({ length: m * n }, () => random() * 4 - 2), [m, n]);
  console.log(
    `\nstandalone GELU over ${m}×${n}: ${
      cpuMs(() => backend.release(backend.gelu(y))).toFixed(2)
    } ms`,
  );
  backend.dispose();
}

// ─── Parity fixtures ────────────────────────────────────────────────────────────────

/** Cosine similarity of int8 and float32 logits on every registered parity fixture. */
async function fixtures(): Promise<void> {
  const { parseSafetensors, toFloat32 } = await import("../src/loaders/safetensors.ts");
  const roots = [
    new URL("../../shared/fixtures/parity/", import.meta.url),
    new URL("../tests/fixtures/parity/", import.meta.url),
  ];
  const dirs: URL[] = [];
  for (const root of roots) {
    for (const entry of Deno.readDirSync(root)) {
      if (entry.isDirectory) dirs.push(new URL(`${entry.name}/`, root));
    }
  }
  dirs.sort((a, b) => a.href.localeCompare(b.href));
  console.log("\n| fixture | reference (int8 weights) | wasm (int8 weights, 7-bit activations) |");
  console.log("| --- | --- | --- |");
  for (const dir of dirs) {
    const spec = JSON.parse(await Deno.readTextFile(new URL("case.json", dir)));
    const inputs =
      parseSafetensors(await Deno.readFile(new URL("inputs.safetensors", dir))).tensors;
    const logits = async (backend: "reference" | "wasm", precision: "f32" | "int8") => {
      const model = await loadModel(dir, { backend, precision });
      try {
        if (spec.call === "forward") {
          const input = inputs.get(spec.input)!;
          return await model.forward(toFloat32(input), input.shape);
        }
        const images = (spec.images as string[]).map((name) => {
          const tensor = inputs.get(name)!;
          return { data: toFloat32(tensor), height: tensor.shape[1], width: tensor.shape[2] };
        });
        return await model.forwardPacked(images, spec.groups);
      } finally {
        model.close();
      }
    };
    const cosine = (a: Float32Array, b: Float32Array) => {
      let [ab, aa, bb] = [0, 0, 0];
      for (let i = 0; i < a.length; i++) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
      }
      return ab / Math.sqrt(aa * bb);
    };
    const cells: string[] = [];
    for (const backend of ["reference", "wasm"] as const) {
      const f32 = await logits(backend, "f32");
      cells.push(cosine(await logits(backend, "int8"), f32).toFixed(6));
    }
    const name = dir.pathname.split("/").filter(Boolean).pop();
    console.log(`| ${name} | ${cells.join(" | ")} |`);
  }
}

// ─── Accuracy of the trained models ─────────────────────────────────────────────────

/**
 * Fashion-MNIST test accuracy of each model folder at float32, int8 quantized at load
 * and from its int8 checkpoint (the same numbers `deno task eval --precision int8`
 * prints), with how many of the 10,000 predictions int8 changed.
 */
async function accuracy(dirs: string[], limit: number | undefined, backend: "wasm" | "reference") {
  const { loadFashionMnist } = await import("../src/eval/fashion_mnist.ts");
  const { evaluateModel } = await import("../src/eval/evaluate.ts");
  const split = await loadFashionMnist("test");
  const root = await Deno.makeTempDir({ prefix: "edgevit-int8-accuracy-" });
  console.log(
    `\nFashion-MNIST test split${limit ? ` (first ${limit})` : ""}, ${backend} backend\n`,
  );
  console.log(
    "| model | f32 accuracy | int8 accuracy | Δ points | predictions changed | int8, patch embedding and head f32 | int8 checkpoint = at load | int8 file | f32 img/s | int8 img/s |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  try {
    for (const dir of dirs) {
      const name = dir.replace(/\/+$/, "").split("/").pop()!;
      const quantized = await writeQuantizedCheckpoint(dir, `${root}/${name}`);
      const run = async (source: string, precision: "f32" | "int8", keepF32 = false) => {
        const chosen = keepF32
          ? patchAndHeadFloat((await resolveBackend(backend)).backend, 10)
          : backend;
        const model = await loadModel(source, { backend: chosen, precision });
        try {
          return await evaluateModel(model, split, { limit });
        } finally {
          model.close();
          if (keepF32) (chosen as Backend).dispose();
        }
      };
      const f32 = await run(dir, "f32");
      const int8 = await run(dir, "int8");
      const saved = await run(`${root}/${name}`, "f32");
      const mixed = await run(dir, "int8", true);
      let changed = 0;
      for (let i = 0; i < f32.predictions.length; i++) {
        if (f32.predictions[i] !== int8.predictions[i]) changed++;
      }
      const same = saved.predictions.every((p, i) => p === int8.predictions[i]);
      console.log(
        `| ${name} | ${(100 * f32.accuracy).toFixed(2)}% | ${(100 * int8.accuracy).toFixed(2)}% | ${
          (100 * (int8.accuracy - f32.accuracy)).toFixed(2)
        } | ${changed} of ${f32.images} | ${(100 * mixed.accuracy).toFixed(2)}% | ${
          same ? "yes" : "NO"
        } | ${(quantized.weights.byteLength / quantized.sourceBytes).toFixed(2)}× | ${
          f32.imagesPerSecond.toFixed(0)
        } | ${int8.imagesPerSecond.toFixed(0)} |`,
      );
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/**
 * The ablation of keeping the usually most sensitive layers in float32: a backend on
 * which the first linear layer a model packs (its patch embedding) and every layer with
 * `classes` outputs (its head) stay float32 whatever precision is asked.
 */
function patchAndHeadFloat(backend: Backend, classes: number): Backend {
  let count = 0;
  return new Proxy(backend, {
    get(target, prop) {
      if (prop === "prepareLinear") {
        return (source: LinearSource, options?: { precision?: Precision }) => {
          const keep = count++ === 0 || source.outFeatures === classes;
          return target.prepareLinear(source, { precision: keep ? "f32" : options?.precision });
        };
      }
      const value = Reflect.get(target, prop);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/**
 * How the inputs of every linear layer are spread, on the first `limit` test images:
 * per token, the largest |x| over the row's RMS (what per-token quantization's step is
 * set by), and per channel, the largest |x| seen (outlier channels are what
 * SmoothQuant-style smoothing moves into the weights).
 */
async function activationStats(dirs: string[], limit: number): Promise<void> {
  const { loadFashionMnist } = await import("../src/eval/fashion_mnist.ts");
  const { evaluateModel } = await import("../src/eval/evaluate.ts");
  const { ReferenceBackend } = await import("../src/backends/reference/reference_backend.ts");
  const split = await loadFashionMnist("test");
  console.log(
    `\nInputs of the linear layers, first ${limit} test images: per-token peak / RMS and per-channel max |x|\n`,
  );
  console.log(
    "| model | layer (in → out) | token peak/RMS median | p99 | channel max: median | largest |",
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const dir of dirs) {
    const stats = new Map<string, { ratios: number[]; channels: Float64Array }>();
    const reference = new ReferenceBackend();
    const spy = new Proxy(reference, {
      get(target, prop) {
        if (prop === "linear") {
          return (x: Tensor, w: LinearWeights, activation?: "none" | "gelu") => {
            const [rows, cols] = x.shape;
            const data = (x as unknown as { data: Float32Array }).data; // the reference's own
            const key = `${cols} → ${w.outFeatures}`;
            const entry = stats.get(key) ?? { ratios: [], channels: new Float64Array(cols) };
            stats.set(key, entry);
            for (let r = 0; r < rows; r++) {
              let peak = 0;
              let squares = 0;
              for (let c = 0; c < cols; c++) {
                const value = Math.abs(data[r * cols + c]);
                peak = Math.max(peak, value);
                squares += value * value;
                entry.channels[c] = Math.max(entry.channels[c], value);
              }
              entry.ratios.push(peak / Math.sqrt(squares / cols + 1e-12));
            }
            return target.linear(x, w, activation);
          };
        }
        const value = Reflect.get(target, prop);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const model = await loadModel(dir, { backend: spy });
    await evaluateModel(model, split, { limit, warmupBatches: 0 });
    model.close();
    const name = dir.replace(/\/+$/, "").split("/").pop();
    for (const [key, { ratios, channels }] of stats) {
      ratios.sort((a, b) => a - b);
      const sorted = Array.from(channels).sort((a, b) => a - b);
      console.log(
        `| ${name} | ${key} | ${ratios[ratios.length >> 1].toFixed(1)} | ${
          ratios[Math.floor(ratios.length * 0.99)].toFixed(1)
        } | ${sorted[sorted.length >> 1].toFixed(2)} | ${sorted[sorted.length - 1].toFixed(2)} |`,
      );
    }
  }
}

/** Folders under models/ holding a checkpoint (the default models). */
function defaultModelDirs(): string[] {
  const models = new URL("../models/", import.meta.url);
  const dirs: string[] = [];
  for (const entry of Deno.readDirSync(models)) {
    const dir = new URL(`${entry.name}/`, models);
    try {
      Deno.statSync(new URL("config.json", dir));
      Deno.statSync(new URL("model.safetensors", dir));
      dirs.push(dir.pathname);
    } catch {
      // not a model folder (convert/, export/, train/)
    }
  }
  return dirs.sort();
}

// ─── Report ─────────────────────────────────────────────────────────────────────────

async function main(): Promise<void> {
  const child = Deno.args.indexOf("--memory-child");
  if (child >= 0) {
    const row = await memoryChild(Deno.args[child + 1] as LoadWay, Deno.args[child + 2]);
    console.log(JSON.stringify(row));
    return;
  }
  if (Deno.args.includes("--ops")) {
    await ops(Number(option("--batch", "8")), Number(option("--runs", "5")));
    return;
  }
  if (Deno.args.includes("--accuracy")) {
    const listed = option("--model-dirs", "");
    const dirs = listed ? listed.split(",") : defaultModelDirs();
    const limit = Deno.args.includes("--limit") ? Number(option("--limit", "0")) : undefined;
    await accuracy(dirs, limit, option("--backend", "wasm") as "wasm" | "reference");
    return;
  }
  if (Deno.args.includes("--activation-stats")) {
    const listed = option("--model-dirs", "");
    await activationStats(
      listed ? listed.split(",") : defaultModelDirs(),
      Number(option("--limit", "200")),
    );
    return;
  }
  if (Deno.args.includes("--fixtures")) {
    await fixtures();
    return;
  }
  const shapes = option("--models", "deit-tiny").split(",") as ShapeName[];
  const { SHAPES: known } = await forwardBench();
  for (const shape of shapes) if (!(shape in known)) throw new Error(`unknown model ${shape}`);
  const batches = option("--batches", "1,8").split(",").map(Number);
  const runs = Number(option("--runs", "7"));
  const flavour = (await WasmBackend.create()).flavour;
  const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
  if (!Deno.args.includes("--skip-memory")) {
    for (const shape of shapes) {
      const rows = await memory(shape);
      const base = rows[0];
      console.log(`\n${shape}: resident memory after loadModel (wasm, ${flavour}), MiB\n`);
      console.log(
        "| loaded as | model.safetensors | backend weight bytes | wasm memory growth | model's own bytes | RSS growth, first load | RSS growth, second copy | checkpoint bytes collected |",
      );
      console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
      for (const row of rows) {
        const ratio = (value: number, of: number) => `${mb(value)} (${(value / of).toFixed(2)}×)`;
        console.log(
          `| ${row.way} | ${ratio(row.fileBytes, base.fileBytes)} | ${
            ratio(row.weightBytes, base.weightBytes)
          } | ${ratio(row.wasmGrowth, base.wasmGrowth)} | ${
            ratio(row.modelBytes, base.modelBytes)
          } | ${ratio(row.rssOfLoad, base.rssOfLoad)} | ${
            ratio(row.rssOfSecondCopy, base.rssOfSecondCopy)
          } | ${row.checkpointFreed ? "yes" : "no"} |`,
        );
      }
    }
  }
  if (!Deno.args.includes("--skip-speed")) {
    const rows = await speed(shapes, batches, runs);
    console.log(
      `\nforward, wasm (${flavour}), median of ${runs} interleaved runs after a warm-up\n`,
    );
    console.log(
      "| model | batch | f32 CPU ms/image | int8 CPU ms/image | speed-up (CPU) | f32 wall ms/image | int8 wall ms/image | speed-up (wall) |",
    );
    console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (const row of rows) {
      console.log(
        `| ${row.shape} | ${row.batch} | ${row.f32.cpu.toFixed(1)} | ${row.int8.cpu.toFixed(1)} | ${
          (row.f32.cpu / row.int8.cpu).toFixed(2)
        }× | ${row.f32.wall.toFixed(1)} | ${row.int8.wall.toFixed(1)} | ${
          (row.f32.wall / row.int8.wall).toFixed(2)
        }× |`,
      );
    }
  }
}

if (import.meta.main) await main();
