/**
 * edgevit's int8 checkpoint format, and the helpers loaders use to read it (the quantizer
 * that writes it is `src/loaders/quantize_cli.ts`).
 *
 * A quantized folder is an ordinary checkpoint folder of any supported layout
 * (vit-pytorch manifest, Hugging Face, timm) with two differences:
 *
 * - every weight the model uses as a linear layer (qkv, attention output, MLP, patch
 *   embedding, head; a conv patch embedding counts, it is a linear layer over patches) is
 *   stored as `I8` under its own name, symmetric, with one float32 scale per output
 *   channel beside it: `blocks.0.attn.qkv.weight` (I8 `[out, in]`) and
 *   `blocks.0.attn.qkv.weight_scale` (F32 `[out]`), real weight = scale × int8;
 * - config.json carries the marker
 *   `"quantization": {"method": "w8-per-channel", "activations": "dynamic-per-token"}`.
 *
 * Everything else (norms, biases, tokens, positions) stays float32. The names stay the
 * library's own, so the same loaders read both; they take linear weights through
 * {@link WeightStore.linearWeight}, which hands out int8 with its scales, and the load-time
 * rewrites (q/k/v fusion, DeiT's ½ head scaling, timm layer-scale folding in
 * `src/models/vit.ts`; conv → patch linear and NaViT's row splits here) keep int8 weights
 * int8. Every rewrite except layer-scale folding commutes exactly with per-row
 * quantization, so a saved checkpoint gives the same int8 weights and scales as
 * quantizing at load (folding differs only in float rounding).
 *
 * `loadModel` sees the marker and runs the model at `"int8"`: the float weights are never
 * read, so loading needs a quarter of the bytes. `deno task quantize` writes such a folder
 * (`src/loaders/quantize_cli.ts`).
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { convToPatchLinear, type LinearParams } from "../models/vit.ts";
import { isObject, type JsonObject } from "./config.ts";
import { isQuantizedMatrix, type LinearMatrix, type WeightStore } from "./weights.ts";

/** The config.json marker of an int8 checkpoint (`"quantization": {...}`). */
export interface QuantizationInfo {
  /** Weights: symmetric int8, one scale per output channel. */
  method: "w8-per-channel";
  /** Activations: quantized per token at run time by the backend's int8 GEMM. */
  activations: "dynamic-per-token";
}

/** The marker edgevit writes. */
export const INT8_QUANTIZATION: Readonly<QuantizationInfo> = Object.freeze({
  method: "w8-per-channel",
  activations: "dynamic-per-token",
});

/**
 * The quantization marker of a config.json, or null for a float checkpoint.
 *
 * @throws {EdgeVitError} `unsupported` for a method or activation scheme edgevit does not run
 *
 * @example
 * ```ts
 * import { readQuantization } from "./quantized.ts";
 * console.log(readQuantization({ quantization: { method: "w8-per-channel" } })?.method);
 * // "w8-per-channel"
 * ```
 */
export function readQuantization(
  config: JsonObject,
  source = "config.json",
): QuantizationInfo | null {
  const marker = config.quantization;
  if (marker === undefined || marker === null) return null;
  if (!isObject(marker)) {
    throw new EdgeVitError("invalid_config", `${source}: "quantization" must be an object`);
  }
  if (marker.method !== INT8_QUANTIZATION.method) {
    throw new EdgeVitError(
      "unsupported",
      `${source}: quantization method ${
        JSON.stringify(marker.method)
      } is not supported (edgevit writes and reads "${INT8_QUANTIZATION.method}")`,
    );
  }
  const activations = marker.activations ?? INT8_QUANTIZATION.activations;
  if (activations !== INT8_QUANTIZATION.activations) {
    throw new EdgeVitError(
      "unsupported",
      `${source}: quantized activations ${
        JSON.stringify(activations)
      } are not supported (only "${INT8_QUANTIZATION.activations}")`,
    );
  }
  return { ...INT8_QUANTIZATION };
}

/**
 * Whether a loaded checkpoint is int8: marked so in its config, or holding int8 weights
 * with scales (a marker-less file still runs at int8 rather than claiming float32).
 *
 * @example
 * ```ts
 * import { isQuantizedCheckpoint } from "./quantized.ts";
 * import { WeightStore } from "./weights.ts";
 * console.log(isQuantizedCheckpoint({}, WeightStore.fromHost({}))); // false
 * ```
 */
export function isQuantizedCheckpoint(
  config: JsonObject,
  weights: WeightStore,
  source?: string,
): boolean {
  if (readQuantization(config, source)) return true;
  return weights.names().some((name) => weights.isQuantized(name));
}

// ─── Load-time rewrites on float or int8 linear layers ─────────────────────────────

/**
 * A linear layer from a weight matrix `[out, in]` and its bias.
 *
 * @example
 * ```ts
 * import { linearFromMatrix } from "./quantized.ts";
 * const layer = linearFromMatrix({ shape: [1, 2], data: new Int8Array([127, -3]), scales: new Float32Array([0.01]) }, null);
 * console.log(layer.outFeatures, layer.inFeatures); // 1 2
 * ```
 */
export function linearFromMatrix(matrix: LinearMatrix, bias: Float32Array | null): LinearParams {
  const [outFeatures, inFeatures] = matrix.shape;
  if (isQuantizedMatrix(matrix)) {
    return { weight: matrix.data, scales: matrix.scales, bias, outFeatures, inFeatures };
  }
  return { weight: matrix.data, bias, outFeatures, inFeatures };
}

/**
 * Rows `from … to-1` of a `[out, in]` weight matrix (a view; per-row scales come along).
 *
 * @example
 * ```ts
 * import { matrixRows } from "./quantized.ts";
 * const kv = { shape: [4, 2], data: new Float32Array(8).map((_, i) => i) };
 * console.log(matrixRows(kv, 2, 4).data); // Float32Array [4, 5, 6, 7]
 * ```
 */
export function matrixRows(matrix: LinearMatrix, from: number, to: number): LinearMatrix {
  const cols = matrix.shape[1];
  const shape = [to - from, cols];
  if (isQuantizedMatrix(matrix)) {
    return {
      shape,
      data: matrix.data.subarray(from * cols, to * cols),
      scales: matrix.scales.subarray(from, to),
    };
  }
  return { shape, data: matrix.data.subarray(from * cols, to * cols) };
}

/**
 * Stacks `[out_i, in]` weight matrices into `[Σ out_i, in]` (NaViT's q with k). Per-row
 * scales make this exact for int8.
 *
 * @example
 * ```ts
 * import { stackMatrices } from "./quantized.ts";
 * const q = { shape: [1, 2], data: new Int8Array([1, 2]), scales: new Float32Array([0.5]) };
 * const k = { shape: [1, 2], data: new Int8Array([3, 4]), scales: new Float32Array([0.25]) };
 * console.log(stackMatrices([q, k]).shape); // [2, 2]
 * ```
 *
 * @throws {EdgeVitError} `invalid_checkpoint` when float and int8 parts are mixed
 */
export function stackMatrices(parts: readonly LinearMatrix[]): LinearMatrix {
  const cols = parts[0].shape[1];
  const rows = parts.reduce((sum, part) => sum + part.shape[0], 0);
  const quantized = parts.filter(isQuantizedMatrix);
  if (quantized.length === 0) {
    const data = new Float32Array(rows * cols);
    let offset = 0;
    for (const part of parts) {
      data.set(part.data, offset);
      offset += part.data.length;
    }
    return { shape: [rows, cols], data };
  }
  if (quantized.length !== parts.length) {
    throw new EdgeVitError(
      "invalid_checkpoint",
      "a fused linear layer mixes int8 and float32 parts; quantize all of them or none",
    );
  }
  const data = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  let offset = 0;
  let row = 0;
  for (const part of quantized) {
    data.set(part.data, offset);
    scales.set(part.scales, row);
    offset += part.data.length;
    row += part.shape[0];
  }
  return { shape: [rows, cols], data, scales };
}

/**
 * A conv patch embedding `[dim, c, ph, pw]` as a linear layer over `patchify`'s
 * `(p1 p2 c)` columns, like {@link convToPatchLinear}; int8 rows are permuted the same
 * way and keep their scales.
 *
 * @example
 * ```ts
 * import { patchLinearFromConv } from "./quantized.ts";
 * // dim 1, 2 channels, 1×2 patches: [c0p0, c0p1, c1p0, c1p1] → [c0p0, c1p0, c0p1, c1p1]
 * const conv = { shape: [1, 2, 1, 2], data: new Int8Array([1, 2, 3, 4]), scales: new Float32Array([1]) };
 * console.log(patchLinearFromConv(conv, null, 1, 2, 1, 2).weight); // Int8Array [1, 3, 2, 4]
 * ```
 */
export function patchLinearFromConv(
  conv: LinearMatrix,
  bias: Float32Array | null,
  dim: number,
  channels: number,
  patchHeight: number,
  patchWidth: number,
): LinearParams {
  const inFeatures = channels * patchHeight * patchWidth;
  if (!isQuantizedMatrix(conv)) {
    return {
      weight: convToPatchLinear(conv.data, dim, channels, patchHeight, patchWidth),
      bias,
      outFeatures: dim,
      inFeatures,
    };
  }
  // One row's permutation, read off the float rewrite itself so the layouts cannot drift.
  const order = convToPatchLinear(
    Float32Array.from({ length: inFeatures }, (_, i) => i),
    1,
    channels,
    patchHeight,
    patchWidth,
  );
  const weight = new Int8Array(dim * inFeatures);
  for (let d = 0; d < dim; d++) {
    const row = d * inFeatures;
    for (let j = 0; j < inFeatures; j++) weight[row + j] = conv.data[row + order[j]];
  }
  return { weight, scales: conv.scales, bias, outFeatures: dim, inFeatures };
}
