/**
 * int8 attention against float32 attention on the wasm backend (issue 8): both kernels on
 * the same fused qkv, interleaved round by round in one process, so the ratio holds even
 * when the shared machine's speed drifts. Shapes: DeiT-Tiny / ViT-B heads (64 wide) at 197
 * tokens, and the narrower heads that stay float32 (`INT8_ATTENTION_MIN_HEAD_DIM`): the
 * int8 kernel is timed there too, to show why.
 *
 *     deno run --allow-read bench/attention_int8.ts [--rounds 25]
 *
 * Prints the median ms per call of each kernel and the float32 ÷ int8 ratio.
 *
 * @module
 */

import { Kernels } from "../wasm/kernels.ts";
import { seededRandom } from "../src/models/vit.ts";
import { selfAttention } from "./_attention.ts";

const roundsAt = Deno.args.indexOf("--rounds");
const rounds = roundsAt >= 0 ? Number(Deno.args[roundsAt + 1]) : 25;

/** [tokens, heads, head dim] */
const SHAPES: [number, number, number][] = [
  [197, 3, 64],
  [197, 12, 64],
  [197, 4, 48],
  [197, 6, 32],
  [197, 12, 16],
  [50, 4, 16],
  [50, 2, 32],
  [50, 1, 64],
];

const kernels = await Kernels.load({});
const e = kernels.exports;
const random = seededRandom(7);
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];

console.log(`kernels: ${kernels.flavour}; ${rounds} rounds, each ≥ 20 ms of calls per kernel\n`);
console.log("| tokens | heads × dim | f32 ms | int8 ms | f32 ÷ int8 |");
console.log("| -----: | ----------: | -----: | ------: | ---------: |");
for (const [tokens, heads, headDim] of SHAPES) {
  const width = heads * headDim;
  const qkv = kernels.alloc(tokens * 3 * width * 4);
  kernels.f32(qkv, tokens * 3 * width).set(
    Float32Array.from({ length: tokens * 3 * width }, () => random() * 4 - 2),
  );
  const out = kernels.alloc(tokens * width * 4);
  const scratchF32 = kernels.alloc(e.attention_scratch_len_f32(tokens, headDim) * 4);
  const scratchInt8 = kernels.alloc(e.attention_scratch_len_int8(tokens, tokens, headDim));
  const run = (int8: boolean) =>
    selfAttention(e, int8, {
      qkv,
      out,
      tokens,
      heads,
      headDim,
      scratch: int8 ? scratchInt8 : scratchF32,
    });
  const times: Record<"f32" | "int8", number[]> = { f32: [], int8: [] };
  for (let round = 0; round < rounds + 3; round++) {
    for (const kind of ["f32", "int8"] as const) {
      let calls = 0;
      const start = performance.now();
      while (performance.now() - start < 20) {
        run(kind === "int8");
        calls++;
      }
      // The first rounds warm the kernels up (wasm tier-up).
      if (round >= 3) times[kind].push((performance.now() - start) / calls);
    }
  }
  const [f32, int8] = [median(times.f32), median(times.int8)];
  console.log(
    `| ${tokens} | ${heads} × ${headDim} | ${f32.toFixed(3)} | ${int8.toFixed(3)} | ${
      (f32 / int8).toFixed(2)
    } |`,
  );
  for (const ptr of [qkv, out, scratchF32, scratchInt8]) kernels.free(ptr);
}
