/**
 * timm checkpoints: `vit_*`, `deit_*` (incl. distilled) and `deit3_*` folders as the
 * Hub has them (`config.json` with `architecture`, optional `model_args`,
 * `pretrained_cfg`, `label_names`; `model.safetensors` with timm's names).
 *
 * The model name implies what `model_args` leaves out: the width word (tiny, small,
 * medium, base, large, huge) gives `embed_dim` / `depth` / `num_heads`, `patch16_224`
 * the patch and image size, `distilled` a distillation token and head, `deit3` layer
 * scale and patch-only positions. Layer scales (`ls1.gamma`, `ls2.gamma`) are folded
 * into the linear layer before them at load.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import {
  type BlockWeights,
  foldLayerScale,
  type LinearParams,
  patchCount,
  scaleLinear,
  type VitConfig,
  type VitWeights,
} from "../models/vit.ts";
import { ConfigReader, type JsonObject } from "./config.ts";
import { patchLinearFromConv } from "./quantized.ts";
import type { WeightStore } from "./weights.ts";

/** timm's ViT LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`). */
export const TIMM_LAYER_NORM_EPS = 1e-6;

/** `embed_dim`, `depth`, `num_heads` of timm's width names. */
export const TIMM_WIDTHS: Readonly<Record<string, readonly [number, number, number]>> = {
  tiny: [192, 12, 3],
  small: [384, 12, 6],
  medium: [512, 12, 8],
  base: [768, 12, 12],
  large: [1024, 24, 16],
  huge: [1280, 32, 16],
};

/** What a timm model name says. */
export interface TimmName {
  family: "vit" | "deit" | "deit3";
  width: string;
  distilled: boolean;
  patch: number;
  imageSize: number;
}

const NAME =
  /^(vit|deit|deit3)_([a-z]+)_(distilled_)?patch(\d+)_(\d+)(_in21k|_in21ft1k|_miil|_sam)?$/;

/**
 * Parses a timm ViT model name (a `.pretrained_tag` suffix is ignored).
 *
 * @returns the parts, or null when the name is not a plain ViT / DeiT name
 *
 * @example
 * ```ts
 * import { parseTimmName } from "./timm.ts";
 * console.log(parseTimmName("deit_tiny_distilled_patch16_224.fb_in1k"));
 * // { family: "deit", width: "tiny", distilled: true, patch: 16, imageSize: 224 }
 * ```
 */
export function parseTimmName(architecture: string): TimmName | null {
  const match = NAME.exec(architecture.split(".")[0]);
  if (!match || !(match[2] in TIMM_WIDTHS)) return null;
  return {
    family: match[1] as TimmName["family"],
    width: match[2],
    distilled: match[3] !== undefined,
    patch: Number(match[4]),
    imageSize: Number(match[5]),
  };
}

/** Whether `architecture` is a timm name this loader maps. */
export function isTimmVitName(architecture: string): boolean {
  return parseTimmName(architecture) !== null;
}

/** model_args this loader understands; any other one changes the model in ways it cannot run. */
const KNOWN_ARGS = new Set([
  "img_size",
  "patch_size",
  "in_chans",
  "num_classes",
  "embed_dim",
  "depth",
  "num_heads",
  "mlp_ratio",
  "qkv_bias",
  "class_token",
  "global_pool",
  "no_embed_class",
  "fc_norm",
  "init_values",
  "pre_norm",
  "drop_rate",
  "pos_drop_rate",
  "patch_drop_rate",
  "proj_drop_rate",
  "attn_drop_rate",
  "drop_path_rate",
  "weight_init",
  "dynamic_img_size",
  "dynamic_img_pad",
]);

/**
 * Maps a timm ViT / DeiT checkpoint onto the canonical ViT.
 *
 * @throws {EdgeVitError} `unsupported` for a name or model_args it cannot run,
 * `invalid_config`, `invalid_checkpoint`
 *
 * @example
 * ```ts
 * import { parseSafetensors } from "./safetensors.ts";
 * import { WeightStore } from "./weights.ts";
 * import { vitFromTimm } from "./timm.ts";
 * const dir = "../shared/fixtures/parity/timm-vit";
 * const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const { config: vit } = vitFromTimm(config, WeightStore.fromSafetensors(file.tensors.values()));
 * console.log(vit.imageHeight, vit.mlpDim); // 32 128
 * ```
 */
export function vitFromTimm(
  timmConfig: JsonObject,
  store: WeightStore,
  source = "config.json",
): { config: VitConfig; weights: VitWeights } {
  const top = new ConfigReader(timmConfig, source);
  const architecture = top.string("architecture");
  const name = parseTimmName(architecture);
  if (!name) {
    throw new EdgeVitError(
      "unsupported",
      `${source}: timm architecture "${architecture}" is not supported (plain vit_*/deit_*/deit3_* names such as vit_base_patch16_224 or deit_tiny_distilled_patch16_224)`,
    );
  }
  const args = top.child("model_args");
  for (const key of Object.keys(args.object)) {
    if (!KNOWN_ARGS.has(key)) {
      throw new EdgeVitError(
        "unsupported",
        `${source}: timm model_args "${key}" is not supported by this ViT loader`,
      );
    }
  }
  args.rejectUnknown("dynamic_img_size", (value) => value === false, "fixed image size only");
  const pretrained = top.child("pretrained_cfg");
  const inputSize = pretrained.numbers("input_size", 3);
  const [defaultDim, defaultDepth, defaultHeads] = TIMM_WIDTHS[name.width];
  const dim = args.int("embed_dim", defaultDim);
  const heads = args.int("num_heads", defaultHeads);
  if (dim % heads !== 0) {
    throw new EdgeVitError(
      "invalid_config",
      `${source}: embed_dim ${dim} is not divisible by num_heads ${heads}`,
    );
  }
  const [imageHeight, imageWidth] = args.pair(
    "img_size",
    inputSize ? [inputSize[1], inputSize[2]] : name.imageSize,
  );
  const [patchHeight, patchWidth] = args.pair("patch_size", name.patch);
  const channels = args.int("in_chans", inputSize ? inputSize[0] : 3);
  const mlpRatio = args.number("mlp_ratio", 4);
  const classToken = args.bool("class_token", true);
  const globalPool = args.string("global_pool", classToken ? "token" : "avg");
  if (globalPool !== "token" && globalPool !== "avg") {
    throw new EdgeVitError(
      "unsupported",
      `${source}: global_pool "${globalPool}" is not supported (token or avg)`,
    );
  }
  if (globalPool === "token" && !classToken) {
    throw new EdgeVitError("invalid_config", `${source}: token pooling needs a class token`);
  }
  if (name.distilled && (globalPool !== "token" || !classToken)) {
    throw new EdgeVitError("invalid_config", `${source}: distilled models pool the class token`);
  }
  const fcNorm = args.has("fc_norm") ? args.bool("fc_norm") : globalPool === "avg";
  const layerScale = args.has("init_values") || name.family === "deit3";
  const noEmbedClass = args.bool("no_embed_class", name.family === "deit3");
  const headName = "head";
  const numClasses = top.has("num_classes")
    ? top.int("num_classes")
    : args.has("num_classes")
    ? args.int("num_classes")
    : pretrained.has("num_classes")
    ? pretrained.int("num_classes")
    : store.shapeOf(`${headName}.weight`)?.[0] ?? 0;
  if (numClasses <= 0) {
    throw new EdgeVitError("invalid_config", `${source}: the number of classes is unknown`);
  }
  const config: VitConfig = {
    imageHeight,
    imageWidth,
    patchHeight,
    patchWidth,
    channels,
    dim,
    depth: args.int("depth", defaultDepth),
    heads,
    headDim: dim / heads,
    mlpDim: Math.floor(dim * mlpRatio),
    numClasses,
    classToken,
    distillationToken: name.distilled,
    pool: globalPool === "token" ? "cls" : "mean",
    finalNorm: fcNorm ? "pooled" : "tokens",
    head: name.distilled ? "distilled" : "single",
    preNorm: args.bool("pre_norm", false),
    qkvBias: args.bool("qkv_bias", true),
    attentionProjection: true,
    projectionBias: true,
    layerNormEps: TIMM_LAYER_NORM_EPS,
    patchEmbedding: "conv",
  };
  const prefix = (classToken ? 1 : 0) + (name.distilled ? 1 : 0);
  const patches = patchCount(config);
  const conv = store.linearWeight("patch_embed.proj.weight", [
    dim,
    channels,
    patchHeight,
    patchWidth,
  ]);
  const tokens = new Float32Array(prefix * dim);
  if (classToken) tokens.set(store.getSqueezed("cls_token", [1, dim]).data);
  if (name.distilled) tokens.set(store.getSqueezed("dist_token", [1, dim]).data, dim);
  const positionRows = noEmbedClass ? patches : prefix + patches;
  const positions = store.getSqueezed("pos_embed", [positionRows, dim]).data;
  if (!noEmbedClass) {
    for (let i = 0; i < prefix * dim; i++) tokens[i] += positions[i];
  }
  const width = dim;
  const blocks: BlockWeights[] = Array.from({ length: config.depth }, (_, i) => {
    const b = `blocks.${i}`;
    let proj: LinearParams = store.linear(`${b}.attn.proj`, dim, width);
    let fc2: LinearParams = store.linear(`${b}.mlp.fc2`, dim, config.mlpDim);
    if (layerScale) {
      proj = foldLayerScale(proj, store.get(`${b}.ls1.gamma`, [dim]).data);
      fc2 = foldLayerScale(fc2, store.get(`${b}.ls2.gamma`, [dim]).data);
    }
    return {
      norm1: store.layerNorm(`${b}.norm1`, dim),
      qkv: store.linear(`${b}.attn.qkv`, 3 * width, dim, config.qkvBias),
      proj,
      norm2: store.layerNorm(`${b}.norm2`, dim),
      fc1: store.linear(`${b}.mlp.fc1`, config.mlpDim, dim),
      fc2,
    };
  });
  const headWeights: LinearParams[] = name.distilled
    ? [
      scaleLinear(store.linear("head", numClasses, dim), 0.5),
      scaleLinear(store.linear("head_dist", numClasses, dim), 0.5),
    ]
    : [store.linear("head", numClasses, dim)];
  const weights: VitWeights = {
    patchEmbedding: {
      inputNorm: null,
      linear: patchLinearFromConv(
        conv,
        store.get("patch_embed.proj.bias", [dim]).data,
        dim,
        channels,
        patchHeight,
        patchWidth,
      ),
      outputNorm: null,
    },
    prefixTokens: prefix > 0 ? tokens : null,
    patchPositions: positions.slice((positionRows - patches) * dim),
    preNorm: config.preNorm ? store.layerNorm("norm_pre", dim) : null,
    blocks,
    finalNorm: store.layerNorm(fcNorm ? "fc_norm" : "norm", dim),
    heads: headWeights,
  };
  return { config, weights };
}
