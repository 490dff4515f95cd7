//! Multi-head attention with both matrix products on the int8 dot (the int8 models'
//! attention). Float32 attention does 4 multiply-adds per instruction; the relaxed int8 dot
//! does 16, so `q·kᵀ` and `p·v` run on it and only the softmax stays in float32.
//!
//! Per head and per segment (one image of a packed batch):
//! - k: int8 per key row, symmetric (`k ≈ s_k·k_q`), with the row sums the zero-point
//!   correction needs;
//! - v: int8 per column over the segment's keys, symmetric;
//! - q: unsigned 7-bit per row with a zero point, as the int8 GEMM's activations (int8.rs);
//! - logits `f32(acc - z_q·Σk_q) · f32(s_q·scale · s_k)`, softmax over the whole row in
//!   float32 (a reproducible exp, see math.rs) and probabilities quantized to
//!   `p_q = nearest(127·e^(s - max))`: 0…127, the dot's unsigned operand, the largest
//!   exactly 127;
//! - `out = f32(Σ p_q·v_q) · f32(s_v · (1/Σp_q))`: dividing by the sum of the *quantized*
//!   probabilities keeps the weights summing to one.
//!
//! Every scale is per row, per key or per segment, so an image's result does not depend on
//! the other images of its batch. Every step is integer or an unfused float32 operation,
//! so both builds and the TypeScript model (src/backends/wasm/int8.ts) agree bit for bit.
//!
//! Dot layout: a head dim of 64 is only 4 int8 vectors long, too short for the GEMM's
//! horizontal reductions to pay off. Here lanes are outputs instead: the packed operand
//! holds 4 rows × 4 k-values per vector and the other operand's 4 k-values are splat to
//! every lane, so lane `l` accumulates row `l`'s dot product and a tile needs no reduction.
//! k is packed `[keys/4][d/4][4 keys][4 dims]`, vᵀ `[d/4][keys/4][4 dims][4 keys]`, and
//! one micro-kernel serves both products: 4 query rows × 8 outputs per tile.
//!
//! NaN or ±inf in a segment's k or v makes its outputs NaN, and in a q row that row's, as
//! they would be in float32.

use crate::attention::{bound, seg};
use crate::int8::{Act, quantize_rows};
use crate::math::{ROUNDER, ReproducibleExpConstants, exp_nonpos_reproducible_n};
use crate::simd::*;

/// Query rows per tile.
const MR: usize = 4;
/// Output groups of 4 per tile.
const NC: usize = 2;

#[inline(always)]
fn align16(bytes: usize) -> usize {
    bytes.div_ceil(16) * 16
}

/// Byte offsets of the scratch regions, for `queries` rows, up to `keys` keys per
/// segment and `head_dim` columns per head.
struct Layout {
    q_values: usize,
    q_scales: usize,
    q_zeros: usize,
    k_packed: usize,
    k_sums: usize,
    k_scales: usize,
    v_packed: usize,
    v_scales: usize,
    v_inverses: usize,
    scores: usize,
    probs: usize,
    total: usize,
}

impl Layout {
    fn new(queries: usize, keys: usize, head_dim: usize) -> Layout {
        let d16 = head_dim.div_ceil(16) * 16;
        let keys16 = keys.div_ceil(16) * 16;
        // Activations are i16 in the plain build: room for the wider one in both.
        let sizes = [
            queries * d16 * 2,
            queries * 4,
            queries * 4,
            keys16 * d16,
            keys16 * 4,
            keys16 * 4,
            d16 * keys16,
            d16 * 4,
            d16 * 4,
            MR * keys16 * 4,
            MR * keys16 * 2,
        ];
        let mut at = [0usize; 12];
        for (i, size) in sizes.iter().enumerate() {
            at[i + 1] = at[i] + align16(*size);
        }
        Layout {
            q_values: at[0],
            q_scales: at[1],
            q_zeros: at[2],
            k_packed: at[3],
            k_sums: at[4],
            k_scales: at[5],
            v_packed: at[6],
            v_scales: at[7],
            v_inverses: at[8],
            scores: at[9],
            probs: at[10],
            total: at[11],
        }
    }
}

/// Bytes of scratch `attention_int8` needs (16-byte aligned).
#[unsafe(no_mangle)]
pub extern "C" fn attention_scratch_len_int8(
    queries: usize,
    keys: usize,
    head_dim: usize,
) -> usize {
    Layout::new(queries, keys, head_dim).total
}

/// `x·inv` rounded to the nearest integer (ties to even) and clamped to ±127, as i32 lanes
/// (`|x·inv| ≤ 127` up to rounding here, so [`ROUNDER`] applies).
#[inline(always)]
fn quantize_i8(x: v128, inv: v128) -> v128 {
    let rounder = f32x4_splat(ROUNDER);
    let q = i32x4_sub(f32x4_add(f32x4_mul(x, inv), rounder), rounder);
    i32x4_min(i32x4_max(q, i32x4_splat(-127)), i32x4_splat(127))
}

/// Four i32x4 of values in ±127 as 16 bytes, `a`'s lanes first.
#[inline(always)]
fn narrow_i8(a: v128, b: v128, c: v128, d: v128) -> v128 {
    i8x16_narrow_i16x8(i16x8_narrow_i32x4(a, b), i16x8_narrow_i32x4(c, d))
}

/// `max/127`, or 1 for an all-zero set.
#[inline(always)]
fn symmetric_scale(max: f32) -> f32 {
    if max > 0.0 { max / 127.0 } else { 1.0 }
}

#[inline(always)]
fn hsum_i32(v: v128) -> i32 {
    i32x4_extract_lane::<0>(v)
        + i32x4_extract_lane::<1>(v)
        + i32x4_extract_lane::<2>(v)
        + i32x4_extract_lane::<3>(v)
}

/// Packs keys `[0, n)` (rows of `k`, `stride` floats apart, `d` wide) as
/// `[n16/4][d16/4][4 keys][4 dims]` int8, zero-padded, with per-key scales and sums
/// (`n16` entries). Returns false on NaN or ±inf.
unsafe fn pack_keys(
    k: *const f32,
    stride: usize,
    n: usize,
    d: usize,
    packed: *mut i8,
    sums: *mut i32,
    scales: *mut f32,
) -> bool {
    unsafe {
        let d16 = d.div_ceil(16) * 16;
        let n16 = n.div_ceil(16) * 16;
        // x - x is 0 for finite x and NaN for NaN and ±inf.
        let mut bad = f32x4_splat(0.0);
        for j in 0..n16 {
            if j >= n {
                *scales.add(j) = 0.0;
                continue;
            }
            let row = k.add(j * stride);
            let mut max = f32x4_splat(0.0);
            let mut c = 0;
            while c < d {
                let x = load_padded(row, c, d);
                max = f32x4_pmax(max, f32x4_abs(x));
                bad = f32x4_add(bad, f32x4_sub(x, x));
                c += 4;
            }
            *scales.add(j) = symmetric_scale(hmax(max));
        }
        let zero = f32x4_splat(0.0);
        let mut group = 0;
        while group < n16 {
            let mut inv = [zero; 4];
            let mut rows = [k; 4];
            for r in 0..4 {
                let j = group + r;
                if j < n {
                    inv[r] = f32x4_splat(1.0 / *scales.add(j));
                    rows[r] = k.add(j * stride);
                }
            }
            let mut sum = [i32x4_splat(0); 4];
            let dst = packed.add(group * d16);
            for step in 0..d16 / 4 {
                // Rows past n have inv 0, hence q 0.
                let mut q = [zero; 4];
                for r in 0..4 {
                    q[r] = quantize_i8(load_padded(rows[r], 4 * step, d), inv[r]);
                    sum[r] = i32x4_add(sum[r], q[r]);
                }
                v128_store(
                    dst.add(16 * step) as *mut v128,
                    narrow_i8(q[0], q[1], q[2], q[3]),
                );
            }
            for r in 0..4 {
                *sums.add(group + r) = hsum_i32(sum[r]);
            }
            group += 4;
        }
        hsum(bad) == 0.0
    }
}

/// Packs `vᵀ` of keys `[0, n)` as `[d16/4][n16/4][4 dims][4 keys]` int8, zero-padded, one
/// scale per column over the `n` keys (`scales`, `inverses`: `d16` floats each). Returns
/// false on NaN or ±inf.
unsafe fn pack_values_transposed(
    v: *const f32,
    stride: usize,
    n: usize,
    d: usize,
    packed: *mut i8,
    scales: *mut f32,
    inverses: *mut f32,
) -> bool {
    unsafe {
        let n16 = n.div_ceil(16) * 16;
        let d16 = d.div_ceil(16) * 16;
        let zero = f32x4_splat(0.0);
        let mut bad = zero;
        for c in (0..d16).step_by(4) {
            store(scales.add(c), zero);
        }
        // Column maxima, walking rows (contiguous loads).
        for j in 0..n {
            let row = v.add(j * stride);
            let mut c = 0;
            while c < d {
                let x = load_padded(row, c, d);
                bad = f32x4_add(bad, f32x4_sub(x, x));
                store(scales.add(c), f32x4_pmax(load(scales.add(c)), f32x4_abs(x)));
                c += 4;
            }
        }
        for c in 0..d16 {
            let scale = symmetric_scale(*scales.add(c));
            *scales.add(c) = scale;
            // Padding columns quantize to 0.
            *inverses.add(c) = if c < d { 1.0 / scale } else { 0.0 };
        }
        let mut step = 0;
        while step < n16 {
            let mut rows = [v; 4];
            let mut live = [false; 4];
            for r in 0..4 {
                live[r] = step + r < n;
                if live[r] {
                    rows[r] = v.add((step + r) * stride);
                }
            }
            for group in 0..d16 / 4 {
                let inv = load(inverses.add(4 * group));
                let mut q = [zero; 4];
                for r in 0..4 {
                    if live[r] {
                        q[r] = quantize_i8(load_padded(rows[r], 4 * group, d), inv);
                    }
                }
                // [4 keys][4 dims] → [4 dims][4 keys]: one byte shuffle.
                let keys_major = narrow_i8(q[0], q[1], q[2], q[3]);
                let dims_major =
                    i8x16_shuffle::<0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15>(
                        keys_major, keys_major,
                    );
                v128_store(
                    packed.add(group * 4 * n16 + 4 * step) as *mut v128,
                    dims_major,
                );
            }
            step += 4;
        }
        hsum(bad) == 0.0
    }
}

/// k-values per 16-byte load of the splatted operand: 4 bytes (relaxed) or 4 i16 (plain)
/// per step.
#[cfg(target_feature = "relaxed-simd")]
const STEPS_PER_LOAD: usize = 4;
#[cfg(not(target_feature = "relaxed-simd"))]
const STEPS_PER_LOAD: usize = 2;

/// The 4 k-values of step `s` of a loaded 16-byte chunk, in every lane.
#[inline(always)]
fn splat_step(chunk: v128, s: usize) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        match s {
            0 => i32x4_shuffle::<0, 0, 0, 0>(chunk, chunk),
            1 => i32x4_shuffle::<1, 1, 1, 1>(chunk, chunk),
            2 => i32x4_shuffle::<2, 2, 2, 2>(chunk, chunk),
            _ => i32x4_shuffle::<3, 3, 3, 3>(chunk, chunk),
        }
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        match s {
            0 => i64x2_shuffle::<0, 0>(chunk, chunk),
            _ => i64x2_shuffle::<1, 1>(chunk, chunk),
        }
    }
}

/// Lane `l` of `acc` += Σₜ packed[4l + t] · splat[t]: row `l`'s 4 products of this step.
#[inline(always)]
fn dot_rows(packed: v128, splat: v128, acc: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        // Exact: the splat operand is in 0…127.
        i32x4_relaxed_dot_i8x16_i7x16_add(packed, splat, acc)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(packed), splat);
        let hi = i32x4_dot_i16x8(i16x8_extend_high_i8x16(packed), splat);
        let pairs = i32x4_add(
            i32x4_shuffle::<0, 2, 4, 6>(lo, hi),
            i32x4_shuffle::<1, 3, 5, 7>(lo, hi),
        );
        i32x4_add(acc, pairs)
    }
}

/// Integer products of `MR` rows of `a` (`Act`, `lda` apart) with `NC` packed groups
/// (`group_stride` bytes apart), over `steps` steps of 4 k-values: `[row][group]`, lane `l`
/// of a group is its `l`-th output.
#[inline(always)]
unsafe fn micro(a: [*const Act; MR], b: [*const i8; NC], steps: usize) -> [[v128; NC]; MR] {
    unsafe {
        let mut acc = [[i32x4_splat(0); NC]; MR];
        let mut step = 0;
        while step < steps {
            let mut chunk = [i32x4_splat(0); MR];
            for r in 0..MR {
                chunk[r] = v128_load(a[r].add(step * 4) as *const v128);
            }
            for s in 0..STEPS_PER_LOAD {
                let mut packed = [i32x4_splat(0); NC];
                for c in 0..NC {
                    packed[c] = v128_load(b[c].add((step + s) * 16) as *const v128);
                }
                for r in 0..MR {
                    let splat = splat_step(chunk[r], s);
                    for c in 0..NC {
                        acc[r][c] = dot_rows(packed[c], splat, acc[r][c]);
                    }
                }
            }
            step += STEPS_PER_LOAD;
        }
        acc
    }
}

/// The softmax's constants, taken once per call of the kernel as opaque values: V8 would
/// rebuild every literal splat with three instructions at each use in the row loop.
struct SoftmaxConstants {
    exp: ReproducibleExpConstants,
    levels: v128,
    rounder: v128,
}

/// Softmax of one score row of `n` logits (`n16` slots), quantized to 7 bits into `probs`
/// (`n16` slots, zero past `n`). Returns `Σ p_q`; with `keep_e` the `e` stay in `scores`
/// (the CLS rows' probabilities need them).
#[inline(always)]
unsafe fn quantize_softmax_row(
    k: &SoftmaxConstants,
    scores: *mut f32,
    n: usize,
    probs: *mut Act,
    keep_e: bool,
) -> i32 {
    unsafe {
        let n16 = n.div_ceil(16) * 16;
        // Padding keys get e ≈ 0 and p_q = 0.
        for j in n..n16 {
            *scores.add(j) = f32::NEG_INFINITY;
        }
        let mut m0 = f32x4_splat(f32::NEG_INFINITY);
        let mut m1 = m0;
        let mut j = 0;
        while j < n16 {
            m0 = f32x4_pmax(m0, f32x4_pmax(load(scores.add(j)), load(scores.add(j + 4))));
            m1 = f32x4_pmax(
                m1,
                f32x4_pmax(load(scores.add(j + 8)), load(scores.add(j + 12))),
            );
            j += 16;
        }
        let shift = f32x4_splat(hmax(f32x4_pmax(m0, m1)));
        let mut q_sum = i32x4_splat(0);
        let mut j = 0;
        while j < n16 {
            let at = scores.add(j);
            let e = exp_nonpos_reproducible_n(
                &k.exp,
                [
                    f32x4_sub(load(at), shift),
                    f32x4_sub(load(at.add(4)), shift),
                    f32x4_sub(load(at.add(8)), shift),
                    f32x4_sub(load(at.add(12)), shift),
                ],
            );
            let mut q = [i32x4_splat(0); 4];
            for part in 0..4 {
                if keep_e {
                    store(at.add(4 * part), e[part]);
                }
                // nearest(127·e) for 127·e in 0…127 (see ROUNDER).
                let rounded = f32x4_add(f32x4_mul(e[part], k.levels), k.rounder);
                q[part] = i32x4_sub(rounded, k.rounder);
            }
            q_sum = i32x4_add(
                q_sum,
                i32x4_add(i32x4_add(q[0], q[1]), i32x4_add(q[2], q[3])),
            );
            let lo16 = i16x8_narrow_i32x4(q[0], q[1]);
            let hi16 = i16x8_narrow_i32x4(q[2], q[3]);
            if core::mem::size_of::<Act>() == 2 {
                v128_store(probs.add(j) as *mut v128, lo16);
                v128_store(probs.add(j + 8) as *mut v128, hi16);
            } else {
                v128_store(probs.add(j) as *mut v128, u8x16_narrow_i16x8(lo16, hi16));
            }
            j += 16;
        }
        hsum_i32(q_sum)
    }
}

/// Multi-head attention over `[T, H·D]` views with int8 products; same arguments as
/// `attention_f32` except the scratch (`attention_scratch_len_int8(queries, keys,
/// head_dim)` bytes, 16-byte aligned). `cls`, when not null, receives each segment's first
/// query row's softmax probabilities `e/Σe` (`[keys, heads]`, 0 outside its segment).
///
/// # Safety
/// Pointers valid for the sizes given; `out` does not overlap the inputs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn attention_int8(
    q: *const f32,
    q_stride: usize,
    k: *const f32,
    k_stride: usize,
    v: *const f32,
    v_stride: usize,
    out: *mut f32,
    queries: usize,
    keys: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    q_seg: *const i32,
    k_seg: *const i32,
    cls: *mut f32,
    scratch: *mut u8,
) {
    unsafe {
        let at = Layout::new(queries, keys, head_dim);
        let d = head_dim;
        let d16 = d.div_ceil(16) * 16;
        let width = heads * d;
        let q_values = scratch.add(at.q_values) as *mut Act;
        let q_scales = scratch.add(at.q_scales) as *mut f32;
        let q_zeros = scratch.add(at.q_zeros) as *mut i32;
        let k_packed = scratch.add(at.k_packed) as *mut i8;
        let k_sums = scratch.add(at.k_sums) as *mut i32;
        let k_scales = scratch.add(at.k_scales) as *mut f32;
        let v_packed = scratch.add(at.v_packed) as *mut i8;
        let v_scales = scratch.add(at.v_scales) as *mut f32;
        let v_inverses = scratch.add(at.v_inverses) as *mut f32;
        let scores = scratch.add(at.scores) as *mut f32;
        let probs = scratch.add(at.probs) as *mut Act;
        if !cls.is_null() {
            for i in 0..keys * heads {
                *cls.add(i) = 0.0;
            }
        }
        let softmax_k = core::hint::black_box(SoftmaxConstants {
            exp: ReproducibleExpConstants::literal(),
            levels: f32x4_splat(127.0),
            rounder: f32x4_splat(ROUNDER),
        });
        for h in 0..heads {
            if core::mem::size_of::<Act>() == 2 {
                quantize_rows::<true>(
                    q.add(h * d),
                    queries,
                    d,
                    q_stride,
                    q_values as *mut u8,
                    q_scales,
                    q_zeros,
                );
            } else {
                quantize_rows::<false>(
                    q.add(h * d),
                    queries,
                    d,
                    q_stride,
                    q_values as *mut u8,
                    q_scales,
                    q_zeros,
                );
            }
            let mut qa = 0;
            while qa < queries {
                let id = seg(q_seg, qa);
                let mut qb = qa + 1;
                while qb < queries && seg(q_seg, qb) == id {
                    qb += 1;
                }
                let ka = bound(k_seg, keys, id, false);
                let kb = bound(k_seg, keys, id, true);
                let n = kb - ka;
                let n16 = n.div_ceil(16) * 16;
                let keys_ok = n > 0
                    && pack_keys(
                        k.add(ka * k_stride + h * d),
                        k_stride,
                        n,
                        d,
                        k_packed,
                        k_sums,
                        k_scales,
                    );
                let values_ok = n > 0
                    && pack_values_transposed(
                        v.add(ka * v_stride + h * d),
                        v_stride,
                        n,
                        d,
                        v_packed,
                        v_scales,
                        v_inverses,
                    );
                if !keys_ok || !values_ok {
                    // No keys: zeros. NaN or ±inf among them: NaN everywhere, as in float32.
                    let value = if n == 0 { 0.0 } else { f32::NAN };
                    for i in qa..qb {
                        for c in 0..d {
                            *out.add(i * width + h * d + c) = value;
                        }
                    }
                    if !cls.is_null() {
                        for j in ka..kb {
                            *cls.add(j * heads + h) = f32::NAN;
                        }
                    }
                    qa = qb;
                    continue;
                }
                let mut i = qa;
                while i < qb {
                    let rows = if qb - i < MR { qb - i } else { MR };
                    // A short block repeats its last row; those results are not stored.
                    let mut q_rows = [q_values as *const Act; MR];
                    let mut p_rows = [probs as *const Act; MR];
                    let mut row_scale = [f32x4_splat(0.0); MR];
                    let mut row_zero = [i32x4_splat(0); MR];
                    for r in 0..MR {
                        let row = i + if r < rows { r } else { rows - 1 };
                        q_rows[r] = q_values.add(row * d16);
                        p_rows[r] = probs.add(if r < rows { r } else { rows - 1 } * n16);
                        row_scale[r] = f32x4_splat(*q_scales.add(row) * scale);
                        row_zero[r] = i32x4_splat(*q_zeros.add(row));
                    }
                    // Scores: groups of 4 keys, NC at a time.
                    let groups = n16 / 4;
                    let mut g = 0;
                    while g < groups {
                        let mut b = [k_packed as *const i8; NC];
                        for c in 0..NC {
                            let group = if g + c < groups { g + c } else { groups - 1 };
                            b[c] = k_packed.add(group * 4 * d16);
                        }
                        let tile = micro(q_rows, b, d16 / 4);
                        for c in 0..NC {
                            if g + c >= groups {
                                break;
                            }
                            let key = 4 * (g + c);
                            let sums = v128_load(k_sums.add(key) as *const v128);
                            let ks = load(k_scales.add(key));
                            for r in 0..rows {
                                let exact = i32x4_sub(tile[r][c], i32x4_mul(row_zero[r], sums));
                                let logits = f32x4_mul(
                                    f32x4_convert_i32x4(exact),
                                    f32x4_mul(row_scale[r], ks),
                                );
                                store(scores.add(r * n16 + key), logits);
                            }
                        }
                        g += NC;
                    }
                    let mut inv_sum = [f32x4_splat(0.0); MR];
                    for r in 0..rows {
                        let row_scores = scores.add(r * n16);
                        let keep_e = !cls.is_null() && i + r == qa;
                        let total = quantize_softmax_row(
                            &softmax_k,
                            row_scores,
                            n,
                            probs.add(r * n16),
                            keep_e,
                        );
                        // A NaN q row has a NaN scale: its output is NaN.
                        let nan_row = *q_scales.add(i + r) != *q_scales.add(i + r);
                        inv_sum[r] = f32x4_splat(if nan_row {
                            f32::NAN
                        } else {
                            1.0 / total as f32
                        });
                        if !cls.is_null() && i + r == qa {
                            let mut e_total = 0.0f32;
                            for j in 0..n {
                                e_total += *row_scores.add(j);
                            }
                            let inv_e = 1.0 / e_total;
                            for j in 0..n {
                                *cls.add((ka + j) * heads + h) = *row_scores.add(j) * inv_e;
                            }
                        }
                    }
                    // p·v: groups of 4 head dims, NC at a time.
                    let groups = d16 / 4;
                    let mut g = 0;
                    while g < groups && 4 * g < d {
                        let mut b = [v_packed as *const i8; NC];
                        for c in 0..NC {
                            let group = if g + c < groups { g + c } else { groups - 1 };
                            b[c] = v_packed.add(group * 4 * n16);
                        }
                        let tile = micro(p_rows, b, n16 / 4);
                        for c in 0..NC {
                            let dim = 4 * (g + c);
                            if dim >= d {
                                break;
                            }
                            let cols = if d - dim < 4 { d - dim } else { 4 };
                            let vs = load(v_scales.add(dim));
                            for r in 0..rows {
                                let y = f32x4_mul(
                                    f32x4_convert_i32x4(tile[r][c]),
                                    f32x4_mul(vs, inv_sum[r]),
                                );
                                let dst = out.add((i + r) * width + h * d + dim);
                                if cols == 4 {
                                    store(dst, y);
                                } else {
                                    store_partial(dst, y, cols);
                                }
                            }
                        }
                        g += NC;
                    }
                    i += rows;
                }
                qa = qb;
            }
        }
    }
}
