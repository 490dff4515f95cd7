//! Row-wise and element-wise float32 ops. Every loop runs 4 lanes at a time and finishes
//! a row's tail with partial loads, so any column count works.

use crate::math::{exp_nonpos_v, exp_v, gelu_n, gelu_v, sqrt_s};
use crate::simd::*;

#[inline(always)]
unsafe fn map(x: *const f32, n: usize, out: *mut f32, f: impl Fn(v128) -> v128) {
    unsafe {
        let mut i = 0;
        while i + 4 <= n {
            store(out.add(i), f(load(x.add(i))));
            i += 4;
        }
        if i < n {
            store_partial(out.add(i), f(load_partial(x.add(i), n - i)), n - i);
        }
    }
}

/// `out = gelu(x)` over `n` floats (erf form). `out` may equal `x`.
///
/// # Safety
/// Pointers valid for `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gelu_f32(x: *const f32, n: usize, out: *mut f32) {
    unsafe {
        // Two vectors per step: gelu_n shares their constants and overlaps their chains.
        let mut i = 0;
        while i + 8 <= n {
            let y = gelu_n([load(x.add(i)), load(x.add(i + 4))]);
            store(out.add(i), y[0]);
            store(out.add(i + 4), y[1]);
            i += 8;
        }
        map(x.add(i), n - i, out.add(i), gelu_v)
    }
}

/// `out = exp(x)` over `n` floats (exposed for accuracy tests of the shared exp).
///
/// # Safety
/// Pointers valid for `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn exp_f32(x: *const f32, n: usize, out: *mut f32) {
    unsafe { map(x, n, out, exp_v) }
}

/// `out = exp(x)` for `x ≤ 0` with the cheaper exp softmax and attention use (for tests).
///
/// # Safety
/// Pointers valid for `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn exp_nonpos_f32(x: *const f32, n: usize, out: *mut f32) {
    unsafe { map(x, n, out, exp_nonpos_v) }
}

/// `out = a + b` over `n` floats.
///
/// # Safety
/// Pointers valid for `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn add_f32(a: *const f32, b: *const f32, n: usize, out: *mut f32) {
    unsafe {
        let mut i = 0;
        while i + 4 <= n {
            store(out.add(i), f32x4_add(load(a.add(i)), load(b.add(i))));
            i += 4;
        }
        while i < n {
            *out.add(i) = *a.add(i) + *b.add(i);
            i += 1;
        }
    }
}

#[inline(always)]
unsafe fn row_sum(x: *const f32, n: usize) -> f32 {
    unsafe {
        let mut s0 = f32x4_splat(0.0);
        let mut s1 = f32x4_splat(0.0);
        let mut s2 = f32x4_splat(0.0);
        let mut s3 = f32x4_splat(0.0);
        let mut i = 0;
        // Four chains: an add's latency is 3 cycles, two chains left the loop waiting on them.
        while i + 16 <= n {
            s0 = f32x4_add(s0, load(x.add(i)));
            s1 = f32x4_add(s1, load(x.add(i + 4)));
            s2 = f32x4_add(s2, load(x.add(i + 8)));
            s3 = f32x4_add(s3, load(x.add(i + 12)));
            i += 16;
        }
        s0 = f32x4_add(s0, s2);
        s1 = f32x4_add(s1, s3);
        while i + 8 <= n {
            s0 = f32x4_add(s0, load(x.add(i)));
            s1 = f32x4_add(s1, load(x.add(i + 4)));
            i += 8;
        }
        if i + 4 <= n {
            s0 = f32x4_add(s0, load(x.add(i)));
            i += 4;
        }
        if i < n {
            s1 = f32x4_add(s1, load_partial(x.add(i), n - i));
        }
        hsum(f32x4_add(s0, s1))
    }
}

/// Σ (x - center)² over one row.
#[inline(always)]
unsafe fn row_centered_squares(x: *const f32, n: usize, center: f32) -> f32 {
    unsafe {
        let cv = f32x4_splat(center);
        let mut s0 = f32x4_splat(0.0);
        let mut s1 = f32x4_splat(0.0);
        let mut s2 = f32x4_splat(0.0);
        let mut s3 = f32x4_splat(0.0);
        let mut i = 0;
        while i + 16 <= n {
            let d0 = f32x4_sub(load(x.add(i)), cv);
            let d1 = f32x4_sub(load(x.add(i + 4)), cv);
            let d2 = f32x4_sub(load(x.add(i + 8)), cv);
            let d3 = f32x4_sub(load(x.add(i + 12)), cv);
            s0 = madd(d0, d0, s0);
            s1 = madd(d1, d1, s1);
            s2 = madd(d2, d2, s2);
            s3 = madd(d3, d3, s3);
            i += 16;
        }
        s0 = f32x4_add(s0, s2);
        s1 = f32x4_add(s1, s3);
        while i + 8 <= n {
            let d0 = f32x4_sub(load(x.add(i)), cv);
            let d1 = f32x4_sub(load(x.add(i + 4)), cv);
            s0 = madd(d0, d0, s0);
            s1 = madd(d1, d1, s1);
            i += 8;
        }
        if i + 4 <= n {
            let d0 = f32x4_sub(load(x.add(i)), cv);
            s0 = madd(d0, d0, s0);
            i += 4;
        }
        while i < n {
            let d = *x.add(i) - center;
            s1 = f32x4_add(s1, f32x4_replace_lane::<0>(f32x4_splat(0.0), d * d));
            i += 1;
        }
        hsum(f32x4_add(s0, s1))
    }
}

/// LayerNorm of each of `rows` rows of `cols` floats; `beta` may be null (no bias).
///
/// # Safety
/// Pointers valid for the sizes given; `out` may equal `x`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn layer_norm_f32(
    x: *const f32,
    rows: usize,
    cols: usize,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    out: *mut f32,
) {
    unsafe {
        for r in 0..rows {
            let src = x.add(r * cols);
            let dst = out.add(r * cols);
            let mean = row_sum(src, cols) / cols as f32;
            let var = row_centered_squares(src, cols, mean) / cols as f32;
            let inv = 1.0 / sqrt_s(var + eps);
            let mv = f32x4_splat(mean);
            let iv = f32x4_splat(inv);
            let mut c = 0;
            while c + 4 <= cols {
                let y = f32x4_mul(
                    f32x4_mul(f32x4_sub(load(src.add(c)), mv), iv),
                    load(gamma.add(c)),
                );
                let y = if beta.is_null() {
                    y
                } else {
                    f32x4_add(y, load(beta.add(c)))
                };
                store(dst.add(c), y);
                c += 4;
            }
            while c < cols {
                let y = (*src.add(c) - mean) * inv * *gamma.add(c);
                *dst.add(c) = if beta.is_null() { y } else { y + *beta.add(c) };
                c += 1;
            }
        }
    }
}

/// RMS norm over consecutive groups of `group` columns, one gamma per column.
///
/// # Safety
/// Pointers valid; `group` divides `cols` and is nonzero.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rms_norm_f32(
    x: *const f32,
    rows: usize,
    cols: usize,
    gamma: *const f32,
    group: usize,
    eps: f32,
    out: *mut f32,
) {
    unsafe {
        for r in 0..rows {
            let mut g0 = 0;
            while g0 < cols {
                let src = x.add(r * cols + g0);
                let dst = out.add(r * cols + g0);
                let gm = gamma.add(g0);
                let ms = row_centered_squares(src, group, 0.0) / group as f32;
                let inv = 1.0 / sqrt_s(ms + eps);
                let iv = f32x4_splat(inv);
                let mut c = 0;
                while c + 4 <= group {
                    store(
                        dst.add(c),
                        f32x4_mul(f32x4_mul(load(src.add(c)), iv), load(gm.add(c))),
                    );
                    c += 4;
                }
                while c < group {
                    *dst.add(c) = *src.add(c) * inv * *gm.add(c);
                    c += 1;
                }
                g0 += group;
            }
        }
    }
}

/// Softmax over each row of `cols` floats.
///
/// # Safety
/// Pointers valid; `out` may equal `x`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn softmax_f32(x: *const f32, rows: usize, cols: usize, out: *mut f32) {
    unsafe {
        for r in 0..rows {
            let src = x.add(r * cols);
            let dst = out.add(r * cols);
            // NaN-propagating max (unlike pmax): a NaN in the row makes the row NaN, as in
            // the reference; this pass is cheap next to the exp pass.
            let mut mv = f32x4_splat(f32::NEG_INFINITY);
            let mut c = 0;
            while c + 4 <= cols {
                mv = f32x4_max(mv, load(src.add(c)));
                c += 4;
            }
            if c < cols {
                let tail = load_partial(src.add(c), cols - c);
                let pad = v128_andnot(f32x4_splat(f32::NEG_INFINITY), lane_mask(cols - c));
                mv = f32x4_max(mv, v128_or(v128_and(tail, lane_mask(cols - c)), pad));
            }
            let pair = f32x4_max(mv, i32x4_shuffle::<2, 3, 0, 1>(mv, mv));
            let max =
                f32x4_extract_lane::<0>(f32x4_max(pair, i32x4_shuffle::<1, 0, 3, 2>(pair, pair)));
            let maxv = f32x4_splat(max);
            let mut sv = f32x4_splat(0.0);
            c = 0;
            while c + 4 <= cols {
                let e = exp_nonpos_v(f32x4_sub(load(src.add(c)), maxv));
                store(dst.add(c), e);
                sv = f32x4_add(sv, e);
                c += 4;
            }
            if c < cols {
                let n = cols - c;
                let e = exp_nonpos_v(f32x4_sub(load_partial(src.add(c), n), maxv));
                let e = v128_and(e, lane_mask(n));
                store_partial(dst.add(c), e, n);
                sv = f32x4_add(sv, e);
            }
            let inv = f32x4_splat(1.0 / hsum(sv));
            c = 0;
            while c + 4 <= cols {
                store(dst.add(c), f32x4_mul(load(dst.add(c)), inv));
                c += 4;
            }
            while c < cols {
                *dst.add(c) *= f32x4_extract_lane::<0>(inv);
                c += 1;
            }
        }
    }
}

/// All-ones in the low `n` lanes.
#[inline(always)]
fn lane_mask(n: usize) -> v128 {
    i32x4_gt(i32x4_splat(n as i32), i32x4(0, 1, 2, 3))
}

/// `out[i] = x[indices[i]]` for rows of `cols` floats (indices already validated).
///
/// # Safety
/// Pointers valid; indices in range.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gather_rows_f32(
    x: *const f32,
    cols: usize,
    indices: *const i32,
    count: usize,
    out: *mut f32,
) {
    unsafe {
        for i in 0..count {
            let src = x.add(*indices.add(i) as usize * cols);
            core::ptr::copy_nonoverlapping(src, out.add(i * cols), cols);
        }
    }
}

/// Mean of the rows of each segment; `offsets` has `segments + 1` nondecreasing entries.
///
/// # Safety
/// Pointers valid; every segment nonempty.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn segment_mean_f32(
    x: *const f32,
    cols: usize,
    offsets: *const i32,
    segments: usize,
    out: *mut f32,
) {
    unsafe {
        for s in 0..segments {
            let start = *offsets.add(s) as usize;
            let end = *offsets.add(s + 1) as usize;
            let dst = out.add(s * cols);
            // Row by row, so every input row is read once, front to back.
            core::ptr::copy_nonoverlapping(x.add(start * cols), dst, cols);
            for r in start + 1..end {
                let src = x.add(r * cols);
                let mut c = 0;
                while c + 4 <= cols {
                    store(dst.add(c), f32x4_add(load(dst.add(c)), load(src.add(c))));
                    c += 4;
                }
                while c < cols {
                    *dst.add(c) += *src.add(c);
                    c += 1;
                }
            }
            let inv = 1.0 / (end - start) as f32;
            let mut c = 0;
            while c + 4 <= cols {
                store(dst.add(c), f32x4_mul(load(dst.add(c)), f32x4_splat(inv)));
                c += 4;
            }
            while c < cols {
                *dst.add(c) *= inv;
                c += 1;
            }
        }
    }
}

/// L2 norm of each head's `head_dim` slice of each row: `x` points at the first head's
/// column of row 0, rows are `stride` floats apart; `out` is `[rows, heads]`.
///
/// # Safety
/// Pointers valid for the sizes given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn head_norms_f32(
    x: *const f32,
    rows: usize,
    stride: usize,
    heads: usize,
    head_dim: usize,
    out: *mut f32,
) {
    unsafe {
        for r in 0..rows {
            for h in 0..heads {
                let src = x.add(r * stride + h * head_dim);
                *out.add(r * heads + h) = sqrt_s(row_centered_squares(src, head_dim, 0.0));
            }
        }
    }
}
