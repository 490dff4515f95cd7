/**
 * Hugging Face transformers checkpoints: `ViTForImageClassification`,
 * `DeiTForImageClassification` and `DeiTForImageClassificationWithTeacher`, with
 * config.json and tensor names as the Hub has them. The separate query / key / value
 * projections are concatenated into one qkv linear at load (one GEMM instead of three),
 * and the conv patch embedding becomes a linear layer over patches.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import {
  addRows,
  type BlockWeights,
  fuseQkv,
  patchCount,
  scaleLinear,
  type VitConfig,
  type VitWeights,
} from "../models/vit.ts";
import { ConfigReader, type JsonObject, readLabels } from "./config.ts";
import { patchLinearFromConv } from "./quantized.ts";
import type { WeightStore } from "./weights.ts";

/** The HF classes this loader maps, with the weight prefix and head layout of each. */
const CLASSES = {
  ViTForImageClassification: { prefix: "vit", distillation: false, teacher: false },
  DeiTForImageClassification: { prefix: "deit", distillation: true, teacher: false },
  DeiTForImageClassificationWithTeacher: { prefix: "deit", distillation: true, teacher: true },
} as const;

/** HF class names that {@link vitFromTransformers} understands. */
export const TRANSFORMERS_VIT_CLASSES = Object.keys(CLASSES);

/** Number of classes an HF config declares (`id2label`, else `num_labels`), if any. */
function declaredClasses(reader: ConfigReader): number | undefined {
  const labels = readLabels(reader.object.id2label, `${reader.where} id2label`);
  if (labels) return labels.length;
  return reader.has("num_labels") ? reader.int("num_labels") : undefined;
}

/**
 * Maps a Hugging Face ViT / DeiT classification checkpoint onto the canonical ViT,
 * with the defaults of `ViTConfig` / `DeiTConfig` for absent fields.
 *
 * @throws {EdgeVitError} `invalid_config`, `invalid_checkpoint`, or `unsupported` (an
 * activation other than exact GELU, an unknown class)
 *
 * @example
 * ```ts
 * import { parseSafetensors } from "./safetensors.ts";
 * import { WeightStore } from "./weights.ts";
 * import { vitFromTransformers } from "./transformers.ts";
 * const dir = "../shared/fixtures/parity/hf-vit";
 * const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const { config: vit } = vitFromTransformers(config, WeightStore.fromSafetensors(file.tensors.values()));
 * console.log(vit.dim, vit.numClasses); // 64 10
 * ```
 */
export function vitFromTransformers(
  hfConfig: JsonObject,
  store: WeightStore,
  source = "config.json",
): { config: VitConfig; weights: VitWeights } {
  const reader = new ConfigReader(hfConfig, source);
  const architecture = (hfConfig.architectures as string[] | undefined)?.[0] ?? "";
  const kind = CLASSES[architecture as keyof typeof CLASSES];
  if (!kind) {
    throw new EdgeVitError(
      "unsupported",
      `${source}: Hugging Face architecture "${architecture}" is not supported (supported: ${
        TRANSFORMERS_VIT_CLASSES.join(", ")
      })`,
    );
  }
  const activation = reader.string("hidden_act", "gelu");
  if (activation !== "gelu") {
    throw new EdgeVitError(
      "unsupported",
      `${source}: hidden_act "${activation}" is not supported (only exact "gelu")`,
    );
  }
  const dim = reader.int("hidden_size", 768);
  const heads = reader.int("num_attention_heads", 12);
  if (dim % heads !== 0) {
    throw new EdgeVitError(
      "invalid_config",
      `${source}: hidden_size ${dim} is not divisible by num_attention_heads ${heads}`,
    );
  }
  const [imageHeight, imageWidth] = reader.pair("image_size", 224);
  const [patchHeight, patchWidth] = reader.pair("patch_size", 16);
  const p = kind.prefix;
  const headName = kind.teacher ? "cls_classifier" : "classifier";
  const numClasses = declaredClasses(reader) ?? store.shapeOf(`${headName}.weight`)?.[0] ?? 0;
  const qkvBias = reader.bool("qkv_bias", true);
  const config: VitConfig = {
    imageHeight,
    imageWidth,
    patchHeight,
    patchWidth,
    channels: reader.int("num_channels", 3),
    dim,
    depth: reader.int("num_hidden_layers", 12),
    heads,
    headDim: dim / heads,
    mlpDim: reader.int("intermediate_size", 3072),
    numClasses,
    classToken: true,
    distillationToken: kind.distillation,
    pool: "cls",
    finalNorm: "tokens",
    head: kind.teacher ? "distilled" : "single",
    preNorm: false,
    qkvBias,
    attentionProjection: true,
    projectionBias: true,
    layerNormEps: reader.number("layer_norm_eps", 1e-12),
    patchEmbedding: "conv",
  };
  if (numClasses <= 0) {
    throw new EdgeVitError("invalid_config", `${source}: the number of classes is unknown`);
  }
  const prefix = kind.distillation ? 2 : 1;
  const patches = patchCount(config);
  const { channels } = config;
  const conv = store.linearWeight(`${p}.embeddings.patch_embeddings.projection.weight`, [
    dim,
    channels,
    patchHeight,
    patchWidth,
  ]);
  const patchLinear = patchLinearFromConv(
    conv,
    store.get(`${p}.embeddings.patch_embeddings.projection.bias`, [dim]).data,
    dim,
    channels,
    patchHeight,
    patchWidth,
  );
  const cls = store.getSqueezed(`${p}.embeddings.cls_token`, [1, dim]).data;
  const tokens = new Float32Array(prefix * dim);
  tokens.set(cls);
  if (kind.distillation) {
    tokens.set(store.getSqueezed(`${p}.embeddings.distillation_token`, [1, dim]).data, dim);
  }
  const positions = store.getSqueezed(`${p}.embeddings.position_embeddings`, [
    prefix + patches,
    dim,
  ]).data;
  // Parts of the base model a classifier never runs: masked-image-modeling token, pooler.
  store.ignore(
    `${p}.embeddings.mask_token`,
    `${p}.pooler.dense.weight`,
    `${p}.pooler.dense.bias`,
  );
  const blocks: BlockWeights[] = Array.from({ length: config.depth }, (_, i) => {
    const layer = `${p}.encoder.layer.${i}`;
    const bias = qkvBias ? true : false;
    return {
      norm1: store.layerNorm(`${layer}.layernorm_before`, dim),
      qkv: fuseQkv(
        store.linear(`${layer}.attention.attention.query`, dim, dim, bias),
        store.linear(`${layer}.attention.attention.key`, dim, dim, bias),
        store.linear(`${layer}.attention.attention.value`, dim, dim, bias),
      ),
      proj: store.linear(`${layer}.attention.output.dense`, dim, dim),
      norm2: store.layerNorm(`${layer}.layernorm_after`, dim),
      fc1: store.linear(`${layer}.intermediate.dense`, config.mlpDim, dim),
      fc2: store.linear(`${layer}.output.dense`, dim, config.mlpDim),
    };
  });
  const headsOut = kind.teacher
    ? [
      scaleLinear(store.linear("cls_classifier", numClasses, dim), 0.5),
      scaleLinear(store.linear("distillation_classifier", numClasses, dim), 0.5),
    ]
    : [store.linear("classifier", numClasses, dim)];
  const weights: VitWeights = {
    patchEmbedding: { inputNorm: null, linear: patchLinear, outputNorm: null },
    prefixTokens: addRows(tokens, positions.subarray(0, prefix * dim)),
    patchPositions: positions.slice(prefix * dim),
    preNorm: null,
    blocks,
    finalNorm: store.layerNorm(`${p}.layernorm`, dim),
    heads: headsOut,
  };
  return { config, weights };
}
