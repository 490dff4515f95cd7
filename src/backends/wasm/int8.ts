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

/** Inputs of {@link attentionInt8Reference}: `[rows, heads·headDim]` row-major views. */
export interface Int8AttentionCase {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  queries: number;
  keys: number;
  heads: number;
  headDim: number;
  scale: number;
  /** Nondecreasing segment ids of the query and key rows; omitted: all 0. */
  querySegments?: Int32Array;
  keySegments?: Int32Array;
}

/** Symmetric int8 of `x·inv`, as the kernel's `to_i8`. */
function toInt8(x: number, inv: number): number {
  return Math.min(127, Math.max(-127, nearest(f32(x * inv))));
}

/** `max|x| / 127` as a float32, or 1 for an all-zero set. */
function symmetricScale(max: number): number {
  return max > 0 ? f32(max / 127) : 1;
}

const LOG2E = f32(1.442695);
const SHIFTER = 12582912; // 1.5·2²³
const EXP2_P = [6.931242347e-1, 2.402409911e-1, 5.590629950e-2, 9.582798928e-3].map(f32);

/**
 * The kernels' reproducible e^x for x ≤ 0 (`exp_nonpos_reproducible_n` in
 * kernels/src/math.rs): unfused float32 multiplies and adds, so this matches bit for bit.
 */
export function expNonPositiveReproducible(x: number): number {
  const y = f32((x < -87 ? -87 : x) * LOG2E);
  const t = f32(y + SHIFTER);
  const n = t - SHIFTER;
  const r = f32(y - n);
  let p = EXP2_P[3];
  p = f32(f32(p * r) + EXP2_P[2]);
  p = f32(f32(p * r) + EXP2_P[1]);
  p = f32(f32(p * r) + EXP2_P[0]);
  p = f32(f32(p * r) + 1);
  return f32(p * 2 ** n);
}

/** What {@link attentionInt8Reference} returns. */
export interface Int8AttentionResult {
  /** `[queries, heads·headDim]`. */
  output: Float32Array;
  /** `[keys, heads]`: each segment's first query row's probabilities `e/Σe`. */
  clsAttention: Float32Array;
}

/**
 * The wasm int8 attention (`kernels/src/attention_int8.rs`), bit for bit: q per row at
 * unsigned 7 bits with a zero point, k per key row and v per column of each segment at
 * int8, logits `f32(acc - z·Σk) · f32(s_q·scale · s_k)`, the reproducible exp, probabilities
 * `nearest(127·e)` and `out = f32(Σ p·v) · f32(s_v · (1/Σp))`.
 *
 * @example
 * ```ts
 * import { attentionInt8Reference } from "./int8.ts";
 * const x = new Float32Array([0.1, -0.4, 0.3, 0.2]);
 * const { output } = attentionInt8Reference({
 *   q: x, k: x, v: x, queries: 2, keys: 2, heads: 1, headDim: 2, scale: 0.7,
 * });
 * console.log(output);
 * ```
 */
export function attentionInt8Reference(c: Int8AttentionCase): Int8AttentionResult {
  const { queries, keys, heads, headDim: d } = c;
  // The kernel takes the scale as a float32 argument.
  const scale = f32(c.scale);
  const width = heads * d;
  const qSeg = c.querySegments ?? new Int32Array(queries);
  const kSeg = c.keySegments ??
    (c.querySegments && queries === keys ? c.querySegments : new Int32Array(keys));
  const output = new Float32Array(queries * width);
  const clsAttention = new Float32Array(keys * heads);
  for (let h = 0; h < heads; h++) {
    const qHead = new Float32Array(queries * d);
    for (let i = 0; i < queries; i++) {
      qHead.set(c.q.subarray(i * width + h * d, i * width + h * d + d), i * d);
    }
    const qq = quantizeRowsU7(qHead, queries, d);
    let qa = 0;
    while (qa < queries) {
      const id = qSeg[qa];
      let qb = qa + 1;
      while (qb < queries && qSeg[qb] === id) qb++;
      const members: number[] = [];
      for (let j = 0; j < keys; j++) if (kSeg[j] === id) members.push(j);
      const n = members.length;
      // k per key row, v per column over the segment's keys.
      const kq = new Int32Array(n * d);
      const kSum = new Int32Array(n);
      const kScale = new Float32Array(n);
      let finite = true;
      members.forEach((j, t) => {
        let max = 0;
        for (let e = 0; e < d; e++) {
          const x = c.k[j * width + h * d + e];
          finite &&= Number.isFinite(x);
          max = Math.max(max, Math.abs(x));
        }
        kScale[t] = symmetricScale(max);
        const inv = f32(1 / kScale[t]);
        for (let e = 0; e < d; e++) {
          kq[t * d + e] = toInt8(c.k[j * width + h * d + e], inv);
          kSum[t] += kq[t * d + e];
        }
      });
      const vq = new Int32Array(n * d);
      const vScale = new Float32Array(d);
      for (let e = 0; e < d; e++) {
        let max = 0;
        for (const j of members) {
          const x = c.v[j * width + h * d + e];
          finite &&= Number.isFinite(x);
          max = Math.max(max, Math.abs(x));
        }
        vScale[e] = symmetricScale(max);
        const inv = f32(1 / vScale[e]);
        members.forEach((j, t) => vq[t * d + e] = toInt8(c.v[j * width + h * d + e], inv));
      }
      if (n === 0 || !finite) {
        for (let i = qa; i < qb; i++) {
          output.fill(n === 0 ? 0 : NaN, i * width + h * d, i * width + h * d + d);
        }
        for (const j of members) clsAttention[j * heads + h] = NaN;
        qa = qb;
        continue;
      }
      for (let i = qa; i < qb; i++) {
        const o = i * width + h * d;
        const rowScale = f32(qq.scales[i] * scale);
        const e = new Float32Array(n);
        let max = -Infinity;
        for (let t = 0; t < n; t++) {
          let acc = 0;
          for (let x = 0; x < d; x++) acc += qq.values[i * d + x] * kq[t * d + x];
          const exact = acc - qq.zeros[i] * kSum[t];
          e[t] = f32(f32(exact) * f32(rowScale * kScale[t]));
          if (e[t] > max) max = e[t];
        }
        let total = 0;
        const p = new Int32Array(n);
        for (let t = 0; t < n; t++) {
          e[t] = expNonPositiveReproducible(f32(e[t] - max));
          p[t] = nearest(f32(e[t] * 127));
          total += p[t];
        }
        const inv = Number.isNaN(qq.scales[i]) ? NaN : f32(1 / total);
        for (let x = 0; x < d; x++) {
          let acc = 0;
          for (let t = 0; t < n; t++) acc += p[t] * vq[t * d + x];
          output[o + x] = f32(f32(acc) * f32(vScale[x] * inv));
        }
        if (i === qa) {
          let eTotal = 0;
          for (let t = 0; t < n; t++) eTotal = f32(eTotal + e[t]);
          const invE = f32(1 / eTotal);
          members.forEach((j, t) => clsAttention[j * heads + h] = f32(e[t] * invE));
        }
      }
      qa = qb;
    }
  }
  return { output, clsAttention };
}
