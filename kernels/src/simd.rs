//! The few SIMD primitives every kernel shares. `madd` is the one place where the two
//! builds differ: the relaxed build lets the engine fuse (FMA on x86/ARM), the plain build
//! must stay within simd128 and does a separate multiply and add.

pub use core::arch::wasm32::*;

/// `a·b + c`, fused where the engine and build allow.
#[inline(always)]
pub fn madd(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, c)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_add(f32x4_mul(a, b), c)
    }
}

#[inline(always)]
pub unsafe fn load(p: *const f32) -> v128 {
    unsafe { v128_load(p as *const v128) }
}

#[inline(always)]
pub unsafe fn store(p: *mut f32, v: v128) {
    unsafe { v128_store(p as *mut v128, v) }
}

#[inline(always)]
pub fn hsum(v: v128) -> f32 {
    let pair = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let total = f32x4_add(pair, i32x4_shuffle::<1, 0, 3, 2>(pair, pair));
    f32x4_extract_lane::<0>(total)
}

/// Largest lane. `pmax` (one `maxps`) instead of `max`, whose NaN and ±0 rules cost V8
/// about five instructions; inputs here are never NaN.
#[inline(always)]
pub fn hmax(v: v128) -> f32 {
    let pair = f32x4_pmax(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let total = f32x4_pmax(pair, i32x4_shuffle::<1, 0, 3, 2>(pair, pair));
    f32x4_extract_lane::<0>(total)
}

/// Loads `n < 4` floats into the low lanes, zero elsewhere (row tails).
#[inline(always)]
pub unsafe fn load_partial(p: *const f32, n: usize) -> v128 {
    unsafe {
        let mut lanes = [0.0f32; 4];
        let mut i = 0;
        while i < n {
            *lanes.as_mut_ptr().add(i) = *p.add(i);
            i += 1;
        }
        v128_load(lanes.as_ptr() as *const v128)
    }
}

/// Floats `at…at+4` of a row of `len`, zero past its end (rows padded to whole vectors).
#[inline(always)]
pub unsafe fn load_padded(row: *const f32, at: usize, len: usize) -> v128 {
    unsafe {
        if at + 4 <= len {
            load(row.add(at))
        } else if at < len {
            load_partial(row.add(at), len - at)
        } else {
            f32x4_splat(0.0)
        }
    }
}

#[inline(always)]
pub unsafe fn store_partial(p: *mut f32, v: v128, n: usize) {
    unsafe {
        let mut lanes = [0.0f32; 4];
        v128_store(lanes.as_mut_ptr() as *mut v128, v);
        let mut i = 0;
        while i < n {
            *p.add(i) = *lanes.as_ptr().add(i);
            i += 1;
        }
    }
}

/// 4×4 transpose: lane `i` of vector `j` goes to lane `j` of vector `i`.
#[inline(always)]
pub fn transpose4(a: v128, b: v128, c: v128, d: v128) -> [v128; 4] {
    let t0 = i32x4_shuffle::<0, 4, 1, 5>(a, b);
    let t1 = i32x4_shuffle::<2, 6, 3, 7>(a, b);
    let t2 = i32x4_shuffle::<0, 4, 1, 5>(c, d);
    let t3 = i32x4_shuffle::<2, 6, 3, 7>(c, d);
    [
        i32x4_shuffle::<0, 1, 4, 5>(t0, t2),
        i32x4_shuffle::<2, 3, 6, 7>(t0, t2),
        i32x4_shuffle::<0, 1, 4, 5>(t1, t3),
        i32x4_shuffle::<2, 3, 6, 7>(t1, t3),
    ]
}

/// The 4 lanes of `v`, each splatted (register shuffles: no bounds-checked loads).
#[inline(always)]
pub fn lanes(v: v128) -> [v128; 4] {
    [
        i32x4_shuffle::<0, 0, 0, 0>(v, v),
        i32x4_shuffle::<1, 1, 1, 1>(v, v),
        i32x4_shuffle::<2, 2, 2, 2>(v, v),
        i32x4_shuffle::<3, 3, 3, 3>(v, v),
    ]
}
