/**
 * What every architecture file in src/models/ provides once built from a config and
 * weights: a forward pass over normalized pixels that calls backend ops only.
 *
 * @module
 */

import type { Backend, Precision } from "../backends/backend.ts";

/** One image at its own resolution, normalized, `[channels, height, width]` (NaViT). */
export interface PackedImage {
  /** `[channels, height, width]` row-major, already normalized. */
  data: Float32Array;
  height: number;
  width: number;
}

/** Per-call knobs. */
export interface ForwardOptions {
  /**
   * ATS token budget: a number (every ATS layer keeps at most that many patch tokens)
   * or one budget per layer. Only lowers the checkpoint's budgets.
   */
  tokenBudget?: number | readonly number[];
  /** Return the kept token ids per ATS layer. */
  returnTokenIds?: boolean;
}

/** What a forward pass returns. */
export interface ForwardOutput {
  /** `[images, numClasses]` row-major. */
  logits: Float32Array;
  /** Tokens each image carried through the encoder, averaged over layers (cost measure). */
  tokensPerImage: number[];
  /**
   * ATS only, when asked: `tokenIds[layer][image]` = kept patch indices (CLS excluded,
   * counted from 0 in the original patch grid), ascending.
   */
  tokenIds?: Int32Array[][];
}

/** Linear layers an int8 model keeps float32: how many, out of how many, and why. */
export interface KeptFloatReport {
  layers: number;
  of: number;
  reason: string;
}

/** An architecture built on a backend with its weights uploaded. */
export interface VisionArchitecture {
  readonly numClasses: number;
  /** Channels the model expects (3 for RGB, 1 for grayscale). */
  readonly channels: number;
  /** Fixed input size, or null when any size works (NaViT). */
  readonly inputSize: { height: number; width: number } | null;
  readonly patchSize: number;
  readonly precision: Precision;
  /**
   * At int8: linear layers the architecture keeps float32 because quantizing them would
   * break its outputs (NaViT with sharp attention), and why; absent or null when every
   * linear layer runs int8.
   */
  readonly keptFloat?: KeptFloatReport | null;
  readonly backend: Backend;
  /** `pixels`: `[n, channels, height, width]` normalized. */
  forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput>;
  /** Only architectures that take any resolution (NaViT). */
  forwardPacked?(
    images: readonly PackedImage[],
    groups?: readonly (readonly number[])[],
    options?: ForwardOptions,
  ): Promise<ForwardOutput>;
  /** Frees the uploaded weights. */
  dispose(): void;
}
