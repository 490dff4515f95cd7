//! edgevit's float32 (and int8) kernels for wasm32 SIMD.
//!
//! C ABI over linear memory: every export takes pointers (byte offsets into the module's
//! memory) and sizes; the TypeScript binding owns allocation, so the crate has no
//! allocator and never panics with a message (panics abort as a trap).
//! Built twice from this one source: `+simd128,+relaxed-simd` and `+simd128` only.
#![no_std]

mod attention;
mod attention_int8;
mod elementwise;
mod gemm;
mod int8;
mod math;
mod simd;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
