//! Vector exp, erf and GELU in float32. Coefficients are our own weighted least-squares
//! (near-minimax) fits, computed in float64 and checked in float32 arithmetic:
//! exp has relative error < 1e-7; erf (inside GELU) absolute error < 2.3e-6, largest near 0
//! (x ≈ 0.07, where 1 − p^-16 cancels) and scaled there by GELU's |x|/2; GELU (erf form)
//! stays within 4.8e-7 of the exact value over [-12, 12], one float32 ulp of the result.

use crate::simd::*;

const LOG2E: f32 = 1.442_695;

/// `1.5·2²³`: for `|x| ≤ 2²²`, `f32(x + ROUNDER)` is `ROUNDER + nearest(x)` (ties to
/// even, as `f32x4.nearest`), an integer in the low mantissa bits, so the bits of the sum
/// minus the bits of `ROUNDER` are `nearest(x)` without a float-to-int conversion (which
/// V8 lowers to ~8 instructions on x64 for its NaN and overflow rules). The exps find
/// `round(x·log₂e)` this way, the int8 quantizers their integers.
pub(crate) const ROUNDER: f32 = 12_582_912.0;
// ln 2 split so that n·LN2_HI is exact for |n| < 2^11.
const LN2_HI: f32 = 0.693_145_751_953_125;
const LN2_LO: f32 = 1.428_606_765_330_187e-6;
// exp(r) ≈ 1 + r + r²·P(r) on [-ln2/2, ln2/2].
const EXP_P: [f32; 5] = [
    0.499_999_94,
    0.166_665_18,
    0.041_668_378,
    0.008_368_939,
    0.001_381_649,
];

/// e^x per lane; 0 below -87.3 (and for -inf), +inf above 88.7, NaN for NaN.
#[inline(always)]
pub fn exp_v(x: v128) -> v128 {
    let lo = f32x4_splat(-87.336_55);
    let hi = f32x4_splat(88.722_83);
    let underflow = f32x4_lt(x, lo);
    let overflow = f32x4_gt(x, hi);
    // pmin/pmax are single instructions; min/max with NaN rules are five in V8.
    let xc = f32x4_pmin(f32x4_pmax(x, lo), hi);
    let n = f32x4_nearest(f32x4_mul(xc, f32x4_splat(LOG2E)));
    let r = f32x4_sub(xc, f32x4_mul(n, f32x4_splat(LN2_HI)));
    let r = f32x4_sub(r, f32x4_mul(n, f32x4_splat(LN2_LO)));
    let mut p = f32x4_splat(EXP_P[4]);
    p = madd(p, r, f32x4_splat(EXP_P[3]));
    p = madd(p, r, f32x4_splat(EXP_P[2]));
    p = madd(p, r, f32x4_splat(EXP_P[1]));
    p = madd(p, r, f32x4_splat(EXP_P[0]));
    p = madd(f32x4_mul(p, r), r, f32x4_add(r, f32x4_splat(1.0)));
    // 2^n built in two halves so n = 128 (x near the top) and n = -126 stay representable.
    let ni = i32x4_trunc_sat_f32x4(n);
    let half = i32x4_shr(ni, 1);
    let rest = i32x4_sub(ni, half);
    let bias = i32x4_splat(127);
    let s1 = i32x4_shl(i32x4_add(half, bias), 23);
    let s2 = i32x4_shl(i32x4_add(rest, bias), 23);
    let y = f32x4_mul(f32x4_mul(p, s1), s2);
    let y = v128_andnot(y, underflow);
    let y = v128_bitselect(f32x4_splat(f32::INFINITY), y, overflow);
    // NaN in, NaN out (pmin/pmax above may have replaced it by a bound).
    v128_bitselect(x, y, f32x4_ne(x, x))
}

/// e^x per lane for x ≤ 0 (softmax shifts, attention rescales): 0 below -87.3,
/// NaN for NaN. Cheaper than [`exp_v`]: n = round(x·log2 e) comes from adding
/// 1.5·2²³ (its low mantissa bits are then n), and 2ⁿ is that integer shifted into the
/// exponent field, so there is no float→int conversion and no overflow handling.
#[inline(always)]
pub fn exp_nonpos_v(x: v128) -> v128 {
    exp_nonpos_n([x])[0]
}

/// [`exp_nonpos_v`] on `N` vectors at once, step by step: each constant is materialized
/// once for all `N` (V8 rebuilds a splatted constant with three instructions wherever
/// it is used) and the `N` dependency chains overlap.
#[inline(always)]
pub fn exp_nonpos_n<const N: usize>(x: [v128; N]) -> [v128; N] {
    let lo = f32x4_splat(-87.336_55);
    let mut xc = x;
    for i in 0..N {
        xc[i] = f32x4_pmax(x[i], lo);
    }
    let log2e = f32x4_splat(LOG2E);
    let shifter = f32x4_splat(ROUNDER);
    let mut t = xc;
    let mut n = xc;
    for i in 0..N {
        t[i] = madd(xc[i], log2e, shifter);
        n[i] = f32x4_sub(t[i], shifter);
    }
    let ln2_hi = f32x4_splat(-LN2_HI);
    let ln2_lo = f32x4_splat(-LN2_LO);
    let mut r = xc;
    for i in 0..N {
        r[i] = madd(n[i], ln2_hi, xc[i]);
        r[i] = madd(n[i], ln2_lo, r[i]);
    }
    let mut p = [f32x4_splat(EXP_P[4]); N];
    let mut k = 4;
    while k > 0 {
        k -= 1;
        let c = f32x4_splat(EXP_P[k]);
        for i in 0..N {
            p[i] = madd(p[i], r[i], c);
        }
    }
    let one = f32x4_splat(1.0);
    let bias = i32x4_splat(127 << 23);
    let mut y = x;
    for i in 0..N {
        let q = madd(f32x4_mul(p[i], r[i]), r[i], f32x4_add(r[i], one));
        // n ∈ [-126, 0]: (n + 127) << 23 is 2ⁿ, a normal float.
        let scale = i32x4_add(i32x4_shl(t[i], 23), bias);
        let v = v128_andnot(f32x4_mul(q, scale), f32x4_lt(x[i], lo));
        y[i] = v128_bitselect(x[i], v, f32x4_ne(x[i], x[i]));
    }
    y
}

// erfc(z) ≈ (1 + a₁z + … + a₇z⁷)^-16 for z ≥ 0: Hastings' form (Abramowitz & Stegun
// 7.1.28 uses six terms) with our own fit of seven, weighted by what an error costs GELU,
// |x|/2 · 16·p^-17; 5.4e-8 at most in exact arithmetic. No exp, and for large z the power
// overflows to +inf and erfc to 0, so no clamp either. Fitted by kernels/fits/erfc_fit.py.
const ERFC_A: [f32; 7] = [
    0.070_525_35,
    0.042_256_556,
    0.009_367_344,
    -1.540_788e-5,
    0.000_419_712_95,
    -1.554_354e-5,
    9.117_414e-6,
];

// 2^r ≈ 1 + r·(c1 + r·(c2 + r·(c3 + r·c4))) on [-1/2, 1/2], relative error < 3e-6 in
// float32 (our own fit, as above).
const EXP2_P: [f32; 4] = [
    6.931_242_347e-1,
    2.402_409_911e-1,
    5.590_629_950e-2,
    9.582_798_928e-3,
];

/// e^x for x ≤ 0 to a relative error of 3e-6 (1e-38 below -87), from float multiplies and
/// adds only, never fused: every engine, both builds and a TypeScript model that rounds
/// each step to float32 get the same bits. For probabilities that are then quantized to
/// 7 bits, where the last digits do not matter but agreeing on them makes the
/// quantization reproducible.
#[inline(always)]
pub fn exp_nonpos_reproducible_n<const N: usize>(
    k: &ReproducibleExpConstants,
    x: [v128; N],
) -> [v128; N] {
    let mut out = x;
    for i in 0..N {
        let y = f32x4_mul(f32x4_pmax(x[i], k.lo), k.log2e);
        let t = f32x4_add(y, k.shifter);
        let r = f32x4_sub(y, f32x4_sub(t, k.shifter));
        let mut p = k.c[3];
        p = f32x4_add(f32x4_mul(p, r), k.c[2]);
        p = f32x4_add(f32x4_mul(p, r), k.c[1]);
        p = f32x4_add(f32x4_mul(p, r), k.c[0]);
        p = f32x4_add(f32x4_mul(p, r), k.one);
        // n = t - shifter ∈ [-126, 0] sits in t's low mantissa bits: (n + 127) << 23 is 2ⁿ.
        out[i] = f32x4_mul(p, i32x4_add(i32x4_shl(t, 23), k.bias));
    }
    out
}

/// The constants of [`exp_nonpos_reproducible_n`], for a caller to take once as opaque
/// values (see [`GeluConstants`] for why).
pub struct ReproducibleExpConstants {
    lo: v128,
    log2e: v128,
    shifter: v128,
    c: [v128; 4],
    one: v128,
    bias: v128,
}

impl ReproducibleExpConstants {
    #[inline(always)]
    pub fn literal() -> ReproducibleExpConstants {
        ReproducibleExpConstants {
            lo: f32x4_splat(-87.0),
            log2e: f32x4_splat(LOG2E),
            shifter: f32x4_splat(ROUNDER),
            c: EXP2_P.map(|c| f32x4_splat(c)),
            one: f32x4_splat(1.0),
            bias: i32x4_splat(127 << 23),
        }
    }
}

/// GELU, erf form: x/2 · (1 + erf(x/√2)), evaluated as PyTorch does in float32.
#[inline(always)]
pub fn gelu_v(x: v128) -> v128 {
    gelu_n([x])[0]
}

/// [`gelu_v`] on `N` vectors at once (constants shared, chains overlapped; see
/// [`exp_nonpos_n`]). One branch for every z = |x|/√2: erf(z) = 1 − (1 + a₁z + … + a₇z⁷)^-16
/// ([`ERFC_A`]): a polynomial, four squarings and one division. Near 0 the subtraction
/// cancels, but the absolute error of erf stays ~1e-7 and GELU multiplies it by |x|/2.
#[inline(always)]
pub fn gelu_n<const N: usize>(x: [v128; N]) -> [v128; N] {
    gelu_n_with(&GeluConstants::literal(), x)
}

/// GELU's 11 constants. As literals, V8 rebuilds each splat with three instructions
/// wherever it is used (and spills the copies). [`GeluConstants::opaque`] makes them values
/// the engine cannot rebuild, so a loop that takes them once outside keeps them in
/// registers or reloads each from its stack slot with one instruction.
pub struct GeluConstants {
    rsqrt2: v128,
    erfc_a: [v128; 7],
    one: v128,
    half: v128,
    sign: v128,
}

impl GeluConstants {
    #[inline(always)]
    pub fn literal() -> GeluConstants {
        GeluConstants {
            rsqrt2: f32x4_splat(core::f32::consts::FRAC_1_SQRT_2),
            erfc_a: ERFC_A.map(|c| f32x4_splat(c)),
            one: f32x4_splat(1.0),
            half: f32x4_splat(0.5),
            sign: f32x4_splat(-0.0),
        }
    }

    /// The same values, hidden from constant folding and rematerialization.
    #[inline(always)]
    pub fn opaque() -> GeluConstants {
        core::hint::black_box(GeluConstants::literal())
    }
}

/// [`gelu_n`] with its constants from `k`.
#[inline(always)]
pub fn gelu_n_with<const N: usize>(k: &GeluConstants, x: [v128; N]) -> [v128; N] {
    let mut z = x;
    for i in 0..N {
        z[i] = f32x4_abs(f32x4_mul(x[i], k.rsqrt2));
    }
    let mut p = [k.erfc_a[6]; N];
    let mut c = 6;
    while c > 0 {
        c -= 1;
        for i in 0..N {
            p[i] = madd(p[i], z[i], k.erfc_a[c]);
        }
    }
    for i in 0..N {
        p[i] = madd(p[i], z[i], k.one);
    }
    for _ in 0..4 {
        for i in 0..N {
            p[i] = f32x4_mul(p[i], p[i]);
        }
    }
    let mut y = x;
    for i in 0..N {
        // erf(|x|/√2) = 1 − p^-16, with the sign of x.
        let erf = v128_or(
            f32x4_sub(k.one, f32x4_div(k.one, p[i])),
            v128_and(x[i], k.sign),
        );
        y[i] = f32x4_mul(f32x4_mul(x[i], k.half), f32x4_add(k.one, erf));
    }
    y
}

/// e^x for one x ≤ 0.
#[inline(always)]
pub fn exp_nonpos_s(x: f32) -> f32 {
    f32x4_extract_lane::<0>(exp_nonpos_v(f32x4_splat(x)))
}

/// Scalar square root through the SIMD unit (core has no f32::sqrt without std).
#[inline(always)]
pub fn sqrt_s(x: f32) -> f32 {
    f32x4_extract_lane::<0>(f32x4_sqrt(f32x4_splat(x)))
}

/// Rows per [`gelu_n`] step in [`gelu_strip`]. One GELU is a long dependency chain
/// (division, Horner, exp); four chains in flight instead of two cut the epilogue's time by
/// ~10% (197×192×768 linear: 0.21 → 0.19 ms of GELU, float32 and int8 alike) and still fit
/// V8's 15 xmm registers.
const GELU_ROWS: usize = 4;

/// GELU in place over a strip of `rows` rows × `cols ≤ 4` columns, rows `ld` floats apart:
/// the columns a GEMM panel has just stored (still in L1), [`GELU_ROWS`] rows per
/// [`gelu_n`] step. Apart from the tile loop, the GEMM's micro-kernel keeps its registers
/// to itself.
///
/// # Safety
/// `c` valid for the strip.
#[inline(always)]
pub unsafe fn gelu_strip(c: *mut f32, rows: usize, ld: usize, cols: usize) {
    unsafe {
        let mut r = 0;
        if cols == 4 {
            let k = GeluConstants::opaque();
            while r + GELU_ROWS <= rows {
                let mut x = [f32x4_splat(0.0); GELU_ROWS];
                for (i, v) in x.iter_mut().enumerate() {
                    *v = load(c.add((r + i) * ld));
                }
                let y = gelu_n_with(&k, x);
                for (i, v) in y.iter().enumerate() {
                    store(c.add((r + i) * ld), *v);
                }
                r += GELU_ROWS;
            }
        }
        while r < rows {
            let p = c.add(r * ld);
            store_partial(p, gelu_v(load_partial(p, cols)), cols);
            r += 1;
        }
    }
}
