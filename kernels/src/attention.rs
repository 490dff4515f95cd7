//! Fused multi-head attention with segment masking and an online softmax.
//!
//! Broadcast form: a block of `BQ = 4` query rows is packed (pre-scaled) as `[D][4]`, so
//! one k-step splats 4 query scalars against 8 keys of the transposed K (`[keys/8][D][8]`):
//! 8 accumulators, 6 loads per 8 FMAs, and the scores come out as rows of key vectors with
//! no horizontal reduction. `P·V` is the same shape: 4 rows of probabilities splatted
//! against 8 head dims of V (packed `[keys][D8]`). Keys are visited in blocks of `BK` with
//! a flash-attention style update of the running max, running sum and output
//! accumulators, so no `queries × keys` matrix ever exists.
//!
//! Segment ids are nondecreasing, so the keys a query block can see form one range
//! `[first key of its first segment, last key of its last segment]`; key blocks outside
//! it are never visited and a packed batch costs Σ nᵢ², not (Σ nᵢ)².

use crate::math::{exp_nonpos_s, exp_nonpos_v};
use crate::simd::*;

/// Query rows per block.
const BQ: usize = 4;
/// Keys per score chunk (2 vectors).
const KB: usize = 8;
/// Keys per softmax block.
const BK: usize = 64;

/// Floats of scratch `attention_f32` needs.
#[unsafe(no_mangle)]
pub extern "C" fn attention_scratch_len_f32(keys: usize, head_dim: usize) -> usize {
    let d8 = head_dim.div_ceil(8) * 8;
    let keys8 = keys.div_ceil(KB) * KB;
    keys8 * head_dim + keys8 * d8 + head_dim * BQ + BQ * BK + BQ * d8
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
        let d8 = d_len.div_ceil(8) * 8;
        let keys8 = keys.div_ceil(KB) * KB;
        let kt = scratch; // [keys8/8][D][8]
        let vp = kt.add(keys8 * d_len); // [keys8][d8]
        let qp = vp.add(keys8 * d8); // [D][BQ]
        let p = qp.add(d_len * BQ); // [BQ][BK]
        let o = p.add(BQ * BK); // [BQ][d8]
        if !cls.is_null() {
            for i in 0..keys * heads {
                *cls.add(i) = 0.0;
            }
        }
        let width = heads * d_len;
        for h in 0..heads {
            // Pack K transposed per chunk of 8 keys, and V as contiguous zero-padded rows.
            for j in 0..keys8 {
                let kdst = kt.add((j / KB) * d_len * KB + j % KB);
                let vdst = vp.add(j * d8);
                if j < keys {
                    let ksrc = k.add(j * k_stride + h * d_len);
                    let vsrc = v.add(j * v_stride + h * d_len);
                    for d in 0..d_len {
                        *kdst.add(d * KB) = *ksrc.add(d);
                    }
                    let mut d = 0;
                    while d + 4 <= d_len {
                        store(vdst.add(d), load(vsrc.add(d)));
                        d += 4;
                    }
                    while d < d8 {
                        *vdst.add(d) = if d < d_len { *vsrc.add(d) } else { 0.0 };
                        d += 1;
                    }
                } else {
                    for d in 0..d_len {
                        *kdst.add(d * KB) = 0.0;
                    }
                    for d in 0..d8 {
                        *vdst.add(d) = 0.0;
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
                    is_cls[r] =
                        !cls.is_null() && r < rows && (i == 0 || seg(q_seg, i - 1) != segs[r]);
                }
                let (seg_lo, seg_hi) = (segs[0], segs[BQ - 1]);
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
                for i in 0..BQ * d8 {
                    *o.add(i) = 0.0;
                }
                let mut m = [f32::NEG_INFINITY; BQ];
                let mut l = [0.0f32; BQ];
                let uniform = seg_lo == seg_hi;
                let mut j0 = kstart / KB * KB;
                while j0 < kend {
                    let span = kend.div_ceil(KB) * KB - j0;
                    let bk = if span < BK { span } else { BK };
                    scores(kt.add(j0 * d_len), qp, d_len, bk / KB, p);
                    if !uniform || j0 < kstart || j0 + bk > kend {
                        for r in 0..BQ {
                            for jj in 0..bk {
                                let key = j0 + jj;
                                if key < kstart || key >= kend || seg(k_seg, key) != segs[r] {
                                    *p.add(r * BK + jj) = f32::NEG_INFINITY;
                                }
                            }
                        }
                    }
                    let mut alpha = [1.0f32; BQ];
                    for r in 0..BQ {
                        let row = p.add(r * BK);
                        if is_cls[r] {
                            // Raw logits now; normalized once the final max and sum are known.
                            for jj in 0..bk {
                                let s = *row.add(jj);
                                if s != f32::NEG_INFINITY {
                                    *cls.add((j0 + jj) * heads + h) = s;
                                }
                            }
                        }
                        let mut mv = f32x4_splat(f32::NEG_INFINITY);
                        let mut jj = 0;
                        while jj < bk {
                            mv = f32x4_pmax(mv, load(row.add(jj)));
                            jj += 4;
                        }
                        let mx = hmax(mv);
                        if mx == f32::NEG_INFINITY {
                            // Nothing visible in this block: zero probabilities, state kept.
                            let mut jj = 0;
                            while jj < bk {
                                store(row.add(jj), f32x4_splat(0.0));
                                jj += 4;
                            }
                            continue;
                        }
                        let m_new = if m[r] > mx { m[r] } else { mx };
                        alpha[r] = exp_nonpos_s(m[r] - m_new);
                        let mnv = f32x4_splat(m_new);
                        let mut sv = f32x4_splat(0.0);
                        let mut jj = 0;
                        while jj < bk {
                            let pv = exp_nonpos_v(f32x4_sub(load(row.add(jj)), mnv));
                            store(row.add(jj), pv);
                            sv = f32x4_add(sv, pv);
                            jj += 4;
                        }
                        l[r] = l[r] * alpha[r] + hsum(sv);
                        m[r] = m_new;
                    }
                    let first = if kstart > j0 { kstart - j0 } else { 0 };
                    let last = if kend < j0 + bk { kend - j0 } else { bk };
                    accumulate_pv(vp.add(j0 * d8), d8, first, last, p, &alpha, o);
                    j0 += bk;
                }
                for r in 0..rows {
                    let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                    let dst = out.add((qb + r) * width + h * d_len);
                    let src = o.add(r * d8);
                    let iv = f32x4_splat(inv);
                    let mut d = 0;
                    while d + 4 <= d_len {
                        store(dst.add(d), f32x4_mul(load(src.add(d)), iv));
                        d += 4;
                    }
                    while d < d_len {
                        *dst.add(d) = *src.add(d) * inv;
                        d += 1;
                    }
                    if is_cls[r] {
                        // Exact probabilities: the stored logits against the final max and sum.
                        let from = bound(k_seg, keys, segs[r], false);
                        let to = bound(k_seg, keys, segs[r], true);
                        for key in from..to {
                            let c = cls.add(key * heads + h);
                            *c = exp_nonpos_s(*c - m[r]) * inv;
                        }
                    }
                }
                qb += BQ;
            }
        }
    }
}

/// `p[r][c·8 + lane] = qp[:, r] · kt[c][:, lane]` for `chunks` chunks of 8 keys.
#[inline(always)]
unsafe fn scores(kt: *const f32, qp: *const f32, d_len: usize, chunks: usize, p: *mut f32) {
    unsafe {
        for c in 0..chunks {
            let mut acc = [[f32x4_splat(0.0); 2]; BQ];
            let mut b = kt.add(c * d_len * KB);
            let mut a = qp;
            for _ in 0..d_len {
                let b0 = load(b);
                let b1 = load(b.add(4));
                for r in 0..BQ {
                    let av = v128_load32_splat(a.add(r) as *const u32);
                    acc[r][0] = madd(av, b0, acc[r][0]);
                    acc[r][1] = madd(av, b1, acc[r][1]);
                }
                a = a.add(BQ);
                b = b.add(KB);
            }
            for r in 0..BQ {
                store(p.add(r * BK + c * KB), acc[r][0]);
                store(p.add(r * BK + c * KB + 4), acc[r][1]);
            }
        }
    }
}

/// `o[r] = o[r]·alpha[r] + Σ_j p[r][j] · v[j]` for `j` in `[first, last)`, 8 dims at a time.
#[inline(always)]
unsafe fn accumulate_pv(
    v: *const f32,
    d8: usize,
    first: usize,
    last: usize,
    p: *const f32,
    alpha: &[f32; BQ],
    o: *mut f32,
) {
    unsafe {
        let mut d0 = 0;
        while d0 < d8 {
            let mut acc = [[f32x4_splat(0.0); 2]; BQ];
            for r in 0..BQ {
                let a = f32x4_splat(alpha[r]);
                acc[r][0] = f32x4_mul(load(o.add(r * d8 + d0)), a);
                acc[r][1] = f32x4_mul(load(o.add(r * d8 + d0 + 4)), a);
            }
            let mut row = v.add(first * d8 + d0);
            for j in first..last {
                let b0 = load(row);
                let b1 = load(row.add(4));
                for r in 0..BQ {
                    let pv = v128_load32_splat(p.add(r * BK + j) as *const u32);
                    acc[r][0] = madd(pv, b0, acc[r][0]);
                    acc[r][1] = madd(pv, b1, acc[r][1]);
                }
                row = row.add(d8);
            }
            for r in 0..BQ {
                store(o.add(r * d8 + d0), acc[r][0]);
                store(o.add(r * d8 + d0 + 4), acc[r][1]);
            }
            d0 += 8;
        }
    }
}
