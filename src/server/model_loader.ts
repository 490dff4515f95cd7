/**
 * The server's adapter over the engine: {@link loadModel} a folder or URL, then wrap
 * the {@link Model} as a {@link ServedModel} whose preprocessing is the checkpoint's own
 * (`model.preprocess`) and whose batches run on `model.architecture`.
 *
 * @module
 */

import { initDecoders } from "../image/decode.ts";
import { type BackendChoice, loadModel, type Model } from "../model.ts";
import type { ServedModel } from "./engine.ts";
import { servedModelFromArchitecture } from "./served_model.ts";

/** Options of {@link loadServedModel}. */
export interface LoadServedModelOptions {
  /** The name clients pass as `model`. */
  name: string;
  /** Backend name (default "auto"). */
  backend?: string;
  /** "f32" (default) or "int8". */
  precision?: string;
  /** Largest image the model's own preprocessing decodes (the handler checks first). */
  maxPixels?: number;
}

/**
 * Wraps an already-loaded {@link Model} for the server; closing the served model closes it.
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "../model.ts";
 * import { servedModelFromModel } from "./model_loader.ts";
 * const served = servedModelFromModel("vit", await loadModel("models/vit-fmnist"));
 * ```
 */
export function servedModelFromModel(name: string, model: Model): ServedModel {
  const config = model.config;
  return servedModelFromArchitecture({
    name,
    architecture: model.architecture,
    labels: model.labels,
    preprocess: (bytes) => model.preprocess(bytes),
    describe: () => ({
      library: config.library,
      architecture: config.architecture,
      preprocess: config.preprocess,
      config: config.checkpoint,
    }),
    // The decoders compile their wasm on first use: do it before the first request.
    warmup: () => initDecoders(),
    close: () => model.close(),
  });
}

/**
 * Loads a model folder or URL with the engine and wraps it for the server.
 *
 * @throws {import("../errors.ts").EdgeVitError} whatever `loadModel` throws for a bad checkpoint
 */
export async function loadServedModel(
  location: string,
  options: LoadServedModelOptions,
): Promise<ServedModel> {
  const model = await loadModel(location, {
    backend: (options.backend ?? "auto") as BackendChoice,
    precision: options.precision === "int8" ? "int8" : "f32",
    maxPixels: options.maxPixels,
  });
  return servedModelFromModel(options.name, model);
}
