//! int8 GEMM `C[M,N] ≈ A[M,K] · Bᵀ + bias` with int8 weights (symmetric, one scale per
//! output channel) and activations quantized per row on the fly.
//!
//! Activations are quantized to *unsigned 7-bit* with a zero point: the relaxed build's
//! `i32x4.relaxed_dot_i8x16_i7x16_add_s` is exact only when its second operand stays in
//! 0…127 (x86 lowers it to `pmaddubsw`/VNNI, which read that operand as unsigned). For a
//! row with range `[lo, hi]` (widened to hold 0): `s = (hi - lo)/127`, `z = nearest(-lo/s)`,
//! `q = clamp(nearest(x/s) + z, 0, 127)`, so `x ≈ s·(q - z)`. Then
//! `Σ w·x ≈ s_w·s_x·(Σ w_q·q - z·Σ w_q)`, with the weight row sums `Σ w_q` computed at pack
//! time. The plain build computes the same integer sums exactly with `i32x4.dot_i16x8_s`
//! on sign-extended halves, so both builds give identical, bit-exact results; the float
//! epilogue is `f32(acc - z·rowsum) · f32(s_x·s_w) + bias` with separate multiply and add
//! (never fused), which a TypeScript reference reproduces bit for bit.
//!
//! Dot form: each of a `2 × 4` tile's accumulators holds 4 partial sums along K of one
//! (row, column) pair, and one `v128` load carries 16 k-values, so the tile does 128
//! multiply-adds per 6 loads. (The float GEMM moved to the broadcast form, gemm.rs. Its int8
//! analogue, activations interleaved in 4-row tiles and splat by shuffles, took 1.03× the
//! time of this form while the core was ours alone and 0.88× while the host shared it:
//! too close a call to carry a second layout; bench/README.md, "Seventh session".) The plain build stores the quantized
//! activations as i16 so `dot_i16x8_s` reads them directly (only weights are widened);
//! widening both i8 operands lets LLVM narrow the product to `i16x8.mul` plus a pairwise
//! add, twice the instructions.

use crate::gemm::balanced_block_rows;
use crate::math::{ROUNDER, gelu_strip};
use crate::simd::*;

const MR: usize = 2;
const NR: usize = 4;
const MC: usize = 128;

/// Bytes of the packed weights for `[n, k]`: panels of 4 columns, K padded to 16.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_packed_len_int8(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k.div_ceil(16) * 16
}

/// Bytes of scratch `gemm_int8` needs: quantized rows (as i16 in the plain build), then
/// per-row scale and zero point.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_scratch_len_int8(m: usize, k: usize) -> usize {
    2 * m * k.div_ceil(16) * 16 + 8 * m + 16
}

/// Packs int8 weights `w` (`[n, k]`) into `out` (`[N/4][K/16][4][16]`, zero-padded) and
/// writes each output channel's weight sum to `row_sums` (`[n]`).
///
/// # Safety
/// Pointers valid for the sizes given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_pack_int8(
    w: *const i8,
    n: usize,
    k: usize,
    out: *mut i8,
    row_sums: *mut i32,
) {
    unsafe {
        let k16 = k.div_ceil(16) * 16;
        for col in 0..n.div_ceil(NR) * NR {
            let (panel, c) = (col / NR, col % NR);
            let mut sum = 0i32;
            for kk in 0..k16 {
                let value = if col < n && kk < k {
                    *w.add(col * k + kk)
                } else {
                    0
                };
                sum += value as i32;
                *out.add(panel * NR * k16 + (kk / 16) * NR * 16 + c * 16 + kk % 16) = value;
            }
            if col < n {
                *row_sums.add(col) = sum;
            }
        }
    }
}

/// Quantizes each of `m` rows of `k` floats to unsigned 7-bit: `out` is `[m][k16]` bytes
/// (tail zero), `scales[i]` and `zeros[i]` give `x ≈ scales[i]·(q - zeros[i])`.
///
/// # Safety
/// Pointers valid for the sizes given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn quantize_rows_u7(
    x: *const f32,
    m: usize,
    k: usize,
    out: *mut u8,
    scales: *mut f32,
    zeros: *mut i32,
) {
    unsafe { quantize_rows::<false>(x, m, k, k, out, scales, zeros) }
}

/// [`quantize_rows_u7`] over rows `stride` floats apart, or with `WIDE` the same values
/// stored as i16 (`[m][k16]`), which the plain build's `i32x4.dot_i16x8_s` reads without
/// widening.
#[inline(always)]
pub(crate) unsafe fn quantize_rows<const WIDE: bool>(
    x: *const f32,
    m: usize,
    k: usize,
    stride: usize,
    out: *mut u8,
    scales: *mut f32,
    zeros: *mut i32,
) {
    unsafe {
        let k16 = k.div_ceil(16) * 16;
        // Opaque to the engine, which would otherwise rebuild each splat (three
        // instructions) at every use inside the loops.
        let [rounder, top, bottom] =
            core::hint::black_box([f32x4_splat(ROUNDER), i32x4_splat(127), i32x4_splat(0)]);
        for i in 0..m {
            let row = x.add(i * stride);
            let mut lo_v = f32x4_splat(0.0);
            let mut hi_v = f32x4_splat(0.0);
            // x - x is 0 for finite x and NaN for NaN and ±inf.
            let mut bad_v = f32x4_splat(0.0);
            let mut c = 0;
            // Four vectors per step, folded as a tree: one link per step in each chain.
            while c + 16 <= k {
                let v = [
                    load(row.add(c)),
                    load(row.add(c + 4)),
                    load(row.add(c + 8)),
                    load(row.add(c + 12)),
                ];
                let lo4 = f32x4_pmin(f32x4_pmin(v[0], v[1]), f32x4_pmin(v[2], v[3]));
                let hi4 = f32x4_pmax(f32x4_pmax(v[0], v[1]), f32x4_pmax(v[2], v[3]));
                let bad4 = f32x4_add(
                    f32x4_add(f32x4_sub(v[0], v[0]), f32x4_sub(v[1], v[1])),
                    f32x4_add(f32x4_sub(v[2], v[2]), f32x4_sub(v[3], v[3])),
                );
                lo_v = f32x4_pmin(lo_v, lo4);
                hi_v = f32x4_pmax(hi_v, hi4);
                bad_v = f32x4_add(bad_v, bad4);
                c += 16;
            }
            while c + 4 <= k {
                let v = load(row.add(c));
                lo_v = f32x4_pmin(lo_v, v);
                hi_v = f32x4_pmax(hi_v, v);
                bad_v = f32x4_add(bad_v, f32x4_sub(v, v));
                c += 4;
            }
            let mut lo = -hmax(f32x4_neg(lo_v));
            let mut hi = hmax(hi_v);
            let mut finite = hsum(bad_v) == 0.0;
            while c < k {
                let v = *row.add(c);
                if v < lo {
                    lo = v;
                }
                if v > hi {
                    hi = v;
                }
                finite &= v - v == 0.0;
                c += 1;
            }
            let mut scale = (hi - lo) / 127.0;
            if !(scale > 0.0) {
                // An all-zero row: every q is the zero point 0.
                scale = 1.0;
            }
            if !finite || scale == f32::INFINITY {
                // NaN or ±inf in the row (or a range past f32): all q = 0, zero point 0 and a
                // NaN scale, so the row's outputs are NaN as in float arithmetic.
                *scales.add(i) = f32::NAN;
                *zeros.add(i) = 0;
                let dst = out.add(i * if WIDE { 2 * k16 } else { k16 });
                for byte in 0..if WIDE { 2 * k16 } else { k16 } {
                    *dst.add(byte) = 0;
                }
                continue;
            }
            let inv = 1.0 / scale;
            let zero = f32x4_extract_lane::<0>(f32x4_nearest(f32x4_splat(-lo * inv)));
            let zero = if zero < 0.0 {
                0.0
            } else if zero > 127.0 {
                127.0
            } else {
                zero
            };
            *scales.add(i) = scale;
            *zeros.add(i) = zero as i32;
            let inv_v = f32x4_splat(inv);
            // Takes the rounder's bits off and adds the zero point in one integer add.
            let offset = i32x4_splat(zero as i32 - ROUNDER.to_bits() as i32);
            let dst = out.add(i * k16);
            let mut c = 0;
            while c < k16 {
                // 16 values → 16 bytes: 4 vectors, rounded, narrowed twice. Whole chunks
                // load directly; only the last may run past the row.
                let mut lanes = [i32x4_splat(0); 4];
                for part in 0..4 {
                    let at = c + 4 * part;
                    let v = if c + 16 <= k {
                        load(row.add(at))
                    } else {
                        load_padded(row, at, k)
                    };
                    let q = i32x4_add(f32x4_add(f32x4_mul(v, inv_v), rounder), offset);
                    lanes[part] = i32x4_min(i32x4_max(q, bottom), top);
                }
                let lo16 = i16x8_narrow_i32x4(lanes[0], lanes[1]);
                let hi16 = i16x8_narrow_i32x4(lanes[2], lanes[3]);
                if WIDE {
                    let wide = (out as *mut i16).add(i * k16 + c);
                    v128_store(wide as *mut v128, lo16);
                    v128_store(wide.add(8) as *mut v128, hi16);
                } else {
                    v128_store(dst.add(c) as *mut v128, u8x16_narrow_i16x8(lo16, hi16));
                }
                c += 16;
            }
            // Past K the weights are zero, so the padding bytes' value does not matter.
        }
    }
}

/// Activations as the kernel reads them: u7 bytes (relaxed) or i16 (plain).
#[cfg(target_feature = "relaxed-simd")]
pub(crate) type Act = u8;
#[cfg(not(target_feature = "relaxed-simd"))]
pub(crate) type Act = i16;

/// Adds the 16 products of weights `w` (i8) and activations at `a` into 4 lanes of `acc`.
#[inline(always)]
unsafe fn dot16(w: v128, a: *const Act, acc: v128) -> v128 {
    unsafe {
        #[cfg(target_feature = "relaxed-simd")]
        {
            // Exact: the activations (second operand) are in 0…127.
            i32x4_relaxed_dot_i8x16_i7x16_add(w, v128_load(a as *const v128), acc)
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            let lo = i32x4_dot_i16x8(i16x8_extend_low_i8x16(w), v128_load(a as *const v128));
            let hi = i32x4_dot_i16x8(
                i16x8_extend_high_i8x16(w),
                v128_load(a.add(8) as *const v128),
            );
            i32x4_add(acc, i32x4_add(lo, hi))
        }
    }
}

#[inline(always)]
fn reduce4_i32(v0: v128, v1: v128, v2: v128, v3: v128) -> v128 {
    let s01 = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(v0, v1),
        i32x4_shuffle::<2, 6, 3, 7>(v0, v1),
    );
    let s23 = i32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(v2, v3),
        i32x4_shuffle::<2, 6, 3, 7>(v2, v3),
    );
    i32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(s01, s23),
        i32x4_shuffle::<2, 3, 6, 7>(s01, s23),
    )
}

/// Integer dot products of `R` quantized rows with one 4-column weight panel.
#[inline(always)]
unsafe fn micro<const R: usize>(a: *const Act, lda: usize, b: *const i8, k16: usize) -> [v128; R] {
    unsafe {
        let mut acc = [[i32x4_splat(0); NR]; R];
        let mut rows = [a; R];
        for r in 0..R {
            rows[r] = a.add(r * lda);
        }
        let mut b = b;
        for _ in 0..k16 / 16 {
            for c in 0..NR {
                let bv = v128_load(b.add(16 * c) as *const v128);
                for r in 0..R {
                    acc[r][c] = dot16(bv, rows[r], acc[r][c]);
                }
            }
            for r in 0..R {
                rows[r] = rows[r].add(16);
            }
            b = b.add(16 * NR);
        }
        let mut out = [i32x4_splat(0); R];
        for r in 0..R {
            out[r] = reduce4_i32(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        }
        out
    }
}

/// Float epilogue of `R` rows × 4 columns: `f32(acc - z·rowsum)·f32(s_x·s_w) + bias`.
#[inline(always)]
unsafe fn finish<const R: usize>(
    tile: [v128; R],
    row0: usize,
    sx: *const f32,
    zx: *const i32,
    sums: v128,
    sw: v128,
    bias: v128,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    unsafe {
        let mut y = tile;
        for r in 0..R {
            let exact = i32x4_sub(tile[r], i32x4_mul(i32x4_splat(*zx.add(row0 + r)), sums));
            let scale = f32x4_mul(f32x4_splat(*sx.add(row0 + r)), sw);
            y[r] = f32x4_add(f32x4_mul(f32x4_convert_i32x4(exact), scale), bias);
        }
        for r in 0..R {
            let dst = c.add(r * ldc);
            if cols == NR {
                store(dst, y[r]);
            } else {
                store_partial(dst, y[r], cols);
            }
        }
    }
}

/// `c = quant(a) · wᵀ` rescaled, `+ bias`, then GELU when `gelu != 0`.
///
/// `a`: `[m, k]` floats; `packed`, `row_sums`: from `gemm_pack_int8`; `w_scales`: `[n]`
/// per-channel weight scales; `bias`: `[n]` or null; `c`: `[m, n]`; `scratch`:
/// `gemm_scratch_len_int8(m, k)` bytes, 16-byte aligned. `w_scales`, `row_sums` and
/// `bias` are read 4 at a time: pad them to a multiple of 4.
///
/// # Safety
/// Pointers valid for the sizes given; `c` does not overlap the inputs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_int8(
    a: *const f32,
    m: usize,
    k: usize,
    packed: *const i8,
    row_sums: *const i32,
    w_scales: *const f32,
    n: usize,
    bias: *const f32,
    c: *mut f32,
    gelu: u32,
    scratch: *mut u8,
) {
    unsafe {
        if m == 0 || n == 0 {
            return;
        }
        let k16 = k.div_ceil(16) * 16;
        let wide = core::mem::size_of::<Act>() == 2;
        let q = scratch as *mut Act;
        let sx = scratch.add(m * k16 * core::mem::size_of::<Act>()) as *mut f32;
        let zx = sx.add(m) as *mut i32;
        if wide {
            quantize_rows::<true>(a, m, k, k, scratch, sx, zx);
        } else {
            quantize_rows::<false>(a, m, k, k, scratch, sx, zx);
        }
        let gelu = gelu != 0;
        // Balanced M-blocks of ≤ MC rows keep the quantized activations in L2 while every
        // weight panel passes over them (as in gemm.rs).
        let block_rows = balanced_block_rows(m, MC, MR);
        let mut m0 = 0;
        while m0 < m {
            let m_end = if m - m0 < block_rows {
                m
            } else {
                m0 + block_rows
            };
            let full_end = m0 + (m_end - m0) / MR * MR;
            for jp in 0..n.div_ceil(NR) {
                let j0 = jp * NR;
                let cols = if n - j0 < NR { n - j0 } else { NR };
                let panel = packed.add(jp * NR * k16);
                let sums = v128_load(row_sums.add(j0) as *const v128);
                let sw = load(w_scales.add(j0));
                let bv = if bias.is_null() {
                    f32x4_splat(0.0)
                } else {
                    load(bias.add(j0))
                };
                let mut i = m0;
                while i < full_end {
                    let tile = micro::<MR>(q.add(i * k16), k16, panel, k16);
                    finish::<MR>(tile, i, sx, zx, sums, sw, bv, c.add(i * n + j0), n, cols);
                    i += MR;
                }
                if i < m_end {
                    let tile = micro::<1>(q.add(i * k16), k16, panel, k16);
                    finish::<1>(tile, i, sx, zx, sums, sw, bv, c.add(i * n + j0), n, cols);
                }
                if gelu {
                    gelu_strip(c.add(m0 * n + j0), m_end - m0, n, cols);
                }
            }
            m0 = m_end;
        }
    }
}
