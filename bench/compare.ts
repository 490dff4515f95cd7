/**
 * Side-by-side benchmark: edgevit's wasm backend against onnxruntime on the same
 * weights and the same inputs, in one run.
 *
 *     deno task bench:compare [--json] [--models deit-tiny-shape,vit-b16-shape,vit-fmnist]
 *                             [--batches 1,8] [--runs 5] [--json-out FILE]
 *
 * `--json` prints a JSON array instead of the tables: one object per model and batch,
 * `{model, batch, msPerImage, speedup, pairedSpeedup, cpuMsPerImage, maxAbsDiff,
 * top1Agreement}`, each a map keyed by runner; a runner that did not run is `null` in every
 * map. `speedup` is ort-web-1t's median time over the runner's; `pairedSpeedup` is the
 * median of that ratio taken round by round (see the `Row` interface).
 * `--json-out FILE` writes that JSON to FILE as well.
 *
 * Random-weight models are built once by models/export/export_onnx.py (Debian's torch,
 * one seed → config.json + model.safetensors for edgevit and model.onnx for
 * onnxruntime) and cached under .tmp/bench/. Every runner first runs the same input and
 * its logits are compared with ort-web-1t's (max abs diff printed); a float32 runner
 * that disagrees is not timed. Timing interleaves the runners round by round (so a
 * load spike on shared cores hits all of them) and reports the median.
 *
 * Runners: edgevit-f32 / edgevit-int8 (edgevit's wasm backend), ort-web-1t / ort-web-2t
 * (onnxruntime-web, wasm execution provider, 1 and 2 threads), ort-node-1t
 * (onnxruntime-node's native CPU provider, one intra-op thread; needs --allow-ffi).
 * A runner that cannot run is reported with its reason and `null` in the JSON.
 *
 * @module
 */

import process from "node:process";
import { loadModel } from "../src/model.ts";

const RUNNERS = ["edgevit-f32", "edgevit-int8", "ort-web-1t", "ort-web-2t", "ort-node-1t"] as const;
type RunnerName = typeof RUNNERS[number];
const BASELINE: RunnerName = "ort-web-1t";

/** One benchmarked model: built from a shape with random weights, or a trained folder. */
interface ModelSpec {
  name: string;
  /** `{architecture, kwargs}` of a random-weight vit-pytorch model. */
  random?: { architecture: string; kwargs: Record<string, unknown> };
  /** A trained model folder (config.json + model.safetensors). */
  folder?: string;
}

const MODELS: ModelSpec[] = [
  {
    name: "deit-tiny-shape",
    random: {
      architecture: "ViT",
      kwargs: {
        image_size: 224,
        patch_size: 16,
        num_classes: 1000,
        dim: 192,
        depth: 12,
        heads: 3,
        dim_head: 64,
        mlp_dim: 768,
        pool: "cls",
      },
    },
  },
  {
    name: "vit-b16-shape",
    random: {
      architecture: "ViT",
      kwargs: {
        image_size: 224,
        patch_size: 16,
        num_classes: 1000,
        dim: 768,
        depth: 12,
        heads: 12,
        dim_head: 64,
        mlp_dim: 3072,
        pool: "cls",
      },
    },
  },
  // The default trained model (models/vit-fmnist, from the training issue).
  { name: "vit-fmnist", folder: "models/vit-fmnist" },
];

const SEED = 1;
const ROOT = new URL("../", import.meta.url);
const CACHE = new URL(".tmp/bench/", ROOT);
const PYTHON = "/usr/bin/python3";

type Shape = [number, number, number, number];

interface Timing {
  logits: Float32Array;
  ms: number;
  cpuMs: number;
}

interface Runner {
  readonly name: RunnerName;
  /** `ms`: wall clock; `cpuMs`: process CPU time (all threads) during the run. */
  run(pixels: Float32Array, shape: Shape, repeat?: number): Promise<Timing>;
  close(): Promise<void>;
}

interface Row {
  model: string;
  batch: number;
  msPerImage: Record<RunnerName, number | null>;
  speedup: Record<RunnerName, number | null>;
  /**
   * Median over rounds of ort-web-1t's time divided by the runner's time *in the same
   * round*. The host's speed flips within seconds; a round is short, so both times of a
   * pair see one speed, while the medians behind `speedup` may come from different ones.
   */
  pairedSpeedup: Record<RunnerName, number | null>;
  maxAbsDiff: Record<RunnerName, number | null>;
  /** Process CPU time per image (all threads), the contention-proof companion of msPerImage. */
  cpuMsPerImage: Record<RunnerName, number | null>;
  /** Share of images whose top class equals ort-web-1t's. */
  top1Agreement: Record<RunnerName, number | null>;
}

function parseArgs(args: string[]) {
  const options = {
    json: false,
    models: MODELS.map((m) => m.name),
    batches: [1, 8],
    runs: 5,
    jsonOut: null as string | null,
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = () => {
      const next = args[++i];
      if (next === undefined) throw new Error(`${arg} needs a value`);
      return next;
    };
    if (arg === "--json") options.json = true;
    else if (arg === "--models") options.models = value().split(",");
    else if (arg === "--batches") options.batches = value().split(",").map(Number);
    else if (arg === "--runs") options.runs = Number(value());
    else if (arg === "--json-out") options.jsonOut = value();
    else throw new Error(`unknown argument ${arg}`);
  }
  for (const name of options.models) {
    if (!MODELS.some((m) => m.name === name)) throw new Error(`unknown model ${name}`);
  }
  if (!options.batches.every((b) => Number.isInteger(b) && b > 0)) {
    throw new Error("--batches takes positive integers");
  }
  if (!(Number.isInteger(options.runs) && options.runs >= 1)) throw new Error("--runs must be ≥ 1");
  return options;
}

const log = (message: string) => console.error(message);

async function exists(url: URL): Promise<boolean> {
  try {
    await Deno.stat(url);
    return true;
  } catch {
    return false;
  }
}

async function mtime(url: URL): Promise<number> {
  return (await Deno.stat(url)).mtime?.getTime() ?? 0;
}

async function python(args: string[]): Promise<void> {
  const output = await new Deno.Command(PYTHON, {
    args: [new URL("models/export/export_onnx.py", ROOT).pathname, ...args],
    env: { PYTHONDONTWRITEBYTECODE: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!output.success) {
    throw new Error(
      `export_onnx.py failed:\n${new TextDecoder().decode(output.stderr).slice(-2000)}`,
    );
  }
}

/**
 * Returns the folder edgevit loads and the .onnx onnxruntime loads, exporting with
 * Python when the cache lacks them.
 */
async function prepare(spec: ModelSpec): Promise<{ folder: URL; onnx: URL }> {
  const cacheDir = new URL(`${spec.name}/`, CACHE);
  if (spec.random) {
    const stamp = JSON.stringify({ ...spec.random, seed: SEED });
    const stampFile = new URL("spec.json", cacheDir);
    const cached = await exists(stampFile) &&
      (await Deno.readTextFile(stampFile)) === stamp &&
      await exists(new URL("model.onnx", cacheDir)) &&
      await exists(new URL("model.safetensors", cacheDir));
    if (!cached) {
      log(`exporting ${spec.name} (random weights, seed ${SEED}) with ${PYTHON} ...`);
      await python([
        "--random",
        JSON.stringify(spec.random),
        "--seed",
        String(SEED),
        "--out-dir",
        cacheDir.pathname,
      ]);
      await Deno.writeTextFile(stampFile, stamp);
    }
    return { folder: cacheDir, onnx: new URL("model.onnx", cacheDir) };
  }
  const folder = new URL(`${spec.folder}/`, ROOT);
  const weights = new URL("model.safetensors", folder);
  if (!(await exists(weights))) throw new Error(`${spec.folder} has no model.safetensors yet`);
  const beside = new URL("model.onnx", folder);
  if (await exists(beside) && (await mtime(beside)) >= (await mtime(weights))) {
    return { folder, onnx: beside };
  }
  const onnx = new URL("model.onnx", cacheDir);
  if (!(await exists(onnx)) || (await mtime(onnx)) < (await mtime(weights))) {
    log(`exporting ${spec.folder} to ONNX with ${PYTHON} ...`);
    await Deno.mkdir(cacheDir, { recursive: true });
    await python([folder.pathname, "--out", onnx.pathname]);
  }
  return { folder, onnx };
}

/** Deterministic N(0, 1) pixels, like normalized images. */
function randomPixels(count: number, seed: number): Float32Array {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    out[i] = Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  }
  return out;
}

class WorkerRunner implements Runner {
  #worker: Worker;
  #pending: ((reply: { ok: boolean; error?: string } & Record<string, unknown>) => void) | null =
    null;

  private constructor(readonly name: RunnerName) {
    this.#worker = new Worker(new URL("./compare_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (event) => {
      const resolve = this.#pending;
      this.#pending = null;
      resolve?.(event.data);
    };
    this.#worker.onerror = (event) => {
      event.preventDefault();
      const resolve = this.#pending;
      this.#pending = null;
      resolve?.({ ok: false, error: event.message });
    };
  }

  #call(message: Record<string, unknown>, transfer: Transferable[] = []) {
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      this.#pending = (reply) => reply.ok ? resolve(reply) : reject(new Error(reply.error));
      this.#worker.postMessage(message, transfer);
    });
  }

  static async create(
    name: RunnerName,
    runtime: "ort-web" | "ort-node",
    threads: number,
    onnx: URL,
  ): Promise<WorkerRunner> {
    const runner = new WorkerRunner(name);
    try {
      await runner.#call({ op: "load", runtime, threads, onnxPath: onnx.pathname });
    } catch (error) {
      runner.#worker.terminate();
      throw error;
    }
    return runner;
  }

  async run(pixels: Float32Array, shape: Shape, repeat = 1) {
    const reply = await this.#call({ op: "run", pixels: pixels.slice(), shape, repeat });
    return {
      logits: reply.logits as Float32Array,
      ms: reply.ms as number,
      cpuMs: reply.cpuMs as number,
    };
  }

  async close() {
    await this.#call({ op: "close" }).catch(() => {});
    this.#worker.terminate();
  }
}

async function edgevitRunner(
  name: RunnerName,
  folder: URL,
  precision: "f32" | "int8",
): Promise<Runner> {
  const model = await loadModel(folder.pathname, { backend: "wasm", precision });
  if (precision === "int8" && !hasInt8Kernel(model.architecture.backend)) {
    model.close();
    throw new Error(
      "the wasm kernels have no int8 GEMM yet (int8 weights are dequantized to a float32 GEMM)",
    );
  }
  return {
    name,
    async run(pixels, shape, repeat = 1) {
      const cpu = process.cpuUsage();
      const start = performance.now();
      let logits = await model.forward(pixels, shape);
      for (let i = 1; i < repeat; i++) logits = await model.forward(pixels, shape);
      const ms = (performance.now() - start) / repeat;
      const used = process.cpuUsage(cpu);
      return { logits, ms, cpuMs: (used.user + used.system) / 1000 / repeat };
    },
    close() {
      model.close();
      return Promise.resolve();
    },
  };
}

/**
 * Whether the wasm build exports an int8 GEMM. Until it does, precision "int8" only
 * quantizes the weights and runs the float32 GEMM, which is not the int8 path the
 * comparison is about.
 */
function hasInt8Kernel(backend: unknown): boolean {
  const exports = (backend as { kernels?: { exports?: Record<string, unknown> } }).kernels
    ?.exports;
  return exports !== undefined &&
    Object.keys(exports).some((name) => /(^|_)(int8|i8)(_|$)/.test(name));
}

async function openRunners(folder: URL, onnx: URL) {
  const runners: Runner[] = [];
  const reasons: Partial<Record<RunnerName, string>> = {};
  const attempts: [RunnerName, () => Promise<Runner>][] = [
    ["edgevit-f32", () => edgevitRunner("edgevit-f32", folder, "f32")],
    ["edgevit-int8", () => edgevitRunner("edgevit-int8", folder, "int8")],
    ["ort-web-1t", () => WorkerRunner.create("ort-web-1t", "ort-web", 1, onnx)],
    ["ort-web-2t", () => WorkerRunner.create("ort-web-2t", "ort-web", 2, onnx)],
    ["ort-node-1t", () => WorkerRunner.create("ort-node-1t", "ort-node", 1, onnx)],
  ];
  for (const [name, open] of attempts) {
    try {
      runners.push(await open());
    } catch (error) {
      reasons[name] = error instanceof Error ? error.message.split("\n")[0] : String(error);
      log(`  ${name}: not run (${reasons[name]})`);
    }
  }
  return { runners, reasons };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function maxAbs(a: Float32Array): number {
  let max = 0;
  for (const v of a) max = Math.max(max, Math.abs(v));
  return max;
}

function top1Agreement(a: Float32Array, b: Float32Array, images: number): number {
  const classes = a.length / images;
  const argmax = (x: Float32Array, i: number) => {
    let best = 0;
    for (let c = 1; c < classes; c++) if (x[i * classes + c] > x[i * classes + best]) best = c;
    return best;
  };
  let same = 0;
  for (let i = 0; i < images; i++) if (argmax(a, i) === argmax(b, i)) same++;
  return same / images;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function emptyMap(): Record<RunnerName, number | null> {
  return Object.fromEntries(RUNNERS.map((r) => [r, null])) as Record<RunnerName, number | null>;
}

async function benchBatch(
  model: string,
  runners: Runner[],
  shape: Shape,
  runs: number,
): Promise<Row> {
  const batch = shape[0];
  const pixels = randomPixels(shape[0] * shape[1] * shape[2] * shape[3], 1000 + batch);
  const row: Row = {
    model,
    batch,
    msPerImage: emptyMap(),
    speedup: emptyMap(),
    pairedSpeedup: emptyMap(),
    maxAbsDiff: emptyMap(),
    cpuMsPerImage: emptyMap(),
    top1Agreement: emptyMap(),
  };

  // Agreement first: every runner's logits against the baseline's (or the first runner's).
  const first = new Map<RunnerName, Timing>();
  for (const runner of runners) first.set(runner.name, await runner.run(pixels, shape));
  const referenceName = first.has(BASELINE) ? BASELINE : runners[0].name;
  const reference = first.get(referenceName)!.logits;
  const scale = Math.max(1, maxAbs(reference));
  const timed: Runner[] = [];
  for (const runner of runners) {
    const logits = first.get(runner.name)!.logits;
    const diff = maxAbsDiff(logits, reference);
    const agree = top1Agreement(logits, reference, batch);
    row.maxAbsDiff[runner.name] = diff;
    row.top1Agreement[runner.name] = agree;
    // int8 is an approximation by design: its diff is reported, not gated.
    const ok = runner.name === "edgevit-int8" ? Number.isFinite(diff) : diff <= 1e-3 * scale;
    log(
      `  ${model} b${batch} ${runner.name}: max abs diff vs ${referenceName} ${
        diff.toExponential(2)
      } (|logits| ≤ ${scale.toFixed(2)}), top-1 agreement ${(agree * 100).toFixed(0)}%${
        ok ? "" : "  DISAGREES: not timed"
      }`,
    );
    if (ok) timed.push(runner);
  }

  // One more warm-up each, then interleaved timed rounds; fewer rounds for slow runs.
  const slowest = Math.max(...timed.map((r) => first.get(r.name)!.ms));
  const rounds = slowest > 2000 ? Math.min(runs, 3) : runs;
  // A sample of a fast runner repeats the forward until it lasts ~25 ms, so timer
  // resolution and per-call noise stay small next to it.
  const repeats = new Map<RunnerName, number>();
  for (const runner of timed) {
    const warm = await runner.run(pixels, shape);
    repeats.set(runner.name, Math.min(50, Math.max(1, Math.ceil(25 / Math.max(warm.ms, 0.01)))));
  }
  const times = new Map<RunnerName, Timing[]>(timed.map((r) => [r.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < timed.length; k++) {
      const runner = timed[(k + round) % timed.length];
      // A short pause: onnxruntime's pool threads spin a little after a run, and the
      // next runner must not pay for it.
      await new Promise((resolve) => setTimeout(resolve, 30));
      times.get(runner.name)!.push(
        await runner.run(pixels, shape, repeats.get(runner.name)),
      );
    }
  }
  for (const runner of timed) {
    const samples = times.get(runner.name)!;
    row.msPerImage[runner.name] = median(samples.map((t) => t.ms)) / batch;
    row.cpuMsPerImage[runner.name] = median(samples.map((t) => t.cpuMs)) / batch;
  }
  const base = row.msPerImage[BASELINE];
  for (const name of RUNNERS) {
    const ms = row.msPerImage[name];
    row.speedup[name] = base !== null && ms !== null ? base / ms : null;
  }
  const baseTimes = times.get(BASELINE);
  if (baseTimes) {
    for (const runner of timed) {
      const own = times.get(runner.name)!;
      row.pairedSpeedup[runner.name] = median(own.map((t, round) => baseTimes[round].ms / t.ms));
    }
  }
  return row;
}

async function command(name: string, args: string[] = []): Promise<string> {
  try {
    const output = await new Deno.Command(name, { args, stdout: "piped", stderr: "null" }).output();
    return new TextDecoder().decode(output.stdout).trim();
  } catch {
    return "";
  }
}

/** The machine as `lscpu` and `uptime` describe it (/proc needs --allow-all in Deno). */
async function machine(): Promise<{ cpu: string; cores: number; load: string }> {
  const lscpu = await command("lscpu");
  const cpu = lscpu.match(/^Model name:\s*(.+)$/m)?.[1]?.trim() ?? "unknown CPU";
  const uptime = await command("uptime");
  const load = uptime.match(/load average:\s*(.+)$/)?.[1] ?? "unknown";
  return { cpu, cores: navigator.hardwareConcurrency, load };
}

function grid(rows: Row[], value: (row: Row, name: RunnerName) => string | undefined): string[] {
  return [
    `| model | batch | ${RUNNERS.join(" | ")} |`,
    `| --- | ---: | ${RUNNERS.map(() => "---:").join(" | ")} |`,
    ...rows.map((row) =>
      `| ${row.model} | ${row.batch} | ${
        RUNNERS.map((name) => value(row, name) ?? "n/a").join(" | ")
      } |`
    ),
  ];
}

function table(rows: Row[], reasons: Map<string, Partial<Record<RunnerName, string>>>): string {
  const cell = (row: Row, name: RunnerName) => {
    const ms = row.msPerImage[name];
    if (ms === null) return "n/a";
    return `${ms.toFixed(ms < 10 ? 2 : 1)} (${row.speedup[name]?.toFixed(2) ?? "?"}×)`;
  };
  const lines = [
    `| model | batch | ${RUNNERS.join(" | ")} |`,
    `| --- | ---: | ${RUNNERS.map(() => "---:").join(" | ")} |`,
    ...rows.map((row) =>
      `| ${row.model} | ${row.batch} | ${RUNNERS.map((name) => cell(row, name)).join(" | ")} |`
    ),
    "",
    "ms/image (wall clock, median), speedup over ort-web-1t in parentheses.",
    "",
    "Speedup over ort-web-1t paired by round (median over rounds of ort-web-1t's time / the",
    "runner's time in the same round; robust to the host's speed changing between rounds):",
    "",
    ...grid(rows, (row, name) => row.pairedSpeedup[name]?.toFixed(2)),
    "",
    "CPU ms/image (process CPU time, all threads, median):",
    "",
    ...grid(rows, (row, name) => {
      const ms = row.cpuMsPerImage[name];
      return ms === null ? undefined : ms.toFixed(ms < 10 ? 2 : 1);
    }),
    "",
    "Max abs diff of logits vs ort-web-1t (top-1 agreement):",
    "",
    ...grid(rows, (row, name) => {
      const diff = row.maxAbsDiff[name];
      const agree = row.top1Agreement[name];
      return diff === null
        ? undefined
        : `${diff.toExponential(1)} (${((agree ?? 0) * 100).toFixed(0)}%)`;
    }),
  ];
  const notes = [...reasons].flatMap(([model, byRunner]) =>
    Object.entries(byRunner).map(([runner, reason]) => `- ${model}, ${runner}: n/a, ${reason}`)
  );
  if (notes.length) lines.push("", ...notes);
  return lines.join("\n");
}

async function main() {
  const options = parseArgs(Deno.args);
  const before = await machine();
  log(`${before.cpu}, ${before.cores} logical cores, load ${before.load}`);
  const rows: Row[] = [];
  const reasons = new Map<string, Partial<Record<RunnerName, string>>>();
  for (const spec of MODELS.filter((m) => options.models.includes(m.name))) {
    let prepared;
    try {
      prepared = await prepare(spec);
    } catch (error) {
      log(`${spec.name}: skipped (${error instanceof Error ? error.message : error})`);
      continue;
    }
    const config = JSON.parse(await Deno.readTextFile(new URL("config.json", prepared.folder)));
    const kwargs = config.kwargs as Record<string, unknown>;
    const size = Array.isArray(kwargs.image_size)
      ? kwargs.image_size as number[]
      : [kwargs.image_size as number, kwargs.image_size as number];
    const channels = (kwargs.channels as number | undefined) ?? 3;
    log(`${spec.name}: loading runners`);
    const { runners, reasons: why } = await openRunners(prepared.folder, prepared.onnx);
    reasons.set(spec.name, why);
    try {
      if (runners.length === 0) continue;
      for (const batch of options.batches) {
        rows.push(
          await benchBatch(spec.name, runners, [batch, channels, size[0], size[1]], options.runs),
        );
      }
    } finally {
      for (const runner of runners) await runner.close();
    }
  }
  const after = await machine();
  const json = JSON.stringify(
    rows.map((row) => ({
      model: row.model,
      batch: row.batch,
      msPerImage: row.msPerImage,
      speedup: row.speedup,
      pairedSpeedup: row.pairedSpeedup,
      cpuMsPerImage: row.cpuMsPerImage,
      maxAbsDiff: row.maxAbsDiff,
      top1Agreement: row.top1Agreement,
    })),
    null,
    2,
  );
  if (options.jsonOut) await Deno.writeTextFile(options.jsonOut, json + "\n");
  if (options.json) {
    console.log(json);
  } else {
    console.log(
      `Machine: ${before.cpu}, ${before.cores} logical cores; load average before ${before.load}, after ${after.load}\n`,
    );
    console.log(table(rows, reasons));
  }
}

if (import.meta.main) await main();
