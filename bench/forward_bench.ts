/**
 * End-to-end forward of ViT-shaped models through `loadModel` (random weights in timm's
 * layout, built in memory: the model names imply the dims), on the wasm backend.
 *
 * - `deno bench --allow-read --allow-env bench/forward_bench.ts`: Deno's timing of each
 *   shape and batch.
 * - `deno run --allow-read --allow-env bench/forward_bench.ts [--models deit-tiny,vit-b16]
 *   [--batches 1,8] [--runs 5] [--backend wasm]`: a table of ms/image, effective GFLOP/s,
 *   load time and peak memory, the figures in bench/README.md.
 *
 * Shapes: DeiT-Tiny (224², patch 16, dim 192, depth 12, heads 3, mlp 768) and ViT-B/16
 * (dim 768, depth 12, heads 12, mlp 3072), 1000 classes, 197 tokens per image.
 *
 * @module
 */

import { type SafetensorsInput, serializeSafetensors } from "../src/loaders/safetensors.ts";
import { type BackendChoice, loadModel, type Model } from "../src/model.ts";
import { seededRandom } from "../src/models/vit.ts";

/** The benchmarked shapes: timm names whose dims the loader derives from the name. */
export const SHAPES = {
  "deit-tiny": { name: "deit_tiny_patch16_224", dim: 192, depth: 12, mlp: 768 },
  "vit-b16": { name: "vit_base_patch16_224", dim: 768, depth: 12, mlp: 3072 },
} as const;

type ShapeName = keyof typeof SHAPES;
const IMAGE = 224;
const PATCH = 16;
const CLASSES = 1000;
const PATCHES = (IMAGE / PATCH) ** 2;
const TOKENS = PATCHES + 1;

/** Multiply-adds ×2 of one image's forward (GEMMs and attention; norms and GELU left out). */
export function forwardFlops(dim: number, depth: number, mlp: number): number {
  const patchDim = 3 * PATCH * PATCH;
  const embed = 2 * PATCHES * patchDim * dim;
  const perLayer = 2 * TOKENS * dim * 3 * dim + // qkv
    2 * 2 * TOKENS * TOKENS * dim + // q·kᵀ and attention·v over all heads
    2 * TOKENS * dim * dim + // output projection
    2 * 2 * TOKENS * dim * mlp; // fc1 + fc2
  return embed + depth * perLayer + 2 * dim * CLASSES;
}

/** A timm checkpoint of random weights (uniform ±1/√fan-in), as safetensors bytes. */
export function randomTimmCheckpoint(
  shape: ShapeName,
  seed = 1,
  depth: number = SHAPES[shape].depth,
): {
  config: Record<string, unknown>;
  weights: Uint8Array;
} {
  const { name, dim, mlp } = SHAPES[shape];
  const random = seededRandom(seed);
  const tensors: Record<string, SafetensorsInput> = {};
  const add = (key: string, dims: number[], scale: number, around = 0) => {
    const size = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    for (let i = 0; i < size; i++) data[i] = around + (random() * 2 - 1) * scale;
    tensors[key] = { dtype: "F32", shape: dims, data };
  };
  const patchDim = 3 * PATCH * PATCH;
  add("cls_token", [1, 1, dim], 0.02);
  add("pos_embed", [1, TOKENS, dim], 0.02);
  add("patch_embed.proj.weight", [dim, 3, PATCH, PATCH], 1 / Math.sqrt(patchDim));
  add("patch_embed.proj.bias", [dim], 0.02);
  for (let i = 0; i < depth; i++) {
    const b = `blocks.${i}`;
    add(`${b}.norm1.weight`, [dim], 0.1, 1);
    add(`${b}.norm1.bias`, [dim], 0.02);
    add(`${b}.attn.qkv.weight`, [3 * dim, dim], 1 / Math.sqrt(dim));
    add(`${b}.attn.qkv.bias`, [3 * dim], 0.02);
    add(`${b}.attn.proj.weight`, [dim, dim], 1 / Math.sqrt(dim));
    add(`${b}.attn.proj.bias`, [dim], 0.02);
    add(`${b}.norm2.weight`, [dim], 0.1, 1);
    add(`${b}.norm2.bias`, [dim], 0.02);
    add(`${b}.mlp.fc1.weight`, [mlp, dim], 1 / Math.sqrt(dim));
    add(`${b}.mlp.fc1.bias`, [mlp], 0.02);
    add(`${b}.mlp.fc2.weight`, [dim, mlp], 1 / Math.sqrt(mlp));
    add(`${b}.mlp.fc2.bias`, [dim], 0.02);
  }
  add("norm.weight", [dim], 0.1, 1);
  add("norm.bias", [dim], 0.02);
  add("head.weight", [CLASSES, dim], 1 / Math.sqrt(dim));
  add("head.bias", [CLASSES], 0.02);
  return {
    config: {
      architecture: name,
      num_classes: CLASSES,
      ...(depth === SHAPES[shape].depth ? {} : { model_args: { depth } }),
    },
    weights: serializeSafetensors(tensors),
  };
}

function randomPixels(batch: number): Float32Array {
  const random = seededRandom(batch);
  return Float32Array.from({ length: batch * 3 * IMAGE * IMAGE }, () => random() * 4 - 2);
}

// ─── deno bench ─────────────────────────────────────────────────────────────────────

if (!import.meta.main) {
  const backend = (Deno.env.get("EDGEVIT_BENCH_BACKEND") ?? "wasm") as BackendChoice;
  let available = true;
  try {
    (await loadModel(randomTimmCheckpoint("deit-tiny"), { backend })).close();
  } catch (error) {
    available = false;
    console.warn(`forward_bench: the ${backend} backend is not available: ${error}`);
  }
  for (const shape of Object.keys(SHAPES) as ShapeName[]) {
    for (const batch of [1, 8]) {
      let model: Model | null = null;
      const pixels = randomPixels(batch);
      Deno.bench({
        name: `${shape} forward, batch ${batch} (${backend})`,
        group: shape,
        baseline: batch === 1,
        ignore: !available,
        n: shape === "vit-b16" ? 3 : 10,
        warmup: 1,
        async fn(b) {
          model ??= await loadModel(randomTimmCheckpoint(shape), { backend });
          b.start();
          await model.forward(pixels, [batch, 3, IMAGE, IMAGE]);
          b.end();
        },
      });
    }
  }
}

// ─── deno run: the README table ─────────────────────────────────────────────────────

interface Row {
  shape: string;
  batch: number;
  msPerImage: number;
  gflops: number;
  /** Process CPU time per image: the wasm backend runs on one thread, so on a shared
   * machine this is the figure that does not depend on what else runs. */
  cpuMsPerImage: number;
  cpuGflops: number;
  loadMs: number;
  loadCpuMs: number;
  peakRssMb: number;
}

async function report(): Promise<void> {
  const args = Deno.args;
  const option = (flag: string, fallback: string) => {
    const i = args.indexOf(flag);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
  };
  const shapes = option("--models", "deit-tiny,vit-b16").split(",") as ShapeName[];
  const batches = option("--batches", "1,8").split(",").map(Number);
  const runs = Number(option("--runs", "5"));
  const backend = option("--backend", "wasm") as BackendChoice;
  const rows: Row[] = [];
  let peak = Deno.memoryUsage().rss;
  const sample = () => peak = Math.max(peak, Deno.memoryUsage().rss);
  for (const shape of shapes) {
    if (!(shape in SHAPES)) throw new Error(`unknown model ${shape}`);
    const checkpoint = randomTimmCheckpoint(shape);
    sample();
    const loadCpu0 = process.cpuUsage();
    const start = performance.now();
    const model = await loadModel(checkpoint, { backend });
    const loadMs = performance.now() - start;
    const loadCpu = process.cpuUsage(loadCpu0);
    const loadCpuMs = (loadCpu.user + loadCpu.system) / 1000;
    sample();
    const { dim, depth, mlp } = SHAPES[shape];
    for (const batch of batches) {
      const pixels = randomPixels(batch);
      await model.forward(pixels, [batch, 3, IMAGE, IMAGE]); // warm-up: pools, JIT
      sample();
      const times: number[] = [];
      const cpuTimes: number[] = [];
      for (let r = 0; r < runs; r++) {
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        await model.forward(pixels, [batch, 3, IMAGE, IMAGE]);
        times.push(performance.now() - t0);
        const cpu = process.cpuUsage(cpu0);
        cpuTimes.push((cpu.user + cpu.system) / 1000);
        sample();
      }
      const median = (values: number[]) =>
        [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
      const msPerImage = median(times) / batch;
      const cpuMsPerImage = median(cpuTimes) / batch;
      const flops = forwardFlops(dim, depth, mlp);
      rows.push({
        shape,
        batch,
        msPerImage,
        gflops: flops / (msPerImage * 1e6),
        cpuMsPerImage,
        cpuGflops: flops / (cpuMsPerImage * 1e6),
        loadMs,
        loadCpuMs,
        peakRssMb: peak / 2 ** 20,
      });
      const last = rows[rows.length - 1];
      console.log(
        `${shape} b${batch}: ${last.msPerImage.toFixed(1)} ms/image (${
          last.cpuMsPerImage.toFixed(1)
        } ms CPU), ${last.gflops.toFixed(1)} GFLOP/s (${
          last.cpuGflops.toFixed(1)
        } per CPU second), load ${loadMs.toFixed(0)} ms, peak RSS ${last.peakRssMb.toFixed(0)} MiB`,
      );
    }
    model.close();
  }
  console.log(`\nbackend ${backend}, median of ${runs} runs after one warm-up\n`);
  console.log(
    "| model | batch | ms/image (wall) | GFLOP/s (wall) | CPU ms/image | GFLOP/s per CPU s | load ms (CPU) | peak RSS MiB |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const row of rows) {
    console.log(
      `| ${row.shape} | ${row.batch} | ${row.msPerImage.toFixed(1)} | ${row.gflops.toFixed(1)} | ${
        row.cpuMsPerImage.toFixed(1)
      } | ${row.cpuGflops.toFixed(1)} | ${row.loadMs.toFixed(0)} (${row.loadCpuMs.toFixed(0)}) | ${
        row.peakRssMb.toFixed(0)
      } |`,
    );
  }
}

if (import.meta.main) await report();
