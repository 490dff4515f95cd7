//! Fused multi-head attention with segment masking and an online softmax.
//!
//! Both products reuse the GEMM's dot-form micro-kernel (see gemm.rs: few loads per FMA,
//! because Deno's V8 bounds-checks every wasm load in software). Per head, K is packed
//! like GEMM weights (`[keys/4][D/4][4][4]`, keys as output columns) and V transposed
//! the same way (`[D/4][keys/4][4][4]`, head dims as output columns); D is zero-padded
//! to a multiple of 4. Then for each pair of query rows the keys are visited in blocks
//! of `BK`: scores `S = (scale·q)·kᵀ`, a flash-attention style update of the running
//! max, running sum and output accumulators, and `O += P·V`. No `queries × keys`
//! matrix ever exists.
//!
//! Segment ids are nondecreasing, so the keys a query pair can see form one range
//! `[first key of its first segment, last key of its last segment]`; key blocks outside
//! it are never visited and a packed batch costs Σ nᵢ², not (Σ nᵢ)².

use crate::gemm::micro;
use crate::math::{exp_nonpos_s, exp_nonpos_v};
use crate::simd::*;

/// Query rows per block (the micro-kernel's row count).
const BQ: usize = 2;
/// Keys per softmax block.
const BK: usize = 64;

/// Floats of scratch `attention_f32` needs.
#[unsafe(no_mangle)]
pub extern "C" fn attention_scratch_len_f32(keys: usize, head_dim: usize) -> usize {
    let d4 = head_dim.div_ceil(4) * 4;
    let keys4 = keys.div_ceil(4) * 4;
    2 * keys4 * d4 + BQ * d4 + BQ * BK + BQ * d4
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

/// Where one head's packed operands and per-block buffers live.
struct Work {
    kp: *mut f32, // [keys4/4][d4/4][4][4]
    vt: *mut f32, // [d4/4][keys4/4][4][4]
    qp: *mut f32, // [BQ][d4], scaled
    p: *mut f32,  // [BQ][BK] scores, then probabilities
    o: *mut f32,  // [BQ][d4] output accumulators
    d_len: usize,
    d4: usize,
    keys: usize,
    keys4: usize,
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
        let d4 = d_len.div_ceil(4) * 4;
        let keys4 = keys.div_ceil(4) * 4;
        let kp = scratch;
        let vt = kp.add(keys4 * d4);
        let qp = vt.add(keys4 * d4);
        let p = qp.add(BQ * d4);
        let o = p.add(BQ * BK);
        let w = Work {
            kp,
            vt,
            qp,
            p,
            o,
            d_len,
            d4,
            keys,
            keys4,
        };
        if !cls.is_null() {
            for i in 0..keys * heads {
                *cls.add(i) = 0.0;
            }
        }
        let width = heads * d_len;
        for h in 0..heads {
            pack_head(&w, k.add(h * d_len), k_stride, v.add(h * d_len), v_stride);
            let mut qb = 0;
            while qb + BQ <= queries {
                query_block::<BQ>(
                    &w, q, q_stride, qb, h, heads, width, scale, q_seg, k_seg, cls, out,
                );
                qb += BQ;
            }
            if qb < queries {
                query_block::<1>(
                    &w, q, q_stride, qb, h, heads, width, scale, q_seg, k_seg, cls, out,
                );
            }
        }
    }
}

/// Packs K (keys as GEMM output columns) and Vᵀ (head dims as output columns) of one head.
unsafe fn pack_head(w: &Work, k: *const f32, k_stride: usize, v: *const f32, v_stride: usize) {
    unsafe {
        let (d_len, d4, keys, keys4) = (w.d_len, w.d4, w.keys, w.keys4);
        let d_full = d_len / 4 * 4;
        // kp: [keys4/4][d4/4][4 keys][4 dims]; whole key rows, 4 dims per vector store.
        for j in 0..keys4 {
            let dst = w.kp.add((j / 4) * d4 * 4 + (j % 4) * 4);
            if j < keys {
                let src = k.add(j * k_stride);
                let mut d = 0;
                while d < d_full {
                    store(dst.add(d * 4), load(src.add(d)));
                    d += 4;
                }
                if d < d4 {
                    store(dst.add(d * 4), load_partial(src.add(d), d_len - d));
                }
            } else {
                for d4i in 0..d4 / 4 {
                    store(dst.add(d4i * 16), f32x4_splat(0.0));
                }
            }
        }
        // vt: [d4/4][keys4/4][4 dims][4 keys]: 4×4 transposes of V.
        for j4 in 0..keys4 / 4 {
            let mut rows = [f32x4_splat(0.0); 4];
            for dq in 0..d4 / 4 {
                let d = dq * 4;
                for jj in 0..4 {
                    let j = j4 * 4 + jj;
                    rows[jj] = if j >= keys {
                        f32x4_splat(0.0)
                    } else if d + 4 <= d_len {
                        load(v.add(j * v_stride + d))
                    } else {
                        load_partial(v.add(j * v_stride + d), d_len - d)
                    };
                }
                let t0 = i32x4_shuffle::<0, 4, 1, 5>(rows[0], rows[1]);
                let t1 = i32x4_shuffle::<2, 6, 3, 7>(rows[0], rows[1]);
                let t2 = i32x4_shuffle::<0, 4, 1, 5>(rows[2], rows[3]);
                let t3 = i32x4_shuffle::<2, 6, 3, 7>(rows[2], rows[3]);
                let dst = w.vt.add((dq * (keys4 / 4) + j4) * 16);
                store(dst, i32x4_shuffle::<0, 1, 4, 5>(t0, t2));
                store(dst.add(4), i32x4_shuffle::<2, 3, 6, 7>(t0, t2));
                store(dst.add(8), i32x4_shuffle::<0, 1, 4, 5>(t1, t3));
                store(dst.add(12), i32x4_shuffle::<2, 3, 6, 7>(t1, t3));
            }
        }
    }
}

/// `R` query rows starting at `qb`, one head: online softmax over their key range.
#[inline(always)]
unsafe fn query_block<const R: usize>(
    w: &Work,
    q: *const f32,
    q_stride: usize,
    qb: usize,
    h: usize,
    heads: usize,
    width: usize,
    scale: f32,
    q_seg: *const i32,
    k_seg: *const i32,
    cls: *mut f32,
    out: *mut f32,
) {
    unsafe {
        let (d_len, d4, keys) = (w.d_len, w.d4, w.keys);
        let mut segs = [0i32; R];
        let mut is_cls = [false; R];
        for r in 0..R {
            let i = qb + r;
            segs[r] = seg(q_seg, i);
            is_cls[r] = !cls.is_null() && (i == 0 || seg(q_seg, i - 1) != segs[r]);
        }
        let (seg_lo, seg_hi) = (segs[0], segs[R - 1]);
        let kstart = bound(k_seg, keys, seg_lo, false);
        let kend = bound(k_seg, keys, seg_hi, true);
        for r in 0..R {
            let src = q.add((qb + r) * q_stride + h * d_len);
            for d in 0..d4 {
                *w.qp.add(r * d4 + d) = if d < d_len { *src.add(d) * scale } else { 0.0 };
            }
            for d in 0..d4 {
                *w.o.add(r * d4 + d) = 0.0;
            }
        }
        let mut m = [f32::NEG_INFINITY; R];
        let mut l = [0.0f32; R];
        let uniform = seg_lo == seg_hi;
        let mut j0 = kstart / 4 * 4;
        while j0 < kend {
            let span = kend.div_ceil(4) * 4 - j0;
            let bk = if span < BK { span } else { BK };
            // Scores for keys j0 .. j0+bk, 4 at a time.
            let mut jj = 0;
            while jj < bk {
                let tile = micro::<R>(w.qp, d4, w.kp.add((j0 + jj) * d4), d4 / 4);
                for r in 0..R {
                    store(w.p.add(r * BK + jj), tile[r]);
                }
                jj += 4;
            }
            if !uniform || j0 < kstart || j0 + bk > kend {
                for r in 0..R {
                    for jj in 0..bk {
                        let key = j0 + jj;
                        if key < kstart || key >= kend || seg(k_seg, key) != segs[r] {
                            *w.p.add(r * BK + jj) = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            let mut alpha = [1.0f32; R];
            for r in 0..R {
                let row = w.p.add(r * BK);
                if is_cls[r] {
                    // Raw logits now; normalized once the row's final max and sum are known.
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
                    // Nothing visible in this block: zero probabilities, state unchanged.
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
            // O = O·alpha + P·V over this block, 4 head dims at a time.
            let mut d = 0;
            while d < d4 {
                let tile = micro::<R>(w.p, BK, w.vt.add(d * w.keys4 + j0 * 4), bk / 4);
                for r in 0..R {
                    let acc = w.o.add(r * d4 + d);
                    store(acc, madd(load(acc), f32x4_splat(alpha[r]), tile[r]));
                }
                d += 4;
            }
            j0 += bk;
        }
        for r in 0..R {
            let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
            let dst = out.add((qb + r) * width + h * d_len);
            let src = w.o.add(r * d4);
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
    }
}
