/**
 * The image preprocessing and the class names a checkpoint carries, read from its own
 * files and turned into the image pipeline's configs (`src/image/preprocess.ts`):
 *
 * - timm: `pretrained_cfg` → {@link timmPreprocess} (shorter side to
 *   `floor(size / crop_pct)`, center crop), at the model's input size;
 * - Hugging Face: `preprocessor_config.json` → {@link hfPreprocess}; without one, the
 *   defaults of `ViTImageProcessor` / `DeiTImageProcessor` scaled to the model's size;
 * - vit-pytorch: the manifest's `"preprocess"` object → {@link plainPreprocess}, or
 *   {@link navitPreprocess} for models that take any resolution.
 *
 * Labels: the manifest's `labels`, HF `id2label`, timm `label_names`.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import {
  hfPreprocess,
  type HfPreprocessorConfig,
  type NativeConfig,
  navitPreprocess,
  plainPreprocess,
  type PlainPreprocessSpec,
  type PreprocessConfig,
  timmPreprocess,
  type TimmPretrainedCfg,
} from "../image/preprocess.ts";
import type { VisionArchitecture } from "../models/types.ts";
import { type CheckpointInfo, isObject, type JsonObject, readLabels } from "./config.ts";

/** How `classify` prepares images for one model. */
export type ImagePipeline =
  /** Fixed-size models: resize / crop to the model's input size. */
  | { kind: "fixed"; config: PreprocessConfig }
  /** Any-resolution models (NaViT): each image near its own size, sides multiples of the patch. */
  | { kind: "native"; config: NativeConfig };

/**
 * The image pipeline of a built checkpoint.
 *
 * @throws {EdgeVitError} `invalid_config` when the checkpoint's preprocessing is
 * malformed or produces another size than the model takes
 *
 * @example
 * ```ts
 * import { imagePipelineFor } from "./preprocess.ts";
 * const checkpoint = {
 *   library: "timm" as const, architecture: "vit_base_patch16_224", source: "config.json",
 *   config: { architecture: "vit_base_patch16_224", pretrained_cfg: { crop_pct: 0.9 } },
 * };
 * const model = { channels: 3, inputSize: { height: 224, width: 224 }, patchSize: 16 };
 * const pipeline = imagePipelineFor(checkpoint, model);
 * console.log(pipeline.kind === "fixed" && pipeline.config.resize); // { mode: "shortest_edge", size: 248 }
 * ```
 */
export function imagePipelineFor(
  checkpoint: CheckpointInfo,
  model: Pick<VisionArchitecture, "channels" | "inputSize" | "patchSize">,
): ImagePipeline {
  const config = checkpoint.config;
  if (!model.inputSize) {
    const kwargs = isObject(config.kwargs) ? config.kwargs : {};
    return {
      kind: "native",
      config: navitPreprocess(manifestSpec(checkpoint), {
        image_size: kwargs.image_size as number | number[] | undefined,
        patch_size: model.patchSize,
        channels: model.channels,
      }),
    };
  }
  const { height, width } = model.inputSize;
  let pipeline: PreprocessConfig;
  switch (checkpoint.library) {
    case "timm": {
      const pretrained = (isObject(config.pretrained_cfg) ? config.pretrained_cfg : {}) as
        & TimmPretrainedCfg
        & JsonObject;
      // The model's own size wins: a pretrained_cfg copied from another resolution is common.
      pipeline = timmPreprocess({ ...pretrained, input_size: [model.channels, height, width] });
      break;
    }
    case "transformers": {
      const deit = checkpoint.architecture.startsWith("DeiT");
      const processor = (checkpoint.preprocessorConfig ?? (deit
        ? {
          size: {
            height: Math.floor((height * 256) / 224),
            width: Math.floor((width * 256) / 224),
          },
          crop_size: { height, width },
        }
        : { size: { height, width } })) as HfPreprocessorConfig;
      pipeline = hfPreprocess(processor, deit ? "deit" : "vit", model.channels);
      break;
    }
    default:
      pipeline = plainPreprocess(manifestSpec(checkpoint), {
        image_size: [height, width],
        channels: model.channels,
      });
  }
  const out = outputSize(pipeline);
  if (!out || out.height !== height || out.width !== width) {
    throw new EdgeVitError(
      "invalid_config",
      `${checkpoint.source}: the preprocessing yields ${
        out ? `${out.height}×${out.width}` : "images of varying size"
      } but the model takes ${height}×${width}`,
    );
  }
  return { kind: "fixed", config: pipeline };
}

/** The manifest's `"preprocess"` object (vit-pytorch layout). */
function manifestSpec(checkpoint: CheckpointInfo): PlainPreprocessSpec {
  const spec = checkpoint.config.preprocess;
  if (spec === undefined) return {};
  if (!isObject(spec)) {
    throw new EdgeVitError(
      "invalid_config",
      `${checkpoint.source}: "preprocess" must be an object`,
    );
  }
  // image_size belongs to the model; a manifest's own copy must not disagree with it.
  const { image_size: _ignored, ...rest } = spec;
  return rest as PlainPreprocessSpec;
}

/** Final size of a fixed pipeline, or null when it depends on the image. */
function outputSize(config: PreprocessConfig): { height: number; width: number } | null {
  if (config.crop) return { height: config.crop.height, width: config.crop.width };
  if (config.resize?.mode === "exact") {
    return { height: config.resize.height, width: config.resize.width };
  }
  return null;
}

/**
 * The class names a checkpoint's config carries, if any.
 *
 * @throws {EdgeVitError} `invalid_config` when they are malformed
 */
export function checkpointLabels(checkpoint: CheckpointInfo): string[] | undefined {
  const config = checkpoint.config;
  switch (checkpoint.library) {
    case "transformers":
      return readLabels(config.id2label, `${checkpoint.source} id2label`);
    case "timm": {
      const pretrained = isObject(config.pretrained_cfg) ? config.pretrained_cfg : {};
      return readLabels(
        config.label_names ?? pretrained.label_names,
        `${checkpoint.source} label_names`,
      );
    }
    default:
      return readLabels(config.labels, `${checkpoint.source} labels`);
  }
}
