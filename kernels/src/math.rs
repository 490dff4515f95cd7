//! Vector exp, erf and GELU in float32. Coefficients are our own weighted least-squares
//! (near-minimax) fits, computed in float64 and checked in float32 arithmetic:
//! exp has relative error < 1e-7; erf absolute error < 1.7e-7; GELU (erf form) stays
//! within 5e-7 of the exact value over [-12, 12], half of which is the float32 rounding
//! of the result itself.

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
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2²³
    let lo = f32x4_splat(-87.336_55);
    let underflow = f32x4_lt(x, lo);
    let xc = f32x4_pmax(x, lo);
    let t = madd(xc, f32x4_splat(LOG2E), f32x4_splat(SHIFTER));
    let n = f32x4_sub(t, f32x4_splat(SHIFTER));
    let r = madd(n, f32x4_splat(-LN2_HI), xc);
    let r = madd(n, f32x4_splat(-LN2_LO), r);
    let mut p = f32x4_splat(EXP_P[4]);
    p = madd(p, r, f32x4_splat(EXP_P[3]));
    p = madd(p, r, f32x4_splat(EXP_P[2]));
    p = madd(p, r, f32x4_splat(EXP_P[1]));
    p = madd(p, r, f32x4_splat(EXP_P[0]));
    p = madd(f32x4_mul(p, r), r, f32x4_add(r, f32x4_splat(1.0)));
    // n ∈ [-126, 0]: (n + 127) << 23 is 2ⁿ, a normal float.
    let scale = i32x4_add(i32x4_shl(t, 23), i32x4_splat(127 << 23));
    let y = v128_andnot(f32x4_mul(p, scale), underflow);
    v128_bitselect(x, y, f32x4_ne(x, x))
}

// erf(z)/z ≈ P(z²) on [0, 0.8].
const ERF_SMALL: [f32; 6] = [
    1.128_379_1,
    -0.376_126_02,
    0.112_831_12,
    -0.026_820_779,
    0.005_085_082,
    -0.000_653_494_27,
];
// erfc(z)·e^{z²} ≈ Q(t), t = 1/(1 + z/2), on [0.8, 4].
const ERFC_LARGE: [f32; 10] = [
    -1.627_012_5e-6,
    0.282_059_46,
    0.283_181_1,
    0.236_013_73,
    0.235_113_92,
    -0.114_516_15,
    0.424_493_82,
    -0.634_540_1,
    0.366_781,
    -0.078_603_78,
];

/// erf per lane.
#[inline(always)]
pub fn erf_v(x: v128) -> v128 {
    let sign = v128_and(x, f32x4_splat(-0.0));
    let z = f32x4_abs(x);
    let z2 = f32x4_mul(z, z);
    let mut ps = f32x4_splat(ERF_SMALL[5]);
    let mut i = 5;
    while i > 0 {
        i -= 1;
        ps = madd(ps, z2, f32x4_splat(ERF_SMALL[i]));
    }
    let small = f32x4_mul(z, ps);
    let zc = f32x4_pmin(z, f32x4_splat(4.0));
    let t = f32x4_div(
        f32x4_splat(1.0),
        madd(zc, f32x4_splat(0.5), f32x4_splat(1.0)),
    );
    let mut pl = f32x4_splat(ERFC_LARGE[9]);
    let mut j = 9;
    while j > 0 {
        j -= 1;
        pl = madd(pl, t, f32x4_splat(ERFC_LARGE[j]));
    }
    let erfc = f32x4_mul(exp_nonpos_v(f32x4_neg(f32x4_mul(zc, zc))), pl);
    let large = f32x4_sub(f32x4_splat(1.0), erfc);
    let r = v128_bitselect(small, large, f32x4_lt(z, f32x4_splat(0.8)));
    v128_or(r, sign)
}

/// GELU, erf form: x/2 · (1 + erf(x/√2)), evaluated as PyTorch does in float32.
#[inline(always)]
pub fn gelu_v(x: v128) -> v128 {
    let e = erf_v(f32x4_mul(x, f32x4_splat(core::f32::consts::FRAC_1_SQRT_2)));
    f32x4_mul(
        f32x4_mul(x, f32x4_splat(0.5)),
        f32x4_add(f32x4_splat(1.0), e),
    )
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
