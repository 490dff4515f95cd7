/**
 * Accuracy of a loaded {@link Model} on a dataset split of decoded grayscale images,
 * measured by the engine itself: each image goes through the model's own preprocessing
 * (`model.config.preprocess`, the pipeline `classify` uses) and the model's forward pass,
 * in batches. This is what `deno task eval` prints; `models/train/eval_torch.py` computes
 * the same figure in PyTorch.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { normalizeImage, preprocessPixels, resize, transformNative } from "../image/mod.ts";
import type { RawImage } from "../image/raw_image.ts";
import type { Model } from "../model.ts";
import type { ForwardOptions, PackedImage } from "../models/types.ts";
import type { FashionMnistSplit } from "./fashion_mnist.ts";

/** Options of {@link evaluateModel}. */
export interface EvaluateOptions {
  /** Evaluate the first `limit` images only (default: all). */
  limit?: number;
  /** Images per forward pass (default 100). */
  batch?: number;
  /**
   * Resize every image to this size first (Pillow-exact bilinear, the filter
   * `eval_torch.py --size` uses), as if users had sent images of that size; the
   * model's preprocessing then takes it from there (fixed-size models resize it back to
   * their input size, NaViT keeps it).
   */
  size?: { height: number; width: number } | null;
  /** Passed to every forward pass (ATS `tokenBudget`). */
  forward?: ForwardOptions;
  /** Untimed forward passes on the first batch before timing (default 1). */
  warmupBatches?: number;
}

/** What {@link evaluateModel} measured. */
export interface EvaluationResult {
  /** Fraction of images whose top class is the label (0–1). */
  accuracy: number;
  correct: number;
  images: number;
  /** Images per second through preprocessing and the forward pass (loading excluded). */
  imagesPerSecond: number;
  /** Wall milliseconds per image, the inverse of imagesPerSecond. */
  msPerImage: number;
  seconds: number;
  /** Tokens per image through the encoder, averaged over layers, as the model reports it. */
  tokensPerImage: number;
  /** Size the images had when they reached the model's own preprocessing. */
  inputSize: string;
  /** Size the model ran them at (NaViT: varies with the input). */
  modelInputSize: string;
  batch: number;
  /** Predicted class per image, in dataset order. */
  predictions: Int32Array;
}

/**
 * Runs a split through a model and counts correct top-1 predictions.
 *
 * @throws {EdgeVitError} `invalid_argument` for bad options or a model whose classes do
 *   not cover the labels
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "../model.ts";
 * import { loadFashionMnist } from "./fashion_mnist.ts";
 * import { evaluateModel } from "./evaluate.ts";
 * const model = await loadModel("models/vit-fmnist");
 * const result = await evaluateModel(model, await loadFashionMnist("test"), { limit: 200 });
 * console.log(result.accuracy > 0.8, result.images); // true 200
 * model.close();
 * ```
 */
export async function evaluateModel(
  model: Model,
  split: FashionMnistSplit,
  options: EvaluateOptions = {},
): Promise<EvaluationResult> {
  const limit = options.limit ?? split.count;
  const batch = options.batch ?? 100;
  const warmupBatches = options.warmupBatches ?? 1;
  checkCount(limit, "limit", 1);
  checkCount(batch, "batch", 1);
  checkCount(warmupBatches, "warmupBatches", 0);
  let maxLabel = 0;
  for (const label of split.labels) maxLabel = Math.max(maxLabel, label);
  if (model.numClasses <= maxLabel) {
    throw new EdgeVitError(
      "invalid_argument",
      `the model predicts ${model.numClasses} classes, fewer than the dataset's labels need`,
    );
  }
  const images = Math.min(limit, split.count);
  const size = options.size ?? null;
  if (size) {
    checkCount(size.height, "size height", 1);
    checkCount(size.width, "size width", 1);
  }
  const runBatch = async (start: number, end: number) => {
    const prepared: PackedImage[] = [];
    for (let i = start; i < end; i++) prepared.push(prepareImage(model, split, i, size));
    return await forwardBatch(model, prepared, options.forward);
  };

  for (let w = 0; w < warmupBatches; w++) await runBatch(0, Math.min(batch, images));

  const predictions = new Int32Array(images);
  let correct = 0;
  let tokens = 0;
  let modelInputSize = "";
  const t0 = performance.now();
  for (let start = 0; start < images; start += batch) {
    const end = Math.min(images, start + batch);
    const out = await runBatch(start, end);
    modelInputSize = out.size;
    for (let k = 0; k < end - start; k++) {
      const row = out.logits.subarray(k * model.numClasses, (k + 1) * model.numClasses);
      const predicted = argmax(row);
      predictions[start + k] = predicted;
      if (predicted === split.labels[start + k]) correct++;
      tokens += out.tokensPerImage[k] ?? 0;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    accuracy: correct / images,
    correct,
    images,
    imagesPerSecond: images / seconds,
    msPerImage: (seconds * 1000) / images,
    seconds,
    tokensPerImage: tokens / images,
    inputSize: size ? `${size.height}x${size.width}` : `${split.height}x${split.width}`,
    modelInputSize,
    batch,
    predictions,
  };
}

/** One dataset image through the optional resize and the model's own preprocessing. */
function prepareImage(
  model: Model,
  split: FashionMnistSplit,
  index: number,
  size: { height: number; width: number } | null,
): PackedImage {
  const plane = split.height * split.width;
  let image: RawImage = {
    data: split.images.subarray(index * plane, (index + 1) * plane), // [h, w]
    width: split.width,
    height: split.height,
    channels: 1,
  };
  if (size) image = resize(image, size.width, size.height, "bilinear");
  const pipeline = model.config.preprocess;
  if (pipeline.kind === "fixed") {
    const out = preprocessPixels(image, pipeline.config);
    return { data: out.data, height: out.height, width: out.width };
  }
  const native = transformNative(image, pipeline.config);
  const pixels = pipeline.config.channels === 3 ? grayToRgb(native) : native;
  const data = normalizeImage(pixels, {
    rescale: pipeline.config.rescale ?? 1 / 255,
    mean: broadcast(pipeline.config.mean, pixels.channels),
    std: broadcast(pipeline.config.std, pixels.channels),
  });
  return { data, height: native.height, width: native.width };
}

async function forwardBatch(
  model: Model,
  images: PackedImage[],
  options: ForwardOptions | undefined,
): Promise<{ logits: Float32Array; tokensPerImage: number[]; size: string }> {
  const { height, width } = images[0];
  if (model.config.preprocess.kind === "native") {
    const packed = model.architecture.forwardPacked;
    if (!packed) throw new EdgeVitError("unsupported", "the model cannot run packed images");
    const out = await packed.call(model.architecture, images, undefined, options);
    const uniform = images.every((im) => im.height === height && im.width === width);
    return { ...out, size: uniform ? `${height}x${width}` : "mixed" };
  }
  const channels = model.config.channels;
  const stride = channels * height * width;
  const pixels = new Float32Array(images.length * stride); // [n, c, h, w]
  images.forEach((im, i) => pixels.set(im.data, i * stride));
  const out = await model.run(pixels, [images.length, channels, height, width], options);
  return { ...out, size: `${height}x${width}` };
}

function grayToRgb(image: RawImage): RawImage {
  const n = image.width * image.height;
  const rgb = new Uint8Array(3 * n); // [h, w, 3]
  for (let i = 0; i < n; i++) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = image.data[i];
  return { data: rgb, width: image.width, height: image.height, channels: 3 };
}

function broadcast(values: number[], channels: number): number[] {
  return values.length === channels ? values : new Array(channels).fill(values[0]);
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function checkCount(value: number, what: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new EdgeVitError(
      "invalid_argument",
      `${what} must be an integer ≥ ${min}, got ${value}`,
    );
  }
}
