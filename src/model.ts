/**
 * `loadModel` and the {@link Model} it returns: the one entry point users, the server
 * and the tests call. A model is read from a folder, a URL or bytes
 * (`src/loaders/source.ts`), recognised as a vit-pytorch, Hugging Face or timm
 * checkpoint (`src/loaders/config.ts`), built by its architecture
 * (`src/models/registry.ts`) on the chosen backend, and wrapped with the checkpoint's
 * own image preprocessing.
 *
 * @module
 */

import type { Backend, Precision } from "./backends/backend.ts";
import {
  BACKEND_CHOICES,
  type BackendChoice as BackendName,
  selectBackend,
} from "./backends/select.ts";
import { EdgeVitError } from "./errors.ts";
import type { Background } from "./image/color.ts";
import { preprocess, preprocessNative } from "./image/preprocess.ts";
import type { CheckpointLibrary, JsonObject } from "./loaders/config.ts";
import { checkpointLabels, type ImagePipeline, imagePipelineFor } from "./loaders/preprocess.ts";
import { isQuantizedCheckpoint } from "./loaders/quantized.ts";
import { type ModelSource, readCheckpoint, type SourceOptions } from "./loaders/source.ts";
import type { AtsSettings } from "./models/ats_vit.ts";
import { buildArchitecture, requireArchitecture } from "./models/registry.ts";
import type {
  ForwardOptions,
  ForwardOutput,
  PackedImage,
  VisionArchitecture,
} from "./models/types.ts";
import { type OnnxSource, wantsOrt } from "./backends/ort/ort_model.ts";
import type { OrtOptions } from "./backends/ort/ort_loader.ts";

/**
 * Which backend to run on: a name (`"auto"`, `"wasm"`, `"webgpu"`, `"webgpu-fallback"`
 * for a software adapter, `"reference"`) or a {@link Backend} instance.
 */
export type BackendChoice = BackendName | Backend;

/** Options of {@link loadModel}. */
export interface LoadModelOptions extends SourceOptions {
  /**
   * `"auto"` (default): WebGPU on a real GPU, else WASM-SIMD. `"wasm"`, `"webgpu"`,
   * `"webgpu-fallback"` (a software adapter), `"reference"` (plain TypeScript, slow,
   * exact), or a {@link Backend} you created and keep owning (`close()` leaves it open).
   * `"ort"`: an ONNX model (a .onnx path or URL, a folder with model.onnx, bytes or
   * `{onnx, config?}`) run by onnxruntime-web; `.onnx` sources pick it by themselves.
   */
  backend?: BackendChoice | "ort";
  /** onnxruntime knobs for `backend: "ort"` (execution provider, threads, config). */
  ort?: OrtOptions;
  /**
   * `"f32"` (default) or `"int8"` (weights quantized per output channel at load). A
   * checkpoint saved int8 (`deno task quantize`, see `src/loaders/quantized.ts`) always
   * runs at `"int8"`: it holds no float weights.
   */
  precision?: Precision;
  /** Class names, overriding the checkpoint's. */
  labels?: readonly string[];
  /** Largest image (width × height) `classify` decodes; checked from the header first. */
  maxPixels?: number;
  /** Largest image side `classify` decodes; checked from the header first. */
  maxSide?: number;
  /** Colour under transparent pixels (default `"white"`). */
  background?: Background;
  /** Where backend fallback reasons are logged (default `console.warn`). */
  log?: (message: string) => void;
  /**
   * Switches Adaptive Token Sampling on for a ViT with a CLS token (vit-pytorch `ViT`,
   * Hugging Face, timm): `{maxTokensPerDepth: 64}` keeps at most 64 patch tokens per
   * layer. Requests may lower it further with `tokenBudget`.
   */
  ats?: AtsSettings;
}

/** A model's description. */
export interface ModelConfig {
  library: CheckpointLibrary;
  /** The checkpoint's architecture name (`"ViT"`, `"ViTForImageClassification"`, ...). */
  architecture: string;
  numClasses: number;
  channels: number;
  /** Fixed input size, or null for any-resolution models (NaViT). */
  inputSize: { height: number; width: number } | null;
  patchSize: number;
  /** How `classify` turns image bytes into pixels (see `src/image/preprocess.ts`). */
  preprocess: ImagePipeline;
  /** The checkpoint's config.json as read. */
  checkpoint: JsonObject;
}

/** One class of a {@link Model.classify} answer. */
export interface Classification {
  label: string;
  index: number;
  /** Softmax probability. */
  score: number;
}

/** Options of {@link Model.classify}. */
export interface ClassifyOptions extends ForwardOptions {
  /** How many classes to return, best first (default 5, at most numClasses). */
  topK?: number;
}

/** An image ready for the model: normalized `[channels, height, width]`. */
export interface PreparedPixels {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** Per-image options of {@link Model.preprocess}. */
interface ImageOptions {
  maxPixels?: number;
  maxSide?: number;
  background?: Background;
}

/**
 * A loaded model.
 *
 * @example
 * ```ts
 * import { loadModel } from "./model.ts";
 * const model = await loadModel("../shared/fixtures/parity/vitpytorch-vit-cls", { backend: "reference" });
 * const logits = await model.forward(new Float32Array(2 * 3 * 32 * 32), [2, 3, 32, 32]);
 * console.log(logits.length === 2 * model.numClasses); // true
 * model.close();
 * ```
 */
export class Model {
  /** Number of classes the head predicts. */
  readonly numClasses: number;
  /** Class names, `labels[i]` for logit `i`. */
  readonly labels: readonly string[];
  readonly config: Readonly<ModelConfig>;
  /** Name of the backend it runs on (`"wasm"`, `"webgpu"`, `"reference"`). */
  readonly backend: string;
  readonly precision: Precision;
  /** The architecture itself, for callers that need more than logits. */
  readonly architecture: VisionArchitecture;
  readonly #backend: Backend;
  readonly #ownsBackend: boolean;
  readonly #imageOptions: ImageOptions;
  #closed = false;

  /** Use {@link loadModel}. */
  constructor(
    architecture: VisionArchitecture,
    config: ModelConfig,
    labels: readonly string[],
    options: { ownsBackend: boolean } & ImageOptions,
  ) {
    this.architecture = architecture;
    this.#backend = architecture.backend;
    this.backend = architecture.backend.name;
    this.#ownsBackend = options.ownsBackend;
    this.precision = architecture.precision;
    this.numClasses = architecture.numClasses;
    this.labels = Object.freeze([...labels]);
    this.config = Object.freeze(config);
    this.#imageOptions = {
      maxPixels: options.maxPixels,
      maxSide: options.maxSide,
      background: options.background,
    };
  }

  /**
   * Runs normalized pixels through the model.
   *
   * @param pixels `[n, channels, height, width]` row-major, normalized
   * @returns logits `[n, numClasses]` row-major
   * @throws {EdgeVitError} `invalid_argument` when the shape does not fit the model
   */
  async forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number] | readonly number[],
    options?: ForwardOptions,
  ): Promise<Float32Array> {
    return (await this.run(pixels, shape, options)).logits;
  }

  /** Like {@link forward} but returns everything the architecture reports (tokens, ATS ids). */
  run(
    pixels: Float32Array,
    shape: readonly [number, number, number, number] | readonly number[],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    this.#checkOpen();
    if (!Array.isArray(shape) || shape.length !== 4) {
      throw new EdgeVitError(
        "invalid_argument",
        `shape must be [n, channels, height, width], got ${JSON.stringify(shape)}`,
      );
    }
    return this.architecture.forward(
      pixels,
      shape as unknown as readonly [number, number, number, number],
      options,
    );
  }

  /**
   * Runs images at their own resolutions, packed into sequences (NaViT only).
   *
   * @returns logits `[images, numClasses]`, row `i` for image `i`
   */
  async forwardPacked(
    images: readonly PackedImage[],
    groups?: readonly (readonly number[])[],
    options?: ForwardOptions,
  ): Promise<Float32Array> {
    this.#checkOpen();
    if (!this.architecture.forwardPacked) {
      throw new EdgeVitError(
        "invalid_argument",
        `${this.config.architecture} takes a fixed input size; use forward()`,
      );
    }
    return (await this.architecture.forwardPacked(images, groups, options)).logits;
  }

  /**
   * Decodes, resizes and normalizes one image as the checkpoint's training pipeline did.
   *
   * @throws {EdgeVitError} `invalid_image`, `unsupported_media_type`, `too_large`
   */
  async preprocess(image: Uint8Array): Promise<PreparedPixels> {
    this.#checkOpen();
    if (!(image instanceof Uint8Array)) {
      throw new EdgeVitError("invalid_argument", "an image must be given as a Uint8Array");
    }
    const pipeline = this.config.preprocess;
    const out = pipeline.kind === "fixed"
      ? await preprocess(image, pipeline.config, this.#imageOptions)
      : await preprocessNative(image, pipeline.config, this.#imageOptions);
    return { data: out.data, channels: out.channels, height: out.height, width: out.width };
  }

  /**
   * Classifies encoded images (JPEG, PNG, WebP).
   *
   * @param images one image's bytes, or a list of them
   * @returns for one image, its top classes; for a list, one such list per image
   */
  classify(image: Uint8Array, options?: ClassifyOptions): Promise<Classification[]>;
  classify(images: readonly Uint8Array[], options?: ClassifyOptions): Promise<Classification[][]>;
  async classify(
    input: Uint8Array | readonly Uint8Array[],
    options: ClassifyOptions = {},
  ): Promise<Classification[] | Classification[][]> {
    const single = input instanceof Uint8Array;
    const images = single ? [input] : input;
    if (!Array.isArray(images) || images.length === 0) {
      throw new EdgeVitError("invalid_argument", "classify needs an image or a non-empty list");
    }
    const topK = options.topK ?? 5;
    if (!Number.isSafeInteger(topK) || topK < 1) {
      throw new EdgeVitError("invalid_argument", `topK must be a positive integer, got ${topK}`);
    }
    const prepared = await Promise.all(images.map((bytes) => this.preprocess(bytes)));
    const forwardOptions: ForwardOptions = { tokenBudget: options.tokenBudget };
    let logits: Float32Array;
    if (this.architecture.inputSize) {
      const { channels, height, width } = prepared[0];
      const pixels = new Float32Array(prepared.length * channels * height * width);
      prepared.forEach((p, i) => pixels.set(p.data, i * p.data.length));
      logits = await this.forward(
        pixels,
        [prepared.length, channels, height, width],
        forwardOptions,
      );
    } else {
      logits = await this.forwardPacked(
        prepared.map((p) => ({ data: p.data, height: p.height, width: p.width })),
        undefined,
        forwardOptions,
      );
    }
    const results = prepared.map((_, i) =>
      topClasses(logits.subarray(i * this.numClasses, (i + 1) * this.numClasses), this.labels, topK)
    );
    return single ? results[0] : results;
  }

  /** Frees the weights (and the backend when `loadModel` created it). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.architecture.dispose();
    if (this.#ownsBackend) this.#backend.dispose();
  }

  #checkOpen(): void {
    if (this.#closed) throw new EdgeVitError("invalid_argument", "the model was closed");
  }
}

/**
 * Softmax over one row of logits and the `topK` best classes, best first (ties keep
 * the lower index first).
 *
 * @example
 * ```ts
 * import { topClasses } from "./model.ts";
 * const top = topClasses(new Float32Array([0, 2, 1]), ["a", "b", "c"], 2);
 * console.log(top.map((c) => c.label)); // ["b", "c"]
 * ```
 */
export function topClasses(
  logits: Float32Array,
  labels: readonly string[],
  topK: number,
): Classification[] {
  let max = -Infinity;
  for (const value of logits) if (value > max) max = value;
  let total = 0;
  const exp = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) {
    exp[i] = Math.exp(logits[i] - max);
    total += exp[i];
  }
  const order = Array.from(logits.keys()).sort((a, b) => exp[b] - exp[a] || a - b);
  return order.slice(0, Math.min(topK, logits.length)).map((index) => ({
    label: labels[index] ?? String(index),
    index,
    score: exp[index] / total,
  }));
}

/**
 * Loads a model.
 *
 * @param source a folder path, a `file:` / `http(s):` URL of the folder, or
 *   `{config, weights, labels?}` with the bytes (no file system needed)
 * @throws {EdgeVitError} `invalid_config`, `invalid_checkpoint`, `unsupported`
 *
 * @example
 * ```ts
 * import { loadModel } from "./model.ts";
 * const model = await loadModel("../shared/fixtures/parity/hf-vit", { backend: "reference" });
 * console.log(model.numClasses, model.labels[0]); // 10 "class_0"
 * model.close();
 * ```
 */
export async function loadModel(
  source: ModelSource | OnnxSource,
  options: LoadModelOptions = {},
): Promise<Model> {
  if (wantsOrt(source, options.backend)) {
    // Lazy: onnxruntime and its wrapper load only for ONNX models.
    const { loadOnnxAsModel } = await import("./backends/ort/ort_loader.ts");
    return await loadOnnxAsModel(source as OnnxSource, options);
  }
  const precision = options.precision ?? "f32";
  if (precision !== "f32" && precision !== "int8") {
    throw new EdgeVitError(
      "invalid_argument",
      `precision must be "f32" or "int8", got ${precision}`,
    );
  }
  const loaded = await readCheckpoint(source as ModelSource, options);
  const { checkpoint, weights } = loaded;
  const entry = requireArchitecture(checkpoint);
  const int8Checkpoint = isQuantizedCheckpoint(checkpoint.config, weights, checkpoint.source);
  // "ort" never gets here: wantsOrt took it above.
  const choice = (options.backend ?? "auto") as BackendChoice;
  const { backend, owned } = await resolveBackend(choice, options.log);
  let architecture: VisionArchitecture;
  try {
    architecture = await buildArchitecture(entry, {
      checkpoint,
      weights,
      backend,
      precision: int8Checkpoint ? "int8" : precision,
      ats: options.ats,
    });
  } catch (error) {
    if (owned) backend.dispose();
    throw error;
  }
  try {
    weights.assertAllUsed();
    const labels = options.labels ?? loaded.labels ?? checkpointLabels(checkpoint) ??
      Array.from({ length: architecture.numClasses }, (_, i) => `class_${i}`);
    if (labels.length !== architecture.numClasses) {
      throw new EdgeVitError(
        "invalid_config",
        `${checkpoint.source}: ${labels.length} labels for ${architecture.numClasses} classes`,
      );
    }
    const preprocess = imagePipelineFor(checkpoint, architecture);
    const config: ModelConfig = {
      library: checkpoint.library,
      architecture: checkpoint.architecture,
      numClasses: architecture.numClasses,
      channels: architecture.channels,
      inputSize: architecture.inputSize,
      patchSize: architecture.patchSize,
      preprocess,
      checkpoint: checkpoint.config,
    };
    return new Model(architecture, config, labels, {
      ownsBackend: owned,
      maxPixels: options.maxPixels,
      maxSide: options.maxSide,
      background: options.background,
    });
  } catch (error) {
    architecture.dispose();
    if (owned) backend.dispose();
    throw error;
  }
}

/**
 * Creates the backend a choice names (see `src/backends/select.ts` for "auto").
 *
 * @returns the backend and whether the caller must dispose it
 * @throws {EdgeVitError} `invalid_argument` for an unknown name, `unsupported` /
 * `backend_failure` when an explicitly named backend cannot run here
 */
export async function resolveBackend(
  choice: BackendChoice,
  log?: (message: string) => void,
): Promise<{ backend: Backend; owned: boolean }> {
  if (typeof choice === "object" && choice !== null) return { backend: choice, owned: false };
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new EdgeVitError(
      "invalid_argument",
      `backend must be one of ${BACKEND_CHOICES.join(", ")} or a Backend, got ${
        JSON.stringify(choice)
      }`,
    );
  }
  const { backend } = await selectBackend({ backend: choice, log });
  return { backend, owned: true };
}
