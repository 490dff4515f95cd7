/**
 * Picks the compute backend for a model: WebGPU on a real GPU, otherwise WASM-SIMD.
 *
 * `backend: "auto"` asks `navigator.gpu.requestAdapter()` (with a timeout) for a
 * high-performance adapter and uses WebGPU only when the adapter is a real one; a
 * fallback (software) adapter such as Mesa's llvmpipe is slower than the wasm backend,
 * so it is used only when asked for with `"webgpu-fallback"`. On any failure — WebGPU
 * not enabled, no adapter, timeout, device creation error — auto uses the wasm backend
 * and logs why, once per reason. Explicit choices never fall back: they throw an
 * `EdgeVitError` that says what is missing.
 *
 * WebGPU in Deno needs `"unstable": ["webgpu"]` in deno.json (set in this repo) or the
 * `--unstable-webgpu` flag; without it `navigator.gpu` is missing and auto picks wasm.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { ReferenceBackend } from "./reference/reference_backend.ts";
import {
  describeAdapter,
  navigatorGpu,
  requestAdapterWithTimeout,
  WebGpuBackend,
} from "./webgpu/webgpu_backend.ts";
import { EdgeVitError } from "../errors.ts";

/** The backends a caller can ask for. */
export type BackendChoice = "auto" | "wasm" | "webgpu" | "webgpu-fallback" | "reference";

/** Every valid {@link BackendChoice}, for flag and config validation. */
export const BACKEND_CHOICES: readonly BackendChoice[] = [
  "auto",
  "wasm",
  "webgpu",
  "webgpu-fallback",
  "reference",
];

/** Options of {@link selectBackend}. */
export interface SelectBackendOptions {
  /** Which backend to use (default "auto"). */
  backend?: BackendChoice;
  /** How long to wait for the WebGPU adapter and device (default 3000 ms). */
  adapterTimeoutMs?: number;
  /** Where fallback reasons go (default `console.warn`); each message is logged once per logger. */
  log?: (message: string) => void;
  /** The WebGPU entry point (default `navigator.gpu`); tests pass their own. */
  gpu?: Pick<GPU, "requestAdapter">;
  /** Makes the wasm backend (default: the lazily imported `WasmBackend.create()`). */
  createWasm?: () => Promise<Backend>;
}

/** What {@link selectBackend} chose. */
export interface SelectedBackend {
  backend: Backend;
  /** What was asked for. */
  requested: BackendChoice;
  /** Short human description: "webgpu (NVIDIA …)", "wasm", … */
  description: string;
  /** For auto: why the preferred backend was not used. */
  fallbackReason?: string;
}

const WASM_MODULE = "./wasm/wasm_backend.ts";
const loggedByLogger = new WeakMap<(message: string) => void, Set<string>>();

/**
 * Creates the backend asked for.
 *
 * @example
 * ```ts
 * import { selectBackend } from "./select.ts";
 * const { backend, description } = await selectBackend({ backend: "auto" });
 * console.log(backend.name, description); // "webgpu" on a GPU machine, else "wasm"
 * backend.dispose();
 * ```
 */
export async function selectBackend(options: SelectBackendOptions = {}): Promise<SelectedBackend> {
  const requested = options.backend ?? "auto";
  const timeoutMs = options.adapterTimeoutMs ?? 3000;
  switch (requested) {
    case "reference":
      return { backend: new ReferenceBackend(), requested, description: "reference" };
    case "wasm": {
      const backend = await (options.createWasm ?? loadWasmBackend)();
      return { backend, requested, description: backend.name };
    }
    case "webgpu":
    case "webgpu-fallback": {
      const allowFallbackAdapter = requested === "webgpu-fallback";
      const adapter = await requestAdapterWithTimeout(
        { powerPreference: "high-performance", forceFallbackAdapter: allowFallbackAdapter },
        timeoutMs,
        options.gpu ?? navigatorGpu(),
      ) ?? (allowFallbackAdapter
        ? await requestAdapterWithTimeout({}, timeoutMs, options.gpu ?? navigatorGpu())
        : null);
      if (adapter && describeAdapter(adapter).isFallbackAdapter && !allowFallbackAdapter) {
        throw new EdgeVitError(
          "backend_failure",
          `backend "webgpu" found only a fallback (software) adapter (${
            describeAdapter(adapter).description
          }); ask for "webgpu-fallback" to use it`,
        );
      }
      const backend = await WebGpuBackend.create({
        adapter: adapter ?? undefined,
        allowFallbackAdapter,
        timeoutMs,
      });
      return { backend, requested, description: webgpuDescription(backend) };
    }
    case "auto":
      return await selectAuto(options, timeoutMs);
    default:
      throw new EdgeVitError(
        "invalid_argument",
        `unknown backend "${requested}"; expected one of ${BACKEND_CHOICES.join(", ")}`,
      );
  }
}

async function selectAuto(
  options: SelectBackendOptions,
  timeoutMs: number,
): Promise<SelectedBackend> {
  let reason: string;
  try {
    const adapter = await requestAdapterWithTimeout(
      { powerPreference: "high-performance" },
      timeoutMs,
      options.gpu ?? navigatorGpu(),
    );
    if (!adapter) {
      reason = "no WebGPU adapter was found";
    } else if (describeAdapter(adapter).isFallbackAdapter) {
      reason = `the only WebGPU adapter is a fallback (software) one (${
        describeAdapter(adapter).description
      }), slower than wasm; ask for "webgpu-fallback" to use it anyway`;
    } else {
      const backend = await WebGpuBackend.create({ adapter, timeoutMs });
      return { backend, requested: "auto", description: webgpuDescription(backend) };
    }
  } catch (error) {
    reason = error instanceof Error ? error.message : String(error);
  }
  return await fallbackBackend(reason, options);
}

/**
 * The backend to continue with when WebGPU is not used or has failed (for instance after
 * a `backend_failure` from a lost device): wasm, or the reference backend while the
 * wasm backend cannot be loaded. Logs `reason` once.
 *
 * @example
 * ```ts
 * import { fallbackBackend } from "./select.ts";
 * const { backend } = await fallbackBackend("WebGPU device lost");
 * console.log(backend.name); // "wasm"
 * ```
 */
export async function fallbackBackend(
  reason: string,
  options: Pick<SelectBackendOptions, "log" | "createWasm"> = {},
): Promise<SelectedBackend> {
  const log = options.log ?? console.warn;
  try {
    const backend = await (options.createWasm ?? loadWasmBackend)();
    logOnce(log, `edgevit: using the ${backend.name} backend: ${reason}`);
    return { backend, requested: "auto", description: backend.name, fallbackReason: reason };
  } catch (error) {
    const wasmReason = error instanceof Error ? error.message : String(error);
    const why = `${reason}; and ${wasmReason}`;
    logOnce(log, `edgevit: using the slow reference backend: ${why}`);
    return {
      backend: new ReferenceBackend(),
      requested: "auto",
      description: "reference",
      fallbackReason: why,
    };
  }
}

/** Imports the wasm backend lazily, so WebGPU-only and reference-only users never load it. */
async function loadWasmBackend(): Promise<Backend> {
  let module: { WasmBackend?: { create?: () => Promise<Backend> } };
  try {
    // A computed specifier keeps type-checking and loading working before the wasm
    // backend exists; see the report of issue 9.
    module = await import(WASM_MODULE);
  } catch (error) {
    throw new EdgeVitError(
      "unsupported",
      `the wasm backend could not be loaded (${WASM_MODULE}): ${
        error instanceof Error ? error.message : String(error)
      }`,
      { cause: error },
    );
  }
  if (typeof module.WasmBackend?.create !== "function") {
    throw new EdgeVitError("unsupported", `${WASM_MODULE} does not export WasmBackend.create()`);
  }
  return await module.WasmBackend.create();
}

function webgpuDescription(backend: WebGpuBackend): string {
  const kind = backend.adapter.isFallbackAdapter ? "fallback adapter" : "adapter";
  return `webgpu (${kind}: ${backend.adapter.description})`;
}

function logOnce(log: (message: string) => void, message: string): void {
  let seen = loggedByLogger.get(log);
  if (!seen) loggedByLogger.set(log, seen = new Set());
  if (seen.has(message)) return;
  seen.add(message);
  log(message);
}
