/**
 * The one small op interface every compute backend implements (reference TypeScript,
 * WASM-SIMD, WebGPU). Models call these ops and never touch backend memory: a
 * {@link Tensor} is an opaque handle that may live in wasm linear memory or in a GPU
 * buffer, so a whole forward pass uploads once and reads back once.
 *
 * Layout conventions shared by every op:
 * - Activations are 2-D, row-major `[rows, cols]`: one row per token, tokens of all
 *   images of a batch stacked (`[Σ tokens, dim]`). There is never a batch axis and
 *   never padding: images are told apart by *segment ids* (see {@link AttentionOptions}).
 * - Ops return new tensors and leave their inputs untouched. The caller releases what
 *   it no longer needs with {@link Backend.release} (backends pool the memory).
 *
 * @module
 */

/** Numeric precision of a prepared linear layer. */
export type Precision = "f32" | "int8";

/** An activation or parameter tensor owned by one backend. */
export interface Tensor {
  /** Row-major shape, usually `[rows, cols]`; parameters may be 1-D. */
  readonly shape: readonly number[];
  /** Name of the backend that owns it; passing it to another backend is an error. */
  readonly backend: string;
}

/** A linear layer's weights, packed once at load into the layout the backend's GEMM wants. */
export interface LinearWeights {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly precision: Precision;
  readonly backend: string;
}

/** Source of a linear layer: PyTorch `nn.Linear` layout, `weight[out][in]` row-major. */
export interface LinearSource {
  /** `[outFeatures, inFeatures]` row-major, as PyTorch stores it. */
  weight: Float32Array;
  /** `[outFeatures]`, or null for `bias=False`. */
  bias: Float32Array | null;
  outFeatures: number;
  inFeatures: number;
}

/** Pre-quantized linear weights (symmetric int8, one scale per output channel). */
export interface QuantizedLinearSource {
  /** `[outFeatures, inFeatures]` row-major int8. */
  weight: Int8Array;
  /** `[outFeatures]`: real weight = scale × int8. */
  scales: Float32Array;
  bias: Float32Array | null;
  outFeatures: number;
  inFeatures: number;
}

/** Epilogue fused into a GEMM: applied to `x·Wᵀ + b` before it is stored. */
export type Activation = "none" | "gelu";

/** Options of {@link Backend.attention}. */
export interface AttentionOptions {
  /** Number of heads; q, k and v each hold `heads × headDim` columns. */
  heads: number;
  headDim: number;
  /** Multiplies `q·kᵀ` before the softmax, usually `headDim ** -0.5`. */
  scale: number;
  /**
   * First column of q / k / v inside their tensors (default 0). Lets a fused `qkv`
   * projection `[T, 3·H·D]` feed attention without being split: q at 0, k at H·D,
   * v at 2·H·D, all three the same tensor.
   */
  qOffset?: number;
  kOffset?: number;
  vOffset?: number;
  /**
   * Segment id of every query row, nondecreasing (rows of one image are contiguous).
   * Query `i` attends only to keys whose segment id equals its own; kernels skip key
   * blocks of other segments, so a packed sequence costs Σ nᵢ², not (Σ nᵢ)².
   * Omitted: every row is in segment 0.
   */
  querySegments?: Int32Array;
  /** Segment id of every key row, nondecreasing. Omitted: same as `querySegments`. */
  keySegments?: Int32Array;
  /**
   * Also return the attention that each segment's first query row (the CLS token)
   * pays to every key of its segment: `[keys, heads]`, entry `[j, h]` =
   * `softmax(q_cls·kᵀ·scale)[h, j]`. ATS needs it.
   */
  returnClsAttention?: boolean;
  /**
   * `"int8"` lets the backend compute `q·kᵀ` and `p·v` on int8 (the int8 models ask for
   * it): q per row at unsigned 7 bits with a zero point, k per key row and v per column
   * of each segment at int8, the softmax in float32 with its probabilities at 7 bits.
   * It is a permission, not an order: the wasm backend takes it where its int8 kernel is
   * faster (head dims of 48 and up), and backends without one (reference, WebGPU) compute
   * float32. Default `"f32"`.
   */
  precision?: Precision;
}

/** What {@link Backend.attention} returns. */
export interface AttentionResult {
  /** `[queries, heads × headDim]`, head-major columns like the input. */
  output: Tensor;
  /** `[keys, heads]`, only when `returnClsAttention` was set. */
  clsAttention?: Tensor;
}

/** Names of the ops, for {@link Backend.supportsOp} and for kernel names in every backend. */
export type OpName =
  | "linear"
  | "linear_int8"
  | "layer_norm"
  | "rms_norm"
  | "gelu"
  | "add"
  | "softmax"
  | "attention"
  | "gather_rows"
  | "concat_rows"
  | "segment_mean"
  | "head_norms";

/**
 * A compute backend.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "./reference/reference_backend.ts";
 * const backend = new ReferenceBackend();
 * const x = backend.upload(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * const w = backend.prepareLinear({
 *   weight: new Float32Array([1, 0, 0, 1]),
 *   bias: null,
 *   outFeatures: 2,
 *   inFeatures: 2,
 * });
 * const y = backend.linear(x, w);
 * console.log(await backend.read(y)); // Float32Array [1, 2, 3, 4]
 * ```
 */
export interface Backend {
  /** "reference", "wasm", "webgpu", ... */
  readonly name: string;
  /** Whether this backend implements `op` (a model may then pick another path). */
  supportsOp(op: OpName): boolean;

  /** Copies host data into a new tensor. `data.length` must equal the shape's product. */
  upload(data: Float32Array, shape: readonly number[]): Tensor;
  /** Copies a tensor back to the host. */
  read(tensor: Tensor): Promise<Float32Array>;
  /** Returns a tensor's memory to the backend; the handle must not be used again. */
  release(tensor: Tensor): void;

  /** Packs a linear layer for {@link linear}; `precision: "int8"` quantizes per output channel. */
  prepareLinear(source: LinearSource, options?: { precision?: Precision }): LinearWeights;
  /** Packs an already-quantized int8 linear layer. */
  prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights;
  /** Frees packed weights. */
  releaseLinear(weights: LinearWeights): void;

  /** `[M, K] → [M, N]`: `x·Wᵀ + b`, then the optional fused activation. */
  linear(x: Tensor, weights: LinearWeights, activation?: Activation): Tensor;
  /** LayerNorm over the last axis; `beta` null means no bias (SimpleViT-style norms). */
  layerNorm(x: Tensor, gamma: Tensor, beta: Tensor | null, eps: number): Tensor;
  /**
   * RMS norm over consecutive groups of `groupSize` columns:
   * `y = x / sqrt(mean(x²) + eps) · gamma`, with `gamma` of length `cols`
   * (one scale per column; for per-head norms, heads × headDim).
   */
  rmsNorm(x: Tensor, gamma: Tensor, groupSize: number, eps: number): Tensor;
  /** GELU, erf form (PyTorch's default `nn.GELU()`). */
  gelu(x: Tensor): Tensor;
  /** Element-wise `a + b`; shapes must match. */
  add(a: Tensor, b: Tensor): Tensor;
  /** Softmax over the last axis of `[rows, cols]`. */
  softmax(x: Tensor): Tensor;
  /** Fused multi-head attention with segment masking; see {@link AttentionOptions}. */
  attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttentionResult;
  /** `out[i] = x[rows[i]]`: token pruning, CLS extraction, reordering. */
  gatherRows(x: Tensor, rows: Int32Array): Tensor;
  /** Stacks tensors of equal column count along rows. */
  concatRows(parts: readonly Tensor[]): Tensor;
  /**
   * Mean of the rows of each segment: `offsets` has `segments + 1` entries,
   * segment `s` is rows `offsets[s] … offsets[s+1]-1`. Returns `[segments, cols]`.
   */
  segmentMean(x: Tensor, offsets: Int32Array): Tensor;
  /**
   * L2 norm of each head's slice of each row: `x` holds `heads × headDim` columns
   * starting at `columnOffset`; returns `[rows, heads]`. ATS weighs attention by ‖V‖.
   */
  headNorms(x: Tensor, heads: number, headDim: number, columnOffset?: number): Tensor;

  /** Frees everything the backend holds (memory, device). */
  dispose(): void;
}

/** Thrown when an op gets tensors whose shapes or backends do not fit. */
export class ShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ShapeError";
  }
}

/** Product of a shape's dimensions. */
export function sizeOf(shape: readonly number[]): number {
  let size = 1;
  for (const dim of shape) size *= dim;
  return size;
}

/** `[rows, cols]` of a 2-D tensor; a {@link ShapeError} names the op otherwise. */
export function matrixShape(tensor: Tensor, op: string): [number, number] {
  if (tensor.shape.length !== 2) {
    throw new ShapeError(`${op} expects a 2-D tensor, got [${tensor.shape}]`);
  }
  return [tensor.shape[0], tensor.shape[1]];
}

/**
 * Checks segment ids for {@link Backend.attention}: one per row and nondecreasing, which
 * is what lets kernels find each query block's key range by its first and last id.
 */
export function checkSegments(segments: Int32Array, rows: number, what: string): void {
  if (segments.length !== rows) {
    throw new ShapeError(`${what} segments have ${segments.length} ids for ${rows} rows`);
  }
  for (let i = 1; i < rows; i++) {
    if (segments[i] < segments[i - 1]) {
      throw new ShapeError(`${what} segment ids must be nondecreasing (row ${i})`);
    }
  }
}
