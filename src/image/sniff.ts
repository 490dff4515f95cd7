/**
 * Format sniffing and header parsing without decoding. The size a header claims is
 * checked against the caller's limits here, before a decoder allocates one pixel, so
 * a 40-byte PNG that claims 100000×100000 costs microseconds, not 40 GB.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { PNG_BIT_DEPTHS } from "./png.ts";

/** Image formats edgevit decodes. */
export type ImageFormat = "jpeg" | "png" | "webp";

/** How a format is written in messages. */
export function formatName(format: ImageFormat): string {
  return format === "webp" ? "WebP" : format.toUpperCase();
}

/** What a header says about an image, read without decoding it. */
export interface ImageInfo {
  format: ImageFormat;
  /** Stored width in pixels, before any EXIF orientation is applied. */
  width: number;
  /** Stored height in pixels, before any EXIF orientation is applied. */
  height: number;
}

/** Size limits checked from the header before decoding. */
export interface ImageLimits {
  /** Largest width × height accepted; default {@link DEFAULT_MAX_PIXELS}. */
  maxPixels?: number;
  /** Largest width or height accepted; default {@link DEFAULT_MAX_SIDE}. */
  maxSide?: number;
}

/**
 * Default pixel limit: 40 megapixels. The decoders' wasm memory grows to the largest
 * image seen (RGBA, 4 bytes per pixel) and never shrinks, so this bounds it near 160 MB.
 */
export const DEFAULT_MAX_PIXELS = 40_000_000;

/** Default side limit: 16384 px (WebP's own maximum is 16383). */
export const DEFAULT_MAX_SIDE = 16384;

/**
 * Tells the format and size of an image from its first bytes, without decoding it.
 *
 * @param bytes The whole encoded file (a prefix is enough for PNG and WebP; JPEG may
 *   need to skip metadata segments before its frame header).
 * @returns The format and stored size.
 * @throws {EdgeVitError} `invalid_image` for empty or malformed headers and zero
 *   sizes, `unsupported_media_type` for GIF, BMP, TIFF, HEIF/AVIF and anything else
 *   that is not JPEG, PNG or WebP (also animated WebP, CMYK and 12-bit JPEG).
 *
 * @example
 * ```ts
 * import { sniffImage } from "./sniff.ts";
 * // The 33-byte start of a PNG: signature + IHDR of a 640×480 RGB image.
 * const png = new Uint8Array([
 *   0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52,
 *   0, 0, 2, 128, 0, 0, 1, 224, 8, 2, 0, 0, 0, 0, 0, 0, 0,
 * ]);
 * const info = sniffImage(png);
 * if (info.format !== "png" || info.width !== 640 || info.height !== 480) throw new Error();
 * ```
 */
export function sniffImage(bytes: Uint8Array): ImageInfo {
  if (bytes.length === 0) throw new EdgeVitError("invalid_image", "Image is empty");
  let info: ImageInfo;
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) info = parseJpeg(bytes);
  else if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) {
    info = parsePng(bytes);
  } else if (startsWith(bytes, ASCII("RIFF")) && startsWith(bytes, ASCII("WEBP"), 8)) {
    info = parseWebp(bytes);
  } else {
    const other = otherFormat(bytes);
    throw new EdgeVitError(
      "unsupported_media_type",
      other
        ? `${other} images are not supported; send JPEG, PNG or WebP`
        : "Bytes are not a JPEG, PNG or WebP image",
    );
  }
  if (info.width === 0 || info.height === 0) {
    throw new EdgeVitError(
      "invalid_image",
      `${formatName(info.format)} header gives a zero size (${info.width}×${info.height})`,
    );
  }
  return info;
}

/**
 * Throws `too_large` when a header's size exceeds the limits. Call it before decoding.
 *
 * @example
 * ```ts
 * import { checkLimits } from "./sniff.ts";
 * checkLimits({ format: "png", width: 640, height: 480 }, { maxPixels: 1_000_000 });
 * let rejected = false;
 * try {
 *   checkLimits({ format: "png", width: 100000, height: 100000 }, {});
 * } catch {
 *   rejected = true;
 * }
 * if (!rejected) throw new Error("expected too_large");
 * ```
 */
export function checkLimits(info: ImageInfo, limits: ImageLimits = {}): void {
  const maxPixels = limits.maxPixels ?? DEFAULT_MAX_PIXELS;
  const maxSide = limits.maxSide ?? DEFAULT_MAX_SIDE;
  const { width, height, format } = info;
  if (width > maxSide || height > maxSide) {
    throw new EdgeVitError(
      "too_large",
      `${
        formatName(format)
      } image is ${width}×${height}; the largest side allowed is ${maxSide} px`,
    );
  }
  if (width * height > maxPixels) {
    throw new EdgeVitError(
      "too_large",
      `${formatName(format)} image is ${width}×${height} = ${
        width * height
      } pixels; the limit is ${maxPixels}`,
    );
  }
}

// ---------------------------------------------------------------------------------------
// JPEG: walk the marker segments up to the first start-of-frame.

/** SOF markers with a frame header (C4 DHT, C8 JPG and CC DAC are not frames). */
function isSofMarker(marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
    marker !== 0xcc;
}

function parseJpeg(bytes: Uint8Array): ImageInfo {
  let pos = 2;
  while (true) {
    // Markers may be preceded by any number of 0xFF fill bytes.
    if (pos >= bytes.length) break;
    if (bytes[pos] !== 0xff) {
      throw new EdgeVitError("invalid_image", `JPEG has no marker at byte ${pos}`);
    }
    while (pos < bytes.length && bytes[pos] === 0xff) pos++;
    if (pos >= bytes.length) break;
    const marker = bytes[pos++];
    // Standalone markers carry no length.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;
    if (marker === 0xd9 || marker === 0xda) {
      throw new EdgeVitError("invalid_image", "JPEG has no frame header before its scan data");
    }
    if (pos + 2 > bytes.length) break;
    const length = readU16BE(bytes, pos);
    if (length < 2) throw new EdgeVitError("invalid_image", "JPEG has a segment shorter than 2");
    if (isSofMarker(marker)) {
      if (pos + 8 > bytes.length) break;
      const precision = bytes[pos + 2];
      const height = readU16BE(bytes, pos + 3);
      const width = readU16BE(bytes, pos + 5);
      const components = bytes[pos + 7];
      if (precision !== 8) {
        throw new EdgeVitError(
          "unsupported_media_type",
          `${precision}-bit JPEG is not supported; only 8-bit samples are`,
        );
      }
      if (marker === 0xc3 || marker === 0xc7 || marker === 0xcb || marker === 0xcf) {
        throw new EdgeVitError("unsupported_media_type", "Lossless JPEG is not supported");
      }
      if (components !== 1 && components !== 3) {
        throw new EdgeVitError(
          "unsupported_media_type",
          `JPEG with ${components} components (CMYK?) is not supported; use grayscale or RGB`,
        );
      }
      return { format: "jpeg", width, height };
    }
    pos += length;
  }
  throw new EdgeVitError("invalid_image", "JPEG is truncated before its frame header");
}

// ---------------------------------------------------------------------------------------
// PNG: the first chunk must be IHDR.

function parsePng(bytes: Uint8Array): ImageInfo {
  if (bytes.length < 8 + 8 + 13) {
    throw new EdgeVitError("invalid_image", "PNG is truncated before the end of its IHDR chunk");
  }
  if (readU32BE(bytes, 8) !== 13 || !startsWith(bytes, ASCII("IHDR"), 12)) {
    throw new EdgeVitError("invalid_image", "PNG does not start with a 13-byte IHDR chunk");
  }
  const width = readU32BE(bytes, 16);
  const height = readU32BE(bytes, 20);
  const depth = bytes[24];
  const colorType = bytes[25];
  if (!PNG_BIT_DEPTHS[colorType]?.includes(depth)) {
    throw new EdgeVitError(
      "invalid_image",
      `PNG has an invalid bit depth ${depth} for color type ${colorType}`,
    );
  }
  return { format: "png", width, height };
}

// ---------------------------------------------------------------------------------------
// WebP: RIFF container whose first chunk is VP8 (lossy), VP8L (lossless) or VP8X (extended).

function parseWebp(bytes: Uint8Array): ImageInfo {
  if (bytes.length < 20) {
    throw new EdgeVitError("invalid_image", "WebP is truncated before its first chunk");
  }
  const fourcc = String.fromCharCode(...bytes.subarray(12, 16));
  const body = 20;
  if (fourcc === "VP8 ") return { format: "webp", ...vp8Size(bytes, body) };
  if (fourcc === "VP8L") return { format: "webp", ...vp8lSize(bytes, body) };
  if (fourcc === "VP8X") {
    if (bytes.length < body + 10) {
      throw new EdgeVitError("invalid_image", "WebP is truncated inside its VP8X header");
    }
    const flags = bytes[body];
    if (flags & 0x02) {
      throw new EdgeVitError("unsupported_media_type", "Animated WebP is not supported");
    }
    const width = 1 + readU24LE(bytes, body + 4);
    const height = 1 + readU24LE(bytes, body + 7);
    // The canvas size is what the decoder allocates; also check the frame inside when
    // it is within reach, because a frame larger than its canvas is corrupt.
    const frame = findRiffChunk(bytes, ["VP8 ", "VP8L"]);
    if (frame) {
      const size = frame.fourcc === "VP8 "
        ? vp8Size(bytes, frame.offset)
        : vp8lSize(bytes, frame.offset);
      if (size.width !== width || size.height !== height) {
        throw new EdgeVitError(
          "invalid_image",
          `WebP frame is ${size.width}×${size.height} but its canvas is ${width}×${height}`,
        );
      }
    }
    return { format: "webp", width, height };
  }
  throw new EdgeVitError("invalid_image", `WebP starts with an unknown chunk "${fourcc}"`);
}

function vp8Size(bytes: Uint8Array, at: number): { width: number; height: number } {
  // 3-byte frame tag, then the key frame start code 9D 01 2A, then 14-bit sizes.
  if (bytes.length < at + 10) {
    throw new EdgeVitError("invalid_image", "WebP is truncated inside its VP8 frame header");
  }
  if ((bytes[at] & 1) !== 0) {
    throw new EdgeVitError("invalid_image", "WebP VP8 data does not start with a key frame");
  }
  if (bytes[at + 3] !== 0x9d || bytes[at + 4] !== 0x01 || bytes[at + 5] !== 0x2a) {
    throw new EdgeVitError("invalid_image", "WebP VP8 frame has a bad start code");
  }
  return {
    width: readU16LE(bytes, at + 6) & 0x3fff,
    height: readU16LE(bytes, at + 8) & 0x3fff,
  };
}

function vp8lSize(bytes: Uint8Array, at: number): { width: number; height: number } {
  if (bytes.length < at + 5) {
    throw new EdgeVitError("invalid_image", "WebP is truncated inside its VP8L header");
  }
  if (bytes[at] !== 0x2f) {
    throw new EdgeVitError("invalid_image", "WebP VP8L data has a bad signature");
  }
  const bits = readU32LE(bytes, at + 1);
  return { width: 1 + (bits & 0x3fff), height: 1 + ((bits >>> 14) & 0x3fff) };
}

/** Finds the first RIFF chunk with one of `names`, returning the offset of its payload. */
export function findRiffChunk(
  bytes: Uint8Array,
  names: string[],
): { fourcc: string; offset: number; length: number } | null {
  let pos = 12;
  while (pos + 8 <= bytes.length) {
    const fourcc = String.fromCharCode(...bytes.subarray(pos, pos + 4));
    const length = readU32LE(bytes, pos + 4);
    if (names.includes(fourcc)) {
      return { fourcc, offset: pos + 8, length: Math.min(length, bytes.length - pos - 8) };
    }
    // Chunks are padded to an even length.
    pos += 8 + length + (length & 1);
  }
  return null;
}

// ---------------------------------------------------------------------------------------

function otherFormat(bytes: Uint8Array): string | null {
  if (startsWith(bytes, ASCII("GIF8"))) return "GIF";
  if (startsWith(bytes, ASCII("BM"))) return "BMP";
  if (startsWith(bytes, [0x49, 0x49, 0x2a, 0]) || startsWith(bytes, [0x4d, 0x4d, 0, 0x2a])) {
    return "TIFF";
  }
  if (startsWith(bytes, ASCII("ftyp"), 4)) {
    const brand = String.fromCharCode(...bytes.subarray(8, 12));
    return brand.startsWith("avi") ? "AVIF" : "HEIF";
  }
  if (startsWith(bytes, [0xff, 0x0a]) || startsWith(bytes, ASCII("\0\0\0\x0cJXL "))) {
    return "JPEG XL";
  }
  if (startsWith(bytes, [0, 0, 1, 0])) return "ICO";
  return null;
}

function ASCII(text: string): number[] {
  return Array.from(text, (c) => c.charCodeAt(0));
}

function startsWith(bytes: Uint8Array, prefix: number[], at = 0): boolean {
  if (bytes.length < at + prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[at + i] !== prefix[i]) return false;
  return true;
}

/** Big-endian u16 at `at`; the caller has checked the bounds. */
export function readU16BE(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 8) | bytes[at + 1];
}

function readU16LE(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8);
}

function readU24LE(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16);
}

/** Big-endian u32 at `at`; the caller has checked the bounds. */
export function readU32BE(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) >>> 0) + ((bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]);
}

/** Little-endian u32 at `at`; the caller has checked the bounds. */
export function readU32LE(bytes: Uint8Array, at: number): number {
  return ((bytes[at + 3] << 24) >>> 0) + ((bytes[at + 2] << 16) | (bytes[at + 1] << 8) | bytes[at]);
}
