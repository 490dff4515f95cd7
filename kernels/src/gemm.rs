//! float32 GEMM `C[M,N] = A[M,K] · Bᵀ + bias`, B being PyTorch's `[N, K]` weight.
//!
//! Deno's V8 checks the bounds of every wasm memory access in software (no trap
//! handler), so each load costs ~3 extra instructions; the micro-kernel is built to need
//! as few loads per FMA as possible. It uses the *dot* form: every accumulator is a
//! `v128` of 4 partial sums along K for one `(row, column)` pair, so one k-step of 4
//! reads one `v128` per A row and one per B column, with no broadcasts or shuffles.
//! An `MR × NR = 2 × 4` tile holds 8 accumulators (+2 A, +1 B = 11 of the 15 xmm
//! registers V8 allocates): 6 loads per 8 FMAs. A 3 × 4 tile (16 registers) reads less
//! per FMA on paper but spills, and measured 40% slower. Eight chains just cover the FMA's
//! 4-cycle latency at 2 per cycle (~92% in `bench/peak.ts`'s sweep); a 3 × 3 tile with 9
//! fits the registers but measured no faster. At the end the 4 partial sums
//! of 4 columns are folded with a transpose-add into one vector.
//!
//! B is packed once (at model load) into panels of `NR` columns, each `[K/4][NR][4]`,
//! zero-padded past N and K, so a panel streams with consecutive loads. A is read in
//! place (row-major, contiguous in K) unless K is not a multiple of 4, in which case it
//! is copied into zero-padded scratch. K is cut into blocks of `KC` so a `KC × NR` B
//! sliver stays in L1 while the row pairs of an `MC`-row block pass over it, and that
//! `MC × KC` A block stays in L2 while all weight panels pass over it.

use crate::math::gelu_strip;
use crate::simd::*;

pub const MR: usize = 2;
pub const NR: usize = 4;
pub const KC: usize = 1024;
/// Most rows per M-block: an `MC × KC` slice of A (≤ 1 MiB) stays in L2 while every
/// weight panel passes over it, so large batches do not stream A from memory per panel.
/// Blocks are balanced (1576 rows → 7 × 226), never a big block and a sliver.
pub const MC: usize = 256;

/// Floats of the packed B for an `[n, k]` weight.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_packed_len_f32(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k.div_ceil(4) * 4
}

/// Floats of scratch `gemm_f32` needs for `m` rows and `k` inner size.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_scratch_len_f32(m: usize, k: usize) -> usize {
    if k % 4 == 0 { 0 } else { m * k.div_ceil(4) * 4 }
}

/// Packs `w` (`[n, k]` row-major) into `out` (`gemm_packed_len_f32(n, k)` floats).
///
/// # Safety
/// Pointers must be valid for the sizes given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_pack_f32(w: *const f32, n: usize, k: usize, out: *mut f32) {
    unsafe {
        let kp = k.div_ceil(4) * 4;
        let panels = n.div_ceil(NR);
        for p in 0..panels {
            let base = out.add(p * NR * kp);
            for k4 in 0..kp / 4 {
                for c in 0..NR {
                    let col = p * NR + c;
                    for lane in 0..4 {
                        let kk = k4 * 4 + lane;
                        *base.add((k4 * NR + c) * 4 + lane) = if col < n && kk < k {
                            *w.add(col * k + kk)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// `[Σ v0, Σ v1, Σ v2, Σ v3]`: horizontal sums of four vectors in one.
#[inline(always)]
pub(crate) fn reduce4(v0: v128, v1: v128, v2: v128, v3: v128) -> v128 {
    let s01 = f32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(v0, v1),
        i32x4_shuffle::<2, 6, 3, 7>(v0, v1),
    );
    let s23 = f32x4_add(
        i32x4_shuffle::<0, 4, 1, 5>(v2, v3),
        i32x4_shuffle::<2, 6, 3, 7>(v2, v3),
    );
    f32x4_add(
        i32x4_shuffle::<0, 1, 4, 5>(s01, s23),
        i32x4_shuffle::<2, 3, 6, 7>(s01, s23),
    )
}

/// Dot products of `R` rows of A with the 4 columns of one B panel over `k4` steps of 4;
/// returns one vector of 4 outputs per row.
#[inline(always)]
pub(crate) unsafe fn micro<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    k4: usize,
) -> [v128; R] {
    unsafe {
        let mut acc = [[f32x4_splat(0.0); NR]; R];
        let mut rows = [a; R];
        for r in 0..R {
            rows[r] = a.add(r * lda);
        }
        let mut b = b;
        let mut step = 0;
        while step < k4 {
            let mut av = [f32x4_splat(0.0); R];
            for r in 0..R {
                av[r] = load(rows[r]);
                rows[r] = rows[r].add(4);
            }
            for c in 0..NR {
                let bv = load(b.add(4 * c));
                for r in 0..R {
                    acc[r][c] = madd(av[r], bv, acc[r][c]);
                }
            }
            b = b.add(4 * NR);
            step += 1;
        }
        let mut out = [f32x4_splat(0.0); R];
        for r in 0..R {
            out[r] = reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        }
        out
    }
}

/// Adds the tile to C (or bias on the first K-block) and stores it.
#[inline(always)]
unsafe fn finish<const R: usize>(
    tile: [v128; R],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    base: v128,
    first: bool,
) {
    unsafe {
        let mut y = tile;
        for r in 0..R {
            let dst = c.add(r * ldc);
            let prev = if first {
                base
            } else if cols == NR {
                load(dst)
            } else {
                load_partial(dst, cols)
            };
            y[r] = f32x4_add(tile[r], prev);
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

#[inline(always)]
unsafe fn rows_tile<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    k4: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    base: v128,
    first: bool,
) {
    unsafe {
        let tile = micro::<R>(a, lda, b, k4);
        finish::<R>(tile, c, ldc, cols, base, first);
    }
}

/// `c = a · bᵀ + bias`, then GELU when `gelu != 0`.
///
/// `a`: `[m, k]` row-major; `packed_b`: from `gemm_pack_f32` for `[n, k]`; `bias`: `[n]` or
/// null; `c`: `[m, n]`; `scratch`: `gemm_scratch_len_f32(m, k)` floats.
///
/// # Safety
/// Pointers must be valid for the sizes given; `c` must not overlap the inputs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_f32(
    a: *const f32,
    m: usize,
    k: usize,
    packed_b: *const f32,
    n: usize,
    bias: *const f32,
    c: *mut f32,
    gelu: u32,
    scratch: *mut f32,
) {
    unsafe {
        if m == 0 || n == 0 {
            return;
        }
        let kp = k.div_ceil(4) * 4;
        let (a, lda) = if kp == k {
            (a, k)
        } else {
            // Zero-pad each row to a multiple of 4 so the 4-wide K loop never reads past it.
            for i in 0..m {
                for kk in 0..kp {
                    *scratch.add(i * kp + kk) = if kk < k { *a.add(i * k + kk) } else { 0.0 };
                }
            }
            (scratch as *const f32, kp)
        };
        let n_panels = n.div_ceil(NR);
        let mut k0 = 0;
        loop {
            let kc = if kp - k0 < KC { kp - k0 } else { KC };
            let first = k0 == 0;
            let last = k0 + kc == kp;
            let act = last && gelu != 0;
            let blocks = m.div_ceil(MC);
            let block_rows = m.div_ceil(blocks).div_ceil(MR) * MR;
            let mut m0 = 0;
            while m0 < m {
                let m_end = if m - m0 < block_rows {
                    m
                } else {
                    m0 + block_rows
                };
                let full_end = m0 + (m_end - m0) / MR * MR;
                for jp in 0..n_panels {
                    let b_panel = packed_b.add(jp * NR * kp + k0 * NR);
                    let j0 = jp * NR;
                    let cols = if n - j0 < NR { n - j0 } else { NR };
                    let base = if !first || bias.is_null() {
                        f32x4_splat(0.0)
                    } else if cols == NR {
                        load(bias.add(j0))
                    } else {
                        load_partial(bias.add(j0), cols)
                    };
                    let a0 = a.add(k0);
                    let c0 = c.add(j0);
                    let mut i = m0;
                    while i < full_end {
                        rows_tile::<MR>(
                            a0.add(i * lda),
                            lda,
                            b_panel,
                            kc / 4,
                            c0.add(i * n),
                            n,
                            cols,
                            base,
                            first,
                        );
                        i += MR;
                    }
                    if i < m_end {
                        // MR = 2: at most one row is left.
                        rows_tile::<1>(
                            a0.add(i * lda),
                            lda,
                            b_panel,
                            kc / 4,
                            c0.add(i * n),
                            n,
                            cols,
                            base,
                            first,
                        );
                    }
                    if act {
                        gelu_strip(c0.add(m0 * n), m_end - m0, n, cols);
                    }
                }
                m0 = m_end;
            }
            k0 += kc;
            if last {
                break;
            }
        }
    }
}
