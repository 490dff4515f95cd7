/**
 * edgevit: Vision Transformer image classification at the edge, in Deno.
 *
 * Load a checkpoint the way people have it (a vit-pytorch state dict with a small
 * manifest, a Hugging Face `ViTForImageClassification` / `DeiTForImageClassification`
 * folder, or a timm `vit_*` / `deit_*` folder; `model.safetensors` or sharded, in
 * float32, float16 or bfloat16) and get the same logits PyTorch gives, on WASM-SIMD
 * kernels, WebGPU, or a plain TypeScript reference backend.
 *
 * ```ts
 * import { loadModel } from "./mod.ts";
 * const model = await loadModel("../shared/fixtures/parity/vitpytorch-vit-cls", {
 *   backend: "reference",
 * });
 * // pixels: normalized float32 NCHW; logits: n × numClasses, row-major
 * const logits = await model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]);
 * console.log(logits.length === model.numClasses, model.labels.length); // true 10
 * model.close();
 * ```
 *
 * `model.classify(imageBytes, { topK })` decodes JPEG / PNG / WebP, preprocesses the
 * image as the checkpoint's own pipeline did (timm `pretrained_cfg`, HF
 * `preprocessor_config.json`, or the manifest's `"preprocess"`), and returns
 * `[{label, index, score}]` with softmax scores. `loadModel` also takes
 * `{config, weights}` bytes for runtimes without a file system, and an `http(s)` URL.
 *
 * Every bad input (malformed checkpoint or config, unknown architecture, corrupt or
 * oversized image, wrong tensor shape) throws an {@link EdgeVitError} whose `code`
 * says what kind of mistake it was.
 *
 * @module
 */

export {
  type BackendChoice,
  type Classification,
  type ClassifyOptions,
  loadModel,
  type LoadModelOptions,
  Model,
  type ModelConfig,
  type PreparedPixels,
  resolveBackend,
  topClasses,
} from "./src/model.ts";
export { EdgeVitError, type ErrorCode } from "./src/errors.ts";
export type { ModelBundle, ModelSource, SourceOptions } from "./src/loaders/source.ts";
// ONNX models: `loadModel("model.onnx")` or `{ backend: "ort" }` runs them in onnxruntime-web.
export type { OnnxBundle, OnnxSource, OrtDevice } from "./src/backends/ort/ort_model.ts";
export type { OrtOptions } from "./src/backends/ort/ort_loader.ts";
export type { ImagePipeline } from "./src/loaders/preprocess.ts";
export type { CheckpointInfo, CheckpointLibrary } from "./src/loaders/config.ts";
export type { ForwardOptions, ForwardOutput, PackedImage } from "./src/models/types.ts";
export type { Backend, Precision, Tensor } from "./src/backends/backend.ts";
export {
  type ArchitectureEntry,
  ARCHITECTURES,
  type BuildContext,
  findArchitecture,
} from "./src/models/registry.ts";
export {
  createHandler,
  DEFAULT_MODEL,
  type EdgeVitHandler,
  type HandlerOptions,
} from "./src/server/handler.ts";
export {
  quantizeCheckpoint,
  type QuantizedCheckpoint,
  writeQuantizedCheckpoint,
} from "./src/loaders/quantize_cli.ts";
export { INT8_QUANTIZATION, type QuantizationInfo } from "./src/loaders/quantized.ts";
