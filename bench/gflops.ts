/**
 * GFLOP/s of the wasm kernels: the GEMMs of a ViT-Tiny/Small/Base block at 197 tokens
 * and attention at 197 and 1024 tokens, single-threaded, for the relaxed-SIMD and the
 * plain SIMD build. Every configuration is first checked against the reference backend.
 * Each figure is the median (and the best) of `--runs` timed runs after warm-up; a run
 * repeats the call until it has taken at least ~0.2 s.
 *
 * Usage: `deno run --allow-read --allow-sys=loadavg bench/gflops.ts [--runs 7] [--flavours relaxed,plain]
 * [--only gemm|attention]`
 *
 * @module
 */

import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import type { KernelFlavour } from "../wasm/kernels.ts";
import {
  ATTENTION_SHAPES,
  attentionFlops,
  GEMM_SHAPES,
  gemmFlops,
  prepareAttention,
  prepareGemm,
} from "./kernel_shapes.ts";

function argument(name: string, fallback: string): string {
  const index = Deno.args.indexOf(`--${name}`);
  return index >= 0 && Deno.args[index + 1] ? Deno.args[index + 1] : fallback;
}

const runs = Number(argument("runs", "7"));
const flavours = argument("flavours", "relaxed,plain").split(",") as KernelFlavour[];
const only = argument("only", "");

/** Median and best seconds per call of `run`. */
function time(run: () => void): { median: number; best: number } {
  // Warm-up: let V8 tier the kernels up to TurboFan and the allocator reach steady state.
  let reps = 1;
  const start = performance.now();
  run();
  const first = performance.now() - start;
  reps = Math.max(1, Math.ceil(200 / Math.max(first, 0.01)));
  for (let i = 0; i < Math.min(reps, 20); i++) run();
  const perCall: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) run();
    perCall.push((performance.now() - t0) / reps / 1000);
  }
  perCall.sort((a, b) => a - b);
  return { median: perCall[perCall.length >> 1], best: perCall[0] };
}

/** The load average (other jobs on the cores disturb the figures). */
function loadAverage(): string {
  try {
    return Deno.loadavg().map((value) => value.toFixed(2)).join(" ");
  } catch {
    return "unknown (run with --allow-sys=loadavg)";
  }
}

console.log(
  `load average ${loadAverage()} on ${navigator.hardwareConcurrency} cores; ${runs} runs per figure`,
);

for (const flavour of flavours) {
  const backend = await WasmBackend.create({ flavour });
  if (only !== "attention") {
    console.log(`\nGEMM ${flavour}: C[M,N] = A[M,K]·Wᵀ + b, GFLOP/s median (best)`);
    for (const shape of GEMM_SHAPES) {
      const gemm = await prepareGemm(backend, shape);
      const { median, best } = time(gemm.run);
      gemm.dispose();
      const flops = gemmFlops(shape);
      console.log(
        `${`${shape.model} ${shape.layer}`.padEnd(16)} ${shape.m}×${shape.k}×${shape.n}`.padEnd(
          34,
        ) +
          `${(flops / median / 1e9).toFixed(1).padStart(6)} (${(flops / best / 1e9).toFixed(1)})  ${
            (median * 1e3).toFixed(2)
          } ms`,
      );
    }
  }
  if (only !== "gemm") {
    console.log(`\nattention ${flavour}: fused qkv, online softmax, GFLOP/s median (best)`);
    for (const shape of ATTENTION_SHAPES) {
      const attention = await prepareAttention(backend, shape);
      const { median, best } = time(attention.run);
      attention.dispose();
      const flops = attentionFlops(shape);
      console.log(
        `${shape.name} (${shape.heads}×${shape.headDim})`.padEnd(34) +
          `${(flops / median / 1e9).toFixed(1).padStart(6)} (${(flops / best / 1e9).toFixed(1)})  ${
            (median * 1e3).toFixed(2)
          } ms`,
      );
    }
  }
  backend.dispose();
}
console.log(`\nload average ${loadAverage()} at the end`);
