/**
 * The narrow interface between the HTTP layer and the engine: what the server needs
 * from a loaded model (decode one image, run a batch of decoded images, describe
 * itself). Keeping it this small lets the handler, batcher and metrics stay ignorant
 * of architectures: fixed-size models batch `[n, c, h, w]`, NaViT models pack images
 * at their own resolutions, both behind {@link ServedModel.infer}.
 *
 * @module
 */

/** What an image's header says, read without decoding the pixels. */
export interface ImageHeader {
  format: string;
  width: number;
  height: number;
}

/** One decoded, resized and normalized image, ready for the model. */
export interface PreparedImage {
  /** `[channels, height, width]` row-major, normalized. */
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
  /** Patch tokens this image costs in the encoder (counts towards a batch's token budget). */
  tokens: number;
}

/** Per-request knobs that must agree within one forward call. */
export interface InferenceOptions {
  /** ATS token budget (patch tokens kept per ATS layer); only lowers the checkpoint's. */
  tokenBudget?: number;
}

/** A batch's result. */
export interface InferenceOutput {
  /** `[images, numClasses]` row-major, row `i` for image `i`. */
  logits: Float32Array;
  /** Tokens each image carried through the encoder. */
  tokensPerImage: number[];
}

/** A loaded model as the server uses it. */
export interface ServedModel {
  /** The name clients pass as `model`. */
  readonly name: string;
  readonly numClasses: number;
  readonly labels: readonly string[];
  /** Backend the model runs on ("wasm", "reference", ...). */
  readonly backend: string;
  readonly precision: string;
  /** True when images run at their own resolution, packed into sequences (NaViT). */
  readonly packed: boolean;
  /** What `GET /v1/models` shows about it (config, input size, ...). */
  describe(): Record<string, unknown>;
  /**
   * Decodes, resizes and normalizes one image.
   *
   * @throws {import("../errors.ts").EdgeVitError} `invalid_image`, `unsupported_media_type`, `too_large`
   */
  preprocess(bytes: Uint8Array): Promise<PreparedImage>;
  /** Runs a batch; all images came from {@link preprocess} of this model. */
  infer(images: readonly PreparedImage[], options: InferenceOptions): Promise<InferenceOutput>;
  /** Runs one throwaway batch so the first request does not pay for compilation and pools. */
  warmup(): Promise<void>;
  /** Frees the model. */
  close(): void;
}

/**
 * Reads an image's format and dimensions from its header only (no pixel allocation)
 * and checks them against the limits.
 *
 * @throws {import("../errors.ts").EdgeVitError} `unsupported_media_type` for unknown formats,
 *   `invalid_image` for a corrupt or truncated header, `too_large` past the limits
 */
export type ImageProbe = (bytes: Uint8Array, limits: { maxPixels: number }) => ImageHeader;
