/**
 * GFLOP/s of the wasm kernels: the float32 GEMMs (and GOP/s of the int8 GEMMs) of a
 * ViT-Tiny/Small/Base block at 197 tokens and attention at 197 and 1024 tokens,
 * single-threaded, for the relaxed-SIMD and the plain SIMD build. Every configuration is
 * first checked against the reference backend (int8: bit for bit against its TypeScript
 * model).
 * Each figure is the median (and the best) of `--runs` timed runs after warm-up; a run
 * repeats the call until it has taken at least ~0.2 s.
 *
 * Usage: `deno run --allow-read --allow-sys=loadavg bench/gflops.ts [--runs 7]
 * [--flavours relaxed,plain] [--only gemm|attention]`
 *
 * @module
 */

import process from "node:process";
import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import type { KernelFlavour } from "../wasm/kernels.ts";
import {
  ATTENTION_SHAPES,
  attentionFlops,
  GEMM_SHAPES,
  gemmFlops,
  type GemmShape,
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

/**
 * Median and best wall seconds per call of `run`, and the median process CPU seconds
 * per call: on a shared machine the CPU time leaves out the time other jobs held the
 * core (not their cache and SMT-sibling interference).
 */
function time(
  run: () => void,
): { median: number; best: number; cpu: number; cpuBest: number } {
  // Warm-up: let V8 tier the kernels up to TurboFan and the allocator reach steady state.
  let reps = 1;
  const start = performance.now();
  run();
  const first = performance.now() - start;
  reps = Math.max(1, Math.ceil(200 / Math.max(first, 0.01)));
  for (let i = 0; i < Math.min(reps, 20); i++) run();
  const perCall: number[] = [];
  const cpuPerCall: number[] = [];
  for (let r = 0; r < runs; r++) {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) run();
    perCall.push((performance.now() - t0) / reps / 1000);
    const cpu = process.cpuUsage(cpu0);
    cpuPerCall.push((cpu.user + cpu.system) / 1e6 / reps);
  }
  perCall.sort((a, b) => a - b);
  cpuPerCall.sort((a, b) => a - b);
  return {
    median: perCall[perCall.length >> 1],
    best: perCall[0],
    cpu: cpuPerCall[runs >> 1],
    cpuBest: cpuPerCall[0],
  };
}

const HEADER = `${"".padEnd(34)}GFLOP/s: median  (best)  per-CPU-s (best)   median ms`;

/**
 * One line of the table: GFLOP/s from the median and best wall time, and from the median
 * and best CPU time per run (the best run is the one least slowed by an SMT sibling).
 */
function row(
  label: string,
  flops: number,
  { median, best, cpu, cpuBest }: { median: number; best: number; cpu: number; cpuBest: number },
): string {
  const rate = (seconds: number) => (flops / seconds / 1e9).toFixed(1);
  return label.padEnd(34) + `${rate(median).padStart(14)}  (${rate(best).padStart(5)})` +
    `${rate(cpu).padStart(11)} (${rate(cpuBest).padStart(5)})` +
    `${(median * 1e3).toFixed(2).padStart(11)}`;
}

function gemmLabel(shape: GemmShape): string {
  return `${shape.model} ${shape.layer}`.padEnd(16) + ` ${shape.m}×${shape.k}×${shape.n}`;
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
    console.log(`\nGEMM ${flavour}: C[M,N] = A[M,K]·Wᵀ + b`);
    console.log(HEADER);
    for (const shape of GEMM_SHAPES) {
      const gemm = await prepareGemm(backend, shape);
      console.log(row(gemmLabel(shape), gemmFlops(shape), time(gemm.run)));
      gemm.dispose();
    }
    console.log(`\nint8 GEMM ${flavour}: per-row 7-bit activations × int8 weights`);
    console.log(HEADER.replace("GFLOP/s", "  GOP/s"));
    for (const shape of GEMM_SHAPES) {
      const gemm = await prepareGemm(backend, shape, "int8");
      console.log(row(gemmLabel(shape), gemmFlops(shape), time(gemm.run)));
      gemm.dispose();
    }
  }
  if (only !== "gemm") {
    console.log(`\nattention ${flavour}: fused qkv, segment mask, online softmax`);
    console.log(HEADER);
    for (const shape of ATTENTION_SHAPES) {
      const attention = await prepareAttention(backend, shape);
      const timing = time(attention.run);
      attention.dispose();
      const label = `${shape.name} (${shape.heads}×${shape.headDim})`;
      console.log(row(label, attentionFlops(shape), timing));
    }
  }
  backend.dispose();
}
console.log(`\nload average ${loadAverage()} at the end`);
