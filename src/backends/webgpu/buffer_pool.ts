/**
 * Size-bucketed pool of GPU buffers. Activations come and go many times per forward
 * pass; creating and destroying a GPUBuffer each time costs driver calls and fragments
 * memory, so released buffers wait in a free list keyed by their bucket size and are
 * handed out again. Buckets grow by quarter powers of two (at most 25 % waste).
 *
 * A released buffer may still be referenced by commands that were recorded but not yet
 * submitted, so the pool never destroys one itself: {@link BufferPool.trim} hands back
 * the ones to destroy, and the backend calls it only right after a submit.
 *
 * @example
 * ```ts
 * import { BufferPool } from "./buffer_pool.ts";
 * const adapter = await navigator.gpu.requestAdapter();
 * if (adapter) {
 *   const device = await adapter.requestDevice();
 *   const pool = new BufferPool((size) => device.createBuffer({ size, usage: 0x80 }), 1 << 26);
 *   const buffer = pool.acquire(1000); // a 1024-byte storage buffer
 *   pool.release(buffer);
 *   console.log(pool.acquire(900) === buffer); // true: same bucket, reused
 * }
 * ```
 *
 * @module
 */

/** Smallest bucket, and the granularity of buckets up to 4 KiB. */
const MIN_BUCKET = 256;

/** Bytes of the bucket that holds `bytes`: a multiple of 256 up to 4 KiB, then 4 steps per doubling. */
export function bucketSize(bytes: number): number {
  if (bytes <= 4096) return Math.max(MIN_BUCKET, Math.ceil(bytes / MIN_BUCKET) * MIN_BUCKET);
  const power = 2 ** Math.floor(Math.log2(bytes));
  const step = power / 4;
  return Math.ceil(bytes / step) * step;
}

/** Counters of one pool. */
export interface PoolStats {
  /** Buffers handed out and not yet released. */
  inUse: number;
  /** Released buffers waiting for reuse. */
  free: number;
  /** Bytes held by the free buffers. */
  freeBytes: number;
}

/** A pool of same-usage buffers; see the module documentation. */
export class BufferPool {
  readonly #create: (size: number) => GPUBuffer;
  readonly #maxFreeBytes: number;
  readonly #free = new Map<number, GPUBuffer[]>();
  readonly #inUse = new Set<GPUBuffer>();
  #freeBytes = 0;

  /**
   * @param create makes a new buffer of exactly `size` bytes (with the pool's usage)
   * @param maxFreeBytes free buffers beyond this many bytes are given up at the next trim
   */
  constructor(create: (size: number) => GPUBuffer, maxFreeBytes: number) {
    this.#create = create;
    this.#maxFreeBytes = maxFreeBytes;
  }

  /** A buffer of at least `bytes` bytes, reused when one of its bucket is free. */
  acquire(bytes: number): GPUBuffer {
    const size = bucketSize(bytes);
    const list = this.#free.get(size);
    let buffer = list?.pop();
    if (buffer) {
      this.#freeBytes -= size;
      if (list!.length === 0) this.#free.delete(size);
    } else {
      buffer = this.#create(size);
    }
    this.#inUse.add(buffer);
    return buffer;
  }

  /** Gives a buffer back for reuse. Releasing a buffer twice is a bug and throws. */
  release(buffer: GPUBuffer): void {
    if (!this.#inUse.delete(buffer)) throw new Error("buffer released twice or not from this pool");
    const list = this.#free.get(buffer.size);
    if (list) list.push(buffer);
    else this.#free.set(buffer.size, [buffer]);
    this.#freeBytes += buffer.size;
  }

  /** Forgets a buffer handed out earlier without reusing it (it is broken or destroyed). */
  discard(buffer: GPUBuffer): void {
    this.#inUse.delete(buffer);
  }

  /**
   * Takes free buffers out of the pool until at most `maxFreeBytes` remain free (largest
   * first) and returns them; the caller destroys them once that is safe.
   */
  trim(maxFreeBytes = this.#maxFreeBytes): GPUBuffer[] {
    const dropped: GPUBuffer[] = [];
    if (this.#freeBytes <= maxFreeBytes) return dropped;
    const sizes = [...this.#free.keys()].sort((a, b) => b - a);
    for (const size of sizes) {
      const list = this.#free.get(size)!;
      while (list.length > 0 && this.#freeBytes > maxFreeBytes) {
        dropped.push(list.pop()!);
        this.#freeBytes -= size;
      }
      if (list.length === 0) this.#free.delete(size);
    }
    return dropped;
  }

  /** Every buffer the pool knows (free and in use), emptying it; for dispose. */
  drain(): GPUBuffer[] {
    const all = [...this.#inUse];
    for (const list of this.#free.values()) all.push(...list);
    this.#free.clear();
    this.#inUse.clear();
    this.#freeBytes = 0;
    return all;
  }

  stats(): PoolStats {
    let free = 0;
    for (const list of this.#free.values()) free += list.length;
    return { inUse: this.#inUse.size, free, freeBytes: this.#freeBytes };
  }
}
