/**
 * Self-attention through the raw wasm kernels, for the benches that time the kernels
 * themselves rather than a backend op.
 *
 * @module
 */

import type { KernelExports } from "../wasm/kernels.ts";

/** Where a fused `[tokens, 3·heads·headDim]` qkv buffer and its output live in kernel memory. */
export interface PackedSelfAttention {
  qkv: number;
  out: number;
  tokens: number;
  heads: number;
  headDim: number;
  /** Scratch of `attention_scratch_len_int8` bytes or `attention_scratch_len_f32` floats. */
  scratch: number;
}

/**
 * One call of `attention_int8` or `attention_f32` over `a.qkv`: every token attends to every
 * token (no segments), scale `headDim^-0.5`, no CLS probabilities.
 */
export function selfAttention(exports: KernelExports, int8: boolean, a: PackedSelfAttention): void {
  const width = a.heads * a.headDim;
  (int8 ? exports.attention_int8 : exports.attention_f32)(
    a.qkv,
    3 * width,
    a.qkv + width * 4,
    3 * width,
    a.qkv + 2 * width * 4,
    3 * width,
    a.out,
    a.tokens,
    a.tokens,
    a.heads,
    a.headDim,
    a.headDim ** -0.5,
    0,
    0,
    0,
    a.scratch,
  );
}
