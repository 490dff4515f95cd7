/**
 * Turns an architecture (any {@link VisionArchitecture}) and its preprocessing into the
 * {@link ServedModel} the handler batches over: fixed-size models stack a batch into
 * one `[n, c, h, w]` forward; any-resolution models (NaViT) hand the images at their own
 * sizes to `forwardPacked`, which packs them into sequences without padding.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import type { ForwardOptions, VisionArchitecture } from "../models/types.ts";
import type { InferenceOptions, InferenceOutput, PreparedImage, ServedModel } from "./engine.ts";

/** A normalized image, `[channels, height, width]`. */
export interface NormalizedImage {
  data: Float32Array;
  height: number;
  width: number;
}

/** Options of {@link servedModelFromArchitecture}. */
export interface ArchitectureServingOptions {
  name: string;
  architecture: VisionArchitecture;
  /** Class names; indexes stand in for missing ones. */
  labels?: readonly string[];
  /**
   * Decodes and normalizes one image: to the model's input size for fixed-size models,
   * to its own (policy-limited) size for packed ones.
   */
  preprocess(bytes: Uint8Array): Promise<NormalizedImage>;
  /** Extra fields for `GET /v1/models` (config, preprocessing, ...). */
  describe?: () => Record<string, unknown>;
  /** Extra warm-up (e.g. compiling image decoders) run before the warm-up forward. */
  warmup?: () => Promise<void>;
  /** Frees whatever owns the architecture; default: `architecture.dispose()`. */
  close?: () => void;
}

/**
 * Wraps an architecture for serving.
 *
 * @example
 * ```ts ignore
 * import { servedModelFromArchitecture } from "./served_model.ts";
 * const served = servedModelFromArchitecture({ name: "vit", architecture, preprocess });
 * const image = await served.preprocess(pngBytes);
 * const { logits } = await served.infer([image], {});
 * ```
 */
export function servedModelFromArchitecture(options: ArchitectureServingOptions): ServedModel {
  const { architecture } = options;
  const packed = architecture.inputSize === null;
  if (packed && !architecture.forwardPacked) {
    throw new EdgeVitError(
      "unsupported",
      `${options.name}: a model without a fixed input size must implement forwardPacked`,
    );
  }
  const patch = architecture.patchSize;
  const channels = architecture.channels;
  const labels = Array.from(
    { length: architecture.numClasses },
    (_, i) => options.labels?.[i] ?? String(i),
  );
  const tokensOf = (height: number, width: number) =>
    Math.max(1, Math.floor(height / patch) * Math.floor(width / patch));

  const prepare = (image: NormalizedImage): PreparedImage => {
    if (image.data.length !== channels * image.height * image.width) {
      throw new EdgeVitError(
        "invalid_argument",
        `${options.name}: preprocessing gave ${image.data.length} values for a ${channels}×${image.height}×${image.width} image`,
      );
    }
    return { ...image, channels, tokens: tokensOf(image.height, image.width) };
  };

  const infer = async (
    images: readonly PreparedImage[],
    inference: InferenceOptions,
  ): Promise<InferenceOutput> => {
    const forwardOptions: ForwardOptions = inference.tokenBudget === undefined
      ? {}
      : { tokenBudget: inference.tokenBudget };
    if (packed) {
      const output = await architecture.forwardPacked!(images, undefined, forwardOptions);
      return { logits: output.logits, tokensPerImage: output.tokensPerImage };
    }
    const { height, width } = architecture.inputSize!;
    const size = channels * height * width;
    const pixels = new Float32Array(images.length * size); // [n, c, h, w]
    images.forEach((image, i) => {
      if (image.height !== height || image.width !== width) {
        throw new EdgeVitError(
          "invalid_argument",
          `${options.name}: image is ${image.height}×${image.width}, the model takes ${height}×${width}`,
        );
      }
      pixels.set(image.data, i * size);
    });
    const output = await architecture.forward(
      pixels,
      [images.length, channels, height, width],
      forwardOptions,
    );
    return { logits: output.logits, tokensPerImage: output.tokensPerImage };
  };

  return {
    name: options.name,
    numClasses: architecture.numClasses,
    labels,
    backend: architecture.backend.name,
    precision: architecture.precision,
    packed,
    describe: () => ({
      inputSize: architecture.inputSize,
      patchSize: patch,
      channels,
      ...options.describe?.(),
    }),
    async preprocess(bytes) {
      return prepare(await options.preprocess(bytes));
    },
    infer,
    async warmup() {
      await options.warmup?.();
      const side = architecture.inputSize ?? { height: patch * 4, width: patch * 4 };
      const image: PreparedImage = {
        data: new Float32Array(channels * side.height * side.width),
        channels,
        height: side.height,
        width: side.width,
        tokens: tokensOf(side.height, side.width),
      };
      await infer([image], {});
    },
    close: options.close ?? (() => architecture.dispose()),
  };
}
