/**
 * The WebGPU backend: every op of {@link Backend} as a WGSL compute kernel
 * (`kernels/wgsl/*.wgsl`, embedded by `deno task build:wgsl`). Tensors live in GPU
 * buffers from a size-bucketed pool and stay there between ops; ops are only recorded
 * into a command encoder, which is submitted when a result is read (or every
 * {@link AUTO_SUBMIT_DISPATCHES} dispatches), so a forward pass makes one upload and one
 * readback.
 *
 * Device errors (validation, out of memory, internal, device lost) are caught with error
 * scopes and `device.lost` and surface as `EdgeVitError("backend_failure", ...)` from the
 * next {@link WebGpuBackend.read} or {@link WebGpuBackend.sync}; after one, every op
 * throws that error, so a caller can switch to another backend.
 *
 * Everything is f32 (int8 weights for quantized layers). shader-f16 is deliberately not
 * used even where the adapter has it: f16 storage alone costs ~5e-4 relative error, far
 * outside the 1e-4 parity with PyTorch that the tests and fixtures hold this backend to.
 *
 * Needs WebGPU in Deno: `"unstable": ["webgpu"]` in deno.json (this repo has it) or the
 * `--unstable-webgpu` flag.
 *
 * @module
 */

import {
  type Activation,
  type AttentionOptions,
  type AttentionResult,
  type Backend,
  checkSegments,
  type LinearSource,
  type LinearWeights,
  matrixShape,
  type OpName,
  type Precision,
  type QuantizedLinearSource,
  ShapeError,
  sizeOf,
  type Tensor,
} from "../backend.ts";
import { checkLinearSource, quantizePerChannel } from "../reference/reference_backend.ts";
import { EdgeVitError } from "../../errors.ts";
import { BufferPool } from "./buffer_pool.ts";
import { PipelineCache } from "./pipeline_cache.ts";
import type { ShaderName } from "./shaders.generated.ts";

// WebGPU flag values, spelled out so this module loads even where WebGPU is disabled
// (the GPUBufferUsage global only exists with --unstable-webgpu).
const USAGE_MAP_READ = 0x0001;
const USAGE_COPY_SRC = 0x0004;
const USAGE_COPY_DST = 0x0008;
const USAGE_UNIFORM = 0x0040;
const USAGE_STORAGE = 0x0080;
const MAP_MODE_READ = 0x0001;

/** Recorded dispatches after which the encoder is submitted even without a read. */
export const AUTO_SUBMIT_DISPATCHES = 128;
/** Largest workgroup count per dispatch dimension that every WebGPU device accepts. */
const MAX_GROUPS = 65535;
/** Output tile edge of the GEMM kernels. */
const GEMM_TILE = 64;
/** Query rows per attention workgroup. */
const ATTENTION_QUERIES = 64;

/** Options of {@link WebGpuBackend.create}. */
export interface WebGpuBackendOptions {
  /** Use this adapter instead of requesting one. */
  adapter?: GPUAdapter;
  /**
   * Accept a fallback (software) adapter such as Mesa's llvmpipe. Default false: a
   * fallback adapter is far slower than the wasm backend, so it is only for tests.
   * When true and no adapter is given, the fallback adapter is requested explicitly.
   */
  allowFallbackAdapter?: boolean;
  /** Passed to `requestAdapter` (default "high-performance"). */
  powerPreference?: GPUPowerPreference;
  /** How long to wait for `requestAdapter` / `requestDevice` (default 5000 ms). */
  timeoutMs?: number;
  /** Free pooled activation memory kept beyond this many bytes is released (default 256 MiB). */
  maxPooledBytes?: number;
}

/** What a backend knows about its adapter. */
export interface WebGpuAdapterSummary {
  description: string;
  vendor: string;
  architecture: string;
  isFallbackAdapter: boolean;
}

/** Counters for tests and monitoring: pipeline creation and buffer lifetimes. */
export interface WebGpuStats {
  /** Compute pipelines created so far; constant once every op/shape family has run. */
  pipelinesCreated: number;
  /** GPU buffers currently alive (pooled, in use, weights, staging, scratch). */
  liveBuffers: number;
  /** Activation buffers held by live tensors. */
  tensorsInUse: number;
  /** Released activation buffers waiting for reuse. */
  pooledBuffers: number;
  /** Buffers held by prepared linear layers. */
  weightBuffers: number;
  /** Buffers ever created / destroyed by this backend. */
  buffersCreated: number;
  buffersDestroyed: number;
  /** Command buffers submitted and kernels dispatched so far. */
  submits: number;
  dispatches: number;
}

class GpuTensor implements Tensor {
  readonly backend = "webgpu";
  released = false;
  constructor(
    readonly owner: object,
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly size: number,
  ) {}
}

class GpuLinear implements LinearWeights {
  readonly backend = "webgpu";
  released = false;
  constructor(
    readonly owner: object,
    readonly inFeatures: number,
    readonly outFeatures: number,
    readonly precision: Precision,
    /** f32 `[out, in]`, or u32 `[out, ⌈in/4⌉]` holding 4 int8 weights per word. */
    readonly weight: GPUBuffer,
    /** `[out]` per-channel scales (int8 only). */
    readonly scales: GPUBuffer | null,
    /** `[out]`, zeros when the layer has no bias. */
    readonly bias: GPUBuffer,
  ) {}
}

/** One binding of a dispatch: a whole buffer, or a range of the host-data arena. */
type Binding = GPUBuffer | { buffer: GPUBuffer; offset: number; size: number };

/**
 * Requests an adapter, giving up after `timeoutMs` (some drivers never answer).
 * Resolves to null when the platform has none; rejects with `backend_failure` when
 * WebGPU is missing or the request timed out.
 *
 * @example
 * ```ts
 * import { requestAdapterWithTimeout } from "./webgpu_backend.ts";
 * const adapter = await requestAdapterWithTimeout({ powerPreference: "high-performance" }, 2000);
 * console.log(adapter?.info.description ?? "no adapter");
 * ```
 */
export async function requestAdapterWithTimeout(
  options: GPURequestAdapterOptions,
  timeoutMs: number,
  gpu: Pick<GPU, "requestAdapter"> | undefined = navigatorGpu(),
): Promise<GPUAdapter | null> {
  if (!gpu) {
    throw new EdgeVitError(
      "backend_failure",
      'WebGPU is not available (navigator.gpu is missing): run Deno with --unstable-webgpu or set "unstable": ["webgpu"] in deno.json',
    );
  }
  return await withTimeout(
    gpu.requestAdapter(options),
    timeoutMs,
    "navigator.gpu.requestAdapter()",
  );
}

/** `navigator.gpu`, or undefined where WebGPU is not enabled. */
export function navigatorGpu(): GPU | undefined {
  return (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
}

async function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new EdgeVitError("backend_failure", `${what} did not answer within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Summary of an adapter's identity (Deno exposes `adapter.info`). */
export function describeAdapter(adapter: GPUAdapter): WebGpuAdapterSummary {
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const legacy = (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter;
  return {
    description: info?.description || info?.device || "unknown adapter",
    vendor: info?.vendor ?? "",
    architecture: info?.architecture ?? "",
    isFallbackAdapter: Boolean(info?.isFallbackAdapter ?? legacy),
  };
}

/**
 * The WebGPU backend. Create it with {@link WebGpuBackend.create}.
 *
 * @example
 * ```ts
 * import { WebGpuBackend } from "./webgpu_backend.ts";
 * // allowFallbackAdapter lets this run on a machine without a GPU (llvmpipe).
 * const backend = await WebGpuBackend.create({ allowFallbackAdapter: true });
 * const x = backend.upload(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * const w = backend.prepareLinear({
 *   weight: new Float32Array([1, 0, 0, 1]),
 *   bias: new Float32Array([0.5, -0.5]),
 *   outFeatures: 2,
 *   inFeatures: 2,
 * });
 * console.log(await backend.read(backend.linear(x, w))); // [1.5, 1.5, 3.5, 3.5]
 * backend.dispose();
 * ```
 */
export class WebGpuBackend implements Backend {
  readonly name = "webgpu";
  /** The device this backend owns (destroyed by {@link dispose}). */
  readonly device: GPUDevice;
  /** Which adapter the device came from. */
  readonly adapter: WebGpuAdapterSummary;

  readonly #pipelines: PipelineCache;
  readonly #activations: BufferPool;
  readonly #readback: BufferPool;
  readonly #weights = new Set<GpuLinear>();
  /** Bound where a kernel's optional input or output is absent. */
  readonly #dummy: GPUBuffer;
  readonly #uniformAlign: number;
  readonly #storageAlign: number;
  readonly #maxBinding: number;

  // Host data of the batch being recorded (kernel params, segment ranges, indices): staged
  // in #arenaHost and written to #arena right before the batch is submitted, so every op
  // of the batch sees its own values without one writeBuffer per op.
  #arena: GPUBuffer;
  #arenaHost: Uint8Array<ArrayBuffer>;
  #arenaUsed = 0;

  #encoder: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #batchDispatches = 0;
  #scopeOpen = false;
  #pendingScopes: Promise<void>[] = [];
  #destroyAfterSubmit: GPUBuffer[] = [];
  #failure: EdgeVitError | null = null;
  #disposed = false;

  #buffersCreated = 0;
  #buffersDestroyed = 0;
  #weightBuffers = 0;
  #submits = 0;
  #dispatches = 0;

  private constructor(device: GPUDevice, adapter: WebGpuAdapterSummary, maxPooledBytes: number) {
    this.device = device;
    this.adapter = adapter;
    this.#pipelines = new PipelineCache(device);
    this.#uniformAlign = device.limits.minUniformBufferOffsetAlignment;
    this.#storageAlign = device.limits.minStorageBufferOffsetAlignment;
    this.#maxBinding = Math.min(
      device.limits.maxStorageBufferBindingSize,
      device.limits.maxBufferSize,
    );
    const storage = USAGE_STORAGE | USAGE_COPY_SRC | USAGE_COPY_DST;
    this.#activations = new BufferPool((size) => this.#createBuffer(size, storage), maxPooledBytes);
    this.#readback = new BufferPool(
      (size) => this.#createBuffer(size, USAGE_MAP_READ | USAGE_COPY_DST),
      maxPooledBytes / 4,
    );
    this.#dummy = this.#createBuffer(256, USAGE_STORAGE);
    const arenaBytes = 1 << 16;
    this.#arena = this.#createBuffer(arenaBytes, USAGE_UNIFORM | USAGE_STORAGE | USAGE_COPY_DST);
    this.#arenaHost = new Uint8Array(arenaBytes);

    device.lost.then((info) => {
      if (this.#disposed) return;
      this.#fail(`WebGPU device lost (${info.reason}): ${info.message || "no message"}`);
    });
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      this.#fail(`WebGPU ${errorKind(error)} error: ${error.message}`);
    });
  }

  /**
   * Requests an adapter (unless one is given) and a device, with the adapter's buffer
   * size limits so large batches fit. Rejects with `EdgeVitError("backend_failure")` when
   * WebGPU is unavailable, no adapter is found, only a fallback adapter is found and
   * `allowFallbackAdapter` is not set, or the device cannot be created.
   */
  static async create(options: WebGpuBackendOptions = {}): Promise<WebGpuBackend> {
    const timeoutMs = options.timeoutMs ?? 5000;
    let adapter = options.adapter ?? null;
    if (!adapter) {
      adapter = await requestAdapterWithTimeout(
        {
          powerPreference: options.powerPreference ?? "high-performance",
          forceFallbackAdapter: options.allowFallbackAdapter ?? false,
        },
        timeoutMs,
      );
      if (!adapter && options.allowFallbackAdapter) {
        adapter = await requestAdapterWithTimeout({}, timeoutMs);
      }
    }
    if (!adapter) {
      throw new EdgeVitError(
        "backend_failure",
        "no WebGPU adapter found (no GPU driver; on Linux without a GPU install mesa-vulkan-drivers and libvulkan1 for the llvmpipe fallback adapter)",
      );
    }
    const summary = describeAdapter(adapter);
    if (summary.isFallbackAdapter && !options.allowFallbackAdapter) {
      throw new EdgeVitError(
        "backend_failure",
        `only a fallback (software) WebGPU adapter was found (${summary.description}); pass allowFallbackAdapter to use it`,
      );
    }
    let device: GPUDevice;
    try {
      device = await withTimeout(
        adapter.requestDevice({
          label: "edgevit",
          requiredLimits: {
            maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
            maxBufferSize: adapter.limits.maxBufferSize,
          },
        }),
        timeoutMs,
        "GPUAdapter.requestDevice()",
      );
    } catch (error) {
      if (error instanceof EdgeVitError) throw error;
      throw new EdgeVitError(
        "backend_failure",
        `could not create a WebGPU device on ${summary.description}: ${messageOf(error)}`,
        { cause: error },
      );
    }
    return new WebGpuBackend(device, summary, options.maxPooledBytes ?? 256 * 1024 * 1024);
  }

  supportsOp(_op: OpName): boolean {
    return true;
  }

  /** Counters; see {@link WebGpuStats}. */
  stats(): WebGpuStats {
    const activations = this.#activations.stats();
    return {
      pipelinesCreated: this.#pipelines.created,
      liveBuffers: this.#buffersCreated - this.#buffersDestroyed,
      tensorsInUse: activations.inUse,
      pooledBuffers: activations.free,
      weightBuffers: this.#weightBuffers,
      buffersCreated: this.#buffersCreated,
      buffersDestroyed: this.#buffersDestroyed,
      submits: this.#submits,
      dispatches: this.#dispatches,
    };
  }

  /**
   * Submits everything recorded, waits for the GPU to finish it and throws
   * `EdgeVitError("backend_failure")` if the device reported an error meanwhile.
   */
  async sync(): Promise<void> {
    this.#check();
    this.#flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.#settle();
  }

  upload(data: Float32Array, shape: readonly number[]): Tensor {
    this.#check();
    checkShape(shape);
    if (data.length !== sizeOf(shape)) {
      throw new ShapeError(`upload of ${data.length} values into shape [${shape}]`);
    }
    // writeBuffer runs before any unsubmitted command: submit those first, since the
    // pooled buffer may have been released by one of them just now.
    this.#flush();
    const tensor = this.#allocate(shape);
    this.#openScope();
    if (data.length > 0) {
      this.device.queue.writeBuffer(tensor.buffer, 0, data as Float32Array<ArrayBuffer>);
    }
    return tensor;
  }

  async read(tensor: Tensor): Promise<Float32Array> {
    this.#check();
    const source = this.#own(tensor);
    const bytes = source.size * 4;
    if (bytes === 0) {
      this.#flush();
      await this.#settle();
      return new Float32Array(0);
    }
    const staging = this.#readback.acquire(bytes);
    this.#endPass();
    this.#begin().copyBufferToBuffer(source.buffer, 0, staging, 0, bytes);
    this.#flush();
    try {
      await staging.mapAsync(MAP_MODE_READ, 0, bytes);
    } catch (error) {
      if (this.#disposed) {
        throw new EdgeVitError("backend_failure", "the WebGPU backend was disposed during a read", {
          cause: error,
        });
      }
      // A buffer whose mapping failed is not trusted again.
      this.#readback.discard(staging);
      this.#destroyNow(staging);
      await this.#settle();
      this.#fail(`WebGPU readback failed: ${messageOf(error)}`);
      throw new EdgeVitError("backend_failure", this.#failure!.message, { cause: error });
    }
    if (this.#disposed) {
      throw new EdgeVitError("backend_failure", "the WebGPU backend was disposed during a read");
    }
    const out = new Float32Array(staging.getMappedRange(0, bytes).slice(0));
    staging.unmap();
    this.#readback.release(staging);
    await this.#settle();
    return out;
  }

  release(tensor: Tensor): void {
    const own = this.#own(tensor);
    own.released = true;
    if (!this.#disposed) this.#activations.release(own.buffer);
  }

  prepareLinear(source: LinearSource, options?: { precision?: Precision }): LinearWeights {
    this.#check();
    checkLinearSource(source);
    const precision = options?.precision ?? "f32";
    if (precision === "int8") return this.prepareQuantizedLinear(quantizePerChannel(source));
    if (precision !== "f32") {
      throw new EdgeVitError("invalid_argument", `unknown linear precision "${precision}"`);
    }
    const { outFeatures, inFeatures } = source;
    return this.#linear(
      inFeatures,
      outFeatures,
      "f32",
      this.#weightBuffer(source.weight),
      null,
      source.bias,
    );
  }

  prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights {
    this.#check();
    checkLinearSource(source);
    const { outFeatures, inFeatures } = source;
    if (source.scales.length !== outFeatures) {
      throw new ShapeError(
        `linear scales have ${source.scales.length} values, expected ${outFeatures}`,
      );
    }
    const words = Math.ceil(inFeatures / 4);
    const packed = new Uint32Array(outFeatures * words); // [out, ⌈in/4⌉]
    for (let n = 0; n < outFeatures; n++) {
      for (let k = 0; k < inFeatures; k++) {
        const byte = source.weight[n * inFeatures + k] & 0xff;
        packed[n * words + (k >> 2)] |= byte << (8 * (k & 3));
      }
    }
    return this.#linear(
      inFeatures,
      outFeatures,
      "int8",
      this.#weightBuffer(packed),
      this.#weightBuffer(source.scales),
      source.bias,
    );
  }

  releaseLinear(weights: LinearWeights): void {
    const own = this.#ownLinear(weights);
    own.released = true;
    this.#weights.delete(own);
    for (const buffer of [own.weight, own.scales, own.bias]) {
      if (!buffer) continue;
      this.#weightBuffers--;
      this.#destroyLater(buffer);
    }
  }

  linear(x: Tensor, weights: LinearWeights, activation: Activation = "none"): Tensor {
    this.#check();
    const input = this.#own(x);
    const w = this.#ownLinear(weights);
    const [rows, cols] = matrixShape(input, "linear");
    if (cols !== w.inFeatures) {
      throw new ShapeError(`linear expects ${w.inFeatures} input columns, got ${cols}`);
    }
    if (activation !== "none" && activation !== "gelu") {
      throw new EdgeVitError("invalid_argument", `unknown linear activation "${activation}"`);
    }
    const n = w.outFeatures;
    const out = this.#allocate([rows, n]);
    if (rows === 0 || n === 0) return out;
    const rowTiles = Math.ceil(rows / GEMM_TILE);
    if (rowTiles > MAX_GROUPS) throw new ShapeError(`linear of ${rows} rows is too large`);
    const act = activation === "gelu" ? 1 : 0;
    if (w.precision === "int8") {
      const [params] = this.#stage([u32s(rows, n, cols, 0, cols, act, Math.ceil(cols / 4))]);
      this.#dispatch(
        "gemm_int8",
        {},
        [params, input.buffer, w.weight, w.scales!, w.bias, out.buffer],
        Math.ceil(n / GEMM_TILE),
        rowTiles,
      );
    } else {
      const [params] = this.#stage([u32s(rows, n, cols, 0, cols, act)]);
      this.#dispatch(
        "gemm_f32",
        {},
        [params, input.buffer, w.weight, w.bias, out.buffer],
        Math.ceil(n / GEMM_TILE),
        rowTiles,
      );
    }
    return out;
  }

  layerNorm(x: Tensor, gamma: Tensor, beta: Tensor | null, eps: number): Tensor {
    this.#check();
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "layerNorm");
    const g = this.#vector(gamma, cols, "layerNorm gamma");
    const b = beta ? this.#vector(beta, cols, "layerNorm beta") : null;
    const out = this.#allocate([rows, cols]);
    if (rows * cols === 0) return out;
    const [params] = this.#stage([mixed([rows, cols, b ? 1 : 0], [eps])]);
    this.#dispatchItems(
      "layer_norm_f32",
      [params, input.buffer, g.buffer, b ? b.buffer : g.buffer, out.buffer],
      rows,
    );
    return out;
  }

  rmsNorm(x: Tensor, gamma: Tensor, groupSize: number, eps: number): Tensor {
    this.#check();
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "rmsNorm");
    if (!Number.isInteger(groupSize) || groupSize <= 0 || cols % groupSize !== 0) {
      throw new ShapeError(`rmsNorm group size ${groupSize} does not divide ${cols} columns`);
    }
    const g = this.#vector(gamma, cols, "rmsNorm gamma");
    const out = this.#allocate([rows, cols]);
    if (rows * cols === 0) return out;
    const items = rows * (cols / groupSize);
    const [params] = this.#stage([mixed([items, cols, groupSize], [eps])]);
    this.#dispatchItems("rms_norm_f32", [params, input.buffer, g.buffer, out.buffer], items);
    return out;
  }

  gelu(x: Tensor): Tensor {
    this.#check();
    const input = this.#own(x);
    const out = this.#allocate(input.shape);
    if (input.size === 0) return out;
    const [params] = this.#stage([u32s(input.size)]);
    this.#dispatchItems(
      "gelu_f32",
      [params, input.buffer, out.buffer],
      Math.ceil(input.size / 256),
    );
    return out;
  }

  add(a: Tensor, b: Tensor): Tensor {
    this.#check();
    const left = this.#own(a);
    const right = this.#own(b);
    if (left.size !== right.size || left.shape.join() !== right.shape.join()) {
      throw new ShapeError(`add of [${left.shape}] and [${right.shape}]`);
    }
    const out = this.#allocate(left.shape);
    if (left.size === 0) return out;
    const [params] = this.#stage([u32s(left.size)]);
    this.#dispatchItems(
      "add_f32",
      [params, left.buffer, right.buffer, out.buffer],
      Math.ceil(left.size / 256),
    );
    return out;
  }

  softmax(x: Tensor): Tensor {
    this.#check();
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "softmax");
    const out = this.#allocate([rows, cols]);
    if (rows * cols === 0) return out;
    const [params] = this.#stage([u32s(rows, cols)]);
    this.#dispatchItems("softmax_f32", [params, input.buffer, out.buffer], rows);
    return out;
  }

  attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttentionResult {
    this.#check();
    const query = this.#own(q);
    const key = this.#own(k);
    const value = this.#own(v);
    const { heads, headDim, scale } = options;
    if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(headDim) || headDim < 1) {
      throw new ShapeError(
        `attention needs positive integer heads and headDim, got ${heads}×${headDim}`,
      );
    }
    const width = heads * headDim;
    const [queries, qCols] = matrixShape(query, "attention q");
    const [keys, kCols] = matrixShape(key, "attention k");
    const [values, vCols] = matrixShape(value, "attention v");
    const qOffset = options.qOffset ?? 0;
    const kOffset = options.kOffset ?? 0;
    const vOffset = options.vOffset ?? 0;
    if (
      qOffset < 0 || kOffset < 0 || vOffset < 0 ||
      qOffset + width > qCols || kOffset + width > kCols || vOffset + width > vCols
    ) {
      throw new ShapeError(`attention columns out of range for ${heads}×${headDim}`);
    }
    if (values !== keys) throw new ShapeError(`attention has ${keys} keys but ${values} values`);
    const querySegments = options.querySegments ?? new Int32Array(queries);
    const keySegments = options.keySegments ??
      (options.querySegments && queries === keys ? options.querySegments : new Int32Array(keys));
    checkSegments(querySegments, queries, "query");
    checkSegments(keySegments, keys, "key");
    const headVec4 = Math.ceil(headDim / 4);
    // Two [BLOCK_KEYS, headDim] f32 tiles must fit the workgroup memory limit.
    const blockKeys = Math.min(
      32,
      Math.floor(this.device.limits.maxComputeWorkgroupStorageSize / (2 * 16 * headVec4)),
    );
    if (blockKeys < 1) {
      throw new EdgeVitError("unsupported", `attention headDim ${headDim} is too large`);
    }
    if (heads > MAX_GROUPS || Math.ceil(queries / ATTENTION_QUERIES) > MAX_GROUPS) {
      throw new ShapeError(`attention of ${queries} queries × ${heads} heads is too large`);
    }

    const output = this.#allocate([queries, width]);
    const cls = options.returnClsAttention ? this.#allocate([keys, heads]) : null;
    const result: AttentionResult = { output };
    if (cls) result.clsAttention = cls;
    if (cls && cls.size > 0) {
      // Keys outside every CLS row's segment keep a zero weight.
      this.#endPass();
      this.#begin().clearBuffer(cls.buffer, 0, cls.size * 4);
    }
    if (queries === 0) return result;
    const [params, ranges] = this.#stage([
      mixed(
        [queries, keys, heads, headDim, qOffset, qCols, kOffset, kCols, vOffset, vCols],
        [],
        [cls ? 1 : 0],
        [scale],
      ),
      keyRanges(querySegments, keySegments),
    ]);
    this.#dispatch(
      "attention_f32",
      { HEAD_VEC4: headVec4, BLOCK_KEYS: blockKeys },
      [
        params,
        query.buffer,
        key.buffer,
        value.buffer,
        ranges,
        output.buffer,
        cls ? cls.buffer : this.#dummy,
      ],
      Math.ceil(queries / ATTENTION_QUERIES),
      heads,
    );
    return result;
  }

  gatherRows(x: Tensor, rows: Int32Array): Tensor {
    this.#check();
    const input = this.#own(x);
    const [count, cols] = matrixShape(input, "gatherRows");
    for (const row of rows) {
      if (!(row >= 0 && row < count)) throw new ShapeError(`gatherRows row ${row} of ${count}`);
    }
    const out = this.#allocate([rows.length, cols]);
    if (rows.length * cols === 0) return out;
    const [params, indices] = this.#stage([u32s(rows.length, cols), new Uint32Array(rows)]);
    this.#dispatchItems(
      "gather_rows_f32",
      [params, input.buffer, indices, out.buffer],
      Math.ceil((rows.length * cols) / 256),
    );
    return out;
  }

  concatRows(parts: readonly Tensor[]): Tensor {
    this.#check();
    if (parts.length === 0) throw new ShapeError("concatRows of no tensors");
    const inputs = parts.map((part) => this.#own(part));
    const cols = matrixShape(inputs[0], "concatRows")[1];
    let rows = 0;
    for (const input of inputs) {
      const [r, c] = matrixShape(input, "concatRows");
      if (c !== cols) throw new ShapeError(`concatRows of ${cols} and ${c} columns`);
      rows += r;
    }
    const out = this.#allocate([rows, cols]);
    this.#endPass();
    let offset = 0;
    for (const input of inputs) {
      if (input.size > 0) {
        this.#begin().copyBufferToBuffer(input.buffer, 0, out.buffer, offset * 4, input.size * 4);
      }
      offset += input.size;
    }
    return out;
  }

  segmentMean(x: Tensor, offsets: Int32Array): Tensor {
    this.#check();
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "segmentMean");
    const segments = offsets.length - 1;
    if (segments < 1 || offsets[0] !== 0 || offsets[segments] !== rows) {
      throw new ShapeError(`segmentMean offsets must run from 0 to ${rows}`);
    }
    for (let s = 0; s < segments; s++) {
      if (offsets[s + 1] <= offsets[s]) throw new ShapeError(`segmentMean segment ${s} is empty`);
    }
    const out = this.#allocate([segments, cols]);
    if (cols === 0) return out;
    const [params, starts] = this.#stage([u32s(segments, cols), new Uint32Array(offsets)]);
    this.#dispatchItems(
      "segment_mean_f32",
      [params, input.buffer, starts, out.buffer],
      Math.ceil((segments * cols) / 256),
    );
    return out;
  }

  headNorms(x: Tensor, heads: number, headDim: number, columnOffset = 0): Tensor {
    this.#check();
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "headNorms");
    if (
      !Number.isInteger(heads) || heads < 1 || !Number.isInteger(headDim) || headDim < 1 ||
      !Number.isInteger(columnOffset) || columnOffset < 0 ||
      columnOffset + heads * headDim > cols
    ) {
      throw new ShapeError(`headNorms columns out of range for ${heads}×${headDim}`);
    }
    const out = this.#allocate([rows, heads]);
    if (rows === 0) return out;
    const [params] = this.#stage([u32s(rows, cols, heads, headDim, columnOffset)]);
    this.#dispatchItems(
      "head_norms_f32",
      [params, input.buffer, out.buffer],
      Math.ceil((rows * heads) / 256),
    );
    return out;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#pass = null;
    this.#encoder = null;
    // Destroying the device frees every buffer; the counters still say what was held.
    const held = [
      ...this.#activations.drain(),
      ...this.#readback.drain(),
      ...this.#destroyAfterSubmit,
      this.#dummy,
      this.#arena,
    ];
    for (const w of this.#weights) {
      for (const buffer of [w.weight, w.scales, w.bias]) if (buffer) held.push(buffer);
    }
    this.#weights.clear();
    this.#destroyAfterSubmit = [];
    for (const buffer of held) this.#destroyNow(buffer);
    this.#weightBuffers = 0;
    this.device.destroy();
  }

  // ---- internals ----

  #check(): void {
    if (this.#disposed) {
      throw new EdgeVitError("backend_failure", "the WebGPU backend was disposed");
    }
    if (this.#failure) throw new EdgeVitError("backend_failure", this.#failure.message);
  }

  #fail(message: string): void {
    this.#failure ??= new EdgeVitError("backend_failure", message);
  }

  #own(tensor: Tensor): GpuTensor {
    if (!(tensor instanceof GpuTensor) || tensor.owner !== this) {
      throw new ShapeError(
        `a ${tensor.backend} tensor from another backend instance was passed to the WebGPU backend`,
      );
    }
    if (tensor.released) throw new ShapeError("a released tensor was used");
    return tensor;
  }

  #ownLinear(weights: LinearWeights): GpuLinear {
    if (!(weights instanceof GpuLinear) || weights.owner !== this) {
      throw new ShapeError(`${weights.backend} linear weights were passed to the WebGPU backend`);
    }
    if (weights.released) throw new ShapeError("released linear weights were used");
    return weights;
  }

  #vector(tensor: Tensor, length: number, what: string): GpuTensor {
    const own = this.#own(tensor);
    if (own.size !== length) {
      throw new ShapeError(`${what} has ${own.size} values, expected ${length}`);
    }
    return own;
  }

  #createBuffer(size: number, usage: number, mapped = false): GPUBuffer {
    this.#openScope();
    let buffer: GPUBuffer;
    try {
      buffer = this.device.createBuffer({ size, usage, mappedAtCreation: mapped });
    } catch (error) {
      throw new EdgeVitError(
        "backend_failure",
        `WebGPU could not allocate a ${size}-byte buffer: ${messageOf(error)}`,
        { cause: error },
      );
    }
    this.#buffersCreated++;
    return buffer;
  }

  #destroyNow(buffer: GPUBuffer): void {
    buffer.destroy();
    this.#buffersDestroyed++;
  }

  /** Buffers that unsubmitted commands may still use are destroyed after the next submit. */
  #destroyLater(buffer: GPUBuffer): void {
    this.#destroyAfterSubmit.push(buffer);
    if (!this.#encoder) this.#flush();
  }

  #allocate(shape: readonly number[]): GpuTensor {
    const size = sizeOf(shape);
    const bytes = size * 4;
    if (bytes > this.#maxBinding) {
      throw new EdgeVitError(
        "backend_failure",
        `a [${shape}] tensor needs ${bytes} bytes, more than this GPU binds at once (${this.#maxBinding}); use smaller batches`,
      );
    }
    return new GpuTensor(this, this.#activations.acquire(bytes), [...shape], size);
  }

  #weightBuffer(data: Float32Array | Uint32Array): GPUBuffer {
    const bytes = Math.max(4, data.byteLength);
    if (bytes > this.#maxBinding) {
      throw new EdgeVitError(
        "backend_failure",
        `a ${bytes}-byte weight exceeds this GPU's binding limit`,
      );
    }
    const buffer = this.#createBuffer(Math.ceil(bytes / 4) * 4, USAGE_STORAGE, true);
    const view = data instanceof Float32Array
      ? new Float32Array(buffer.getMappedRange())
      : new Uint32Array(buffer.getMappedRange());
    view.set(data);
    buffer.unmap();
    this.#weightBuffers++;
    return buffer;
  }

  #linear(
    inFeatures: number,
    outFeatures: number,
    precision: Precision,
    weight: GPUBuffer,
    scales: GPUBuffer | null,
    bias: Float32Array | null,
  ): GpuLinear {
    const biasBuffer = this.#weightBuffer(bias ?? new Float32Array(outFeatures));
    const linear = new GpuLinear(
      this,
      inFeatures,
      outFeatures,
      precision,
      weight,
      scales,
      biasBuffer,
    );
    this.#weights.add(linear);
    return linear;
  }

  #openScope(): void {
    if (this.#scopeOpen) return;
    this.device.pushErrorScope("validation");
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("internal");
    this.#scopeOpen = true;
  }

  #closeScope(): void {
    if (!this.#scopeOpen) return;
    this.#scopeOpen = false;
    const scopes = [
      this.device.popErrorScope(),
      this.device.popErrorScope(),
      this.device.popErrorScope(),
    ];
    this.#pendingScopes.push(
      Promise.all(scopes).then(
        (errors) => {
          const error = errors.find((e) => e !== null);
          if (error) this.#fail(`WebGPU ${errorKind(error)} error: ${error.message}`);
        },
        (error) => this.#fail(`WebGPU error scope failed: ${messageOf(error)}`),
      ),
    );
  }

  /** Waits for the error scopes of submitted work and throws the first device error. */
  async #settle(): Promise<void> {
    const pending = this.#pendingScopes;
    this.#pendingScopes = [];
    await Promise.all(pending);
    if (this.#failure) throw new EdgeVitError("backend_failure", this.#failure.message);
  }

  #begin(): GPUCommandEncoder {
    if (!this.#encoder) {
      this.#openScope();
      this.#encoder = this.device.createCommandEncoder();
    }
    return this.#encoder;
  }

  #endPass(): void {
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
  }

  /** Submits the recorded batch (after writing its host data) and frees what waited for it. */
  #flush(): void {
    if (this.#disposed) return;
    if (this.#encoder) {
      this.#endPass();
      if (this.#arenaUsed > 0) {
        this.device.queue.writeBuffer(this.#arena, 0, this.#arenaHost, 0, this.#arenaUsed);
        this.#arenaUsed = 0;
      }
      this.device.queue.submit([this.#encoder.finish()]);
      this.#encoder = null;
      this.#batchDispatches = 0;
      this.#submits++;
    }
    for (const buffer of this.#destroyAfterSubmit) this.#destroyNow(buffer);
    this.#destroyAfterSubmit = [];
    for (const buffer of this.#activations.trim()) this.#destroyNow(buffer);
    for (const buffer of this.#readback.trim()) this.#destroyNow(buffer);
    this.#closeScope();
  }

  /**
   * Copies host data for the op about to be recorded into the arena; returns one binding
   * per part. All parts of one op are placed together so that a flush cannot fall
   * between them.
   */
  #stage(parts: ArrayBufferView[]): Binding[] {
    const align = Math.max(this.#uniformAlign, this.#storageAlign);
    const sizes = parts.map((part) => Math.max(16, Math.ceil(part.byteLength / 16) * 16));
    const needed = sizes.reduce((sum, size) => sum + Math.ceil(size / align) * align, 0);
    if (this.#arenaUsed + needed > this.#arenaHost.byteLength) {
      this.#flush();
      if (needed > this.#arenaHost.byteLength) {
        let capacity = this.#arenaHost.byteLength;
        while (capacity < needed) capacity *= 2;
        if (capacity > this.#maxBinding) {
          throw new EdgeVitError("backend_failure", `op host data of ${needed} bytes is too large`);
        }
        this.#destroyNow(this.#arena);
        this.#arena = this.#createBuffer(capacity, USAGE_UNIFORM | USAGE_STORAGE | USAGE_COPY_DST);
        this.#arenaHost = new Uint8Array(capacity);
      }
    }
    return parts.map((part, i) => {
      const offset = this.#arenaUsed;
      this.#arenaHost.fill(0, offset, offset + sizes[i]);
      this.#arenaHost.set(new Uint8Array(part.buffer, part.byteOffset, part.byteLength), offset);
      this.#arenaUsed += Math.ceil(sizes[i] / align) * align;
      return { buffer: this.#arena, offset, size: sizes[i] };
    });
  }

  #dispatch(
    name: ShaderName,
    constants: Readonly<Record<string, number>>,
    bindings: Binding[],
    x: number,
    y = 1,
  ): void {
    const pipeline = this.#pipelines.get(name, constants);
    const encoder = this.#begin();
    const bindGroup = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: bindings.map((binding, index) => ({
        binding: index,
        resource: "offset" in binding ? binding : { buffer: binding },
      })),
    });
    this.#pass ??= encoder.beginComputePass();
    this.#pass.setPipeline(pipeline);
    this.#pass.setBindGroup(0, bindGroup);
    this.#pass.dispatchWorkgroups(x, y);
    this.#dispatches++;
    if (++this.#batchDispatches >= AUTO_SUBMIT_DISPATCHES) this.#flush();
  }

  /** Dispatches `groups` workgroups, folded into 2-D when over the per-dimension limit. */
  #dispatchItems(name: ShaderName, bindings: Binding[], groups: number): void {
    const x = Math.min(groups, MAX_GROUPS);
    const y = Math.ceil(groups / x);
    if (y > MAX_GROUPS) throw new ShapeError(`${name} over ${groups} workgroups is too large`);
    this.#dispatch(name, {}, bindings, x, y);
  }
}

function checkShape(shape: readonly number[]): void {
  for (const dim of shape) {
    if (!Number.isInteger(dim) || dim < 0) throw new ShapeError(`bad tensor shape [${shape}]`);
  }
}

/**
 * For each query, the half-open range of keys of its segment (`[queries, 2]`). Both id
 * lists are nondecreasing, so one merge-like walk finds every range; a segment without
 * keys gets an empty range at the position where its keys would be, which keeps range
 * starts and ends nondecreasing (the kernel relies on that for the block's key range).
 */
export function keyRanges(querySegments: Int32Array, keySegments: Int32Array): Uint32Array {
  const ranges = new Uint32Array(querySegments.length * 2);
  let start = 0;
  let end = 0;
  let current: number | null = null;
  for (let i = 0; i < querySegments.length; i++) {
    const segment = querySegments[i];
    if (segment !== current) {
      current = segment;
      start = end;
      while (start < keySegments.length && keySegments[start] < segment) start++;
      end = start;
      while (end < keySegments.length && keySegments[end] === segment) end++;
    }
    ranges[2 * i] = start;
    ranges[2 * i + 1] = end;
  }
  return ranges;
}

function u32s(...values: number[]): Uint32Array {
  return new Uint32Array(values);
}

/** A params block: u32 fields, then f32 fields, then more u32 / f32 groups, in order. */
function mixed(...groups: number[][]): Uint32Array {
  const total = groups.reduce((sum, group) => sum + group.length, 0);
  const words = new Uint32Array(total);
  const floats = new Float32Array(words.buffer);
  let i = 0;
  groups.forEach((group, g) => {
    for (const value of group) {
      if (g % 2 === 0) words[i++] = value;
      else floats[i++] = value;
    }
  });
  return words;
}

function errorKind(error: GPUError): string {
  if (typeof GPUValidationError !== "undefined" && error instanceof GPUValidationError) {
    return "validation";
  }
  if (typeof GPUOutOfMemoryError !== "undefined" && error instanceof GPUOutOfMemoryError) {
    return "out-of-memory";
  }
  return "internal";
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
