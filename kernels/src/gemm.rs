//! float32 GEMM `C[M,N] = A[M,K] · Bᵀ + bias`, B being PyTorch's `[N, K]` weight.
//!
//! Broadcast form with rows as lanes, like the attention's score kernel: a block of
//! `MR = 4` rows of A is packed as `[K][4]`, so one load brings the 4 rows' values at one
//! k, and register shuffles splat each against `NR = 8` columns of B (two loads from a
//! panel packed `[K][8]`). The `4 × 8` tile keeps 8 accumulators, each already 4 outputs of
//! one row, so it is stored with no horizontal reduction.
//!
//! Why this form: Deno's V8 checks the bounds of every wasm memory access in software (no
//! trap handler), so a load costs ~3 instructions and the loop's speed depends on its
//! instruction count, not only on its FMAs. A k-step here is 3 loads, 4 shuffles and 8
//! FMAs; the dot form used before (2 × 4 tiles over `[K/4][4][4]` panels) needed 6 loads
//! per 8 FMAs. With the core to itself each runs at ~50 GFLOP/s (this form ~3% behind). But
//! this project's VM often spends seconds to minutes retiring about half the instructions
//! (most likely a tenant on the core's SMT sibling, `bench/phases.ts` shows it): then the
//! dot form fell to 26–32 GFLOP/s and this one holds 33–42 (bench/README.md, "Seventh
//! session"). Unrolling the k loop makes LLVM chain the accumulators and V8 spill them
//! (measured 0.55×).
//!
//! K is cut into blocks of `KC`, so a `KC × NR` B sliver (16 KiB) and a packed `KC × MR`
//! A quad (8 KiB) stay in L1 while the quads of an `MC`-row block pass over the sliver; the
//! block, packed once per K-block into scratch, stays in L2 while every panel passes.

use crate::math::gelu_strip;
use crate::simd::*;

/// Rows per tile: the 4 lanes of a packed A vector.
pub const MR: usize = 4;
/// Columns per weight panel (two vectors).
pub const NR: usize = 8;
/// K per block.
pub const KC: usize = 512;
/// Most rows per M-block: its packed `MC × KC` slice of A (≤ 512 KiB) stays in L2 while
/// every weight panel passes over it. Blocks are balanced (1576 rows → 7 × 228), never a
/// big block and a sliver.
pub const MC: usize = 256;

/// Rows of each of the balanced M-blocks that cover `m` rows: a multiple of `multiple`, at
/// most `most` (for `most` a multiple of `multiple`), never a big block and a sliver.
#[inline(always)]
pub(crate) fn balanced_block_rows(m: usize, most: usize, multiple: usize) -> usize {
    let blocks = m.div_ceil(most).max(1);
    m.div_ceil(blocks).div_ceil(multiple) * multiple
}

/// Floats of the packed B for an `[n, k]` weight.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_packed_len_f32(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Floats of scratch `gemm_f32` needs for `m` rows and `k` inner size: one packed M-block
/// of one K-block of A.
#[unsafe(no_mangle)]
pub extern "C" fn gemm_scratch_len_f32(m: usize, k: usize) -> usize {
    balanced_block_rows(m, MC, MR) * k.min(KC)
}

/// Packs `w` (`[n, k]` row-major) into `out` (`gemm_packed_len_f32(n, k)` floats): panels
/// of `NR` columns, each `[k][NR]`, zero past `n`.
///
/// # Safety
/// Pointers must be valid for the sizes given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gemm_pack_f32(w: *const f32, n: usize, k: usize, out: *mut f32) {
    unsafe {
        for p in 0..n.div_ceil(NR) {
            let panel = out.add(p * NR * k);
            for kk in 0..k {
                for c in 0..NR {
                    let col = p * NR + c;
                    *panel.add(kk * NR + c) = if col < n { *w.add(col * k + kk) } else { 0.0 };
                }
            }
        }
    }
}

/// Packs `rows` rows of A (`lda` apart, `kc` columns from `a`) into `out` as
/// `[quads][kc][MR]`: lane `r` of vector `kk` of quad `q` is row `MR·q + r` at column `kk`.
/// A partial last quad repeats its last row, whose results are never stored.
#[inline(always)]
unsafe fn pack_rows(a: *const f32, rows: usize, lda: usize, kc: usize, out: *mut f32) {
    unsafe {
        let k4 = kc / 4 * 4;
        for q in 0..rows.div_ceil(MR) {
            let mut row = [a; MR];
            for (r, p) in row.iter_mut().enumerate() {
                *p = a.add((q * MR + r).min(rows - 1) * lda);
            }
            let dst = out.add(q * kc * MR);
            let mut kk = 0;
            while kk < k4 {
                let t = transpose4(
                    load(row[0].add(kk)),
                    load(row[1].add(kk)),
                    load(row[2].add(kk)),
                    load(row[3].add(kk)),
                );
                for (i, v) in t.iter().enumerate() {
                    store(dst.add((kk + i) * MR), *v);
                }
                kk += 4;
            }
            while kk < kc {
                for (r, p) in row.iter().enumerate() {
                    *dst.add(kk * MR + r) = *p.add(kk);
                }
                kk += 1;
            }
        }
    }
}

/// The `MR × NR` tile of one packed quad of A with one B sliver over `kc` k-steps:
/// `[row][half]`, each 4 consecutive columns of that row.
#[inline(always)]
unsafe fn micro(a: *const f32, b: *const f32, kc: usize) -> [[v128; 2]; MR] {
    unsafe {
        let mut acc = [[f32x4_splat(0.0); 2]; MR];
        let mut a = a;
        let mut b = b;
        for _ in 0..kc {
            let b0 = load(b);
            let b1 = load(b.add(4));
            let rows = lanes(load(a));
            for r in 0..MR {
                acc[r][0] = madd(rows[r], b0, acc[r][0]);
                acc[r][1] = madd(rows[r], b1, acc[r][1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        acc
    }
}

/// Stores `cols ≤ 8` columns of one tile row at `dst`, adding `base` (the bias, on the
/// first K-block) or what the earlier K-blocks left there.
#[inline(always)]
unsafe fn finish_row(dst: *mut f32, tile: [v128; 2], cols: usize, base: [v128; 2], first: bool) {
    unsafe {
        if cols == NR {
            let prev = if first {
                base
            } else {
                [load(dst), load(dst.add(4))]
            };
            store(dst, f32x4_add(tile[0], prev[0]));
            store(dst.add(4), f32x4_add(tile[1], prev[1]));
        } else if cols > 4 {
            let prev = if first {
                base
            } else {
                [load(dst), load_partial(dst.add(4), cols - 4)]
            };
            store(dst, f32x4_add(tile[0], prev[0]));
            store_partial(dst.add(4), f32x4_add(tile[1], prev[1]), cols - 4);
        } else {
            let prev = if first {
                base[0]
            } else {
                load_partial(dst, cols)
            };
            store_partial(dst, f32x4_add(tile[0], prev), cols);
        }
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
        let rows_per_block = balanced_block_rows(m, MC, MR);
        let zero = f32x4_splat(0.0);
        let mut k0 = 0;
        loop {
            let kc = if k - k0 < KC { k - k0 } else { KC };
            let first = k0 == 0;
            let last = k0 + kc == k;
            let mut m0 = 0;
            while m0 < m {
                let rows = if m - m0 < rows_per_block {
                    m - m0
                } else {
                    rows_per_block
                };
                pack_rows(a.add(m0 * k + k0), rows, k, kc, scratch);
                for p in 0..n.div_ceil(NR) {
                    let sliver = packed_b.add(p * NR * k + k0 * NR);
                    let j0 = p * NR;
                    let cols = if n - j0 < NR { n - j0 } else { NR };
                    let base = if !first || bias.is_null() {
                        [zero, zero]
                    } else {
                        [load_padded(bias, j0, n), load_padded(bias, j0 + 4, n)]
                    };
                    for q in 0..rows.div_ceil(MR) {
                        let tile = micro(scratch.add(q * kc * MR), sliver, kc);
                        let in_quad = if rows - q * MR < MR {
                            rows - q * MR
                        } else {
                            MR
                        };
                        for (r, row) in tile.iter().enumerate().take(in_quad) {
                            let dst = c.add((m0 + q * MR + r) * n + j0);
                            finish_row(dst, *row, cols, base, first);
                        }
                    }
                    if last && gelu != 0 {
                        let strip = c.add(m0 * n + j0);
                        gelu_strip(strip, rows, n, cols.min(4));
                        if cols > 4 {
                            gelu_strip(strip.add(4), rows, n, cols - 4);
                        }
                    }
                }
                m0 += rows;
            }
            k0 += kc;
            if last {
                break;
            }
        }
    }
}
