/**
 * TypeScript reference of the wasm int8 GEMM (`kernels/src/int8.rs`), bit for bit: the
 * per-row unsigned 7-bit activation quantization and the integer dot products with the
 * float epilogue `f32(acc - z·rowsum) · f32(s_x·s_w) + bias`, every float step rounded to
 * float32 as the kernel does. Tests hold both wasm builds to it exactly.
 *
 * @example
 * ```ts
 * import { gemmInt8Reference, quantizeRowsU7 } from "./int8.ts";
 * const x = new Float32Array([0.5, -1, 2]);
 * console.log(quantizeRowsU7(x, 1, 3));
 * const y = gemmInt8Reference(x, 1, 3, new Int8Array([127, 0, -127]), new Float32Array([0.01]), null);
 * console.log(y);
 * ```
 *
 * @module
 */

const f32 = Math.fround;

/** Round half to even, as wasm's `f32x4.nearest`. */
function nearest(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Activations of `m` rows of `k`, quantized per row to 0…127 with a zero point. */
export interface QuantizedRows {
  /** `[m, k]` values in 0…127. */
  values: Uint8Array;
  /** `[m]`: `x ≈ scale·(q - zero)`. */
  scales: Float32Array;
  zeros: Int32Array;
}

/** Per-row unsigned 7-bit quantization with a zero point (range widened to hold 0). */
export function quantizeRowsU7(x: Float32Array, m: number, k: number): QuantizedRows {
  const values = new Uint8Array(m * k);
  const scales = new Float32Array(m);
  const zeros = new Int32Array(m);
  for (let i = 0; i < m; i++) {
    let lo = 0;
    let hi = 0;
    let finite = true;
    for (let c = 0; c < k; c++) {
      const v = x[i * k + c];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      finite &&= Number.isFinite(v);
    }
    let scale = f32(f32(hi - lo) / 127);
    if (!finite || scale === Infinity) {
      // NaN or ±inf in the row: all q = 0 and a NaN scale, so the row's outputs are NaN.
      scales[i] = NaN;
      continue;
    }
    if (!(scale > 0)) scale = 1;
    const inv = f32(1 / scale);
    const zero = Math.min(127, Math.max(0, nearest(f32(-lo * inv))));
    scales[i] = scale;
    zeros[i] = zero;
    for (let c = 0; c < k; c++) {
      const q = nearest(f32(x[i * k + c] * inv)) + zero;
      values[i * k + c] = Math.min(127, Math.max(0, q));
    }
  }
  return { values, scales, zeros };
}

/**
 * `[m, n]` result of the int8 GEMM: activations `x` (`[m, k]` floats) quantized with
 * {@link quantizeRowsU7}, weights `w` (`[n, k]` int8) with per-channel `scales`.
 */
export function gemmInt8Reference(
  x: Float32Array,
  m: number,
  k: number,
  w: Int8Array,
  scales: Float32Array,
  bias: Float32Array | null,
): Float32Array {
  const n = scales.length;
  const { values, scales: rowScales, zeros } = quantizeRowsU7(x, m, k);
  const rowSums = new Int32Array(n);
  for (let j = 0; j < n; j++) {
    let sum = 0;
    for (let c = 0; c < k; c++) sum += w[j * k + c];
    rowSums[j] = sum;
  }
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let c = 0; c < k; c++) acc += w[j * k + c] * values[i * k + c];
      const exact = acc - zeros[i] * rowSums[j];
      const y = f32(f32(exact) * f32(rowScales[i] * scales[j]));
      // The kernel always adds (a zero bias too), which turns -0 into +0.
      out[i * n + j] = f32(y + (bias ? bias[j] : 0));
    }
  }
  return out;
}
