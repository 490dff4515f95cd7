/**
 * vit-pytorch checkpoints (lucidrains/vit-pytorch, commit 69d24fe). The library saves
 * bare state dicts, so a folder carries a small manifest of this project's choosing:
 *
 * ```json
 * {"library": "vit-pytorch", "architecture": "ViT", "kwargs": {"image_size": 224, ...},
 *  "labels": ["cat", ...], "preprocess": {"mean": [...], "std": [...], ...}}
 * ```
 *
 * `kwargs` are the constructor's keyword arguments (`image_size` / `patch_size` may be an
 * integer or `[h, w]`). This file maps `vit.ViT` onto the canonical {@link VitConfig};
 * `SimpleViT` lives in `src/models/simple_vit.ts`, the others in their model files.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import {
  addRows,
  type BlockWeights,
  patchCount,
  type VitConfig,
  type VitWeights,
} from "../models/vit.ts";
import { ConfigReader, type JsonObject } from "./config.ts";
import type { WeightStore } from "./weights.ts";

/** vit-pytorch's default LayerNorm epsilon (`nn.LayerNorm`). */
export const TORCH_LAYER_NORM_EPS = 1e-5;

/** A reader over a vit-pytorch manifest's `kwargs`. */
export function kwargsReader(config: JsonObject, source: string): ConfigReader {
  return new ConfigReader(
    new ConfigReader(config, source).obj("kwargs") ?? {},
    `${source} kwargs`,
  );
}

/** The geometry every vit-pytorch ViT variant shares (`image_size`, `patch_size`, ...). */
export interface VitPytorchGeometry {
  imageHeight: number;
  imageWidth: number;
  patchHeight: number;
  patchWidth: number;
  channels: number;
  dim: number;
  depth: number;
  heads: number;
  headDim: number;
  mlpDim: number;
  numClasses: number;
}

/**
 * Reads the constructor arguments common to vit-pytorch's ViTs, with the library's
 * defaults (`channels` 3, `dim_head` 64).
 *
 * @throws {EdgeVitError} `invalid_config`
 */
export function readVitPytorchGeometry(kwargs: ConfigReader): VitPytorchGeometry {
  const [imageHeight, imageWidth] = kwargs.pair("image_size");
  const [patchHeight, patchWidth] = kwargs.pair("patch_size");
  if (imageHeight % patchHeight !== 0 || imageWidth % patchWidth !== 0) {
    throw new EdgeVitError(
      "invalid_config",
      `${kwargs.where}: image ${imageHeight}×${imageWidth} is not divisible by patch ${patchHeight}×${patchWidth}`,
    );
  }
  return {
    imageHeight,
    imageWidth,
    patchHeight,
    patchWidth,
    channels: kwargs.int("channels", 3),
    dim: kwargs.int("dim"),
    depth: kwargs.int("depth"),
    heads: kwargs.int("heads"),
    headDim: kwargs.int("dim_head", 64),
    mlpDim: kwargs.int("mlp_dim"),
    numClasses: kwargs.int("num_classes"),
  };
}

/**
 * Takes vit-pytorch's `to_patch_embedding` (`Rearrange`, LayerNorm, Linear, LayerNorm:
 * indices 1, 2, 3).
 */
export function readNormLinearNormEmbedding(
  store: WeightStore,
  geometry: VitPytorchGeometry,
  prefix = "to_patch_embedding",
): VitWeights["patchEmbedding"] {
  const patchDim = geometry.patchHeight * geometry.patchWidth * geometry.channels;
  return {
    inputNorm: store.layerNorm(`${prefix}.1`, patchDim),
    linear: store.linear(`${prefix}.2`, geometry.dim, patchDim),
    outputNorm: store.layerNorm(`${prefix}.3`, geometry.dim),
  };
}

/**
 * Takes one vit-pytorch `Transformer` layer: `layers.i.0` Attention (`norm`, `to_qkv`
 * without bias, `to_out.0` or `to_out` when given) and `layers.i.1` FeedForward
 * (`net.0` LayerNorm, `net.<fc1>` Linear, GELU, `net.<fc2>` Linear).
 *
 * @param options.outName `"to_out.0"` (ViT: Linear + Dropout) or `"to_out"` (SimpleViT)
 * @param options.fc2Index 4 for ViT (Dropout in between), 3 for SimpleViT
 * @param options.projection whether the attention has an output projection
 * @param options.projectionBias whether that projection has a bias
 */
export function readVitPytorchBlock(
  store: WeightStore,
  prefix: string,
  geometry: VitPytorchGeometry,
  options: { outName: string; fc2Index: number; projection: boolean; projectionBias: boolean },
): BlockWeights {
  const { dim, mlpDim } = geometry;
  const width = geometry.heads * geometry.headDim;
  return {
    norm1: store.layerNorm(`${prefix}.0.norm`, dim),
    qkv: store.linear(`${prefix}.0.to_qkv`, 3 * width, dim, false),
    proj: options.projection
      ? store.linear(`${prefix}.0.${options.outName}`, dim, width, options.projectionBias)
      : null,
    norm2: store.layerNorm(`${prefix}.1.net.0`, dim),
    fc1: store.linear(`${prefix}.1.net.1`, mlpDim, dim),
    fc2: store.linear(`${prefix}.1.net.${options.fc2Index}`, dim, mlpDim),
  };
}

/**
 * Maps a vit-pytorch `ViT` (vit.py) manifest and state dict onto the canonical ViT.
 *
 * @throws {EdgeVitError} `invalid_config` for bad kwargs, `invalid_checkpoint` for
 * missing, extra or misshapen tensors
 *
 * @example
 * ```ts
 * import { parseSafetensors } from "./safetensors.ts";
 * import { WeightStore } from "./weights.ts";
 * import { vitFromVitPytorch } from "./vit_pytorch.ts";
 * const dir = "../shared/fixtures/parity/vitpytorch-vit-cls";
 * const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const { config: vit } = vitFromVitPytorch(config, WeightStore.fromSafetensors(file.tensors.values()));
 * console.log(vit.pool, vit.dim); // "cls" 64
 * ```
 */
export function vitFromVitPytorch(
  manifest: JsonObject,
  store: WeightStore,
  source = "config.json",
): { config: VitConfig; weights: VitWeights } {
  const kwargs = kwargsReader(manifest, source);
  const geometry = readVitPytorchGeometry(kwargs);
  const pool = kwargs.oneOf("pool", ["cls", "mean"] as const, "cls");
  const projection = !(geometry.heads === 1 && geometry.headDim === geometry.dim);
  const config: VitConfig = {
    ...geometry,
    classToken: pool === "cls",
    distillationToken: false,
    pool,
    finalNorm: "tokens",
    head: "single",
    preNorm: false,
    qkvBias: false,
    attentionProjection: projection,
    projectionBias: true,
    layerNormEps: TORCH_LAYER_NORM_EPS,
    patchEmbedding: "norm_linear_norm",
  };
  const { dim } = geometry;
  const prefix = pool === "cls" ? 1 : 0;
  const patches = patchCount(config);
  // vit-pytorch keeps a [0, dim] cls_token under mean pooling; it holds no values.
  const cls = store.getSqueezed("cls_token", [prefix, dim]).data;
  const positions = store.getSqueezed("pos_embedding", [prefix + patches, dim]).data;
  const weights: VitWeights = {
    patchEmbedding: readNormLinearNormEmbedding(store, geometry),
    prefixTokens: prefix > 0 ? addRows(cls, positions.subarray(0, prefix * dim)) : null,
    patchPositions: positions.slice(prefix * dim),
    preNorm: null,
    blocks: Array.from(
      { length: geometry.depth },
      (_, i) =>
        readVitPytorchBlock(store, `transformer.layers.${i}`, geometry, {
          outName: "to_out.0",
          fc2Index: 4,
          projection,
          projectionBias: true,
        }),
    ),
    finalNorm: store.layerNorm("transformer.norm", dim),
    heads: [store.linear("mlp_head", geometry.numClasses, dim)],
  };
  return { config, weights };
}
