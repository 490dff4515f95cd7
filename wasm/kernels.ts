/**
 * Hand-written binding of edgevit's Rust kernels (`kernels/` → `wasm/*.wasm`).
 *
 * Picks the relaxed-SIMD build where the engine validates a relaxed-SIMD probe, else the
 * plain SIMD build. The binding owns the module's linear memory: a first-fit free list
 * with coalescing hands out 64-byte-aligned blocks above `__heap_base`, grows the memory
 * geometrically when nothing fits, and keeps grow-only scratch buffers that every call
 * reuses, so steady-state inference allocates nothing new and never leaks.
 *
 * @example
 * ```ts
 * import { Kernels } from "./kernels.ts";
 * const kernels = await Kernels.load();
 * const x = kernels.alloc(4 * 4);
 * kernels.f32(x, 4).set([-1, 0, 1, 2]);
 * kernels.exports.gelu_f32(x, 4, x);
 * console.log(kernels.f32(x, 4), kernels.flavour);
 * kernels.free(x);
 * ```
 *
 * @module
 */

import { EdgeVitError } from "../src/errors.ts";

/** Which build: `relaxed` (+simd128,+relaxed-simd) or `plain` (+simd128). */
export type KernelFlavour = "relaxed" | "plain";

/** File name of each build, next to this module. */
export const KERNEL_FILES: Readonly<Record<KernelFlavour, string>> = {
  relaxed: "edgevit_kernels_relaxed.wasm",
  plain: "edgevit_kernels_simd.wasm",
};

/** Raw exports of the kernel module; pointers are byte offsets into its memory. */
export interface KernelExports {
  memory: WebAssembly.Memory;
  __heap_base: WebAssembly.Global;
  gemm_packed_len_f32(n: number, k: number): number;
  gemm_scratch_len_f32(m: number, k: number): number;
  gemm_pack_f32(w: number, n: number, k: number, out: number): void;
  gemm_f32(
    a: number,
    m: number,
    k: number,
    packedB: number,
    n: number,
    bias: number,
    c: number,
    gelu: number,
    scratch: number,
  ): void;
  gemm_packed_len_int8(n: number, k: number): number;
  gemm_scratch_len_int8(m: number, k: number): number;
  gemm_pack_int8(w: number, n: number, k: number, out: number, rowSums: number): void;
  quantize_rows_u7(
    x: number,
    m: number,
    k: number,
    out: number,
    scales: number,
    zeros: number,
  ): void;
  gemm_int8(
    a: number,
    m: number,
    k: number,
    packed: number,
    rowSums: number,
    wScales: number,
    n: number,
    bias: number,
    c: number,
    gelu: number,
    scratch: number,
  ): void;
  attention_scratch_len_f32(keys: number, headDim: number): number;
  attention_f32(
    q: number,
    qStride: number,
    k: number,
    kStride: number,
    v: number,
    vStride: number,
    out: number,
    queries: number,
    keys: number,
    heads: number,
    headDim: number,
    scale: number,
    qSeg: number,
    kSeg: number,
    cls: number,
    scratch: number,
  ): void;
  attention_scratch_len_int8(queries: number, keys: number, headDim: number): number;
  attention_int8(
    q: number,
    qStride: number,
    k: number,
    kStride: number,
    v: number,
    vStride: number,
    out: number,
    queries: number,
    keys: number,
    heads: number,
    headDim: number,
    scale: number,
    qSeg: number,
    kSeg: number,
    cls: number,
    scratch: number,
  ): void;
  layer_norm_f32(
    x: number,
    rows: number,
    cols: number,
    gamma: number,
    beta: number,
    eps: number,
    out: number,
  ): void;
  rms_norm_f32(
    x: number,
    rows: number,
    cols: number,
    gamma: number,
    group: number,
    eps: number,
    out: number,
  ): void;
  gelu_f32(x: number, n: number, out: number): void;
  exp_f32(x: number, n: number, out: number): void;
  exp_nonpos_f32(x: number, n: number, out: number): void;
  add_f32(a: number, b: number, n: number, out: number): void;
  softmax_f32(x: number, rows: number, cols: number, out: number): void;
  gather_rows_f32(x: number, cols: number, indices: number, count: number, out: number): void;
  segment_mean_f32(x: number, cols: number, offsets: number, segments: number, out: number): void;
  head_norms_f32(
    x: number,
    rows: number,
    stride: number,
    heads: number,
    headDim: number,
    out: number,
  ): void;
}

/** Options of {@link Kernels.load}. */
export interface KernelLoadOptions {
  /** Force a build (tests compare both); default: relaxed where supported. */
  flavour?: KernelFlavour;
  /** The module's bytes, for runtimes without a file system that embed them. */
  wasmBytes?: BufferSource;
}

/**
 * The smallest module using `f32x4.relaxed_madd`: `() -> v128` returning
 * relaxed_madd(splat 0, splat 0, splat 0).
 */
const RELAXED_PROBE = new Uint8Array([
  0x00,
  0x61,
  0x73,
  0x6d,
  0x01,
  0x00,
  0x00,
  0x00, // magic, version
  0x01,
  0x05,
  0x01,
  0x60,
  0x00,
  0x01,
  0x7b, // type: () -> v128
  0x03,
  0x02,
  0x01,
  0x00, // one function of type 0
  0x0a,
  0x1c,
  0x01,
  0x1a,
  0x00, // code: one body of 26 bytes, no locals
  0x43,
  0,
  0,
  0,
  0,
  0xfd,
  0x13, // f32.const 0; f32x4.splat
  0x43,
  0,
  0,
  0,
  0,
  0xfd,
  0x13,
  0x43,
  0,
  0,
  0,
  0,
  0xfd,
  0x13,
  0xfd,
  0x85,
  0x02, // f32x4.relaxed_madd
  0x0b, // end
]);

/** Same probe without the relaxed instruction: plain simd128. */
const SIMD_PROBE = new Uint8Array([
  0x00,
  0x61,
  0x73,
  0x6d,
  0x01,
  0x00,
  0x00,
  0x00,
  0x01,
  0x05,
  0x01,
  0x60,
  0x00,
  0x01,
  0x7b,
  0x03,
  0x02,
  0x01,
  0x00,
  0x0a,
  0x0b,
  0x01,
  0x09,
  0x00,
  0x43,
  0,
  0,
  0,
  0,
  0xfd,
  0x13,
  0x0b,
]);

/** Whether this engine accepts relaxed SIMD (`WebAssembly.validate` of a probe module). */
export function relaxedSimdSupported(): boolean {
  return WebAssembly.validate(RELAXED_PROBE);
}

/** Whether this engine accepts fixed-width SIMD at all. */
export function simdSupported(): boolean {
  return WebAssembly.validate(SIMD_PROBE);
}

const ALIGN = 64;
const PAGE = 65536;

/**
 * An instantiated kernel module and the allocator of its memory.
 *
 * @example
 * ```ts
 * import { Kernels } from "./kernels.ts";
 * const plain = await Kernels.load({ flavour: "plain" });
 * console.log(plain.flavour, plain.bytesInUse); // "plain" 0
 * ```
 */
export class Kernels {
  /** Typed exports of the module. */
  readonly exports: KernelExports;
  /** Which build was loaded. */
  readonly flavour: KernelFlavour;
  readonly #memory: WebAssembly.Memory;
  /** Free blocks, sorted by offset, never adjacent (coalesced). */
  readonly #free: { offset: number; size: number }[] = [];
  /** Size of every live block, by offset. */
  readonly #live = new Map<number, number>();
  #top: number;
  #inUse = 0;
  readonly #scratch = new Map<string, { ptr: number; bytes: number }>();

  private constructor(instance: WebAssembly.Instance, flavour: KernelFlavour) {
    this.exports = instance.exports as unknown as KernelExports;
    this.flavour = flavour;
    this.#memory = this.exports.memory;
    this.#top = alignUp(Number(this.exports.__heap_base.value));
  }

  /** Instantiates a build: the forced flavour, else relaxed where the engine accepts it. */
  static async load(options: KernelLoadOptions = {}): Promise<Kernels> {
    if (!simdSupported()) {
      throw new EdgeVitError("unsupported", "this WebAssembly engine has no SIMD support");
    }
    const flavour = options.flavour ?? (relaxedSimdSupported() ? "relaxed" : "plain");
    if (flavour === "relaxed" && !relaxedSimdSupported()) {
      throw new EdgeVitError("unsupported", "this WebAssembly engine has no relaxed SIMD");
    }
    const bytes = options.wasmBytes ?? await readKernelFile(flavour);
    let module: WebAssembly.Module;
    try {
      module = await WebAssembly.compile(bytes);
    } catch (error) {
      throw new EdgeVitError("backend_failure", `kernel module does not compile: ${error}`, {
        cause: error,
      });
    }
    const instance = await WebAssembly.instantiate(module, {});
    return new Kernels(instance, flavour);
  }

  /** The memory's current size in bytes. */
  get memoryBytes(): number {
    return this.#memory.buffer.byteLength;
  }

  /** Bytes held by live blocks (including scratch buffers). */
  get bytesInUse(): number {
    return this.#inUse;
  }

  /** Allocates `bytes` (64-byte aligned) and returns the block's byte offset. */
  alloc(bytes: number): number {
    const size = alignUp(Math.max(bytes, 1));
    for (let i = 0; i < this.#free.length; i++) {
      const block = this.#free[i];
      if (block.size >= size) {
        const ptr = block.offset;
        if (block.size === size) this.#free.splice(i, 1);
        else {
          block.offset += size;
          block.size -= size;
        }
        return this.#take(ptr, size);
      }
    }
    const ptr = this.#top;
    this.#ensure(ptr + size);
    this.#top = ptr + size;
    return this.#take(ptr, size);
  }

  /** Returns a block from {@link alloc} to the free list. */
  free(ptr: number): void {
    const size = this.#live.get(ptr);
    if (size === undefined) throw new EdgeVitError("invalid_argument", `free of unknown ${ptr}`);
    this.#live.delete(ptr);
    this.#inUse -= size;
    let lo = 0;
    let hi = this.#free.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#free[mid].offset < ptr) lo = mid + 1;
      else hi = mid;
    }
    let block = { offset: ptr, size };
    const next = this.#free[lo];
    if (next && ptr + size === next.offset) {
      block.size += next.size;
      this.#free.splice(lo, 1);
    }
    const prev = this.#free[lo - 1];
    if (prev && prev.offset + prev.size === ptr) {
      prev.size += block.size;
      block = prev;
    } else {
      this.#free.splice(lo, 0, block);
    }
    // A free block at the top gives its bytes back to the bump region.
    if (block.offset + block.size === this.#top) {
      this.#top = block.offset;
      this.#free.splice(this.#free.indexOf(block), 1);
    }
  }

  /**
   * A reusable buffer of at least `bytes` for one purpose (`key`): grown when too small,
   * never freed per call.
   */
  scratch(key: string, bytes: number): number {
    const held = this.#scratch.get(key);
    if (held && held.bytes >= bytes) return held.ptr;
    if (held) this.free(held.ptr);
    const size = alignUp(Math.max(bytes, held ? Math.ceil(held.bytes * 1.25) : 0));
    const ptr = this.alloc(size);
    this.#scratch.set(key, { ptr, bytes: size });
    return ptr;
  }

  /** Frees every scratch buffer (e.g. after a one-off large batch). */
  releaseScratch(): void {
    for (const { ptr } of this.#scratch.values()) this.free(ptr);
    this.#scratch.clear();
  }

  /** A fresh float32 view of `length` floats at `ptr` (views die when memory grows). */
  f32(ptr: number, length: number): Float32Array {
    return new Float32Array(this.#memory.buffer, ptr, length);
  }

  /** A fresh int32 view of `length` ints at `ptr`. */
  i32(ptr: number, length: number): Int32Array {
    return new Int32Array(this.#memory.buffer, ptr, length);
  }

  /** A fresh uint8 view of `length` bytes at `ptr`. */
  u8(ptr: number, length: number): Uint8Array {
    return new Uint8Array(this.#memory.buffer, ptr, length);
  }

  /** A fresh int8 view of `length` bytes at `ptr`. */
  i8(ptr: number, length: number): Int8Array {
    return new Int8Array(this.#memory.buffer, ptr, length);
  }

  #take(ptr: number, size: number): number {
    this.#live.set(ptr, size);
    this.#inUse += size;
    return ptr;
  }

  #ensure(end: number): void {
    const have = this.#memory.buffer.byteLength;
    if (end <= have) return;
    // Grow by at least a quarter so a growing batch does not grow page by page.
    const want = Math.max(end, have + (have >> 2));
    const pages = Math.ceil((want - have) / PAGE);
    try {
      this.#memory.grow(pages);
    } catch {
      try {
        this.#memory.grow(Math.ceil((end - have) / PAGE));
      } catch (error) {
        throw new EdgeVitError(
          "backend_failure",
          `wasm memory cannot grow to ${end} bytes (out of memory)`,
          { cause: error },
        );
      }
    }
  }
}

function alignUp(bytes: number): number {
  return Math.ceil(bytes / ALIGN) * ALIGN;
}

async function readKernelFile(flavour: KernelFlavour): Promise<Uint8Array<ArrayBuffer>> {
  const url = new URL(KERNEL_FILES[flavour], import.meta.url);
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  } catch (error) {
    throw new EdgeVitError(
      "backend_failure",
      `cannot load kernel module ${url.href}: ${error}`,
      { cause: error },
    );
  }
}
