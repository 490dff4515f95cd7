/**
 * The server's adapter over the engine: {@link loadModel} a folder or URL, then wrap
 * the {@link Model} as a {@link ServedModel} whose preprocessing is the checkpoint's own
 * (`model.preprocess`) and whose batches run on `model.architecture`.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
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
  /** Where the WebGPU → wasm switch is reported (default `console.warn`). */
  log?: (message: string) => void;
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
      ...(model.architecture.keptFloat ? { keptFloat: model.architecture.keptFloat } : {}),
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
  const load = async (backend: string) =>
    servedModelFromModel(
      options.name,
      await loadModel(location, {
        backend: backend as BackendChoice,
        precision: options.precision === "int8" ? "int8" : "f32",
        maxPixels: options.maxPixels,
      }),
    );
  const served = await load(options.backend ?? "auto");
  if (served.backend !== "webgpu") return served;
  return withWasmFailover(served, () => load("wasm"), options.log);
}

/**
 * Keeps a WebGPU model serving after its device fails (lost, out of memory, validation):
 * the batch that hit the failure is run again on a wasm copy of the model, which
 * serves every later request. The device's error is what a GPU model can never recover
 * from in place, so the model is reloaded rather than retried.
 *
 * @param reload loads the same model on the wasm backend
 *
 * @example
 * ```ts ignore
 * import { loadModel } from "../model.ts";
 * import { servedModelFromModel, withWasmFailover } from "./model_loader.ts";
 * const gpu = servedModelFromModel("vit", await loadModel(dir, { backend: "webgpu" }));
 * const served = withWasmFailover(gpu, async () =>
 *   servedModelFromModel("vit", await loadModel(dir, { backend: "wasm" })));
 * ```
 */
export function withWasmFailover(
  first: ServedModel,
  reload: () => Promise<ServedModel>,
  log: (message: string) => void = console.warn,
): ServedModel {
  let current = first;
  let switching: Promise<ServedModel> | null = null;
  const switchToWasm = (reason: string): Promise<ServedModel> => {
    switching ??= (async () => {
      log(`edgevit: ${first.name}: the WebGPU backend failed (${reason}); serving on wasm now`);
      const wasm = await reload();
      const failed = current;
      current = wasm;
      try {
        failed.close();
      } catch {
        // The lost device may refuse to free its buffers; the wasm model serves regardless.
      }
      return wasm;
    })();
    return switching;
  };
  return {
    get name() {
      return current.name;
    },
    get numClasses() {
      return current.numClasses;
    },
    get labels() {
      return current.labels;
    },
    get backend() {
      return current.backend;
    },
    get precision() {
      return current.precision;
    },
    get packed() {
      return current.packed;
    },
    describe: () => current.describe(),
    preprocess: (bytes) => current.preprocess(bytes),
    async infer(images, inference) {
      const model = current;
      try {
        return await model.infer(images, inference);
      } catch (error) {
        const deviceFailed = model.backend === "webgpu" && error instanceof EdgeVitError &&
          error.code === "backend_failure";
        if (!deviceFailed) throw error;
        return await (await switchToWasm(error.message)).infer(images, inference);
      }
    },
    warmup: () => current.warmup(),
    close: () => current.close(),
  };
}
