/**
 * Test helper: a reference backend that counts live tensors and packed linears, so
 * tests can check that a forward pass releases every intermediate it creates and that
 * `dispose()` frees every parameter.
 *
 * @module
 */

import type {
  Activation,
  AttentionOptions,
  AttentionResult,
  LinearSource,
  LinearWeights,
  Precision,
  QuantizedLinearSource,
  Tensor,
} from "../../src/backends/backend.ts";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";

/** {@link ReferenceBackend} with live-object counters. */
export class CountingBackend extends ReferenceBackend {
  liveTensors = 0;
  liveLinears = 0;
  #made(tensor: Tensor): Tensor {
    this.liveTensors++;
    return tensor;
  }

  override upload(data: Float32Array, shape: readonly number[]): Tensor {
    return this.#made(super.upload(data, shape));
  }
  override release(tensor: Tensor): void {
    super.release(tensor);
    this.liveTensors--;
  }
  #inPrepare = false;
  override prepareLinear(source: LinearSource, options?: { precision?: Precision }) {
    // prepareLinear("int8") calls prepareQuantizedLinear: count that layer once.
    this.#inPrepare = true;
    try {
      const made = super.prepareLinear(source, options);
      this.liveLinears++;
      return made;
    } finally {
      this.#inPrepare = false;
    }
  }
  override prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights {
    const made = super.prepareQuantizedLinear(source);
    if (!this.#inPrepare) this.liveLinears++;
    return made;
  }
  override releaseLinear(weights: LinearWeights): void {
    super.releaseLinear(weights);
    this.liveLinears--;
  }
  override linear(x: Tensor, weights: LinearWeights, activation?: Activation): Tensor {
    return this.#made(super.linear(x, weights, activation));
  }
  override layerNorm(x: Tensor, gamma: Tensor, beta: Tensor | null, eps: number): Tensor {
    return this.#made(super.layerNorm(x, gamma, beta, eps));
  }
  override rmsNorm(x: Tensor, gamma: Tensor, groupSize: number, eps: number): Tensor {
    return this.#made(super.rmsNorm(x, gamma, groupSize, eps));
  }
  override gelu(x: Tensor): Tensor {
    return this.#made(super.gelu(x));
  }
  override add(a: Tensor, b: Tensor): Tensor {
    return this.#made(super.add(a, b));
  }
  override softmax(x: Tensor): Tensor {
    return this.#made(super.softmax(x));
  }
  override attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions): AttentionResult {
    const result = super.attention(q, k, v, options);
    this.#made(result.output);
    if (result.clsAttention) this.#made(result.clsAttention);
    return result;
  }
  override gatherRows(x: Tensor, rows: Int32Array): Tensor {
    return this.#made(super.gatherRows(x, rows));
  }
  override concatRows(parts: readonly Tensor[]): Tensor {
    return this.#made(super.concatRows(parts));
  }
  override segmentMean(x: Tensor, offsets: Int32Array): Tensor {
    return this.#made(super.segmentMean(x, offsets));
  }
  override headNorms(x: Tensor, heads: number, headDim: number, columnOffset?: number): Tensor {
    return this.#made(super.headNorms(x, heads, headDim, columnOffset));
  }
}
