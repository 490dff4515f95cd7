/**
 * Decoding JPEG, PNG and WebP bytes to pixels, with the header checked against size
 * limits first, EXIF orientation applied, and alpha flattened.
 *
 * JPEG and WebP go through the `@jsquash/*` WebAssembly builds of libjpeg-turbo
 * (MozJPEG) and libwebp, the codecs PIL links, so decoded pixels match PIL's; PNG goes
 * through {@link decodePng}, in TypeScript over the platform's zlib. Each package fetches
 * its `.wasm` from beside its own JS on first use; in Deno that is a `file:` URL in the
 * npm cache, read with `--allow-read`. Where there is no file system, compile the
 * `.wasm` files yourself and hand them to {@link initDecoders}.
 *
 * libjpeg leaves a failed decode through emscripten's `exit()`, which unwinds past the
 * frames that would give back its stack and heap; after a few hundred corrupt files an
 * instance hung on the next one. So every failed JPEG decode is followed by a fresh
 * instance (about 1.5 ms). libwebp returns its errors and needs none.
 *
 * @module
 */

import decodeJpegWasm, { init as initJpegWasm } from "@jsquash/jpeg/decode.js";
import decodeWebpWasm, { init as initWebpWasm } from "@jsquash/webp/decode.js";
import { EdgeVitError } from "../errors.ts";
import { type Background, flattenAlpha, toGrayscale } from "./color.ts";
import { applyOrientation, readOrientation } from "./exif.ts";
import { decodePng } from "./png.ts";
import type { RawImage } from "./raw_image.ts";
import { checkLimits, type ImageFormat, type ImageInfo, type ImageLimits } from "./sniff.ts";
import { formatName, sniffImage } from "./sniff.ts";

/** Options of {@link decodeImage}. */
export interface DecodeOptions extends ImageLimits {
  /** Colour under transparent pixels; default `"white"`. */
  background?: Background;
  /** 3 = RGB (default), 1 = PIL "L" grayscale. */
  channels?: 1 | 3;
  /** Apply the EXIF orientation (default true), as browsers and `exif_transpose` do. */
  orientation?: boolean;
}

/** A decoded image as it is meant to be displayed. */
export interface DecodedImage extends RawImage {
  channels: 1 | 3;
  format: ImageFormat;
  /** The EXIF orientation found (1–8; 1 when absent), already applied unless disabled. */
  orientation: number;
}

/** Precompiled decoder modules for {@link initDecoders}, e.g. where there is no file system. */
export interface DecoderModules {
  /** `@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm` */
  jpeg?: WebAssembly.Module;
  /** `@jsquash/webp/codec/dec/webp_dec.wasm` */
  webp?: WebAssembly.Module;
}

/**
 * Decodes an image: sniffs the format, checks the header size against the limits
 * before any pixel is allocated, decodes, applies the EXIF orientation, composites
 * alpha onto the background and converts to the requested channels.
 *
 * @param bytes The encoded file.
 * @param options Limits, background, channels, orientation.
 * @returns Interleaved uint8 pixels `[height, width, channels]` plus format and orientation.
 * @throws {EdgeVitError} `invalid_image` (empty, corrupt, truncated), `unsupported_media_type`
 *   (not JPEG/PNG/WebP), `too_large` (header over the limits), `backend_failure` (a
 *   decoder's wasm could not be loaded).
 *
 * @example
 * ```ts
 * import { decodeImage } from "./decode.ts";
 * const png = Uint8Array.from(atob(
 *   "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgOiEHAAHQAPEkXJH0AAAAAElFTkSuQmCC",
 * ), (c) => c.charCodeAt(0));
 * const image = await decodeImage(png);
 * if (image.width !== 1 || image.channels !== 3 || image.data[1] !== 200) throw new Error();
 * ```
 */
export async function decodeImage(
  bytes: Uint8Array | ArrayBuffer,
  options: DecodeOptions = {},
): Promise<DecodedImage> {
  const input = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const info = sniffImage(input);
  checkLimits(info, options);
  const rgba = await decodeRgba(input, info);
  let image = flattenAlpha(rgba, options.background ?? "white");
  if (options.channels === 1) image = toGrayscale(image);
  else if (options.channels !== undefined && options.channels !== 3) {
    throw new EdgeVitError("invalid_argument", `channels must be 1 or 3, got ${options.channels}`);
  }
  const orientation = readOrientation(input, info.format);
  if (options.orientation !== false) image = applyOrientation(image, orientation);
  return { ...image, channels: image.channels as 1 | 3, format: info.format, orientation };
}

/**
 * Decodes to straight RGBA at the stored orientation, after the header has been
 * sniffed and checked. Most callers want {@link decodeImage}.
 */
export async function decodeRgba(bytes: Uint8Array, info: ImageInfo): Promise<RawImage> {
  await initDecoders();
  const name = formatName(info.format);
  let decoded: Decoded;
  try {
    if (info.format === "jpeg") decoded = await decodeJpeg(bytes);
    else if (info.format === "png") decoded = await decodePng(bytes);
    else decoded = await decodeWebpWasm(copyBuffer(bytes));
  } catch (error) {
    if (error instanceof EdgeVitError) throw error;
    throw new EdgeVitError(
      "invalid_image",
      `${name} could not be decoded (corrupt or truncated): ${describe(error)}`,
      { cause: error },
    );
  }
  if (decoded.width !== info.width || decoded.height !== info.height) {
    throw new EdgeVitError(
      "invalid_image",
      `${name} decoded to ${decoded.width}×${decoded.height} but its header says ${info.width}×${info.height}`,
    );
  }
  const data = new Uint8Array(
    decoded.data.buffer,
    decoded.data.byteOffset,
    decoded.data.byteLength,
  );
  return { data, width: decoded.width, height: decoded.height, channels: 4 };
}

// ---------------------------------------------------------------------------------------
// Decoder loading. Each decoder is proven on a 1-pixel image once, so a failure to load
// its wasm is reported as such and never blamed on the user's image.

const PROBES: Record<"jpeg" | "webp", string> = {
  jpeg:
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAIBAQEBAQIBAQECAgICAgQDAgICAgUEBAMEBgUGBgYFBgYGBwkIBgcJBwYGCAsICQoKCgoKBggLDAsKDAkKCgr/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACP/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AGb//2Q==",
  webp: "UklGRh4AAABXRUJQVlA4TBEAAAAvAAAAAAdQ5CrUo/+BiOh/AAA=",
};

let ready: Promise<void> | null = null;
/** Replaces the libjpeg instance with a new one, from the modules initDecoders was given. */
let freshJpegInstance: () => Promise<void> = () => Promise.resolve();

/** What the decoders return (an ImageData, or its polyfill): 8-bit RGBA. */
interface Decoded {
  data: ArrayBufferView;
  width: number;
  height: number;
}

/** The JS of the emscripten builds also takes (module, overrides) and print hooks. */
type EmscriptenInit = (...args: unknown[]) => Promise<void>;

/**
 * Loads and checks the JPEG and WebP decoders. {@link decodeImage} calls it on first use;
 * call it at startup to take the wasm compile off the first request, or with
 * precompiled modules where the package files cannot be fetched. Only the first call's
 * modules are used.
 *
 * @throws {EdgeVitError} `backend_failure` when a decoder cannot be loaded (in Deno,
 *   usually a missing `--allow-read` for the npm cache).
 *
 * @example
 * ```ts
 * import { initDecoders } from "./decode.ts";
 * await initDecoders();
 * ```
 */
export function initDecoders(modules: DecoderModules = {}): Promise<void> {
  ready ??= (async () => {
    const quiet = { print: () => {}, printErr: (line: string) => jpegMessages.push(line) };
    const initJpeg = initJpegWasm as unknown as EmscriptenInit;
    const initWebp = initWebpWasm as unknown as EmscriptenInit;
    // Compiled once: a failed decode is followed by a new instance of this module.
    const jpegModule = modules.jpeg ?? await compilePackageWasm(
      import.meta.resolve("@jsquash/jpeg/decode.js"),
      "codec/dec/mozjpeg_dec.wasm",
    ).catch((error) => {
      throw loadFailure("jpeg", error);
    });
    freshJpegInstance = () => initJpeg(jpegModule, quiet);
    await freshJpegInstance();
    const silent = { print: () => {}, printErr: () => {} };
    if (modules.webp) await initWebp(modules.webp, silent);
    else await initWebp(silent);
    for (const format of ["jpeg", "webp"] as const) {
      const probe = Uint8Array.from(atob(PROBES[format]), (c) => c.charCodeAt(0));
      try {
        const decoded = format === "jpeg"
          ? await decodeJpeg(probe)
          : await decodeWebpWasm(probe.buffer);
        if (decoded.width !== 1) throw new Error("probe decoded to the wrong size");
      } catch (error) {
        throw loadFailure(format, error);
      }
    }
  })();
  // A failed load may be fixed (permissions granted), so let a later call retry.
  ready.catch(() => (ready = null));
  return ready;
}

// libjpeg reports problems through printErr. A truncated file is only a warning to it
// (it pads with gray), but PIL refuses it, so "Premature end" is an error here too.
// Decodes run one at a time so each one sees only its own messages.
const jpegMessages: string[] = [];
let jpegQueue: Promise<unknown> = Promise.resolve();

function decodeJpeg(bytes: Uint8Array): Promise<Decoded> {
  const run = jpegQueue.then(async () => {
    if (!hasEndOfImage(bytes)) {
      throw new EdgeVitError("invalid_image", "JPEG is truncated: no end-of-image marker");
    }
    jpegMessages.length = 0;
    try {
      const decoded = await decodeJpegWasm(copyBuffer(bytes));
      const premature = jpegMessages.find((m) => m.startsWith("Premature end"));
      if (premature) throw new EdgeVitError("invalid_image", `JPEG is truncated: ${premature}`);
      return decoded;
    } catch (error) {
      if (error instanceof EdgeVitError) throw error;
      // libjpeg exits through emscripten's exit(); its own message is the useful part.
      const reason = jpegMessages.at(-1) ?? describe(error);
      // The instance that failed has lost stack and heap (see the module note).
      await freshJpegInstance();
      throw new EdgeVitError("invalid_image", `JPEG could not be decoded: ${reason}`, {
        cause: error,
      });
    }
  });
  jpegQueue = run.catch(() => {});
  return run;
}

/**
 * Whether an EOI marker follows the first scan. Entropy-coded data never contains
 * FF D9, and an EOI before the scan (inside an EXIF thumbnail) does not count.
 */
function hasEndOfImage(bytes: Uint8Array): boolean {
  let scan = 2;
  while (scan + 4 <= bytes.length && bytes[scan] === 0xff) {
    const marker = bytes[scan + 1];
    if (marker === 0xda) break;
    if (marker === 0xff) scan++;
    else if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) scan += 2;
    else scan += 2 + ((bytes[scan + 2] << 8) | bytes[scan + 3]);
  }
  for (let i = bytes.length - 2; i > scan; i--) {
    if (bytes[i] === 0xff && bytes[i + 1] === 0xd9) return true;
  }
  return false;
}

function loadFailure(format: ImageFormat, error: unknown): EdgeVitError {
  return new EdgeVitError(
    "backend_failure",
    `The ${formatName(format)} decoder could not be loaded (in Deno it needs ` +
      `--allow-read for the npm cache): ${describe(error)}`,
    { cause: error },
  );
}

/**
 * Compiles a `.wasm` file that sits beside a package's JS, found the way that package's
 * own loader finds it (a `file:` URL in Deno's npm cache).
 */
async function compilePackageWasm(
  packageScript: string,
  file: string,
): Promise<WebAssembly.Module> {
  const response = await fetch(new URL(file, packageScript));
  if (!response.ok) throw new Error(`${file}: HTTP ${response.status}`);
  return await WebAssembly.compile(await response.arrayBuffer());
}

/** The decoders take an ArrayBuffer; give them one that holds exactly these bytes. */
function copyBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer;
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (error && typeof error === "object" && "message" in error) return String(error.message);
  return String(error);
}
