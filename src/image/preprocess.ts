/**
 * From image bytes to the normalized float32 `[C, H, W]` tensor a model eats, the way
 * the checkpoint's own training pipeline made it.
 *
 * A {@link PreprocessConfig} spells the pipeline out step by step (resize, center
 * crop, rescale, normalize). Loaders do not fill it by hand: they call the builder for
 * their checkpoint family with the config they read:
 * - {@link timmPreprocess}`(pretrained_cfg)`: timm's eval transform (shorter side to
 *   `floor(size / crop_pct)`, center crop; also `crop_mode` "squash" and "border");
 * - {@link hfPreprocess}`(preprocessor_config)`: Hugging Face ViT/DeiT image
 *   processors (resize to `size`, optional center crop, rescale, normalize);
 * - {@link plainPreprocess}`(spec)`: vit-pytorch and edgevit's own models (resize to
 *   the model's `image_size`, normalize), from the manifest's `"preprocess"` object.
 *
 * Then {@link preprocess}`(bytes, config)` decodes and transforms one image, and
 * {@link preprocessNative} does the same at the image's own resolution for NaViT.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { type Background, flattenAlpha, toGrayscale } from "./color.ts";
import { centerCrop, type CropOffsets } from "./crop.ts";
import { decodeImage } from "./decode.ts";
import type { RawImage } from "./raw_image.ts";
import { type Interpolation, PIL_RESAMPLE, resize } from "./resize.ts";
import type { ImageLimits } from "./sniff.ts";

/** How the decoded image is first brought towards the model's size. */
export type ResizeSpec =
  /** torchvision `Resize(size)`: shorter side to `size`, longer `int(size · long / short)`. */
  | { mode: "shortest_edge"; size: number }
  /** Both sides set, aspect ratio not kept ("squash"). */
  | { mode: "exact"; height: number; width: number }
  /**
   * timm `ResizeKeepRatio`: scale by `min` (longest = 0) or `max` (longest = 1) of the
   * side ratios to `height × width`, each side rounded half to even.
   */
  | { mode: "keep_ratio"; height: number; width: number; longest: 0 | 1 };

/** Center crop after the resize. */
export interface CropSpec {
  height: number;
  width: number;
  /** Placement convention when the size difference is odd. */
  offsets: CropOffsets;
  /** Padding value per channel (0–255) where the crop is larger than the image; default 0. */
  fill?: number[];
}

/** One checkpoint's preprocessing, step by step. Build it with the `*Preprocess` helpers. */
export interface PreprocessConfig {
  /** Channels the model takes: 3 = RGB, 1 = PIL "L" grayscale (converted before resizing). */
  channels: 1 | 3;
  /** Filter of the resize step. */
  interpolation: Interpolation;
  /**
   * Filter override for the resize step alone; timm's non-square "center" mode resizes
   * bilinearly whatever its config says.
   */
  resizeInterpolation?: Interpolation;
  /** Pixels trimmed from every edge before anything else (timm `crop_border_pixels`). */
  trimBorder?: number;
  /** Resize step, or null to keep the decoded size. */
  resize: ResizeSpec | null;
  /** Center crop step, or null. */
  crop: CropSpec | null;
  /** uint8 → float factor before normalizing, usually 1/255. */
  rescale: number;
  /** Per-channel mean subtracted after rescaling (length = channels). */
  mean: number[];
  /** Per-channel std divided by after subtracting the mean (length = channels). */
  std: number[];
}

/** Per-call options of {@link preprocess}: input limits and alpha handling. */
export interface PreprocessOptions extends ImageLimits {
  /** Colour under transparent pixels; default `"white"`. */
  background?: Background;
}

/** A preprocessed image. */
export interface PreprocessedImage {
  /** `[channels, height, width]` normalized float32, planar. */
  data: Float32Array;
  channels: 1 | 3;
  height: number;
  width: number;
  /** Size of the decoded image as displayed (after EXIF orientation), before resizing. */
  originalWidth: number;
  originalHeight: number;
}

/** ImageNet mean (timm `IMAGENET_DEFAULT_MEAN`, DeiT). */
export const IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406];
/** ImageNet std (timm `IMAGENET_DEFAULT_STD`, DeiT). */
export const IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225];
/** The 0.5 mean/std of Google's ViT (`IMAGENET_STANDARD_MEAN` in transformers). */
export const IMAGENET_STANDARD_MEAN = [0.5, 0.5, 0.5];
/** The 0.5 std of Google's ViT (`IMAGENET_STANDARD_STD` in transformers). */
export const IMAGENET_STANDARD_STD = [0.5, 0.5, 0.5];

// ---------------------------------------------------------------------------------------
// Builders

/** The fields of a timm `pretrained_cfg` that shape evaluation preprocessing. */
export interface TimmPretrainedCfg {
  /** `[channels, height, width]`; default `[3, 224, 224]`. */
  input_size?: number[];
  /** Default `"bicubic"` (timm `resolve_data_config`). */
  interpolation?: string;
  /** Default ImageNet mean. */
  mean?: number[];
  /** Default ImageNet std. */
  std?: number[];
  /** Default 0.875. */
  crop_pct?: number;
  /** `"center"` (default), `"squash"` or `"border"`. */
  crop_mode?: string;
  /** Border trimmed before resizing; default none. */
  crop_border_pixels?: number;
}

/**
 * Builds timm's evaluation preprocessing from a `pretrained_cfg` (timm's
 * `resolve_data_config` defaults, then `transforms_imagenet_eval`): the shorter side is
 * resized to `floor(size / crop_pct)` and the center `size` crop is kept.
 *
 * @example
 * ```ts
 * import { timmPreprocess } from "./preprocess.ts";
 * const config = timmPreprocess({ input_size: [3, 224, 224], interpolation: "bicubic", crop_pct: 0.9 });
 * // floor(224 / 0.9) = 248
 * if (config.resize?.mode !== "shortest_edge" || config.resize.size !== 248) throw new Error();
 * ```
 */
export function timmPreprocess(cfg: TimmPretrainedCfg = {}): PreprocessConfig {
  const inputSize = cfg.input_size ?? [3, 224, 224];
  if (inputSize.length !== 3) {
    throw new EdgeVitError("invalid_config", `timm input_size must be [C, H, W], got ${inputSize}`);
  }
  const [c, height, width] = inputSize;
  const channels = checkChannels(c, "timm input_size[0]");
  checkSize(height, width, "timm input_size");
  const interpolation = parseInterpolation(cfg.interpolation ?? "bicubic", "timm interpolation");
  const cropPct = cfg.crop_pct || 0.875; // timm: `crop_pct or DEFAULT_CROP_PCT`
  if (!(cropPct > 0 && cropPct <= 4)) {
    throw new EdgeVitError("invalid_config", `timm crop_pct must be in (0, 4], got ${cropPct}`);
  }
  const mean = broadcast(cfg.mean ?? IMAGENET_DEFAULT_MEAN, channels, "timm mean");
  const std = broadcast(cfg.std ?? IMAGENET_DEFAULT_STD, channels, "timm std");
  const scaleH = Math.floor(height / cropPct);
  const scaleW = Math.floor(width / cropPct);
  const base = {
    channels,
    interpolation,
    rescale: 1 / 255,
    mean,
    std,
    trimBorder: cfg.crop_border_pixels || undefined,
  };
  const mode = cfg.crop_mode ?? "center";
  if (mode === "squash") {
    return {
      ...base,
      resize: { mode: "exact", height: scaleH, width: scaleW },
      crop: { height, width, offsets: "torchvision" },
    };
  }
  if (mode === "border") {
    return {
      ...base,
      resize: { mode: "keep_ratio", height: scaleH, width: scaleW, longest: 1 },
      // timm pads with the mean colour: round(255 · mean), Python rounding.
      crop: {
        height,
        width,
        offsets: "torchvision",
        fill: mean.map((m) => Math.min(255, Math.max(0, pyRound(255 * m)))),
      },
    };
  }
  if (mode !== "center") {
    throw new EdgeVitError("unsupported", `timm crop_mode "${mode}" is not supported`);
  }
  if (scaleH === scaleW) {
    return {
      ...base,
      resize: { mode: "shortest_edge", size: scaleH },
      crop: { height, width, offsets: "torchvision" },
    };
  }
  // timm builds ResizeKeepRatio here without passing the interpolation: it is bilinear.
  return {
    ...base,
    resizeInterpolation: "bilinear",
    resize: { mode: "keep_ratio", height: scaleH, width: scaleW, longest: 0 },
    crop: { height, width, offsets: "torchvision" },
  };
}

/** The fields of a Hugging Face `preprocessor_config.json` that shape preprocessing. */
export interface HfPreprocessorConfig {
  image_processor_type?: string;
  feature_extractor_type?: string;
  do_resize?: boolean;
  /** An int (square), `{height, width}` or `{shortest_edge}`. */
  size?: number | { height?: number; width?: number; shortest_edge?: number };
  /** PIL resample code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. */
  resample?: number;
  do_center_crop?: boolean;
  /** An int (square) or `{height, width}`. */
  crop_size?: number | { height?: number; width?: number };
  do_rescale?: boolean;
  rescale_factor?: number;
  do_normalize?: boolean;
  image_mean?: number | number[];
  image_std?: number | number[];
}

/**
 * Builds a Hugging Face image processor's preprocessing from `preprocessor_config.json`
 * (slow, PIL-based `ViTImageProcessor` / `DeiTImageProcessor` semantics). Absent fields
 * take the processor's defaults: ViT resizes to 224×224 bilinear with mean/std 0.5; DeiT
 * resizes to 256×256 bicubic and center-crops 224×224 with ImageNet mean/std. The type
 * is read from `image_processor_type` / `feature_extractor_type`, or given by `kind`.
 *
 * @param config The parsed `preprocessor_config.json` (`{}` when the checkpoint has none).
 * @param kind Which processor's defaults apply when the config does not say.
 * @param channels The model's `num_channels`; default 3.
 *
 * @example
 * ```ts
 * import { hfPreprocess } from "./preprocess.ts";
 * const deit = hfPreprocess({ size: 256, crop_size: 224, resample: 3, do_center_crop: true }, "deit");
 * if (deit.resize?.mode !== "exact" || deit.crop?.width !== 224) throw new Error();
 * if (deit.interpolation !== "bicubic" || deit.crop.offsets !== "floor") throw new Error();
 * ```
 */
export function hfPreprocess(
  config: HfPreprocessorConfig = {},
  kind?: "vit" | "deit",
  channels = 3,
): PreprocessConfig {
  const type = config.image_processor_type ?? config.feature_extractor_type ?? "";
  const deit = kind ? kind === "deit" : /deit/i.test(type);
  const c = checkChannels(channels, "num_channels");
  const resampleCode = config.resample ?? (deit ? 3 : 2);
  const interpolation = PIL_RESAMPLE[resampleCode];
  if (!interpolation) {
    throw new EdgeVitError("invalid_config", `Unknown PIL resample code ${resampleCode}`);
  }
  let resizeSpec: ResizeSpec | null = null;
  if (config.do_resize ?? true) {
    const size = config.size ?? (deit ? 256 : 224);
    if (typeof size === "number") {
      checkSize(size, size, "size");
      resizeSpec = { mode: "exact", height: size, width: size };
    } else if (size.height !== undefined && size.width !== undefined) {
      checkSize(size.height, size.width, "size");
      resizeSpec = { mode: "exact", height: size.height, width: size.width };
    } else if (size.shortest_edge !== undefined) {
      checkSize(size.shortest_edge, size.shortest_edge, "size.shortest_edge");
      resizeSpec = { mode: "shortest_edge", size: size.shortest_edge };
    } else {
      throw new EdgeVitError("invalid_config", `Unsupported size ${JSON.stringify(size)}`);
    }
  }
  let crop: CropSpec | null = null;
  if (config.do_center_crop ?? deit) {
    const size = config.crop_size ?? 224;
    const [h, w] = typeof size === "number" ? [size, size] : [size.height, size.width];
    if (h === undefined || w === undefined) {
      throw new EdgeVitError("invalid_config", `Unsupported crop_size ${JSON.stringify(size)}`);
    }
    checkSize(h, w, "crop_size");
    crop = { height: h, width: w, offsets: "floor" };
  }
  const rescale = (config.do_rescale ?? true) ? (config.rescale_factor ?? 1 / 255) : 1;
  const normalize = config.do_normalize ?? true;
  const defaultMean = deit ? IMAGENET_DEFAULT_MEAN : IMAGENET_STANDARD_MEAN;
  const defaultStd = deit ? IMAGENET_DEFAULT_STD : IMAGENET_STANDARD_STD;
  return {
    channels: c,
    interpolation,
    resize: resizeSpec,
    crop,
    rescale,
    mean: normalize ? broadcast(config.image_mean ?? defaultMean, c, "image_mean") : zeros(c),
    std: normalize ? broadcast(config.image_std ?? defaultStd, c, "image_std") : ones(c),
  };
}

/**
 * The `"preprocess"` object of a vit-pytorch / edgevit manifest (config.json). Every
 * field is optional; the loader passes the model's own `image_size` and `channels`.
 */
export interface PlainPreprocessSpec {
  /** `image_size` of the model: one number (square) or `[height, width]`. */
  image_size?: number | number[];
  /** 1 (grayscale) or 3; default the model's `channels`, else 3. */
  channels?: number;
  /** `"bilinear"` (default), `"bicubic"`, `"nearest"`, ... */
  interpolation?: string;
  /** Default 0 for every channel. */
  mean?: number | number[];
  /** Default 1 for every channel. */
  std?: number | number[];
  /**
   * When set, resize the shorter side to `floor(size / crop_pct)` and center-crop
   * (timm style) instead of resizing straight to `image_size`.
   */
  crop_pct?: number;
}

/**
 * Builds the preprocessing of a vit-pytorch model or one of edgevit's own: resize
 * straight to the model's `image_size` (aspect ratio not kept), scale to [0, 1], then
 * normalize. Defaults: bilinear, mean 0 and std 1 (torchvision `ToTensor()` alone),
 * channels from the model. A manifest can override any of these in `"preprocess"`.
 *
 * @param spec The manifest's `"preprocess"` object, if any.
 * @param model The model's own `image_size` and `channels` (vit-pytorch kwargs).
 *
 * @example
 * ```ts
 * import { plainPreprocess } from "./preprocess.ts";
 * const config = plainPreprocess({ mean: 0.2860, std: 0.3530 }, { image_size: 28, channels: 1 });
 * if (config.channels !== 1 || config.resize?.mode !== "exact" || config.mean[0] !== 0.286) {
 *   throw new Error();
 * }
 * ```
 */
export function plainPreprocess(
  spec: PlainPreprocessSpec = {},
  model: { image_size?: number | number[]; channels?: number } = {},
): PreprocessConfig {
  const size = spec.image_size ?? model.image_size;
  if (size === undefined) {
    throw new EdgeVitError("invalid_config", "Preprocessing needs an image_size");
  }
  const [height, width] = typeof size === "number" ? [size, size] : size;
  if (typeof size !== "number" && size.length !== 2) {
    throw new EdgeVitError("invalid_config", `image_size must be [height, width], got ${size}`);
  }
  checkSize(height, width, "image_size");
  const channels = checkChannels(spec.channels ?? model.channels ?? 3, "channels");
  const interpolation = parseInterpolation(spec.interpolation ?? "bilinear", "interpolation");
  const mean = broadcast(spec.mean ?? 0, channels, "mean");
  const std = broadcast(spec.std ?? 1, channels, "std");
  if (spec.crop_pct !== undefined) {
    const pct = spec.crop_pct;
    if (!(pct > 0 && pct <= 4) || height !== width) {
      throw new EdgeVitError(
        "invalid_config",
        `crop_pct needs a square image_size and a value in (0, 4], got ${pct}`,
      );
    }
    return {
      channels,
      interpolation,
      resize: { mode: "shortest_edge", size: Math.floor(height / pct) },
      crop: { height, width, offsets: "torchvision" },
      rescale: 1 / 255,
      mean,
      std,
    };
  }
  return {
    channels,
    interpolation,
    resize: { mode: "exact", height, width },
    crop: null,
    rescale: 1 / 255,
    mean,
    std,
  };
}

// ---------------------------------------------------------------------------------------
// Pipeline

/**
 * Decodes one image and turns it into the model's normalized input.
 *
 * @param bytes JPEG, PNG or WebP file.
 * @param config The checkpoint's preprocessing (see the builders).
 * @param options Pixel limits checked from the header, and the alpha background.
 * @returns `data` is `[channels, height, width]` float32; also the original size.
 * @throws {EdgeVitError} as {@link decodeImage} does.
 *
 * @example
 * ```ts
 * import { plainPreprocess, preprocess } from "./preprocess.ts";
 * const png = Uint8Array.from(atob(
 *   "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgOiEHAAHQAPEkXJH0AAAAAElFTkSuQmCC",
 * ), (c) => c.charCodeAt(0));
 * const out = await preprocess(png, plainPreprocess({}, { image_size: 4 }));
 * if (out.data.length !== 3 * 4 * 4 || out.originalWidth !== 1) throw new Error();
 * if (Math.abs(out.data[16] - 200 / 255) > 1e-6) throw new Error(); // green plane
 * ```
 */
export async function preprocess(
  bytes: Uint8Array | ArrayBuffer,
  config: PreprocessConfig,
  options: PreprocessOptions = {},
): Promise<PreprocessedImage> {
  const image = await decodeImage(bytes, { ...options, channels: config.channels });
  return normalize(transformImage(image, config), config, image);
}

/**
 * Preprocesses pixels that are already decoded (a dataset's raw arrays, a canvas):
 * converts channels as {@link decodeImage} would (alpha flattened, RGB to "L", gray
 * replicated to RGB), then runs the pipeline. No EXIF orientation is applied.
 *
 * @example
 * ```ts
 * import { plainPreprocess, preprocessPixels } from "./preprocess.ts";
 * const gray = { data: new Uint8Array(28 * 28).fill(255), width: 28, height: 28, channels: 1 as const };
 * const out = preprocessPixels(gray, plainPreprocess({}, { image_size: 28, channels: 1 }));
 * if (out.data.length !== 784 || out.data[0] !== 1) throw new Error();
 * ```
 */
export function preprocessPixels(
  image: RawImage,
  config: PreprocessConfig,
  options: Pick<PreprocessOptions, "background"> = {},
): PreprocessedImage {
  const converted = convertChannels(image, config.channels, options.background);
  return normalize(transformImage(converted, config), config, converted);
}

/** Brings any 1/3/4-channel image to `channels`, the way decodeImage does. */
function convertChannels(image: RawImage, channels: 1 | 3, background?: Background): RawImage {
  const expected = image.width * image.height * image.channels;
  if (image.data.length !== expected || ![1, 3, 4].includes(image.channels)) {
    throw new EdgeVitError(
      "invalid_argument",
      `Pixels hold ${image.data.length} bytes, not ${image.width}×${image.height}×${image.channels}`,
    );
  }
  const flat = flattenAlpha(image, background ?? "white");
  if (channels === 1) return toGrayscale(flat);
  if (flat.channels === 3) return flat;
  const n = flat.width * flat.height;
  const rgb = new Uint8Array(n * 3); // [h, w, 3]
  for (let i = 0; i < n; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = flat.data[i];
  return { data: rgb, width: flat.width, height: flat.height, channels: 3 };
}

/**
 * The geometric part of a pipeline on decoded pixels (channels already converted):
 * trim, resize, center crop. Returns uint8 pixels, the stage compared with PIL in tests.
 *
 * @example
 * ```ts
 * import { timmPreprocess, transformImage } from "./preprocess.ts";
 * const image = { data: new Uint8Array(300 * 200 * 3), width: 300, height: 200, channels: 3 as const };
 * const out = transformImage(image, timmPreprocess({ input_size: [3, 32, 32], crop_pct: 0.9 }));
 * if (out.width !== 32 || out.height !== 32) throw new Error();
 * ```
 */
export function transformImage(image: RawImage, config: PreprocessConfig): RawImage {
  let out = image;
  const trim = config.trimBorder ?? 0;
  if (trim > 0) {
    if (out.width <= 2 * trim || out.height <= 2 * trim) {
      throw new EdgeVitError(
        "invalid_image",
        `Image of ${out.width}×${out.height} is too small to trim ${trim} px from each edge`,
      );
    }
    out = centerCrop(out, out.width - 2 * trim, out.height - 2 * trim, "floor");
  }
  if (config.resize) {
    const [h, w] = resizeTarget(out.height, out.width, config.resize);
    out = resize(out, w, h, config.resizeInterpolation ?? config.interpolation);
  }
  if (config.crop) {
    out = centerCrop(
      out,
      config.crop.width,
      config.crop.height,
      config.crop.offsets,
      config.crop.fill,
    );
  }
  return out;
}

/** Output `[height, width]` of a resize step for an input of `height × width`. */
export function resizeTarget(height: number, width: number, spec: ResizeSpec): [number, number] {
  if (spec.mode === "exact") return [spec.height, spec.width];
  if (spec.mode === "shortest_edge") {
    // torchvision: new_long = int(size * long / short), in doubles as Python computes it.
    if (width <= height) return [Math.trunc((spec.size * height) / width), spec.size];
    return [spec.size, Math.trunc((spec.size * width) / height)];
  }
  const ratioH = height / spec.height;
  const ratioW = width / spec.width;
  const ratio = spec.longest === 1 ? Math.max(ratioH, ratioW) : Math.min(ratioH, ratioW);
  return [Math.max(1, pyRound(height / ratio)), Math.max(1, pyRound(width / ratio))];
}

/**
 * Rescales and normalizes uint8 pixels into planar float32 `[C, H, W]`, with the
 * float32 rounding of torchvision's `ToTensor` + `Normalize` (a 256-entry table per
 * channel, so it is exact and cheap).
 *
 * @example
 * ```ts
 * import { normalizeImage } from "./preprocess.ts";
 * const image = { data: new Uint8Array([0, 255]), width: 2, height: 1, channels: 1 as const };
 * const out = normalizeImage(image, { rescale: 1 / 255, mean: [0.5], std: [0.5] });
 * if (out[0] !== -1 || out[1] !== 1) throw new Error();
 * ```
 */
export function normalizeImage(
  image: RawImage,
  config: Pick<PreprocessConfig, "rescale" | "mean" | "std">,
): Float32Array {
  const c = image.channels;
  if (config.mean.length !== c || config.std.length !== c) {
    throw new EdgeVitError(
      "invalid_argument",
      `mean/std have ${config.mean.length}/${config.std.length} values for ${c} channels`,
    );
  }
  const plane = image.width * image.height;
  const out = new Float32Array(c * plane); // [c, h, w]
  const table = new Float32Array(256);
  for (let k = 0; k < c; k++) {
    const mean = Math.fround(config.mean[k]);
    const std = Math.fround(config.std[k]);
    // Each step rounded to float32 as PyTorch does; doubles then fround are exact here.
    for (let v = 0; v < 256; v++) {
      table[v] = Math.fround(Math.fround(Math.fround(v * config.rescale) - mean) / std);
    }
    const src = image.data;
    const base = k * plane;
    for (let i = 0, s = k; i < plane; i++, s += c) out[base + i] = table[src[s]];
  }
  return out;
}

function normalize(
  pixels: RawImage,
  config: PreprocessConfig,
  original: RawImage,
): PreprocessedImage {
  return {
    data: normalizeImage(pixels, config),
    channels: pixels.channels as 1 | 3,
    height: pixels.height,
    width: pixels.width,
    originalWidth: original.width,
    originalHeight: original.height,
  };
}

// ---------------------------------------------------------------------------------------
// Native resolution (NaViT)

/** Preprocessing at the image's own resolution, for NaViT. */
export interface NativeConfig {
  /** Patch side; output sides are multiples of it. */
  patchSize: number;
  /** Largest output height (vit-pytorch NaViT `image_size`). */
  maxHeight: number;
  /** Largest output width (vit-pytorch NaViT `image_size`). */
  maxWidth: number;
  /** Largest number of patches (default maxHeight/p · maxWidth/p). */
  maxPatches?: number;
  /** Enlarge images smaller than the limits to fill them (default false: never upscale). */
  upscale?: boolean;
  channels: 1 | 3;
  /** Default "bilinear". */
  interpolation?: Interpolation;
  /** Default 1/255. */
  rescale?: number;
  mean: number[];
  std: number[];
}

/**
 * Output `[height, width]` of the NaViT policy for an image of `height × width`:
 * 1. scale `s = min(maxHeight/h, maxWidth/w, sqrt(maxPatches · p² / (h·w)))`, capped
 *    at 1 unless `upscale` (images are never enlarged just because they are small);
 * 2. each side becomes the nearest multiple of the patch size to `side · s`, at
 *    least one patch, at most the side limit;
 * 3. while rounding up left more than `maxPatches` patches, the side with more patches
 *    gives one back.
 * The aspect ratio is kept to within half a patch per side; sides that already fit and
 * are multiples of the patch size are left alone (no resampling at all).
 *
 * @example
 * ```ts
 * import { nativeSize } from "./preprocess.ts";
 * const [h, w] = nativeSize(300, 400, { patchSize: 16, maxHeight: 256, maxWidth: 256 });
 * if (h !== 192 || w !== 256) throw new Error(`${h}×${w}`);
 * ```
 */
export function nativeSize(
  height: number,
  width: number,
  config: Pick<NativeConfig, "patchSize" | "maxHeight" | "maxWidth" | "maxPatches" | "upscale">,
): [number, number] {
  const p = config.patchSize;
  const maxRows = Math.floor(config.maxHeight / p);
  const maxCols = Math.floor(config.maxWidth / p);
  const maxPatches = config.maxPatches ?? maxRows * maxCols;
  if (!(p >= 1 && maxRows >= 1 && maxCols >= 1 && maxPatches >= 1)) {
    throw new EdgeVitError(
      "invalid_config",
      `NaViT limits must allow one ${p}-px patch (max ${config.maxHeight}×${config.maxWidth}, ` +
        `${maxPatches} patches)`,
    );
  }
  let scale = Math.min(
    config.maxHeight / height,
    config.maxWidth / width,
    Math.sqrt((maxPatches * p * p) / (height * width)),
  );
  if (!config.upscale) scale = Math.min(scale, 1);
  let rows = Math.min(maxRows, Math.max(1, Math.round((height * scale) / p)));
  let cols = Math.min(maxCols, Math.max(1, Math.round((width * scale) / p)));
  // Rounding both sides up can overshoot the budget: the side with more patches gives one
  // back (src/models/navit.ts navitTargetSize mirrors this rule; keep them equal).
  while (rows * cols > maxPatches) {
    if (rows >= cols && rows > 1) rows--;
    else cols--;
  }
  return [rows * p, cols * p];
}

/**
 * Decodes one image and preprocesses it at (close to) its own resolution for NaViT:
 * see {@link nativeSize} for the size policy. No crop.
 *
 * @example
 * ```ts
 * import { preprocessNative } from "./preprocess.ts";
 * const png = Uint8Array.from(atob(
 *   "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgOiEHAAHQAPEkXJH0AAAAAElFTkSuQmCC",
 * ), (c) => c.charCodeAt(0));
 * const out = await preprocessNative(png, {
 *   patchSize: 8, maxHeight: 64, maxWidth: 64, channels: 3, mean: [0, 0, 0], std: [1, 1, 1],
 * });
 * // A 1×1 image becomes one 8×8 patch.
 * if (out.height !== 8 || out.width !== 8) throw new Error();
 * ```
 */
export async function preprocessNative(
  bytes: Uint8Array | ArrayBuffer,
  config: NativeConfig,
  options: PreprocessOptions = {},
): Promise<PreprocessedImage> {
  const image = await decodeImage(bytes, { ...options, channels: config.channels });
  return normalize(transformNative(image, config), nativeNorm(config), image);
}

/**
 * Builds a {@link NativeConfig} for a vit-pytorch NaViT from its kwargs (`image_size`,
 * `patch_size`, `channels`) and the manifest's `"preprocess"` object, whose
 * `interpolation`, `mean`, `std`, `channels` and `max_patches` apply (same defaults as
 * {@link plainPreprocess}: bilinear, mean 0, std 1).
 *
 * @example
 * ```ts
 * import { navitPreprocess } from "./preprocess.ts";
 * const config = navitPreprocess({}, { image_size: 64, patch_size: 8 });
 * if (config.maxHeight !== 64 || config.patchSize !== 8 || config.channels !== 3) throw new Error();
 * ```
 */
export function navitPreprocess(
  spec: PlainPreprocessSpec & { max_patches?: number } = {},
  model: { image_size?: number | number[]; patch_size?: number; channels?: number } = {},
): NativeConfig {
  const base = plainPreprocess({ ...spec, crop_pct: undefined }, model);
  const resize = base.resize as { height: number; width: number };
  const patchSize = model.patch_size;
  if (!patchSize || !Number.isInteger(patchSize) || patchSize < 1) {
    throw new EdgeVitError("invalid_config", `NaViT needs a positive patch_size, got ${patchSize}`);
  }
  return {
    patchSize,
    maxHeight: resize.height,
    maxWidth: resize.width,
    maxPatches: spec.max_patches,
    channels: base.channels,
    interpolation: base.interpolation,
    rescale: base.rescale,
    mean: base.mean,
    std: base.std,
  };
}

/** The geometric part of {@link preprocessNative} on decoded pixels. */
export function transformNative(image: RawImage, config: NativeConfig): RawImage {
  const [h, w] = nativeSize(image.height, image.width, config);
  return resize(image, w, h, config.interpolation ?? "bilinear");
}

function nativeNorm(config: NativeConfig): PreprocessConfig {
  return {
    channels: config.channels,
    interpolation: config.interpolation ?? "bilinear",
    resize: null,
    crop: null,
    rescale: config.rescale ?? 1 / 255,
    mean: broadcast(config.mean, config.channels, "mean"),
    std: broadcast(config.std, config.channels, "std"),
  };
}

// ---------------------------------------------------------------------------------------
// Validation helpers

function checkChannels(c: number, what: string): 1 | 3 {
  if (c !== 1 && c !== 3) {
    throw new EdgeVitError("invalid_config", `${what} must be 1 or 3 channels, got ${c}`);
  }
  return c;
}

function checkSize(height: number, width: number, what: string): void {
  const ok = (v: number) => Number.isInteger(v) && v >= 1 && v <= 16384;
  if (!ok(height) || !ok(width)) {
    throw new EdgeVitError("invalid_config", `${what} must be 1–16384 px, got ${height}×${width}`);
  }
}

function parseInterpolation(name: string, what: string): Interpolation {
  const known = ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"];
  if (!known.includes(name)) {
    throw new EdgeVitError(
      "unsupported",
      `${what} "${name}" is not supported; use one of ${known.join(", ")}`,
    );
  }
  return name as Interpolation;
}

function broadcast(values: number | number[], channels: number, what: string): number[] {
  const list = typeof values === "number" ? [values] : values;
  const out = list.length === 1 ? new Array(channels).fill(list[0]) : list.slice();
  if (out.length !== channels || out.some((v) => typeof v !== "number" || !Number.isFinite(v))) {
    throw new EdgeVitError(
      "invalid_config",
      `${what} must be 1 or ${channels} finite numbers, got ${JSON.stringify(values)}`,
    );
  }
  if (what.endsWith("std") && out.some((v) => v === 0)) {
    throw new EdgeVitError("invalid_config", `${what} must not contain 0`);
  }
  return out;
}

function zeros(n: number): number[] {
  return new Array(n).fill(0);
}

function ones(n: number): number[] {
  return new Array(n).fill(1);
}

/** Python 3 `round()` (half to even). */
function pyRound(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
