/**
 * EXIF orientation: where it is stored in JPEG (APP1 "Exif"), PNG (eXIf) and WebP
 * (EXIF chunk), and how the eight values turn the stored pixels into the displayed ones
 * (the same transposes as PIL's `ImageOps.exif_transpose`).
 *
 * @module
 */

import type { RawImage } from "./raw_image.ts";
import type { ImageFormat } from "./sniff.ts";
import { findRiffChunk, readU16BE, readU32BE } from "./sniff.ts";

/**
 * EXIF orientation (tag 0x0112) of an encoded image, 1 when it has none or the
 * metadata is malformed (metadata never makes a decodable image fail).
 *
 * @example
 * ```ts
 * import { readOrientation } from "./exif.ts";
 * const bytes = new Uint8Array([0xff, 0xd8, 0xff, 0xd9]);
 * if (readOrientation(bytes, "jpeg") !== 1) throw new Error();
 * ```
 */
export function readOrientation(bytes: Uint8Array, format: ImageFormat): number {
  const tiff = format === "jpeg"
    ? jpegExif(bytes)
    : format === "png"
    ? pngExif(bytes)
    : webpExif(bytes);
  if (!tiff) return 1;
  const value = tiffOrientation(tiff);
  return value >= 1 && value <= 8 ? value : 1;
}

/** True for orientations 5–8, whose displayed image has width and height swapped. */
export function swapsAxes(orientation: number): boolean {
  return orientation >= 5 && orientation <= 8;
}

/**
 * Applies an EXIF orientation, returning the image as it is meant to be displayed.
 * Orientation 1 (and anything outside 1–8) returns the input unchanged.
 *
 * @example
 * ```ts
 * import { applyOrientation } from "./exif.ts";
 * // 2×1 gray image [10, 20]; orientation 6 (rotate 90° clockwise) makes it 1×2.
 * const out = applyOrientation({ data: new Uint8Array([10, 20]), width: 2, height: 1, channels: 1 }, 6);
 * if (out.width !== 1 || out.height !== 2 || out.data[0] !== 10 || out.data[1] !== 20) {
 *   throw new Error();
 * }
 * ```
 */
export function applyOrientation(image: RawImage, orientation: number): RawImage {
  if (orientation < 2 || orientation > 8) return image;
  const { width: w, height: h, channels: c, data } = image;
  // Output pixel (x, y) reads stored pixel offset + x·ax + y·ay (in pixels).
  const [offset, ax, ay] = ({
    2: [w - 1, -1, w],
    3: [h * w - 1, -1, -w],
    4: [(h - 1) * w, 1, -w],
    5: [0, w, 1],
    6: [(h - 1) * w, -w, 1],
    7: [h * w - 1, -w, -1],
    8: [w - 1, w, -1],
  } as Record<number, [number, number, number]>)[orientation];
  const outW = swapsAxes(orientation) ? h : w;
  const outH = swapsAxes(orientation) ? w : h;
  const out = new Uint8Array(data.length); // [outH, outW, c]
  let o = 0;
  for (let y = 0; y < outH; y++) {
    let s = offset + y * ay;
    for (let x = 0; x < outW; x++, s += ax) {
      const si = s * c;
      for (let k = 0; k < c; k++) out[o++] = data[si + k];
    }
  }
  return { data: out, width: outW, height: outH, channels: c };
}

function jpegExif(bytes: Uint8Array): Uint8Array | null {
  let pos = 2;
  while (pos + 4 <= bytes.length && bytes[pos] === 0xff) {
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return null;
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      pos += 2;
      continue;
    }
    const length = readU16BE(bytes, pos + 2);
    const start = pos + 4;
    const end = Math.min(pos + 2 + length, bytes.length);
    if (
      marker === 0xe1 && end - start > 6 && bytes[start] === 0x45 && bytes[start + 1] === 0x78 &&
      bytes[start + 2] === 0x69 && bytes[start + 3] === 0x66 && bytes[start + 4] === 0 &&
      bytes[start + 5] === 0
    ) {
      return bytes.subarray(start + 6, end);
    }
    if (length < 2) return null;
    pos += 2 + length;
  }
  return null;
}

function pngExif(bytes: Uint8Array): Uint8Array | null {
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = readU32BE(bytes, pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    if (type === "eXIf") return bytes.subarray(pos + 8, Math.min(pos + 8 + length, bytes.length));
    if (type === "IEND") return null;
    pos += 12 + length;
  }
  return null;
}

function webpExif(bytes: Uint8Array): Uint8Array | null {
  const chunk = findRiffChunk(bytes, ["EXIF"]);
  if (!chunk) return null;
  let data = bytes.subarray(chunk.offset, chunk.offset + chunk.length);
  // Some writers keep JPEG's "Exif\0\0" prefix inside the chunk.
  if (data.length > 6 && data[0] === 0x45 && data[1] === 0x78 && data[4] === 0 && data[5] === 0) {
    data = data.subarray(6);
  }
  return data;
}

/** Reads tag 0x0112 from IFD0 of a TIFF structure; 0 when absent or malformed. */
function tiffOrientation(tiff: Uint8Array): number {
  if (tiff.length < 8) return 0;
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!little && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return 0;
  const u16 = (at: number) =>
    little ? tiff[at] | (tiff[at + 1] << 8) : (tiff[at] << 8) | tiff[at + 1];
  const u32 = (at: number) =>
    little
      ? (tiff[at] | (tiff[at + 1] << 8) | (tiff[at + 2] << 16)) + tiff[at + 3] * 2 ** 24
      : tiff[at] * 2 ** 24 + ((tiff[at + 1] << 16) | (tiff[at + 2] << 8) | tiff[at + 3]);
  if (u16(2) !== 42) return 0;
  const ifd = u32(4);
  if (ifd + 2 > tiff.length) return 0;
  const count = u16(ifd);
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + 12 * i;
    if (entry + 12 > tiff.length) return 0;
    if (u16(entry) !== 0x0112) continue;
    const type = u16(entry + 2);
    // SHORT is the spec's type; a few writers use LONG.
    if (type === 3) return u16(entry + 8);
    if (type === 4) return u32(entry + 8);
    return 0;
  }
  return 0;
}
