/**
 * Plain TypeScript implementation of every op: the ground truth the WASM and WebGPU
 * kernels are tested against. Written for clarity, not speed; accumulates in float64
 * where PyTorch's float32 result is the target, so its own rounding error stays far
 * below the tolerances the tests use.
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

class ReferenceTensor implements Tensor {
  readonly backend = "reference";
  released = false;
  constructor(readonly data: Float32Array, readonly shape: readonly number[]) {}
}

class ReferenceLinear implements LinearWeights {
  readonly backend = "reference";
  constructor(
    /** `[out, in]` row-major, already dequantized for int8 sources. */
    readonly weight: Float32Array,
    readonly bias: Float32Array | null,
    readonly outFeatures: number,
    readonly inFeatures: number,
    readonly precision: Precision,
  ) {}
}

const SQRT1_2 = Math.SQRT1_2;

/** erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), enough for f32 GELU. */
export function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t *
    Math.exp(
      -z * z - 1.26551223 +
        t * (1.00002368 +
            t * (0.37409196 +
                t * (0.09678418 +
                    t * (-0.18628806 +
                        t * (0.27886807 +
                            t *
                              (-1.13520398 +
                                t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? 1 - r : r - 1;
}

/** GELU, erf form, as PyTorch's `nn.GELU()`. */
export function geluScalar(x: number): number {
  return 0.5 * x * (1 + erf(x * SQRT1_2));
}

/**
 * The reference backend.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "./reference_backend.ts";
 * const backend = new ReferenceBackend();
 * const x = backend.upload(new Float32Array([-1, 0, 1]), [1, 3]);
 * console.log(await backend.read(backend.gelu(x)));
 * ```
 */
export class ReferenceBackend implements Backend {
  readonly name = "reference";

  supportsOp(_op: OpName): boolean {
    return true;
  }

  upload(data: Float32Array, shape: readonly number[]): Tensor {
    if (data.length !== sizeOf(shape)) {
      throw new ShapeError(`upload of ${data.length} values into shape [${shape}]`);
    }
    return new ReferenceTensor(new Float32Array(data), [...shape]);
  }

  read(tensor: Tensor): Promise<Float32Array> {
    return Promise.resolve(new Float32Array(this.#own(tensor).data));
  }

  release(tensor: Tensor): void {
    this.#own(tensor).released = true;
  }

  prepareLinear(source: LinearSource, options?: { precision?: Precision }): LinearWeights {
    checkLinearSource(source);
    const precision = options?.precision ?? "f32";
    if (precision === "int8") {
      return this.prepareQuantizedLinear(quantizePerChannel(source));
    }
    return new ReferenceLinear(
      new Float32Array(source.weight),
      source.bias ? new Float32Array(source.bias) : null,
      source.outFeatures,
      source.inFeatures,
      "f32",
    );
  }

  prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights {
    const { outFeatures, inFeatures } = source;
    const weight = new Float32Array(outFeatures * inFeatures);
    for (let n = 0; n < outFeatures; n++) {
      const scale = source.scales[n];
      for (let k = 0; k < inFeatures; k++) {
        weight[n * inFeatures + k] = source.weight[n * inFeatures + k] * scale;
      }
    }
    return new ReferenceLinear(
      weight,
      source.bias ? new Float32Array(source.bias) : null,
      outFeatures,
      inFeatures,
      "int8",
    );
  }

  releaseLinear(_weights: LinearWeights): void {}

  linear(x: Tensor, weights: LinearWeights, activation: Activation = "none"): Tensor {
    const input = this.#own(x);
    const w = weights as ReferenceLinear;
    const [rows, cols] = matrixShape(input, "linear");
    if (cols !== w.inFeatures) {
      throw new ShapeError(`linear expects ${w.inFeatures} input columns, got ${cols}`);
    }
    const n = w.outFeatures;
    const out = new Float32Array(rows * n);
    for (let m = 0; m < rows; m++) {
      for (let j = 0; j < n; j++) {
        let sum = w.bias ? w.bias[j] : 0;
        for (let k = 0; k < cols; k++) sum += input.data[m * cols + k] * w.weight[j * cols + k];
        out[m * n + j] = activation === "gelu" ? geluScalar(sum) : sum;
      }
    }
    return new ReferenceTensor(out, [rows, n]);
  }

  layerNorm(x: Tensor, gamma: Tensor, beta: Tensor | null, eps: number): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "layerNorm");
    const g = this.#vector(gamma, cols, "layerNorm gamma");
    const b = beta ? this.#vector(beta, cols, "layerNorm beta") : null;
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      const base = r * cols;
      let mean = 0;
      for (let c = 0; c < cols; c++) mean += input.data[base + c];
      mean /= cols;
      let variance = 0;
      for (let c = 0; c < cols; c++) variance += (input.data[base + c] - mean) ** 2;
      variance /= cols;
      const inv = 1 / Math.sqrt(variance + eps);
      for (let c = 0; c < cols; c++) {
        out[base + c] = (input.data[base + c] - mean) * inv * g[c] + (b ? b[c] : 0);
      }
    }
    return new ReferenceTensor(out, [rows, cols]);
  }

  rmsNorm(x: Tensor, gamma: Tensor, groupSize: number, eps: number): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "rmsNorm");
    if (groupSize <= 0 || cols % groupSize !== 0) {
      throw new ShapeError(`rmsNorm group size ${groupSize} does not divide ${cols} columns`);
    }
    const g = this.#vector(gamma, cols, "rmsNorm gamma");
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let start = 0; start < cols; start += groupSize) {
        const base = r * cols + start;
        let squares = 0;
        for (let c = 0; c < groupSize; c++) squares += input.data[base + c] ** 2;
        const inv = 1 / Math.sqrt(squares / groupSize + eps);
        for (let c = 0; c < groupSize; c++) {
          out[base + c] = input.data[base + c] * inv * g[start + c];
        }
      }
    }
    return new ReferenceTensor(out, [rows, cols]);
  }

  gelu(x: Tensor): Tensor {
    const input = this.#own(x);
    return new ReferenceTensor(input.data.map(geluScalar), input.shape);
  }

  add(a: Tensor, b: Tensor): Tensor {
    const left = this.#own(a);
    const right = this.#own(b);
    if (left.data.length !== right.data.length || left.shape.join() !== right.shape.join()) {
      throw new ShapeError(`add of [${left.shape}] and [${right.shape}]`);
    }
    return new ReferenceTensor(left.data.map((v, i) => v + right.data[i]), left.shape);
  }

  softmax(x: Tensor): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "softmax");
    const out = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      softmaxRow(input.data.subarray(r * cols, (r + 1) * cols), out.subarray(r * cols));
    }
    return new ReferenceTensor(out, [rows, cols]);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttentionResult {
    const query = this.#own(q);
    const key = this.#own(k);
    const value = this.#own(v);
    const { heads, headDim, scale } = options;
    const width = heads * headDim;
    const [queries, qCols] = matrixShape(query, "attention q");
    const [keys, kCols] = matrixShape(key, "attention k");
    const [values, vCols] = matrixShape(value, "attention v");
    const qOffset = options.qOffset ?? 0;
    const kOffset = options.kOffset ?? 0;
    const vOffset = options.vOffset ?? 0;
    if (qOffset + width > qCols || kOffset + width > kCols || vOffset + width > vCols) {
      throw new ShapeError(`attention columns out of range for ${heads}×${headDim}`);
    }
    if (values !== keys) throw new ShapeError(`attention has ${keys} keys but ${values} values`);
    const querySegments = options.querySegments ?? new Int32Array(queries);
    const keySegments = options.keySegments ??
      (options.querySegments && queries === keys ? options.querySegments : new Int32Array(keys));
    checkSegments(querySegments, queries, "query");
    checkSegments(keySegments, keys, "key");

    const out = new Float32Array(queries * width);
    const cls = options.returnClsAttention ? new Float32Array(keys * heads) : null;
    const logits = new Float64Array(keys);
    const probabilities = new Float64Array(keys);
    for (let i = 0; i < queries; i++) {
      const segment = querySegments[i];
      const isCls = cls !== null && (i === 0 || querySegments[i - 1] !== segment);
      for (let h = 0; h < heads; h++) {
        let max = -Infinity;
        for (let j = 0; j < keys; j++) {
          if (keySegments[j] !== segment) continue;
          let dot = 0;
          for (let d = 0; d < headDim; d++) {
            dot += query.data[i * qCols + qOffset + h * headDim + d] *
              key.data[j * kCols + kOffset + h * headDim + d];
          }
          logits[j] = dot * scale;
          if (logits[j] > max) max = logits[j];
        }
        let total = 0;
        for (let j = 0; j < keys; j++) {
          probabilities[j] = keySegments[j] === segment ? Math.exp(logits[j] - max) : 0;
          total += probabilities[j];
        }
        for (let d = 0; d < headDim; d++) {
          let sum = 0;
          for (let j = 0; j < keys; j++) {
            if (probabilities[j] !== 0) {
              sum += probabilities[j] * value.data[j * vCols + vOffset + h * headDim + d];
            }
          }
          out[i * width + h * headDim + d] = total > 0 ? sum / total : 0;
        }
        if (isCls) {
          for (let j = 0; j < keys; j++) {
            if (keySegments[j] === segment) cls![j * heads + h] = probabilities[j] / total;
          }
        }
      }
    }
    const result: AttentionResult = { output: new ReferenceTensor(out, [queries, width]) };
    if (cls) result.clsAttention = new ReferenceTensor(cls, [keys, heads]);
    return result;
  }

  gatherRows(x: Tensor, rows: Int32Array): Tensor {
    const input = this.#own(x);
    const [count, cols] = matrixShape(input, "gatherRows");
    const out = new Float32Array(rows.length * cols);
    rows.forEach((row, i) => {
      if (row < 0 || row >= count) throw new ShapeError(`gatherRows row ${row} of ${count}`);
      out.set(input.data.subarray(row * cols, (row + 1) * cols), i * cols);
    });
    return new ReferenceTensor(out, [rows.length, cols]);
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
    const out = new Float32Array(rows * cols);
    let offset = 0;
    for (const input of inputs) {
      out.set(input.data, offset);
      offset += input.data.length;
    }
    return new ReferenceTensor(out, [rows, cols]);
  }

  segmentMean(x: Tensor, offsets: Int32Array): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "segmentMean");
    const segments = offsets.length - 1;
    if (segments < 1 || offsets[0] !== 0 || offsets[segments] !== rows) {
      throw new ShapeError(`segmentMean offsets must run from 0 to ${rows}`);
    }
    const out = new Float32Array(segments * cols);
    for (let s = 0; s < segments; s++) {
      const start = offsets[s];
      const end = offsets[s + 1];
      if (end <= start) throw new ShapeError(`segmentMean segment ${s} is empty`);
      for (let c = 0; c < cols; c++) {
        let sum = 0;
        for (let r = start; r < end; r++) sum += input.data[r * cols + c];
        out[s * cols + c] = sum / (end - start);
      }
    }
    return new ReferenceTensor(out, [segments, cols]);
  }

  headNorms(x: Tensor, heads: number, headDim: number, columnOffset = 0): Tensor {
    const input = this.#own(x);
    const [rows, cols] = matrixShape(input, "headNorms");
    if (columnOffset + heads * headDim > cols) {
      throw new ShapeError(`headNorms columns out of range for ${heads}×${headDim}`);
    }
    const out = new Float32Array(rows * heads);
    for (let r = 0; r < rows; r++) {
      for (let h = 0; h < heads; h++) {
        let squares = 0;
        for (let d = 0; d < headDim; d++) {
          squares += input.data[r * cols + columnOffset + h * headDim + d] ** 2;
        }
        out[r * heads + h] = Math.sqrt(squares);
      }
    }
    return new ReferenceTensor(out, [rows, heads]);
  }

  dispose(): void {}

  #own(tensor: Tensor): ReferenceTensor {
    if (!(tensor instanceof ReferenceTensor)) {
      throw new ShapeError(`a ${tensor.backend} tensor was passed to the reference backend`);
    }
    if (tensor.released) throw new ShapeError("a released tensor was used");
    return tensor;
  }

  #vector(tensor: Tensor, length: number, what: string): Float32Array {
    const own = this.#own(tensor);
    if (own.data.length !== length) {
      throw new ShapeError(`${what} has ${own.data.length} values, expected ${length}`);
    }
    return own.data;
  }
}

function softmaxRow(input: Float32Array, out: Float32Array): void {
  let max = -Infinity;
  for (const value of input) if (value > max) max = value;
  let total = 0;
  for (let i = 0; i < input.length; i++) total += Math.exp(input[i] - max);
  for (let i = 0; i < input.length; i++) out[i] = Math.exp(input[i] - max) / total;
}

/** Checks that a linear source's arrays match its declared sizes. */
export function checkLinearSource(source: LinearSource | QuantizedLinearSource): void {
  const { outFeatures, inFeatures } = source;
  if (source.weight.length !== outFeatures * inFeatures) {
    throw new ShapeError(
      `linear weight has ${source.weight.length} values, expected ${outFeatures}×${inFeatures}`,
    );
  }
  if (source.bias && source.bias.length !== outFeatures) {
    throw new ShapeError(`linear bias has ${source.bias.length} values, expected ${outFeatures}`);
  }
}

/** Symmetric int8 quantization with one scale per output channel (row of `weight`). */
export function quantizePerChannel(source: LinearSource): QuantizedLinearSource {
  const { outFeatures, inFeatures } = source;
  const weight = new Int8Array(outFeatures * inFeatures);
  const scales = new Float32Array(outFeatures);
  for (let n = 0; n < outFeatures; n++) {
    let maxAbs = 0;
    for (let k = 0; k < inFeatures; k++) {
      maxAbs = Math.max(maxAbs, Math.abs(source.weight[n * inFeatures + k]));
    }
    const scale = maxAbs > 0 ? maxAbs / 127 : 1;
    scales[n] = scale;
    for (let k = 0; k < inFeatures; k++) {
      weight[n * inFeatures + k] = Math.max(
        -127,
        Math.min(127, Math.round(source.weight[n * inFeatures + k] / scale)),
      );
    }
  }
  return { weight, scales, bias: source.bias, outFeatures, inFeatures };
}
