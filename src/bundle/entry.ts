/**
 * The edge entry: what `deno task bundle` turns into `dist/edgevit.mjs`, one module with
 * the handler, the wasm kernels, the image decoders and a model inside.
 *
 * - `deno run --allow-net dist/edgevit.mjs [--port N] [--host H] [flags]` serves it
 *   (the flags of `deno task serve`; model locations must be `http(s)` URLs).
 * - `deno serve dist/edgevit.mjs` serves its `default { fetch }`.
 * - `import { createHandler } from "./edgevit.mjs"` gives the handler for custom
 *   routing (Supabase Edge Functions, Deno Deploy, tests).
 *
 * Nothing here reads a file, an environment variable without permission, or needs an
 * unstable flag: the wasm comes as bytes, WebGPU is used only where `navigator.gpu`
 * exists and has a real adapter (auto falls back to wasm otherwise), and onnxruntime is
 * left out of the bundle.
 *
 * @module
 */

import type { Backend } from "../backends/backend.ts";
import { BACKEND_CHOICES, type BackendChoice, selectBackend } from "../backends/select.ts";
import { WasmBackend } from "../backends/wasm/wasm_backend.ts";
import { EdgeVitError } from "../errors.ts";
import { initDecoders } from "../image/decode.ts";
import { checkLimits, sniffImage } from "../image/sniff.ts";
import type { ModelSource } from "../loaders/source.ts";
import { loadModel, Model } from "../model.ts";
import { parseServerArgs, type ServerConfig, splitModelArg, usage } from "../server/config.ts";
import type { ServedModel } from "../server/engine.ts";
import {
  createServingHandler,
  type EdgeVitHandler,
  type HandlerLimits,
} from "../server/handler.ts";
import { servedModelFromModel } from "../server/model_loader.ts";
import { relaxedSimdSupported } from "../../wasm/kernels.ts";
import { type BundleAssets, bundleAssets } from "./assets.ts";

/** A model given to {@link createHandler}. */
export type EdgeModel =
  /** An `http(s)` URL of a model folder; `name=url` names it. */
  | string
  /** Model files as bytes (`{config, weights}`), or a URL, under a name. */
  | { name: string; source: ModelSource }
  /** A model from `loadModel` (the handler closes it). */
  | Model
  /** A model already wrapped for serving. */
  | ServedModel;

/** Options of {@link createHandler}. */
export interface EdgeHandlerOptions extends Partial<HandlerLimits> {
  /** The models; the first is the default. Default: the model built into the bundle. */
  models?: readonly EdgeModel[];
  /**
   * "wasm", "auto" (WebGPU on a real GPU adapter, else wasm), "webgpu", "reference";
   * default: what the bundle was built with (`deno task bundle --backend`, "wasm").
   */
  backend?: string;
  /** "f32" or "int8"; default: what the bundle was built with (see `deno task bundle`). */
  precision?: string;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <key>` or `x-api-key: <key>`. */
  apiKey?: string | null;
  /** Run one warm-up batch per model before /readyz says ready (default true). */
  warmup?: boolean;
  /** `fetch` used to load URL models (default: the global one). */
  fetch?: typeof fetch;
  /** Where backend choices are logged (default `console.warn`). */
  log?: (message: string) => void;
}

const assets: BundleAssets = bundleAssets();

/** Compiled once per isolate and shared by every handler. */
let decodersReady: Promise<void> | null = null;

function prepareDecoders(): Promise<void> {
  decodersReady ??= (async () => {
    const wasm = assets.wasm;
    if (!wasm) return await initDecoders();
    const [jpeg, webp] = await Promise.all(
      [wasm.jpeg, wasm.webp].map((bytes) => WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>)),
    );
    await initDecoders({ jpeg, webp });
  })();
  decodersReady.catch(() => (decodersReady = null));
  return decodersReady;
}

/** Creates the backend a choice names, with the embedded kernels for wasm. */
async function createBackend(
  choice: string,
  log?: (message: string) => void,
): Promise<Backend> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new EdgeVitError(
      "invalid_argument",
      `backend must be one of ${BACKEND_CHOICES.join(", ")}, got ${JSON.stringify(choice)}`,
    );
  }
  const wasm = assets.wasm;
  const createWasm = () =>
    wasm
      ? WasmBackend.create(
        relaxedSimdSupported()
          ? { flavour: "relaxed", wasmBytes: wasm.kernelsRelaxed as Uint8Array<ArrayBuffer> }
          : { flavour: "plain", wasmBytes: wasm.kernelsPlain as Uint8Array<ArrayBuffer> },
      )
      : WasmBackend.create();
  const { backend } = await selectBackend({ backend: choice as BackendChoice, log, createWasm });
  return backend;
}

/** Reads an image's header only, so oversized images cost no decoding. */
function probe(bytes: Uint8Array, limits: { maxPixels: number }) {
  const info = sniffImage(bytes);
  checkLimits(info, limits);
  return info;
}

/**
 * Creates the edgevit HTTP handler of the bundle: the same routes and behaviour as the
 * server's (`/v1/classify`, `/v1/models`, `/healthz`, `/readyz`, `/metrics`), serving
 * the model built into the bundle unless given others. Models load in the background;
 * classify requests wait for them.
 *
 * @example
 * ```ts ignore
 * import { createHandler } from "./edgevit.mjs";
 * const edgevit = createHandler({ apiKey: "secret", maxBatch: 8 });
 * Deno.serve((request) =>
 *   new URL(request.url).pathname.startsWith("/v1/") ? edgevit(request) : new Response("hi")
 * );
 * ```
 */
export function createHandler(options: EdgeHandlerOptions = {}): EdgeVitHandler {
  const given = options.models && options.models.length > 0 ? options.models : null;
  const precision = options.precision ?? assets.precision;
  if (precision !== "f32" && precision !== "int8") {
    throw new EdgeVitError("invalid_argument", `precision must be f32 or int8, got ${precision}`);
  }
  let backend: Backend | null = null;
  const handler = createServingHandler({
    ...options,
    probe,
    models: async () => {
      const models: ServedModel[] = [];
      // Read here, not kept: the embedded bytes can go once the backend holds the weights.
      const specs = given ?? [{ name: assets.modelName, source: assets.model }];
      try {
        await prepareDecoders();
        for (const [i, spec] of specs.entries()) {
          if (spec instanceof Model) {
            models.push(servedModelFromModel(i === 0 ? "model" : `model-${i + 1}`, spec));
            continue;
          }
          if (typeof spec === "object" && "infer" in spec) {
            models.push(spec);
            continue;
          }
          const { name, source } = typeof spec === "string"
            ? (({ name, location }) => ({ name, source: location }))(splitModelArg(spec))
            : spec;
          backend ??= await createBackend(options.backend ?? assets.backend, options.log);
          const model = await loadModel(source, {
            backend,
            precision,
            maxPixels: options.maxPixels,
            fetch: options.fetch,
          });
          models.push(servedModelFromModel(name, model));
        }
      } catch (error) {
        for (const model of models) model.close();
        backend?.dispose();
        backend = null;
        throw error;
      }
      return models;
    },
  });
  const closeModels = handler.close;
  return Object.assign(handler, {
    async close() {
      await closeModels();
      backend?.dispose();
      backend = null;
    },
  });
}

// ---------------------------------------------------------------------------------------
// Serving: `deno serve` (default export) or `deno run` (main module).

let defaultHandler: EdgeVitHandler | null = null;
/** Set when `deno serve` calls our `onListen`: it serves the default export itself. */
let servedDeclaratively = false;

/** " (N ms after start)": performance.now() counts from the isolate's start. */
function sinceStart(): string {
  return ` (${Math.round(performance.now())} ms after start)`;
}

function shownAddress(address: Deno.NetAddr): string {
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  return `http://${host}:${address.port}/`;
}

/** The environment, only where reading it is allowed (never asks, never throws). */
function permittedEnv(): Record<string, string> {
  try {
    if (Deno.permissions.querySync({ name: "env" }).state === "granted") {
      return Deno.env.toObject();
    }
  } catch {
    // No permissions API (some edge runtimes): act as if the environment were empty.
  }
  return {};
}

/** `deno run dist/edgevit.mjs [flags]`: serves until SIGTERM/SIGINT, then exits 0. */
async function serveMain(args: readonly string[]): Promise<number> {
  const env = permittedEnv();
  // Platforms often set HOST to the machine's name, not to an address to bind.
  delete env.HOST;
  let config: ServerConfig;
  try {
    const parsed = parseServerArgs(args, env);
    if (parsed.help) {
      console.log(
        usage().replace("deno task serve", "deno run --allow-net edgevit.mjs") +
          `\n\nBuilt-in model: ${assets.modelName}. --model takes http(s) URLs of model folders.`,
      );
      return 0;
    }
    config = parsed.config;
  } catch (error) {
    if (error instanceof EdgeVitError) {
      console.error(`edgevit: ${error.message}`);
      return 2;
    }
    throw error;
  }
  // Settings with a default of their own here are passed only when asked for: edge
  // platforms choose the address, and the bundle was built with its backend.
  const explicit = (flag: string, vars: string[]) =>
    args.some((arg) => arg === `--${flag}` || arg.startsWith(`--${flag}=`)) ||
    vars.some((name) => env[name]);
  const handler = createHandler({
    ...config,
    models: config.models,
    backend: explicit("backend", ["EDGEVIT_BACKEND"]) ? config.backend : undefined,
    precision: explicit("precision", ["EDGEVIT_PRECISION"]) ? config.precision : undefined,
  });
  const listening = Promise.withResolvers<void>();
  const server = Deno.serve({
    ...(explicit("host", ["EDGEVIT_HOST"]) ? { hostname: config.host } : {}),
    ...(explicit("port", ["PORT", "EDGEVIT_PORT"]) ? { port: config.port } : {}),
    onListen(address) {
      console.log(`edgevit listening on ${shownAddress(address as Deno.NetAddr)}`);
      listening.resolve();
    },
  }, handler);
  await listening.promise;

  const stopped = Promise.withResolvers<number>();
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`edgevit: ${signal}, finishing requests in flight`);
    handler.drain();
    await handler.settled();
    await server.shutdown();
    await handler.close();
    stopped.resolve(0);
  };
  try {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      Deno.addSignalListener(signal, () => void stop(signal));
    }
  } catch {
    // Runtimes without signals stop the isolate themselves.
  }
  try {
    await handler.ready;
    console.log(`edgevit ready: ${config.models.join(", ") || assets.modelName}${sinceStart()}`);
  } catch (error) {
    if (stopping) return await stopped.promise;
    console.error(`edgevit: could not load the model: ${(error as Error).message}`);
    await server.shutdown();
    return 1;
  }
  return await stopped.promise;
}

/**
 * `export default { fetch }` for `deno serve` and runtimes that take a fetch handler:
 * the built-in model behind the full API.
 */
const edgevit: {
  fetch(request: Request): Promise<Response>;
  onListen(address: Deno.Addr): void;
} = {
  fetch(request: Request): Promise<Response> {
    defaultHandler ??= createHandler();
    return defaultHandler(request);
  },
  onListen(address: Deno.Addr) {
    servedDeclaratively = true;
    // Start loading now rather than on the first request.
    const handler = defaultHandler ??= createHandler();
    const shown = address.transport === "tcp" ? shownAddress(address as Deno.NetAddr) : "";
    console.log(`edgevit listening on ${shown || address.transport}`);
    handler.ready.then(
      () => console.log(`edgevit ready: ${assets.modelName}${sinceStart()}`),
      (error) => console.error(`edgevit: could not load the model: ${(error as Error).message}`),
    );
    // deno serve stops its listener on SIGTERM/SIGINT but would then wait forever for
    // the batchers' event-loop hooks: answer what is in flight, free the models, exit.
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      handler.drain();
      await handler.settled();
      await handler.close();
      Deno.exit(0);
    };
    try {
      for (const signal of ["SIGTERM", "SIGINT"] as const) {
        Deno.addSignalListener(signal, () => void stop());
      }
    } catch {
      // Runtimes without signals stop the isolate themselves.
    }
  },
};
export default edgevit;

export { EdgeVitError } from "../errors.ts";
export type { EdgeVitHandler, HandlerLimits } from "../server/handler.ts";
export type { ModelBundle, ModelSource } from "../loaders/source.ts";

if (import.meta.main) {
  // `deno serve` calls onListen right after this module is evaluated, before any timer
  // runs; under `deno run` nobody does, and the module serves itself.
  setTimeout(async () => {
    if (servedDeclaratively) return;
    Deno.exit(await serveMain(Deno.args));
  }, 0);
}
