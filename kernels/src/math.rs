//! Vector exp, erf and GELU in float32. Coefficients are our own weighted least-squares
//! (near-minimax) fits, computed in float64 and checked in float32 arithmetic:
//! exp has relative error < 1e-7; erf (inside GELU) absolute error < 4e-7, largest near 0
//! where GELU scales it by |x|/2; GELU (erf form) stays within 4.5e-7 of the exact value
//! over [-12, 12], most of which is the float32 rounding of the result itself.

use crate::simd::*;

const LOG2E: f32 = 1.442_695;
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

/// e^x per lane for x ≤ 0 (softmax shifts, attention rescales, erfc): 0 below -87.3,
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
    exp_nonpos_n_with(&ExpConstants::literal(), x)
}

/// The exp's 12 constants, as literals or (inside [`GeluConstants`]) as opaque values.
pub struct ExpConstants {
    lo: v128,
    log2e: v128,
    shifter: v128,
    ln2: [v128; 2],
    p: [v128; 5],
    one: v128,
    bias: v128,
}

impl ExpConstants {
    #[inline(always)]
    pub fn literal() -> ExpConstants {
        ExpConstants {
            lo: f32x4_splat(-87.336_55),
            log2e: f32x4_splat(LOG2E),
            shifter: f32x4_splat(12_582_912.0), // 1.5·2²³
            ln2: [f32x4_splat(-LN2_HI), f32x4_splat(-LN2_LO)],
            p: EXP_P.map(|c| f32x4_splat(c)),
            one: f32x4_splat(1.0),
            bias: i32x4_splat(127 << 23),
        }
    }
}

/// [`exp_nonpos_n`] with its constants from `k`.
#[inline(always)]
pub fn exp_nonpos_n_with<const N: usize>(k: &ExpConstants, x: [v128; N]) -> [v128; N] {
    let mut xc = x;
    for i in 0..N {
        xc[i] = f32x4_pmax(x[i], k.lo);
    }
    let e = exp_core_n(k, xc);
    let mut y = x;
    for i in 0..N {
        let v = v128_andnot(e[i], f32x4_lt(x[i], k.lo));
        y[i] = v128_bitselect(x[i], v, f32x4_ne(x[i], x[i]));
    }
    y
}

/// e^x for x in [-87.3, 0] with no special values: n = round(x·log2 e) from adding
/// 1.5·2²³, r = x − n·ln 2 in two parts, e^r by the polynomial, and 2ⁿ by shifting
/// n + 127 (n ∈ [-126, 0], a normal float) into the exponent field.
#[inline(always)]
fn exp_core_n<const N: usize>(k: &ExpConstants, x: [v128; N]) -> [v128; N] {
    let mut t = x;
    let mut n = x;
    for i in 0..N {
        t[i] = madd(x[i], k.log2e, k.shifter);
        n[i] = f32x4_sub(t[i], k.shifter);
    }
    let mut r = x;
    for i in 0..N {
        r[i] = madd(n[i], k.ln2[0], x[i]);
        r[i] = madd(n[i], k.ln2[1], r[i]);
    }
    let mut p = [k.p[4]; N];
    let mut c = 4;
    while c > 0 {
        c -= 1;
        for i in 0..N {
            p[i] = madd(p[i], r[i], k.p[c]);
        }
    }
    let mut y = x;
    for i in 0..N {
        let q = madd(f32x4_mul(p[i], r[i]), r[i], f32x4_add(r[i], k.one));
        y[i] = f32x4_mul(q, i32x4_add(i32x4_shl(t[i], 23), k.bias));
    }
    y
}

// erfc(z)·e^{z²} ≈ Q(t), t = 1/(1 + z/2), on [0, 4] (t in [1/3, 1]): weighted fit of
// e^{-z²}·(1 + z)·|error|, 1.9e-8 at most, far below the float32 rounding of the result.
const ERFC_Q: [f32; 7] = [
    0.008_165_317,
    0.199_275_9,
    0.636_197_4,
    -0.569_643_3,
    1.235_880_1,
    -0.609_746_6,
    0.099_871_11,
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
            shifter: f32x4_splat(12_582_912.0), // 1.5·2²³
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
/// [`exp_nonpos_n`]). One branch for every z = |x|/√2: erf(z) = 1 − e^{−z²}·Q(1/(1 + z/2))
/// with z clamped to 4, where erf rounds to 1. Near 0 the subtraction cancels, but the
/// absolute error of erf stays ~1e-7 and GELU multiplies it by |x|/2.
#[inline(always)]
pub fn gelu_n<const N: usize>(x: [v128; N]) -> [v128; N] {
    gelu_n_with(&GeluConstants::literal(), x)
}

/// GELU's 22 constants. As literals, V8 rebuilds each splat with three instructions
/// wherever it is used (and spills the copies): in the GELU epilogue that is about a
/// third of the instructions. [`GeluConstants::opaque`] makes them values the engine
/// cannot rebuild, so a loop that takes them once outside keeps them in registers or
/// reloads each from its stack slot with one instruction.
pub struct GeluConstants {
    rsqrt2: v128,
    four: v128,
    half: v128,
    sign: v128,
    erfc_q: [v128; 7],
    exp: ExpConstants,
}

impl GeluConstants {
    #[inline(always)]
    pub fn literal() -> GeluConstants {
        GeluConstants {
            rsqrt2: f32x4_splat(core::f32::consts::FRAC_1_SQRT_2),
            four: f32x4_splat(4.0),
            half: f32x4_splat(0.5),
            sign: f32x4_splat(-0.0),
            erfc_q: ERFC_Q.map(|c| f32x4_splat(c)),
            exp: ExpConstants::literal(),
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
    let mut zc = x;
    for i in 0..N {
        zc[i] = f32x4_pmin(f32x4_abs(f32x4_mul(x[i], k.rsqrt2)), k.four);
    }
    let mut t = x;
    let mut arg = x;
    for i in 0..N {
        t[i] = f32x4_div(k.exp.one, madd(zc[i], k.half, k.exp.one));
        arg[i] = f32x4_neg(f32x4_mul(zc[i], zc[i]));
    }
    let mut q = [k.erfc_q[6]; N];
    let mut c = 6;
    while c > 0 {
        c -= 1;
        for i in 0..N {
            q[i] = madd(q[i], t[i], k.erfc_q[c]);
        }
    }
    // e^{-z²} for z ≤ 4 needs none of exp_nonpos_n's clamp, underflow and NaN handling
    // (a NaN x gives some value here, and GELU's result is NaN through x anyway).
    let e = exp_core_n(&k.exp, arg);
    let one = k.exp.one;
    let mut y = x;
    for i in 0..N {
        // erf(|x|/√2) with the sign of x.
        let erf = v128_or(
            f32x4_sub(one, f32x4_mul(e[i], q[i])),
            v128_and(x[i], k.sign),
        );
        y[i] = f32x4_mul(f32x4_mul(x[i], k.half), f32x4_add(one, erf));
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
