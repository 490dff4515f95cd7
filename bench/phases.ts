/**
 * Watches the host's speed phases: the wasm kernels on DeiT-Tiny's shapes take turns for a
 * while, and each line prints one round's rate of every kernel. On a shared host some rounds
 * run at full speed and some at about half; comparing the kernels within a round shows which
 * kind of code a slow phase hurts (bench/README.md, "Seventh session"). Run it once plainly
 * and once with `--v8-flags=--no-wasm-bounds-checks` (a V8 testing flag, never for serving)
 * to see what the software bounds checks cost in each phase.
 *
 *     deno run --allow-read bench/phases.ts [--seconds 40] [--slice-ms 120]
 *
 * Columns: float32 GEMMs (GFLOP/s) on 197×192×48 (37 KB of weights), 197×192×768 and
 * 197×768×192; the int8 GEMM on 197×192×768 (GOP/s, activation quantization included); the
 * float32 and int8 attention of one layer (197 tokens, 3 heads of 64; GFLOP/s or GOP/s of
 * both products).
 *
 * @module
 */

import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { seededRandom } from "../src/models/vit.ts";
import { selfAttention } from "./_attention.ts";

function option(name: string, fallback: number): number {
  const at = Deno.args.indexOf(name);
  return at >= 0 ? Number(Deno.args[at + 1]) : fallback;
}
const seconds = option("--seconds", 40);
const sliceMs = option("--slice-ms", 120);

const backend = await WasmBackend.create();
const exports = backend.kernels.exports;
const random = seededRandom(11);
const values = (n: number) => Float32Array.from({ length: n }, () => random() - 0.5);

interface Case {
  name: string;
  ops: number;
  run: () => void;
}

function linearCase(rows: number, inFeatures: number, outFeatures: number, int8: boolean): Case {
  const weights = backend.prepareLinear(
    {
      weight: values(outFeatures * inFeatures),
      bias: values(outFeatures),
      outFeatures,
      inFeatures,
    },
    { precision: int8 ? "int8" : "f32" },
  );
  const x = backend.upload(values(rows * inFeatures), [rows, inFeatures]);
  return {
    name: `${int8 ? "i8" : "f32"} ${rows}×${inFeatures}×${outFeatures}`,
    ops: 2 * rows * inFeatures * outFeatures,
    run: () => backend.release(backend.linear(x, weights)),
  };
}

function attentionCase(int8: boolean): Case {
  const [tokens, heads, headDim] = [197, 3, 64];
  const width = heads * headDim;
  const kernels = backend.kernels;
  const qkv = kernels.alloc(tokens * 3 * width * 4);
  kernels.f32(qkv, tokens * 3 * width).set(values(tokens * 3 * width).map((v) => 4 * v));
  const out = kernels.alloc(tokens * width * 4);
  const scratch = kernels.alloc(
    int8
      ? exports.attention_scratch_len_int8(tokens, tokens, headDim)
      : 4 * exports.attention_scratch_len_f32(tokens, headDim),
  );
  const call = { qkv, out, tokens, heads, headDim, scratch };
  return {
    name: `${int8 ? "i8" : "f32"} attention`,
    ops: 2 * 2 * tokens * tokens * headDim * heads,
    run: () => selfAttention(exports, int8, call),
  };
}

const cases = [
  linearCase(197, 192, 48, false),
  linearCase(197, 192, 768, false),
  linearCase(197, 768, 192, false),
  linearCase(197, 192, 768, true),
  attentionCase(false),
  attentionCase(true),
];
for (const c of cases) for (let i = 0; i < 20; i++) c.run(); // past the wasm tier-up
console.log(cases.map((c) => c.name.padStart(16)).join(""));
const end = performance.now() + seconds * 1000;
while (performance.now() < end) {
  const line = cases.map((c) => {
    const start = performance.now();
    let calls = 0;
    while (performance.now() - start < sliceMs) {
      c.run();
      calls++;
    }
    return (c.ops * calls / ((performance.now() - start) * 1e6)).toFixed(1).padStart(16);
  });
  console.log(line.join(""));
}
