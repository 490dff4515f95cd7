//! Fused multi-head attention with segment masking and an online softmax.
//!
//! Per head, K is packed once into chunks of `KB` keys, transposed (`[chunk][D][KB]`), so
//! the score micro-kernel is a small GEMM: a block of `BQ` query rows (pre-scaled, packed
//! `[D][BQ]`) times `KB` keys per step. Keys are visited in blocks of `BK`; each block
//! updates the running max, running sum and output accumulators of its query rows
//! (flash-attention style), so no `queries × keys` matrix ever exists.
//!
//! Segment ids are nondecreasing, so the keys a query block can see form one range
//! `[first key of its first segment, last key of its last segment]`; blocks outside that
//! range are never visited and a packed batch costs Σ nᵢ², not (Σ nᵢ)².

use crate::math::exp_v;
use crate::simd::*;

const BQ: usize = 6;
const KB: usize = 8;
const BK: usize = 64;

/// Floats of scratch `attention_f32` needs.
#[unsafe(no_mangle)]
pub extern "C" fn attention_scratch_len_f32(keys: usize, head_dim: usize) -> usize {
    keys.div_ceil(KB) * KB * head_dim + 2 * BQ * head_dim
}

#[inline(always)]
unsafe fn seg(ids: *const i32, i: usize) -> i32 {
    unsafe { if ids.is_null() { 0 } else { *ids.add(i) } }
}

/// First index in `[0, n)` whose id is `>= s` (or `> s` when `after`).
unsafe fn bound(ids: *const i32, n: usize, s: i32, after: bool) -> usize {
    unsafe {
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let id = seg(ids, mid);
            if id < s || (after && id == s) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Multi-head attention over `[T, H·D]` views.
///
/// `q`, `k`, `v` point at column `offset` of row 0 of their tensors; rows are `*_stride`
/// floats apart (q, k and v may be views of one fused qkv tensor). `out` is
/// `[queries, heads·head_dim]`. `q_seg` / `k_seg` are nondecreasing segment ids or null
/// (all zero). When `cls` is not null it receives `[keys, heads]`: the softmax
/// probabilities of each segment's first query row (0 for keys of no such segment).
///
/// # Safety
/// Pointers valid for the sizes given; `scratch` holds `attention_scratch_len_f32` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn attention_f32(
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
    scratch: *mut f32,
) {
    unsafe {
        let d_len = head_dim;
        let width = heads * head_dim;
        let chunks = keys.div_ceil(KB);
        let kt = scratch; // [chunks][D][KB]
        let qp = scratch.add(chunks * KB * d_len); // [D][BQ]
        let o = qp.add(BQ * d_len); // [BQ][D]
        if !cls.is_null() {
            for i in 0..keys * heads {
                *cls.add(i) = 0.0;
            }
        }
        for h in 0..heads {
            // Pack K of this head, transposed per chunk; keys past the end are zero.
            for c in 0..chunks {
                for lane in 0..KB {
                    let key = c * KB + lane;
                    let dst = kt.add(c * d_len * KB + lane);
                    if key < keys {
                        let src = k.add(key * k_stride + h * d_len);
                        for d in 0..d_len {
                            *dst.add(d * KB) = *src.add(d);
                        }
                    } else {
                        for d in 0..d_len {
                            *dst.add(d * KB) = 0.0;
                        }
                    }
                }
            }
            let mut qb = 0;
            while qb < queries {
                let rows = if queries - qb < BQ { queries - qb } else { BQ };
                let mut segs = [0i32; BQ];
                let mut is_cls = [false; BQ];
                for r in 0..BQ {
                    let i = qb + if r < rows { r } else { rows - 1 };
                    segs[r] = seg(q_seg, i);
                    is_cls[r] = !cls.is_null() && r < rows && (i == 0 || seg(q_seg, i - 1) != segs[r]);
                }
                let (seg_lo, seg_hi) = (segs[0], segs[rows - 1]);
                let kstart = bound(k_seg, keys, seg_lo, false);
                let kend = bound(k_seg, keys, seg_hi, true);
                for d in 0..d_len {
                    for r in 0..BQ {
                        *qp.add(d * BQ + r) = if r < rows {
                            *q.add((qb + r) * q_stride + h * d_len + d) * scale
                        } else {
                            0.0
                        };
                    }
                }
                for i in 0..BQ * d_len {
                    *o.add(i) = 0.0;
                }
                let mut m = [f32::NEG_INFINITY; BQ];
                let mut l = [0.0f32; BQ];
                let uniform = seg_lo == seg_hi;
                let mut j0 = kstart / KB * KB;
                while j0 < kend {
                    let span = kend.div_ceil(KB) * KB - j0;
                    let bk = if span < BK { span } else { BK };
                    let mut s = [[0.0f32; BK]; BQ];
                    scores(kt.add(j0 * d_len), qp, d_len, bk / KB, &mut s);
                    if !uniform || j0 < kstart || j0 + bk > kend {
                        for r in 0..BQ {
                            for jj in 0..bk {
                                let key = j0 + jj;
                                if key < kstart || key >= kend || seg(k_seg, key) != segs[r] {
                                    s[r][jj] = f32::NEG_INFINITY;
                                }
                            }
                        }
                    }
                    for r in 0..rows {
                        if is_cls[r] {
                            for jj in 0..bk {
                                let key = j0 + jj;
                                if s[r][jj] != f32::NEG_INFINITY {
                                    *cls.add(key * heads + h) = s[r][jj];
                                }
                            }
                        }
                    }
                    let mut alpha = [1.0f32; BQ];
                    for r in 0..BQ {
                        let row = s[r].as_mut_ptr();
                        let mut mv = f32x4_splat(f32::NEG_INFINITY);
                        let mut jj = 0;
                        while jj < bk {
                            mv = f32x4_max(mv, load(row.add(jj)));
                            jj += 4;
                        }
                        let mx = hmax(mv);
                        if mx == f32::NEG_INFINITY {
                            let mut jj = 0;
                            while jj < bk {
                                store(row.add(jj), f32x4_splat(0.0));
                                jj += 4;
                            }
                            continue;
                        }
                        let m_new = if m[r] > mx { m[r] } else { mx };
                        alpha[r] = crate::math::exp_s(m[r] - m_new);
                        let mnv = f32x4_splat(m_new);
                        let mut sv = f32x4_splat(0.0);
                        let mut jj = 0;
                        while jj < bk {
                            let p = exp_v(f32x4_sub(load(row.add(jj)), mnv));
                            store(row.add(jj), p);
                            sv = f32x4_add(sv, p);
                            jj += 4;
                        }
                        l[r] = l[r] * alpha[r] + hsum(sv);
                        m[r] = m_new;
                    }
                    let first = if kstart > j0 { kstart - j0 } else { 0 };
                    let last = if kend < j0 + bk { kend - j0 } else { bk };
                    accumulate_pv(
                        v.add(h * d_len),
                        v_stride,
                        j0,
                        first,
                        last,
                        &s,
                        &alpha,
                        o,
                        d_len,
                    );
                    j0 += bk;
                }
                for r in 0..rows {
                    let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                    let dst = out.add((qb + r) * width + h * d_len);
                    for d in 0..d_len {
                        *dst.add(d) = *o.add(r * d_len + d) * inv;
                    }
                    if is_cls[r] {
                        // Exact probabilities: the stored logits against the final max and sum.
                        let from = bound(k_seg, keys, segs[r], false);
                        let to = bound(k_seg, keys, segs[r], true);
                        for key in from..to {
                            let p = cls.add(key * heads + h);
                            *p = crate::math::exp_s(*p - m[r]) * inv;
                        }
                    }
                }
                qb += BQ;
            }
        }
    }
}

/// `s[r][c·KB + lane] = qp[:, r] · kt[c][:, lane]` for `chunks` chunks of `KB` keys.
#[inline(always)]
unsafe fn scores(kt: *const f32, qp: *const f32, d_len: usize, chunks: usize, s: &mut [[f32; BK]; BQ]) {
    unsafe {
        for c in 0..chunks {
            let mut acc = [[f32x4_splat(0.0); 2]; BQ];
            let mut b = kt.add(c * d_len * KB);
            let mut a = qp;
            for _ in 0..d_len {
                let b0 = load(b);
                let b1 = load(b.add(4));
                for r in 0..BQ {
                    let av = splat_load(a.add(r));
                    acc[r][0] = madd(av, b0, acc[r][0]);
                    acc[r][1] = madd(av, b1, acc[r][1]);
                }
                a = a.add(BQ);
                b = b.add(KB);
            }
            for r in 0..BQ {
                store(s[r].as_mut_ptr().add(c * KB), acc[r][0]);
                store(s[r].as_mut_ptr().add(c * KB + 4), acc[r][1]);
            }
        }
    }
}

/// `o[r] = o[r]·alpha[r] + Σ_j p[r][j] · v[j0 + j]` for `j` in `[first, last)`.
#[inline(always)]
unsafe fn accumulate_pv(
    v: *const f32,
    v_stride: usize,
    j0: usize,
    first: usize,
    last: usize,
    p: &[[f32; BK]; BQ],
    alpha: &[f32; BQ],
    o: *mut f32,
    d_len: usize,
) {
    unsafe {
        let mut d0 = 0;
        while d0 + 8 <= d_len {
            let mut acc = [[f32x4_splat(0.0); 2]; BQ];
            for r in 0..BQ {
                let a = f32x4_splat(alpha[r]);
                acc[r][0] = f32x4_mul(load(o.add(r * d_len + d0)), a);
                acc[r][1] = f32x4_mul(load(o.add(r * d_len + d0 + 4)), a);
            }
            for j in first..last {
                let row = v.add((j0 + j) * v_stride + d0);
                let b0 = load(row);
                let b1 = load(row.add(4));
                for r in 0..BQ {
                    let pv = f32x4_splat(p[r][j]);
                    acc[r][0] = madd(pv, b0, acc[r][0]);
                    acc[r][1] = madd(pv, b1, acc[r][1]);
                }
            }
            for r in 0..BQ {
                store(o.add(r * d_len + d0), acc[r][0]);
                store(o.add(r * d_len + d0 + 4), acc[r][1]);
            }
            d0 += 8;
        }
        while d0 < d_len {
            let w = if d_len - d0 < 4 { d_len - d0 } else { 4 };
            let mut acc = [f32x4_splat(0.0); BQ];
            for r in 0..BQ {
                acc[r] = f32x4_mul(load_partial(o.add(r * d_len + d0), w), f32x4_splat(alpha[r]));
            }
            for j in first..last {
                let b0 = load_partial(v.add((j0 + j) * v_stride + d0), w);
                for r in 0..BQ {
                    acc[r] = madd(f32x4_splat(p[r][j]), b0, acc[r]);
                }
            }
            for r in 0..BQ {
                store_partial(o.add(r * d_len + d0), acc[r], w);
            }
            d0 += w;
        }
    }
}
