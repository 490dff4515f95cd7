/**
 * Where a small model's forward spends its time, at batch 1 and batch 16: µs per image of
 * each backend op (linears by shape), float32 and int8, through `loadModel` on the wasm
 * backend. It answers "what does batching save per image?" op by op, for the models the
 * service runs (issue 7).
 *
 *     deno run --allow-read --allow-env bench/batch_ops.ts \
 *       [--models models/patchmerger-fmnist,models/vit-fmnist] [--precisions f32,int8]
 *       [--images 3000]
 *
 * Per-op figures are wall time around each op call (performance.now, sub-µs calls would
 * drown in getrusage's own cost); the forward totals are process CPU time, so they also
 * show whether the machine was busy (wall ≫ CPU). Each batch size runs `--images` images
 * to warm up (the wasm tiers up on background threads) before `--images` more are timed.
 *
 * @module
 */

import process from "node:process";
import type { Backend, LinearWeights, Precision, Tensor } from "../src/backends/backend.ts";
import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { loadModel } from "../src/model.ts";

function option(flag: string, fallback: string): string {
  const i = Deno.args.indexOf(flag);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

/** A backend whose ops add their wall time (ms) to `sink.times`, keyed by op and shape. */
function timedBackend(backend: Backend, sink: { times: Map<string, number> }): Backend {
  return new Proxy(backend, {
    get(target, prop) {
      const value = Reflect.get(target, prop);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const start = performance.now();
        const result = value.apply(target, args);
        const spent = performance.now() - start;
        let key = String(prop);
        if (prop === "linear") {
          const [x, w, activation] = args as [Tensor, LinearWeights, string | undefined];
          key = `linear ${x.shape[0]}×${w.inFeatures}×${w.outFeatures}` +
            (activation === "gelu" ? " +gelu" : "");
        } else if (prop === "attention") {
          key = `attention ${(args[0] as Tensor).shape[0]} rows`;
        }
        sink.times.set(key, (sink.times.get(key) ?? 0) + spent);
        return result;
      };
    },
  });
}

interface Profile {
  /** µs per image, by op. */
  ops: Map<string, number>;
  /** Forward CPU and wall µs per image. */
  cpu: number;
  wall: number;
}

/**
 * Profiles batch 1 and batch 16 on one loaded model, in turns (4 rounds), so a change in
 * the machine's background load lands on both alike.
 */
async function profile(dir: string, precision: Precision, images: number): Promise<Profile[]> {
  const backend = await WasmBackend.create();
  const sink = { times: new Map<string, number>() };
  const model = await loadModel(dir, { backend: timedBackend(backend, sink), precision });
  const batches = [1, 16];
  const results = batches.map(() => ({ times: new Map<string, number>(), cpu: 0, wall: 0 }));
  try {
    const { channels } = model.config;
    const { height, width } = model.config.inputSize ?? { height: 28, width: 28 };
    const inputs = batches.map((batch) => ({
      batch,
      pixels: Float32Array.from(
        { length: batch * channels * height * width },
        (_, i) => Math.sin(i * 0.1),
      ),
      shape: [batch, channels, height, width] as [number, number, number, number],
    }));
    const run = async (index: number, count: number) => {
      const { batch, pixels, shape } = inputs[index];
      for (let i = 0; i < Math.ceil(count / batch); i++) await model.forward(pixels, shape);
    };
    for (let i = 0; i < inputs.length; i++) await run(i, images);
    const rounds = 4;
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < inputs.length; i++) {
        sink.times = results[i].times;
        const cpu0 = process.cpuUsage();
        const wall0 = performance.now();
        await run(i, images / rounds);
        results[i].wall += performance.now() - wall0;
        const cpu = process.cpuUsage(cpu0);
        results[i].cpu += (cpu.user + cpu.system) / 1000;
      }
    }
  } finally {
    model.close();
    backend.dispose();
  }
  return results.map((result, i) => {
    const count = Math.ceil(images / 4 / batches[i]) * batches[i] * 4;
    const ops = new Map<string, number>();
    for (const [key, ms] of result.times) ops.set(key, (ms * 1000) / count);
    return { ops, cpu: (result.cpu * 1000) / count, wall: (result.wall * 1000) / count };
  });
}

/** Linear keys differ by row count between batch sizes: compare them per image. */
function perImageKey(key: string, batch: number): string {
  const match = key.match(/^linear (\d+)×(.*)$/);
  if (match) return `linear ${Number(match[1]) / batch}/image×${match[2]}`;
  const rows = key.match(/^attention (\d+) rows$/);
  if (rows) return `attention ${Number(rows[1]) / batch} tokens/image`;
  return key;
}

async function main() {
  const models = option("--models", "models/patchmerger-fmnist,models/vit-fmnist").split(",");
  const precisions = option("--precisions", "f32,int8").split(",") as Precision[];
  const images = Number(option("--images", "3000"));
  for (const dir of models) {
    for (const precision of precisions) {
      const [one, sixteen] = await profile(dir, precision, images);
      const rows = new Map<string, [number, number]>();
      for (const [key, us] of one.ops) rows.set(perImageKey(key, 1), [us, 0]);
      for (const [key, us] of sixteen.ops) {
        const k = perImageKey(key, 16);
        rows.set(k, [rows.get(k)?.[0] ?? 0, us]);
      }
      const sum = (p: Profile) => [...p.ops.values()].reduce((a, b) => a + b, 0);
      console.log(`\n${dir}, ${precision}: µs per image\n`);
      console.log("| op | batch 1 | batch 16 |");
      console.log("| -- | ------: | -------: |");
      const sorted = [...rows.entries()].sort((a, b) => b[1][1] - a[1][1]);
      for (const [key, [a, b]] of sorted) {
        if (a < 0.5 && b < 0.5) continue;
        console.log(`| ${key} | ${a.toFixed(1)} | ${b.toFixed(1)} |`);
      }
      console.log(`| all ops | ${sum(one).toFixed(1)} | ${sum(sixteen).toFixed(1)} |`);
      console.log(`| forward, wall | ${one.wall.toFixed(1)} | ${sixteen.wall.toFixed(1)} |`);
      console.log(`| forward, CPU | ${one.cpu.toFixed(1)} | ${sixteen.cpu.toFixed(1)} |`);
    }
  }
}

if (import.meta.main) await main();
