/**
 * The WASM-SIMD backend: every op runs in edgevit's Rust kernels (`kernels/` built into
 * `wasm/*.wasm`), with tensors living in the module's linear memory. Linear weights are
 * packed once into the GEMM's panel layout at {@link WasmBackend.prepareLinear};
 * activations stay in wasm memory between ops, and released tensors go back to the
 * binding's free list, so a forward pass in steady state allocates nothing new.
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
import { type KernelFlavour, type KernelLoadOptions, Kernels } from "../../../wasm/kernels.ts";

/** Options of {@link WasmBackend.create}. */
export interface WasmBackendOptions {
  /** Force the relaxed-SIMD or the plain SIMD build (default: relaxed where supported). */
  flavour?: KernelFlavour;
  /** The module's bytes, for runtimes that embed them instead of reading `wasm/`. */
  wasmBytes?: BufferSource;
}

class WasmTensor implements Tensor {
  readonly backend = "wasm";
  released = false;
  constructor(
    readonly owner: WasmBackend,
    /** Byte offset in the module's memory. */
    readonly ptr: number,
    /** Number of float32 values. */
    readonly length: number,
    readonly shape: readonly number[],
  ) {}
}

class WasmLinear implements LinearWeights {
  readonly backend = "wasm";
  released = false;
  constructor(
    readonly owner: WasmBackend,
    /**
     * f32: packed `[N/8][K][8]` floats (kernels/src/gemm.rs); int8: packed
     * `[N/4][K/16][4][16]` bytes (kernels/src/int8.rs).
     */
    readonly packed: number,
    /** `[outFeatures]` padded to a multiple of 4, or 0 for no bias. */
    readonly bias: number,
    readonly outFeatures: number,
    readonly inFeatures: number,
    readonly precision: Precision,
    /** int8 only: per-channel weight sums (i32) and scales (f32), padded to 4. */
    readonly rowSums = 0,
    readonly scales = 0,
  ) {}
}

const F32 = 4;

/**
 * Smallest head dim for which the int8 attention kernel runs when a model allows it. Below,
 * a head's dot products are one or two int8 vectors long, and quantizing q, k, v and the
 * probabilities costs what the int8 dot saves (measured in bench/README.md, "int8
 * attention": 197 tokens, head dim 16: 1.04× float32; 32: 1.24×; 48 and 64: 1.45×; 50
 * tokens, head dim 16 or 32: 0.8–0.9×), so those heads stay float32.
 */
export const INT8_ATTENTION_MIN_HEAD_DIM = 48;

/**
 * The WASM-SIMD backend.
 *
 * @example
 * ```ts
 * import { WasmBackend } from "./wasm_backend.ts";
 * const backend = await WasmBackend.create();
 * const x = backend.upload(new Float32Array([1, 2, 3, 4]), [2, 2]);
 * const w = backend.prepareLinear({
 *   weight: new Float32Array([1, 0, 0, 1]),
 *   bias: null,
 *   outFeatures: 2,
 *   inFeatures: 2,
 * });
 * console.log(await backend.read(backend.linear(x, w, "gelu")), backend.flavour);
 * backend.dispose();
 * ```
 */
export class WasmBackend implements Backend {
  readonly name = "wasm";
  /** The kernel module and its memory allocator. */
  readonly kernels: Kernels;
  #disposed = false;

  private constructor(kernels: Kernels) {
    this.kernels = kernels;
  }

  /** Loads the kernels (relaxed SIMD where the engine accepts it) and makes a backend. */
  static async create(options: WasmBackendOptions = {}): Promise<WasmBackend> {
    const load: KernelLoadOptions = {};
    if (options.flavour) load.flavour = options.flavour;
    if (options.wasmBytes) load.wasmBytes = options.wasmBytes;
    return new WasmBackend(await Kernels.load(load));
  }

  /** Which kernel build runs: "relaxed" or "plain". */
  get flavour(): KernelFlavour {
    return this.kernels.flavour;
  }

  supportsOp(_op: OpName): boolean {
    return true;
  }

  upload(data: Float32Array, shape: readonly number[]): Tensor {
    if (data.length !== sizeOf(shape)) {
      throw new ShapeError(`upload of ${data.length} values into shape [${shape}]`);
    }
    const tensor = this.#alloc([...shape]);
    this.kernels.f32(tensor.ptr, tensor.length).set(data);
    return tensor;
  }

  read(tensor: Tensor): Promise<Float32Array> {
    const own = this.#own(tensor);
    return Promise.resolve(this.kernels.f32(own.ptr, own.length).slice());
  }

  release(tensor: Tensor): void {
    if (this.#disposed) return;
    const own = this.#check(tensor);
    if (own.released) return;
    own.released = true;
    this.kernels.free(own.ptr);
  }

  prepareLinear(source: LinearSource, options?: { precision?: Precision }): LinearWeights {
    checkLinearSource(source);
    const precision = options?.precision ?? "f32";
    if (precision === "int8") return this.prepareQuantizedLinear(quantizePerChannel(source));
    if (precision !== "f32") {
      throw new EdgeVitError("unsupported", `linear precision "${precision}" (f32 or int8)`);
    }
    return this.#pack(source.weight, source.bias, source.outFeatures, source.inFeatures, "f32");
  }

  /**
   * Packs int8 weights for the int8 GEMM: activations are then quantized per row at
   * every call (unsigned 7-bit with a zero point, see kernels/src/int8.rs), so results
   * also carry the activation rounding: up to half a step, 1/254 of the row's range.
   */
  prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights {
    checkLinearSource(source);
    const { outFeatures, inFeatures } = source;
    if (source.scales.length !== outFeatures) {
      throw new ShapeError(`int8 linear has ${source.scales.length} scales for ${outFeatures}`);
    }
    if (this.#disposed) throw new EdgeVitError("backend_failure", "the wasm backend is disposed");
    const kernels = this.kernels;
    const e = kernels.exports;
    const padded = Math.ceil(outFeatures / 4) * 4;
    const packed = kernels.alloc(e.gemm_packed_len_int8(outFeatures, inFeatures));
    const rowSums = kernels.alloc(padded * 4);
    const scales = kernels.alloc(padded * F32);
    const weight = kernels.alloc(source.weight.length);
    kernels.i8(weight, source.weight.length).set(source.weight);
    e.gemm_pack_int8(weight, outFeatures, inFeatures, packed, rowSums);
    kernels.free(weight);
    kernels.f32(scales, outFeatures).set(source.scales);
    const bias = source.bias ? this.#bias(source.bias) : 0;
    return new WasmLinear(
      this,
      packed,
      bias,
      outFeatures,
      inFeatures,
      "int8",
      rowSums,
      scales,
    );
  }

  releaseLinear(weights: LinearWeights): void {
    if (this.#disposed) return;
    const own = this.#linear(weights, true);
    if (own.released) return;
    own.released = true;
    for (const ptr of [own.packed, own.bias, own.rowSums, own.scales]) {
      if (ptr) this.kernels.free(ptr);
    }
  }

  linear(x: Tensor, weights: LinearWeights, activation: Activation = "none"): Tensor {
    const input = this.#own(x);
    const w = this.#linear(weights, false);
    const [rows, cols] = matrixShape(input, "linear");
    if (cols !== w.inFeatures) {
      throw new ShapeError(`linear expects ${w.inFeatures} input columns, got ${cols}`);
    }
    if (activation !== "none" && activation !== "gelu") {
      throw new EdgeVitError("unsupported", `linear activation "${activation}"`);
    }
    const n = w.outFeatures;
    const out = this.#alloc([rows, n]);
    const e = this.kernels.exports;
    if (w.precision === "int8") {
      const scratch = this.kernels.scratch("gemm_int8", e.gemm_scratch_len_int8(rows, cols));
      e.gemm_int8(
        input.ptr,
        rows,
        cols,
        w.packed,
        w.rowSums,
        w.scales,
        n,
        w.bias,
        out.ptr,
        activation === "gelu" ? 1 : 0,
        scratch,
      );
      return out;
    }
    const scratchLen = e.gemm_scratch_len_f32(rows, cols);
    const scratch = scratchLen ? this.kernels.scratch("gemm", scratchLen * F32) : 0;
    e.gemm_f32(
      input.ptr,
      rows,
      cols,
      w.packed,
      n,
      w.bias,
      out.ptr,
      activation === "gelu" ? 1 : 0,
      scratch,
    );
    return out;
  }

  layerNorm(x: Tensor, gamma: Tensor, beta: Tensor | null, eps: number): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "layerNorm");
    const g = this.#vector(gamma, cols, "layerNorm gamma");
    const b = beta ? this.#vector(beta, cols, "layerNorm beta") : null;
    const out = this.#alloc([rows, cols]);
    this.kernels.exports.layer_norm_f32(input.ptr, rows, cols, g.ptr, b ? b.ptr : 0, eps, out.ptr);
    return out;
  }

  rmsNorm(x: Tensor, gamma: Tensor, groupSize: number, eps: number): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "rmsNorm");
    if (!Number.isInteger(groupSize) || groupSize <= 0 || cols % groupSize !== 0) {
      throw new ShapeError(`rmsNorm group size ${groupSize} does not divide ${cols} columns`);
    }
    const g = this.#vector(gamma, cols, "rmsNorm gamma");
    const out = this.#alloc([rows, cols]);
    this.kernels.exports.rms_norm_f32(input.ptr, rows, cols, g.ptr, groupSize, eps, out.ptr);
    return out;
  }

  gelu(x: Tensor): Tensor {
    const input = this.#own(x);
    const out = this.#alloc(input.shape);
    this.kernels.exports.gelu_f32(input.ptr, input.length, out.ptr);
    return out;
  }

  add(a: Tensor, b: Tensor): Tensor {
    const left = this.#own(a);
    const right = this.#own(b);
    if (left.length !== right.length || left.shape.join() !== right.shape.join()) {
      throw new ShapeError(`add of [${left.shape}] and [${right.shape}]`);
    }
    const out = this.#alloc(left.shape);
    this.kernels.exports.add_f32(left.ptr, right.ptr, left.length, out.ptr);
    return out;
  }

  softmax(x: Tensor): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "softmax");
    const out = this.#alloc([rows, cols]);
    this.kernels.exports.softmax_f32(input.ptr, rows, cols, out.ptr);
    return out;
  }

  attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttentionResult {
    const query = this.#own(q);
    const key = this.#own(k);
    const value = this.#own(v);
    const { heads, headDim, scale } = options;
    if (!Number.isInteger(heads) || !Number.isInteger(headDim) || heads < 1 || headDim < 1) {
      throw new ShapeError(`attention needs positive integer heads and headDim`);
    }
    const width = heads * headDim;
    const [queries, qCols] = matrixShape(query, "attention q");
    const [keys, kCols] = matrixShape(key, "attention k");
    const [values, vCols] = matrixShape(value, "attention v");
    const qOffset = options.qOffset ?? 0;
    const kOffset = options.kOffset ?? 0;
    const vOffset = options.vOffset ?? 0;
    for (const offset of [qOffset, kOffset, vOffset]) {
      if (!Number.isInteger(offset) || offset < 0) {
        throw new ShapeError(`attention column offset ${offset} is not a nonnegative integer`);
      }
    }
    if (qOffset + width > qCols || kOffset + width > kCols || vOffset + width > vCols) {
      throw new ShapeError(`attention columns out of range for ${heads}×${headDim}`);
    }
    if (values !== keys) throw new ShapeError(`attention has ${keys} keys but ${values} values`);
    const querySegments = options.querySegments ?? null;
    const keySegments = options.keySegments ??
      (options.querySegments && queries === keys ? options.querySegments : null);
    if (querySegments) checkSegments(querySegments, queries, "query");
    if (keySegments) checkSegments(keySegments, keys, "key");

    const output = this.#alloc([queries, width]);
    const cls = options.returnClsAttention ? this.#alloc([keys, heads]) : null;
    const kernels = this.kernels;
    const qSeg = querySegments ? this.#int32(querySegments) : 0;
    const kSeg = keySegments ? this.#int32(keySegments) : 0;
    try {
      const e = kernels.exports;
      const int8 = options.precision === "int8" && headDim >= INT8_ATTENTION_MIN_HEAD_DIM;
      const scratch = int8
        ? kernels.scratch("attention_int8", e.attention_scratch_len_int8(queries, keys, headDim))
        : kernels.scratch("attention", e.attention_scratch_len_f32(keys, headDim) * F32);
      (int8 ? e.attention_int8 : e.attention_f32)(
        query.ptr + qOffset * F32,
        qCols,
        key.ptr + kOffset * F32,
        kCols,
        value.ptr + vOffset * F32,
        vCols,
        output.ptr,
        queries,
        keys,
        heads,
        headDim,
        scale,
        qSeg,
        kSeg,
        cls ? cls.ptr : 0,
        scratch,
      );
    } finally {
      if (qSeg) kernels.free(qSeg);
      if (kSeg) kernels.free(kSeg);
    }
    const result: AttentionResult = { output };
    if (cls) result.clsAttention = cls;
    return result;
  }

  gatherRows(x: Tensor, rows: Int32Array): Tensor {
    const input = this.#own(x);
    const [count, cols] = matrixShape(input, "gatherRows");
    for (const row of rows) {
      if (row < 0 || row >= count) throw new ShapeError(`gatherRows row ${row} of ${count}`);
    }
    const out = this.#alloc([rows.length, cols]);
    if (rows.length === 0 || cols === 0) return out;
    const indices = this.#int32(rows);
    this.kernels.exports.gather_rows_f32(input.ptr, cols, indices, rows.length, out.ptr);
    this.kernels.free(indices);
    return out;
  }

  concatRows(parts: readonly Tensor[]): Tensor {
    if (parts.length === 0) throw new ShapeError("concatRows of no tensors");
    const inputs = parts.map((part) => this.#own(part));
    const cols = matrixShape(inputs[0], "concatRows")[1];
    let rows = 0;
    for (const input of inputs) {
      const [r, c] = matrixShape(input, "concatRows");
      if (c !== cols) throw new ShapeError(`concatRows of ${cols} and ${c} columns`);
      rows += r;
    }
    const out = this.#alloc([rows, cols]);
    const memory = this.kernels.f32(0, this.kernels.memoryBytes / F32);
    let offset = out.ptr / F32;
    for (const input of inputs) {
      const start = input.ptr / F32;
      memory.copyWithin(offset, start, start + input.length);
      offset += input.length;
    }
    return out;
  }

  segmentMean(x: Tensor, offsets: Int32Array): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "segmentMean");
    const segments = offsets.length - 1;
    if (segments < 1 || offsets[0] !== 0 || offsets[segments] !== rows) {
      throw new ShapeError(`segmentMean offsets must run from 0 to ${rows}`);
    }
    for (let s = 0; s < segments; s++) {
      if (offsets[s + 1] <= offsets[s]) throw new ShapeError(`segmentMean segment ${s} is empty`);
    }
    const out = this.#alloc([segments, cols]);
    const table = this.#int32(offsets);
    this.kernels.exports.segment_mean_f32(input.ptr, cols, table, segments, out.ptr);
    this.kernels.free(table);
    return out;
  }

  headNorms(x: Tensor, heads: number, headDim: number, columnOffset = 0): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "headNorms");
    if (
      !Number.isInteger(heads) || !Number.isInteger(headDim) || !Number.isInteger(columnOffset) ||
      heads < 0 || headDim < 0 || columnOffset < 0 || columnOffset + heads * headDim > cols
    ) {
      throw new ShapeError(`headNorms columns out of range for ${heads}×${headDim}`);
    }
    const out = this.#alloc([rows, heads]);
    this.kernels.exports.head_norms_f32(
      input.ptr + columnOffset * F32,
      rows,
      cols,
      heads,
      headDim,
      out.ptr,
    );
    return out;
  }

  /** Bytes of wasm memory held by live tensors, packed weights and scratch buffers. */
  get bytesInUse(): number {
    return this.kernels.bytesInUse;
  }

  dispose(): void {
    this.#disposed = true;
  }

  #alloc(shape: readonly number[]): WasmTensor {
    if (this.#disposed) throw new EdgeVitError("backend_failure", "the wasm backend is disposed");
    const length = sizeOf(shape);
    return new WasmTensor(this, this.kernels.alloc(length * F32), length, shape);
  }

  #int32(values: Int32Array): number {
    const ptr = this.kernels.alloc(values.length * 4);
    this.kernels.i32(ptr, values.length).set(values);
    return ptr;
  }

  #pack(
    weight: Float32Array,
    bias: Float32Array | null,
    outFeatures: number,
    inFeatures: number,
    precision: "f32",
  ): WasmLinear {
    if (this.#disposed) throw new EdgeVitError("backend_failure", "the wasm backend is disposed");
    const kernels = this.kernels;
    const e = kernels.exports;
    const packed = kernels.alloc(e.gemm_packed_len_f32(outFeatures, inFeatures) * F32);
    const source = kernels.alloc(weight.length * F32);
    kernels.f32(source, weight.length).set(weight);
    e.gemm_pack_f32(source, outFeatures, inFeatures, packed);
    kernels.free(source);
    const biasPtr = bias ? this.#bias(bias) : 0;
    return new WasmLinear(this, packed, biasPtr, outFeatures, inFeatures, precision);
  }

  /** Bias padded to whole vectors: the GEMMs read it 4 columns at a time. */
  #bias(bias: Float32Array): number {
    const ptr = this.kernels.alloc(Math.ceil(bias.length / 4) * 4 * F32);
    this.kernels.f32(ptr, bias.length).set(bias);
    return ptr;
  }

  #check(tensor: Tensor): WasmTensor {
    if (!(tensor instanceof WasmTensor) || tensor.owner !== this) {
      throw new ShapeError(
        `a ${tensor.backend} tensor of another backend instance was passed to the wasm backend`,
      );
    }
    return tensor;
  }

  #own(tensor: Tensor): WasmTensor {
    if (this.#disposed) throw new EdgeVitError("backend_failure", "the wasm backend is disposed");
    const own = this.#check(tensor);
    if (own.released) throw new ShapeError("a released tensor was used");
    return own;
  }

  #linear(weights: LinearWeights, allowReleased: boolean): WasmLinear {
    if (!(weights instanceof WasmLinear) || weights.owner !== this) {
      throw new ShapeError(`${weights.backend} linear weights were passed to the wasm backend`);
    }
    if (weights.released && !allowReleased) throw new ShapeError("released weights were used");
    return weights;
  }

  #vector(tensor: Tensor, length: number, what: string): WasmTensor {
    const own = this.#own(tensor);
    if (own.length !== length) {
      throw new ShapeError(`${what} has ${own.length} values, expected ${length}`);
    }
    return own;
  }
}
