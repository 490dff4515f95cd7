/**
 * What the edge entry (`src/bundle/entry.ts`) takes from outside its code: the model,
 * the kernel and decoder wasm, and build-time defaults.
 *
 * This file is the development version: it points at the repository's files, so the
 * entry also runs unbundled (with `--allow-read`). `deno task bundle`
 * (`src/bundle/build.ts`) replaces this whole module by a generated one with the same
 * exports whose bytes are embedded as base64, so the bundle reads no file at run time.
 *
 * @module
 */

import type { ModelBundle } from "../loaders/source.ts";
import { DEFAULT_MODEL, defaultModelLocation } from "../server/handler.ts";

/** The wasm modules' bytes, by name. */
export interface WasmAssets {
  /** `wasm/edgevit_kernels_relaxed.wasm` (relaxed SIMD build). */
  kernelsRelaxed: Uint8Array;
  /** `wasm/edgevit_kernels_simd.wasm` (plain SIMD build). */
  kernelsPlain: Uint8Array;
  /** `@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm` */
  jpeg: Uint8Array;
  /** `@jsquash/webp/codec/dec/webp_dec.wasm` */
  webp: Uint8Array;
}

/** Everything the entry needs besides its code. */
export interface BundleAssets {
  /** Name clients pass as `model` for the built-in model. */
  modelName: string;
  /**
   * The built-in model: its files as bytes (embedded), or a location the entry loads at
   * start (an `http(s):` URL of a model folder; a folder path when unbundled). Bundles
   * decode the bytes anew on each read, so keep them only as long as loading needs.
   */
  model: ModelBundle | string;
  /** Precision the built-in model loads at unless told otherwise ("f32" or "int8"). */
  precision: string;
  /**
   * Backend used unless told otherwise. Bundles default to "wasm": edge machines have no
   * GPU, and asking for a WebGPU adapter first costs start-up time.
   */
  backend: string;
  /** The wasm bytes, or null when the packages may fetch their own files (unbundled). */
  wasm: WasmAssets | null;
  /** Bytes of code and data the build embedded (0 unbundled), for `/v1/models`. */
  embeddedBytes: number;
}

/**
 * The assets of this build. Unbundled: the repository's default model folder, and
 * decoders and kernels that load their own `.wasm` (both need `--allow-read`).
 *
 * @example
 * ```ts
 * import { bundleAssets } from "./assets.ts";
 * console.log(bundleAssets().modelName); // "patchmerger-fmnist"
 * ```
 */
export function bundleAssets(): BundleAssets {
  return {
    modelName: DEFAULT_MODEL,
    model: defaultModelLocation(),
    precision: "f32",
    backend: "auto",
    wasm: null,
    embeddedBytes: 0,
  };
}
