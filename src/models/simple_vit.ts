/**
 * SimpleViT ("Better plain ViT baselines for ImageNet-1k", Beyer et al., 2022,
 * arXiv 2205.01580), as vit-pytorch's `simple_vit.py` (commit 69d24fe) builds it: fixed
 * 2-D sin-cos positions, no CLS token, mean pooling, an attention output projection
 * without bias and a plain linear head. It is a {@link VitConfig} with those choices, so
 * it runs on the same engine as every other ViT.
 *
 * @module
 */

import {
  kwargsReader,
  readNormLinearNormEmbedding,
  readVitPytorchBlock,
  readVitPytorchGeometry,
  TORCH_LAYER_NORM_EPS,
} from "../loaders/vit_pytorch.ts";
import type { JsonObject } from "../loaders/config.ts";
import type { WeightStore } from "../loaders/weights.ts";
import { EdgeVitError } from "../errors.ts";
import type { VitConfig, VitWeights } from "./vit.ts";

/**
 * vit-pytorch's `posemb_sincos_2d`: for patch (y, x) of a `gridH × gridW` grid, the row
 * `[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]` with `ω_i = 1 / 10000^(i / (dim/4 - 1))`.
 * Each step is rounded to float32 as PyTorch computes it in float32.
 *
 * @returns `[gridH · gridW, dim]`
 *
 * @example
 * ```ts
 * import { sincos2dPositions } from "./simple_vit.ts";
 * const positions = sincos2dPositions(2, 2, 8);
 * console.log(positions.length); // 32
 * ```
 */
export function sincos2dPositions(
  gridH: number,
  gridW: number,
  dim: number,
  temperature = 10000,
): Float32Array {
  if (dim % 4 !== 0 || dim < 8) {
    throw new EdgeVitError(
      "invalid_config",
      `sin-cos positions need a dim that is a multiple of 4 and at least 8, got ${dim}`,
    );
  }
  const quarter = dim / 4;
  const f = Math.fround;
  const omega = new Float32Array(quarter);
  for (let i = 0; i < quarter; i++) {
    omega[i] = f(1 / f(temperature ** f(i / (quarter - 1))));
  }
  const out = new Float32Array(gridH * gridW * dim); // [patches, dim]
  for (let y = 0; y < gridH; y++) {
    for (let x = 0; x < gridW; x++) {
      const row = (y * gridW + x) * dim;
      for (let i = 0; i < quarter; i++) {
        const xw = f(x * omega[i]);
        const yw = f(y * omega[i]);
        out[row + i] = Math.sin(xw);
        out[row + quarter + i] = Math.cos(xw);
        out[row + 2 * quarter + i] = Math.sin(yw);
        out[row + 3 * quarter + i] = Math.cos(yw);
      }
    }
  }
  return out;
}

/**
 * Maps a vit-pytorch `SimpleViT` manifest and state dict onto the canonical ViT.
 *
 * @throws {EdgeVitError} `invalid_config` / `invalid_checkpoint`
 */
export function simpleVitFromVitPytorch(
  manifest: JsonObject,
  store: WeightStore,
  source = "config.json",
): { config: VitConfig; weights: VitWeights } {
  const geometry = readVitPytorchGeometry(kwargsReader(manifest, source));
  const config: VitConfig = {
    ...geometry,
    classToken: false,
    distillationToken: false,
    pool: "mean",
    finalNorm: "tokens",
    head: "single",
    preNorm: false,
    qkvBias: false,
    attentionProjection: true,
    projectionBias: false,
    layerNormEps: TORCH_LAYER_NORM_EPS,
    patchEmbedding: "norm_linear_norm",
  };
  const weights: VitWeights = {
    patchEmbedding: readNormLinearNormEmbedding(store, geometry),
    prefixTokens: null,
    patchPositions: sincos2dPositions(
      geometry.imageHeight / geometry.patchHeight,
      geometry.imageWidth / geometry.patchWidth,
      geometry.dim,
    ),
    preNorm: null,
    blocks: Array.from(
      { length: geometry.depth },
      (_, i) =>
        readVitPytorchBlock(store, `transformer.layers.${i}`, geometry, {
          outName: "to_out",
          fc2Index: 3,
          projection: true,
          projectionBias: false,
        }),
    ),
    finalNorm: store.layerNorm("transformer.norm", geometry.dim),
    heads: [store.linear("linear_head", geometry.numClasses, geometry.dim)],
  };
  return { config, weights };
}
