//! Fused multi-head attention with segment masking and an online softmax.
//!
//! Broadcast form with rows as lanes: a block of `BQ = 4` query rows is packed
//! (pre-scaled) as `[D][4]`, so per head dim one load brings the 4 query values, which
//! register shuffles splat against 8 keys of the transposed K (`[keys/8][D][8]`): 8
//! accumulators, 3 loads per 8 FMAs (Deno bounds-checks every wasm load in software, while
//! a shuffle is one instruction). Each 4×8 score tile is transposed into `[keys][4]`, so
//! the softmax max, exp, sum and rescale work on the 4 rows at once with no horizontal
//! reduction, and `P·V` again loads one vector of 4 probabilities per key against 8 head
//! dims of V (packed `[keys][D8]`). Keys are visited in blocks of `BK` with a
//! flash-attention style update of the running max, running sum and output accumulators,
//! so no `queries × keys` matrix ever exists.
//!
//! Segment ids are nondecreasing, so the keys a query block can see form one range
//! `[first key of its first segment, last key of its last segment]`; key blocks outside
//! it are never visited and a packed batch costs Σ nᵢ², not (Σ nᵢ)².

use crate::math::{exp_nonpos_n, exp_nonpos_s, exp_nonpos_v};
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

/// Segment id of row `i`, or 0 when there are no ids.
#[inline(always)]
pub(crate) unsafe fn seg(ids: *const i32, i: usize) -> i32 {
    unsafe { if ids.is_null() { 0 } else { *ids.add(i) } }
}

/// First index in `[0, n)` whose id is `>= s` (or `> s` when `after`).
pub(crate) unsafe fn bound(ids: *const i32, n: usize, s: i32, after: bool) -> usize {
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
        let p = qp.add(d_len * BQ); // [BK][BQ]: rows are lanes
        let o = p.add(BQ * BK); // [BQ][d8]
        if !cls.is_null() {
            for i in 0..keys * heads {
                *cls.add(i) = 0.0;
            }
        }
        let width = heads * d_len;
        for h in 0..heads {
            // Pack K transposed per chunk of 8 keys, and V as contiguous zero-padded rows.
            // With head dims in fours, K goes through 4×4 register transposes.
            let vector_k = d_len % 4 == 0;
            if vector_k {
                let mut j = 0;
                while j < keys8 {
                    let kdst = kt.add((j / KB) * d_len * KB + j % KB);
                    let mut d = 0;
                    while d < d_len {
                        let mut rows4 = [f32x4_splat(0.0); 4];
                        for i in 0..4 {
                            if j + i < keys {
                                rows4[i] = load(k.add((j + i) * k_stride + h * d_len + d));
                            }
                        }
                        let t = transpose4(rows4[0], rows4[1], rows4[2], rows4[3]);
                        for i in 0..4 {
                            store(kdst.add((d + i) * KB), t[i]);
                        }
                        d += 4;
                    }
                    j += 4;
                }
            }
            for j in 0..keys8 {
                let kdst = kt.add((j / KB) * d_len * KB + j % KB);
                let vdst = vp.add(j * d8);
                if j < keys {
                    let ksrc = k.add(j * k_stride + h * d_len);
                    let vsrc = v.add(j * v_stride + h * d_len);
                    if !vector_k {
                        for d in 0..d_len {
                            *kdst.add(d * KB) = *ksrc.add(d);
                        }
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
                    if !vector_k {
                        for d in 0..d_len {
                            *kdst.add(d * KB) = 0.0;
                        }
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
                let any_cls = is_cls[0] || is_cls[1] || is_cls[2] || is_cls[3];
                let (seg_lo, seg_hi) = (segs[0], segs[BQ - 1]);
                let kstart = bound(k_seg, keys, seg_lo, false);
                let kend = bound(k_seg, keys, seg_hi, true);
                if vector_k {
                    let sv = f32x4_splat(scale);
                    let mut d = 0;
                    while d < d_len {
                        let mut rows4 = [f32x4_splat(0.0); 4];
                        for r in 0..rows {
                            let src = q.add((qb + r) * q_stride + h * d_len + d);
                            rows4[r] = f32x4_mul(load(src), sv);
                        }
                        let t = transpose4(rows4[0], rows4[1], rows4[2], rows4[3]);
                        for i in 0..4 {
                            store(qp.add((d + i) * BQ), t[i]);
                        }
                        d += 4;
                    }
                } else {
                    for d in 0..d_len {
                        for r in 0..BQ {
                            *qp.add(d * BQ + r) = if r < rows {
                                *q.add((qb + r) * q_stride + h * d_len + d) * scale
                            } else {
                                0.0
                            };
                        }
                    }
                }
                for i in 0..BQ * d8 {
                    *o.add(i) = 0.0;
                }
                // Running max and sum of the 4 rows, one lane each.
                let neg_inf = f32x4_splat(f32::NEG_INFINITY);
                let mut m = neg_inf;
                let mut l = f32x4_splat(0.0);
                let uniform = seg_lo == seg_hi;
                let mut j0 = kstart / KB * KB;
                while j0 < kend {
                    let span = kend.div_ceil(KB) * KB - j0;
                    let bk = if span < BK { span } else { BK };
                    scores(kt.add(j0 * d_len), qp, d_len, bk / KB, p);
                    // Keys outside [kstart, kend) (chunk padding, other segments) are masked
                    // for all 4 rows with one store each. Inside, every key belongs to one of
                    // the rows' segments: only a block whose rows span segments compares ids,
                    // all 4 rows at once.
                    let inside_from = kstart.saturating_sub(j0).min(bk);
                    let inside_to = kend.saturating_sub(j0).min(bk);
                    for jj in 0..inside_from {
                        store(p.add(jj * BQ), neg_inf);
                    }
                    for jj in inside_to..bk {
                        store(p.add(jj * BQ), neg_inf);
                    }
                    if !uniform {
                        let row_segs = i32x4(segs[0], segs[1], segs[2], segs[3]);
                        for jj in inside_from..inside_to {
                            let keep = i32x4_eq(i32x4_splat(seg(k_seg, j0 + jj)), row_segs);
                            let at = p.add(jj * BQ);
                            store(at, v128_bitselect(load(at), neg_inf, keep));
                        }
                    }
                    if any_cls {
                        for r in 0..BQ {
                            if is_cls[r] {
                                // Raw logits now; normalized once the final max and sum are known.
                                for jj in 0..bk {
                                    let s = *p.add(jj * BQ + r);
                                    if s != f32::NEG_INFINITY {
                                        *cls.add((j0 + jj) * heads + h) = s;
                                    }
                                }
                            }
                        }
                    }
                    // Rows are lanes: the block max, the exp and the sums need no reduction.
                    let mut mx0 = neg_inf;
                    let mut mx1 = neg_inf;
                    let mut jj = 0;
                    while jj < bk {
                        mx0 = f32x4_pmax(mx0, load(p.add(jj * BQ)));
                        mx1 = f32x4_pmax(mx1, load(p.add(jj * BQ + BQ)));
                        jj += 2;
                    }
                    let m_new = f32x4_pmax(m, f32x4_pmax(mx0, mx1));
                    // A row that has seen no key yet shifts by 0: its exps are all 0 and its
                    // alpha is 0 (its state is still 0), instead of NaN from -inf - -inf.
                    let shift = v128_andnot(m_new, f32x4_eq(m_new, neg_inf));
                    let alpha = exp_nonpos_v(f32x4_sub(m, shift));
                    // Four keys per exp call: V8 rebuilds the exp's splatted constants at every
                    // call, so fewer, wider calls cut that cost (bk is a multiple of KB = 8).
                    let mut s0 = f32x4_splat(0.0);
                    let mut s1 = f32x4_splat(0.0);
                    let mut jj = 0;
                    while jj < bk {
                        let at = p.add(jj * BQ);
                        let e = exp_nonpos_n([
                            f32x4_sub(load(at), shift),
                            f32x4_sub(load(at.add(BQ)), shift),
                            f32x4_sub(load(at.add(2 * BQ)), shift),
                            f32x4_sub(load(at.add(3 * BQ)), shift),
                        ]);
                        for (i, v) in e.iter().enumerate() {
                            store(at.add(i * BQ), *v);
                        }
                        s0 = f32x4_add(s0, f32x4_add(e[0], e[2]));
                        s1 = f32x4_add(s1, f32x4_add(e[1], e[3]));
                        jj += 4;
                    }
                    l = madd(l, alpha, f32x4_add(s0, s1));
                    m = m_new;
                    let first = if kstart > j0 { kstart - j0 } else { 0 };
                    let last = if kend < j0 + bk { kend - j0 } else { bk };
                    accumulate_pv(vp.add(j0 * d8), d8, first, last, p, alpha, o);
                    j0 += bk;
                }
                let mut ms = [0.0f32; BQ];
                let mut ls = [0.0f32; BQ];
                v128_store(ms.as_mut_ptr() as *mut v128, m);
                v128_store(ls.as_mut_ptr() as *mut v128, l);
                for r in 0..rows {
                    let inv = if ls[r] > 0.0 { 1.0 / ls[r] } else { 0.0 };
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
                            *c = exp_nonpos_s(*c - ms[r]) * inv;
                        }
                    }
                }
                qb += BQ;
            }
        }
    }
}

/// `p[c·8 + key][r] = qp[:, r] · kt[c][:, key]` for `chunks` chunks of 8 keys: per head
/// dim, one load brings the 4 query values (splatted by register shuffles) and two loads
/// the 8 keys, 3 loads per 8 FMAs; the tile is transposed once at the end.
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
                let qs = lanes(load(a));
                for r in 0..BQ {
                    acc[r][0] = madd(qs[r], b0, acc[r][0]);
                    acc[r][1] = madd(qs[r], b1, acc[r][1]);
                }
                a = a.add(BQ);
                b = b.add(KB);
            }
            for half in 0..2 {
                let t = transpose4(acc[0][half], acc[1][half], acc[2][half], acc[3][half]);
                let dst = p.add((c * KB + half * 4) * BQ);
                for i in 0..4 {
                    store(dst.add(i * BQ), t[i]);
                }
            }
        }
    }
}

/// `o[r] = o[r]·alpha[r] + Σ_j p[j][r] · v[j]` for `j` in `[first, last)`, 8 dims at a time:
/// per key, one load brings the 4 rows' probabilities and two loads 8 dims of V.
#[inline(always)]
unsafe fn accumulate_pv(
    v: *const f32,
    d8: usize,
    first: usize,
    last: usize,
    p: *const f32,
    alpha: v128,
    o: *mut f32,
) {
    unsafe {
        let a = lanes(alpha);
        let mut d0 = 0;
        while d0 < d8 {
            let mut acc = [[f32x4_splat(0.0); 2]; BQ];
            for r in 0..BQ {
                acc[r][0] = f32x4_mul(load(o.add(r * d8 + d0)), a[r]);
                acc[r][1] = f32x4_mul(load(o.add(r * d8 + d0 + 4)), a[r]);
            }
            let mut row = v.add(first * d8 + d0);
            let mut pj = p.add(first * BQ);
            for _ in first..last {
                let b0 = load(row);
                let b1 = load(row.add(4));
                let ps = lanes(load(pj));
                for r in 0..BQ {
                    acc[r][0] = madd(ps[r], b0, acc[r][0]);
                    acc[r][1] = madd(ps[r], b1, acc[r][1]);
                }
                row = row.add(d8);
                pj = pj.add(BQ);
            }
            for r in 0..BQ {
                store(o.add(r * d8 + d0), acc[r][0]);
                store(o.add(r * d8 + d0 + 4), acc[r][1]);
            }
            d0 += 8;
        }
    }
}
