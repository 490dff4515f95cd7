/**
 * WebGPU timings: DeiT-Tiny- and ViT-B/16-shaped forwards (random weights, the real
 * VitModel code path) at batch 1, 8 and 64, and the main kernels at batch-64 shapes.
 *
 *     deno run --allow-read bench/webgpu_bench.ts [--models deit-tiny,vit-b16]
 *         [--batches 1,8,64] [--runs 5] [--allow-fallback]
 *
 * Needs a hardware WebGPU adapter: on a machine with only a fallback (software) adapter
 * such as Mesa's llvmpipe it prints "no real GPU adapter" and exits with 0, since such
 * figures would say nothing about GPUs. `--allow-fallback` runs anyway (a smoke test
 * of this script; expect seconds per image).
 *
 * Each figure is the median over `--runs` timed runs after two warm-up runs; a run ends
 * when its logits are read back, so it includes the one upload and one readback.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Tensor } from "../src/backends/backend.ts";
import {
  describeAdapter,
  navigatorGpu,
  requestAdapterWithTimeout,
  WebGpuBackend,
} from "../src/backends/webgpu/webgpu_backend.ts";
import {
  randomVitWeights,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../src/models/vit.ts";

const SHAPES: Record<string, VitConfig> = {
  "deit-tiny": vitShape({ dim: 192, depth: 12, heads: 3, mlpDim: 768 }),
  "vit-b16": vitShape({ dim: 768, depth: 12, heads: 12, mlpDim: 3072 }),
};

function vitShape(size: { dim: number; depth: number; heads: number; mlpDim: number }): VitConfig {
  return standardVitConfig({
    imageSize: 224,
    patchSize: 16,
    dim: size.dim,
    depth: size.depth,
    heads: size.heads,
    mlpDim: size.mlpDim,
    numClasses: 1000,
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function timeIt(runs: number, body: () => Promise<void>): Promise<number> {
  for (let i = 0; i < 2; i++) await body();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await body();
    times.push(performance.now() - start);
  }
  return median(times);
}

function random(count: number, seed: number): Float32Array {
  let state = seed >>> 0 || 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 32 - 0.5;
  }
  return out;
}

/** Times the heaviest kernels of one encoder block at `images` × 197 tokens. */
async function kernelTimings(
  backend: WebGpuBackend,
  config: VitConfig,
  images: number,
  runs: number,
): Promise<Record<string, number>> {
  const tokens = 197;
  const rows = images * tokens;
  const { dim, mlpDim, heads, headDim } = config;
  const x = backend.upload(random(rows * dim, 1), [rows, dim]);
  const hidden = backend.upload(random(rows * mlpDim, 2), [rows, mlpDim]);
  const linear = (out: number, inp: number) =>
    backend.prepareLinear({
      weight: random(out * inp, 3),
      bias: random(out, 4),
      outFeatures: out,
      inFeatures: inp,
    });
  const qkv = linear(3 * dim, dim);
  const fc1 = linear(mlpDim, dim);
  const fc2 = linear(dim, mlpDim);
  const fc1Int8 = backend.prepareLinear(
    { weight: random(mlpDim * dim, 5), bias: null, outFeatures: mlpDim, inFeatures: dim },
    { precision: "int8" },
  );
  const gamma = backend.upload(random(dim, 6), [dim]);
  const segments = new Int32Array(rows).map((_, i) => Math.floor(i / tokens));
  const projected = backend.linear(x, qkv);
  // Records the op, waits for the GPU to finish it, frees the result.
  const once = async (make: () => Tensor[]) => {
    const outs = make();
    await backend.sync();
    for (const t of outs) backend.release(t);
  };
  const out: Record<string, number> = {};
  out[`gemm_f32 qkv [${rows}×${dim}]→${3 * dim}`] = await timeIt(
    runs,
    () => once(() => [backend.linear(x, qkv)]),
  );
  out[`gemm_f32+gelu fc1 →${mlpDim}`] = await timeIt(
    runs,
    () => once(() => [backend.linear(x, fc1, "gelu")]),
  );
  out[`gemm_int8+gelu fc1 →${mlpDim}`] = await timeIt(
    runs,
    () => once(() => [backend.linear(x, fc1Int8, "gelu")]),
  );
  out[`gemm_f32 fc2 ${mlpDim}→${dim}`] = await timeIt(
    runs,
    () => once(() => [backend.linear(hidden, fc2)]),
  );
  out[`attention_f32 ${images}×${tokens} tokens, ${heads}×${headDim}`] = await timeIt(
    runs,
    () =>
      once(() => [
        backend.attention(projected, projected, projected, {
          heads,
          headDim,
          scale: headDim ** -0.5,
          kOffset: dim,
          vOffset: 2 * dim,
          querySegments: segments,
        }).output,
      ]),
  );
  out[`layer_norm_f32 [${rows}×${dim}]`] = await timeIt(
    runs,
    () => once(() => [backend.layerNorm(x, gamma, gamma, 1e-6)]),
  );
  for (const t of [x, hidden, gamma, projected]) backend.release(t);
  for (const w of [qkv, fc1, fc2, fc1Int8]) backend.releaseLinear(w);
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      models: { type: "string", default: "deit-tiny,vit-b16" },
      batches: { type: "string", default: "1,8,64" },
      runs: { type: "string", default: "5" },
      "allow-fallback": { type: "boolean", default: false },
    },
  });
  const allowFallback = values["allow-fallback"];
  const gpu = navigatorGpu();
  if (!gpu) {
    console.log(
      'no real GPU adapter: WebGPU is not enabled (use --unstable-webgpu or deno.json "unstable": ["webgpu"])',
    );
    return;
  }
  const adapter = await requestAdapterWithTimeout(
    { powerPreference: "high-performance", forceFallbackAdapter: allowFallback },
    10_000,
  );
  const summary = adapter ? describeAdapter(adapter) : null;
  if (!adapter || (summary!.isFallbackAdapter && !allowFallback)) {
    console.log(
      `no real GPU adapter (${
        summary ? `only the fallback adapter "${summary.description}"` : "no adapter at all"
      }): ` +
        "WebGPU timings need a hardware GPU; nothing measured (--allow-fallback runs anyway)",
    );
    return;
  }
  const backend = await WebGpuBackend.create({ adapter, allowFallbackAdapter: allowFallback });
  const runs = Number(values.runs);
  const batches = values.batches.split(",").map(Number);
  console.log(`adapter: ${summary!.description}${summary!.isFallbackAdapter ? " (fallback)" : ""}`);
  try {
    for (const name of values.models.split(",")) {
      const config = SHAPES[name];
      if (!config) throw new Error(`unknown model shape ${name}; known: ${Object.keys(SHAPES)}`);
      const model = VitModel.create(backend, config, randomVitWeights(config, 7));
      try {
        for (const batch of batches) {
          const shape = [batch, 3, 224, 224] as const;
          const pixels = random(batch * 3 * 224 * 224, batch);
          const ms = await timeIt(runs, async () => {
            await model.forward(pixels, shape);
          });
          console.log(
            `${name} batch ${batch}: ${(ms / batch).toFixed(3)} ms/image (${
              ms.toFixed(2)
            } ms/batch)`,
          );
        }
      } finally {
        model.dispose();
      }
      const images = Math.max(...batches);
      for (
        const [kernel, ms] of Object.entries(await kernelTimings(backend, config, images, runs))
      ) {
        console.log(`  ${name} kernel ${kernel}: ${ms.toFixed(3)} ms`);
      }
    }
    const stats = backend.stats();
    console.log(`pipelines created: ${stats.pipelinesCreated}, live buffers: ${stats.liveBuffers}`);
  } finally {
    backend.dispose();
  }
}

if (import.meta.main) await main();
