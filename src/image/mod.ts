/**
 * Images: from JPEG/PNG/WebP bytes to the normalized float32 `[C, H, W]` tensor a model
 * eats, made exactly as the checkpoint's own training pipeline made it (bit-exact
 * against PIL + torchvision / Hugging Face image processors on the test photos).
 *
 * ## For loaders: two calls
 * ```ts ignore
 * // once, when the model loads: from the checkpoint's own config
 * const config = timmPreprocess(timmJson.pretrained_cfg);       // timm folders
 * const config = hfPreprocess(preprocessorJson ?? {}, "vit");   // HF ViT / DeiT ("deit")
 * const config = plainPreprocess(manifest.preprocess, manifest.kwargs); // vit-pytorch, ours
 * // per image
 * const { data, channels, height, width } = await preprocess(bytes, config, { maxPixels });
 * ```
 * `data` is planar `[channels, height, width]`; stack images for an NCHW batch. NaViT
 * keeps each image near its own size: `navitPreprocess(manifest.preprocess, kwargs)`
 * then `preprocessNative(bytes, config)`; see {@link nativeSize} for the policy.
 * Pixels already decoded (datasets) go through `preprocessPixels(image, config)`.
 *
 * ## Steps, in order
 * 1. {@link sniffImage}: format and size from the header; {@link checkLimits} throws
 *    `too_large` before a pixel is allocated (defaults 40 MP, 16384 px a side).
 * 2. {@link decodeImage}: `@jsquash` wasm decoders (libjpeg-turbo/MozJPEG, Rust png,
 *    libwebp); EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF) applied like
 *    `ImageOps.exif_transpose`; alpha composited onto white (default) or black like
 *    `Image.alpha_composite`; optional PIL "L" grayscale (before resizing).
 * 3. {@link transformImage}: Pillow-exact resampling ({@link resize}: nearest, bilinear,
 *    bicubic, box, hamming, lanczos, antialiased like Pillow) and center crop placed as
 *    torchvision (half-to-even) or Hugging Face (floor) places it.
 * 4. {@link normalizeImage}: `(x · rescale − mean) / std` with float32 rounding.
 *
 * Errors are `EdgeVitError`s (src/errors.ts): `invalid_image` (empty, corrupt, truncated, zero
 * size), `unsupported_media_type` (GIF, BMP, TIFF, HEIF, animated WebP, CMYK JPEG, ...),
 * `too_large`, `invalid_config` / `unsupported` (bad preprocessing configs) and
 * `backend_failure` (a decoder's wasm could not be loaded).
 *
 * Differences from the reference pipelines, on purpose: EXIF orientation is applied
 * (timm/torchvision ignore it; HF `load_image` applies it), and alpha is composited
 * (timm's `convert("RGB")` drops it). 16-bit PNGs are reduced to their high byte, as
 * PIL does for 16-bit RGB (PIL clips 16-bit grayscale to 255 instead, which is a quirk
 * not reproduced).
 *
 * @example
 * ```ts
 * import { preprocess, timmPreprocess } from "./mod.ts";
 * const png = Uint8Array.from(atob(
 *   "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgOiEHAAHQAPEkXJH0AAAAAElFTkSuQmCC",
 * ), (c) => c.charCodeAt(0));
 * const config = timmPreprocess({ input_size: [3, 32, 32], crop_pct: 0.9, mean: [0.5], std: [0.5] });
 * const input = await preprocess(png, config);
 * if (input.data.length !== 3 * 32 * 32 || input.height !== 32) throw new Error();
 * ```
 *
 * @module
 */

export { type Background, flattenAlpha, toGrayscale } from "./color.ts";
export { centerCrop, type CropOffsets } from "./crop.ts";
export {
  type DecodedImage,
  decodeImage,
  type DecodeOptions,
  type DecoderModules,
  initDecoders,
} from "./decode.ts";
export { applyOrientation, readOrientation } from "./exif.ts";
export {
  type CropSpec,
  hfPreprocess,
  type HfPreprocessorConfig,
  IMAGENET_DEFAULT_MEAN,
  IMAGENET_DEFAULT_STD,
  IMAGENET_STANDARD_MEAN,
  IMAGENET_STANDARD_STD,
  type NativeConfig,
  nativeSize,
  navitPreprocess,
  normalizeImage,
  plainPreprocess,
  type PlainPreprocessSpec,
  preprocess,
  type PreprocessConfig,
  type PreprocessedImage,
  preprocessNative,
  type PreprocessOptions,
  preprocessPixels,
  type ResizeSpec,
  resizeTarget,
  timmPreprocess,
  type TimmPretrainedCfg,
  transformImage,
  transformNative,
} from "./preprocess.ts";
export type { RawImage } from "./raw_image.ts";
export { type Interpolation, PIL_RESAMPLE, resize } from "./resize.ts";
export {
  checkLimits,
  DEFAULT_MAX_PIXELS,
  DEFAULT_MAX_SIDE,
  type ImageFormat,
  type ImageInfo,
  type ImageLimits,
  sniffImage,
} from "./sniff.ts";
