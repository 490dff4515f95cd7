/**
 * `loadModel(…, { backend: "ort" })`: an ONNX classifier wrapped as an edgevit
 * {@link Model}, so `forward`, `classify` (with the checkpoint's own preprocessing),
 * `numClasses`, `labels`, `config`, `close` and the server work unchanged. The graph runs
 * as a whole in onnxruntime-web; edgevit's op backends are not involved.
 *
 * src/model.ts imports this module lazily, only for ONNX sources.
 *
 * @module
 */

import type {
  AttentionResult,
  Backend,
  LinearWeights,
  OpName,
  Precision,
  Tensor,
} from "../backend.ts";
import { EdgeVitError } from "../../errors.ts";
import { type CheckpointInfo, describeCheckpoint, isObject } from "../../loaders/config.ts";
import { checkpointLabels, imagePipelineFor } from "../../loaders/preprocess.ts";
import { type LoadModelOptions, Model, type ModelConfig } from "../../model.ts";
import type { ForwardOptions, ForwardOutput, VisionArchitecture } from "../../models/types.ts";
import {
  createOnnxModel,
  type OnnxModel,
  type OnnxSource,
  type OrtDevice,
  readOnnxSource,
} from "./ort_model.ts";

/** onnxruntime knobs of {@link LoadModelOptions} (`options.ort`). */
export interface OrtOptions {
  /** Execution provider: `"auto"` (default: WebGPU on a hardware GPU, else wasm), `"wasm"`, `"webgpu"`. */
  device?: OrtDevice;
  /** wasm threads; fixed per process at the first ONNX model (see `OnnxModelOptions.threads`). */
  threads?: number;
  /**
   * The model's config.json as an object, when none lies beside the .onnx (or to
   * replace it): labels and preprocessing in any layout edgevit reads, e.g.
   * `{"library": "vit-pytorch", "architecture": "ViT", "kwargs": {"image_size": 224},
   * "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}`.
   */
  config?: Record<string, unknown>;
}

/** Stands in for an op backend: an ONNX graph runs whole, so no op is available. */
class OrtGraphBackend implements Backend {
  readonly name = "ort";
  supportsOp(_op: OpName): boolean {
    return false;
  }
  #unsupported(op: string): never {
    throw new EdgeVitError(
      "unsupported",
      `the "ort" backend runs whole ONNX graphs; it has no ${op} op`,
    );
  }
  upload(): Tensor {
    return this.#unsupported("upload");
  }
  read(): Promise<Float32Array> {
    return this.#unsupported("read");
  }
  release(): void {}
  prepareLinear(): LinearWeights {
    return this.#unsupported("linear");
  }
  prepareQuantizedLinear(): LinearWeights {
    return this.#unsupported("linear_int8");
  }
  releaseLinear(): void {}
  linear(): Tensor {
    return this.#unsupported("linear");
  }
  layerNorm(): Tensor {
    return this.#unsupported("layer_norm");
  }
  rmsNorm(): Tensor {
    return this.#unsupported("rms_norm");
  }
  gelu(): Tensor {
    return this.#unsupported("gelu");
  }
  add(): Tensor {
    return this.#unsupported("add");
  }
  softmax(): Tensor {
    return this.#unsupported("softmax");
  }
  attention(): AttentionResult {
    return this.#unsupported("attention");
  }
  gatherRows(): Tensor {
    return this.#unsupported("gather_rows");
  }
  concatRows(): Tensor {
    return this.#unsupported("concat_rows");
  }
  segmentMean(): Tensor {
    return this.#unsupported("segment_mean");
  }
  headNorms(): Tensor {
    return this.#unsupported("head_norms");
  }
  dispose(): void {}
}

/** An {@link OnnxModel} seen as an architecture, so {@link Model} can wrap it. */
class OnnxArchitecture implements VisionArchitecture {
  readonly numClasses: number;
  readonly channels: number;
  readonly inputSize: { height: number; width: number };
  readonly patchSize: number;
  readonly precision: Precision = "f32";
  readonly backend: Backend = new OrtGraphBackend();
  readonly #model: OnnxModel;
  readonly #tokens: number;

  constructor(model: OnnxModel, inputSize: { height: number; width: number }, patchSize: number) {
    this.#model = model;
    this.numClasses = model.numClasses;
    this.channels = model.channels;
    this.inputSize = inputSize;
    this.patchSize = patchSize;
    // Patch tokens: the cost measure the server's batcher budgets by.
    this.#tokens = Math.max(
      1,
      Math.floor(inputSize.height / patchSize) * Math.floor(inputSize.width / patchSize),
    );
  }

  async forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    if (options?.tokenBudget !== undefined || options?.returnTokenIds) {
      throw new EdgeVitError(
        "unsupported",
        "ONNX models take no ATS token budget and return no token ids",
      );
    }
    const logits = await this.#model.forward(pixels, shape);
    return { logits, tokensPerImage: new Array(shape[0]).fill(this.#tokens) };
  }

  dispose(): void {
    this.#model.close();
  }
}

const NOMINAL_PATCH = 16;

function statedPatchSize(config: Record<string, unknown>): number {
  const kwargs = isObject(config.kwargs)
    ? config.kwargs
    : isObject(config.model_args)
    ? config.model_args
    : {};
  const value = kwargs.patch_size ?? config.patch_size;
  if (typeof value === "number" && value > 0) return value;
  if (Array.isArray(value) && typeof value[0] === "number" && value[0] > 0) return value[0];
  // Unknown: a nominal 16 (the usual ViT patch) so token counts, which the server's
  // batcher budgets by, still grow with the image area.
  return NOMINAL_PATCH;
}

/**
 * Loads an ONNX image classifier as an edgevit {@link Model} running in onnxruntime-web.
 * Preprocessing and labels come from a config.json beside the .onnx (vit-pytorch
 * manifest, Hugging Face or timm layout; with `preprocessor_config.json` for Hugging
 * Face), from `options.ort.config`, or default to resizing to the graph's input size
 * and scaling to [0, 1].
 *
 * @param source a .onnx path or URL, a folder (path or URL) holding `model.onnx`, bytes, or `{onnx, config?}`
 * @throws {EdgeVitError} `invalid_checkpoint` when onnxruntime cannot parse the graph,
 *   `invalid_config`, `unsupported` (int8, several inputs, non-float32 input)
 *
 * @example
 * ```ts
 * import { loadOnnxAsModel } from "./ort_loader.ts";
 * const model = await loadOnnxAsModel("tests/fixtures/onnx/vitpytorch-vit-cls", { ort: { device: "wasm" } });
 * const logits = await model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]);
 * console.log(model.backend, logits.length); // "ort" 10
 * model.close();
 * ```
 */
export async function loadOnnxAsModel(
  source: OnnxSource,
  options: LoadModelOptions = {},
): Promise<Model> {
  if ((options.precision ?? "f32") !== "f32") {
    throw new EdgeVitError(
      "unsupported",
      `ONNX models run in float32 (quantize the graph itself for int8), got precision ${
        JSON.stringify(options.precision)
      }`,
    );
  }
  const files = await readOnnxSource(source, options.fetch ?? fetch);
  const rawConfig = options.ort?.config ?? files.config;
  let checkpoint: CheckpointInfo;
  if (rawConfig) {
    checkpoint = describeCheckpoint(rawConfig, `${files.name} config`);
    if (files.preprocessorConfig && checkpoint.library === "transformers") {
      checkpoint.preprocessorConfig = files.preprocessorConfig;
    }
  } else {
    // No config: a plain pipeline (resize to the graph's input size, scale to [0, 1]).
    checkpoint = { library: "vit-pytorch", architecture: "onnx", config: {}, source: files.name };
  }
  const configLabels = rawConfig ? checkpointLabels(checkpoint) : undefined;
  const onnx = await createOnnxModel(files, {
    device: options.ort?.device,
    threads: options.ort?.threads,
    config: rawConfig ?? {},
    labels: options.labels ?? files.labels ?? configLabels,
  });
  try {
    if (!onnx.inputSize) {
      throw new EdgeVitError(
        "invalid_config",
        `${files.name}: the graph leaves the image size open and no config states it`,
      );
    }
    const architecture = new OnnxArchitecture(
      onnx,
      onnx.inputSize,
      statedPatchSize(checkpoint.config),
    );
    const config: ModelConfig = {
      library: checkpoint.library,
      architecture: checkpoint.architecture,
      numClasses: onnx.numClasses,
      channels: onnx.channels,
      inputSize: onnx.inputSize,
      patchSize: architecture.patchSize,
      preprocess: imagePipelineFor(checkpoint, architecture),
      checkpoint: checkpoint.config,
    };
    return new Model(architecture, config, onnx.labels, {
      ownsBackend: false,
      maxPixels: options.maxPixels,
      maxSide: options.maxSide,
      background: options.background,
    });
  } catch (error) {
    onnx.close();
    throw error;
  }
}
