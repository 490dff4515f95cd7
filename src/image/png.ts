/**
 * A PNG decoder with no state between calls: chunks checked against their CRCs, the
 * image data inflated by the platform's `DecompressionStream`, every colour type, bit
 * depth and Adam7 interlacing expanded to 8-bit RGBA.
 *
 * Why not a wasm codec: a Rust decoder built with wasm-bindgen reports errors by
 * throwing through its own frames, which skips the epilogues that give back its shadow
 * stack and heap. After ~750 corrupt files the instance faulted on every PNG, good
 * ones included, until the process restarted. Here a bad file costs nothing later.
 *
 * Pixels are PIL's for 8-bit and lower depths (gray levels scaled by 255 / (2^d − 1),
 * palette entries past the palette read as PIL's gray ramp). 16-bit samples keep their
 * high byte, as PIL does for RGB, RGBA and LA. Two PIL quirks are not followed, the
 * specification is: PIL clips 16-bit gray to 255 (a white image) instead of keeping the
 * high byte, and compares a 1/2/4-bit gray tRNS key with samples already scaled to
 * 8 bits, so that no pixel is ever transparent.
 *
 * A file that ends inside or before its IEND chunk, after complete image data, decodes
 * (PIL and browsers accept it too); a file cut anywhere earlier is `invalid_image`.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import type { RawImage } from "./raw_image.ts";

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Samples per pixel, by colour type. */
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
/** Bit depths the PNG specification allows, by colour type (also checked by `sniffImage`). */
export const PNG_BIT_DEPTHS: Readonly<Record<number, readonly number[]>> = {
  0: [1, 2, 4, 8, 16], // gray
  2: [8, 16], // RGB
  3: [1, 2, 4, 8], // palette
  4: [8, 16], // gray + alpha
  6: [8, 16], // RGBA
};

/** Adam7 passes: first column, first row, column step, row step. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
];
const WHOLE_IMAGE = [[0, 0, 1, 1]];

/** More raw image data than this is refused before inflating (2 GiB). */
const MAX_RAW_BYTES = 2 ** 31;

interface Header {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlaced: boolean;
}

/** One interlace pass (or the whole image) as it sits in the inflated data. */
interface Pass {
  x0: number;
  y0: number;
  dx: number;
  dy: number;
  width: number;
  height: number;
  rowBytes: number;
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes: Uint8Array, start: number, end: number): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function invalid(message: string): EdgeVitError {
  return new EdgeVitError("invalid_image", `PNG ${message}`);
}

/** A chunk type as text, safe to quote in a message whatever its bytes are. */
function chunkName(bytes: Uint8Array, at: number): string {
  const name = String.fromCharCode(...bytes.subarray(at, at + 4));
  return /^[A-Za-z]{4}$/.test(name) ? name : JSON.stringify(name);
}

/**
 * Decodes a PNG file to straight (not premultiplied) 8-bit RGBA.
 *
 * Callers check the header's size against their limits first (`sniffImage` and
 * `checkLimits`): this allocates `width × height × 4` bytes for the result.
 *
 * @param bytes The whole file.
 * @returns `[height, width, 4]` pixels.
 * @throws {EdgeVitError} `invalid_image` for anything malformed: bad signature, CRC,
 *   header fields, filter types, truncated or surplus image data.
 *
 * @example
 * ```ts
 * import { decodePng } from "./png.ts";
 * const file = Uint8Array.from(atob(
 *   "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGPgOiEHAAHQAPEkXJH0AAAAAElFTkSuQmCC",
 * ), (c) => c.charCodeAt(0));
 * const image = await decodePng(file);
 * if (image.width !== 1 || image.channels !== 4 || image.data[3] !== 255) throw new Error();
 * ```
 */
export async function decodePng(bytes: Uint8Array): Promise<RawImage> {
  if (bytes.length < 8 || SIGNATURE.some((byte, i) => bytes[i] !== byte)) {
    throw invalid("signature is missing");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let header: Header | undefined;
  let palette: Uint8Array | undefined;
  let transparency: Uint8Array | undefined;
  const imageData: Uint8Array[] = [];
  let imageDataState: "before" | "inside" | "after" = "before";
  let at = 8;
  while (at < bytes.length) {
    const complete = at + 12 <= bytes.length &&
      at + 12 + view.getUint32(at) <= bytes.length;
    if (!complete) {
      // After the image data only trailing chunks (IEND, text, EXIF) can be cut off; a
      // cut IDAT shows up below as image data that ends early.
      const name = at + 8 <= bytes.length ? chunkName(bytes, at + 4) : "";
      if (imageDataState !== "before" && name !== "IDAT") break;
      throw invalid(`is truncated inside its ${name || "next"} chunk (at byte ${at})`);
    }
    const length = view.getUint32(at);
    const type = chunkName(bytes, at + 4);
    const dataEnd = at + 8 + length;
    if (crc32(bytes, at + 4, dataEnd) !== view.getUint32(dataEnd)) {
      throw invalid(`${type} chunk at byte ${at} fails its CRC check`);
    }
    const data = bytes.subarray(at + 8, dataEnd);
    // A lower-case first letter marks an ancillary chunk, safe to skip.
    const critical = (bytes[at + 4] & 0x20) === 0;
    at = dataEnd + 4;
    if (!header && type !== "IHDR") throw invalid("does not start with an IHDR chunk");
    if (type !== "IDAT" && imageDataState === "inside") imageDataState = "after";
    if (type === "IHDR") {
      if (header) throw invalid("has two IHDR chunks");
      header = parseHeader(data);
    } else if (type === "PLTE") {
      if (data.length === 0 || data.length % 3 !== 0 || data.length > 768) {
        throw invalid(`palette has ${data.length} bytes, not 3 per entry for 1–256 entries`);
      }
      palette = data;
    } else if (type === "tRNS") {
      transparency = data;
    } else if (type === "IDAT") {
      if (imageDataState === "after") throw invalid("has IDAT chunks that are not consecutive");
      imageDataState = "inside";
      imageData.push(data);
    } else if (type === "IEND") {
      break;
    } else if (critical) {
      throw invalid(`has an unknown critical chunk ${type}`);
    }
  }
  if (!header) throw invalid("has no IHDR chunk");
  if (imageData.length === 0) throw invalid("has no image data (IDAT chunk)");
  if (header.colorType === 3 && !palette) throw invalid("is indexed but has no palette");

  const passes = layout(header);
  const rawSize = passes.reduce((sum, pass) => sum + pass.height * (1 + pass.rowBytes), 0);
  if (rawSize > MAX_RAW_BYTES) {
    throw new EdgeVitError("too_large", `PNG image data would take ${rawSize} bytes`);
  }
  const raw = await inflate(imageData, rawSize);
  const out = new Uint8Array(header.width * header.height * 4);
  const expand = expander(header, palette, transparency);
  const bytesPerPixel = Math.max(1, (CHANNELS[header.colorType] * header.bitDepth) >> 3);
  let offset = 0;
  for (const pass of passes) {
    if (pass.height === 0) continue;
    const rows = unfilter(raw, offset, pass.height, pass.rowBytes, bytesPerPixel);
    offset += pass.height * (1 + pass.rowBytes);
    for (let y = 0; y < pass.height; y++) {
      const row = rows.subarray(y * pass.rowBytes, (y + 1) * pass.rowBytes);
      const outRow = (pass.y0 + y * pass.dy) * header.width;
      expand(row, pass.width, out, outRow, pass.x0, pass.dx);
    }
  }
  return { data: out, width: header.width, height: header.height, channels: 4 };
}

function parseHeader(data: Uint8Array): Header {
  if (data.length !== 13) throw invalid(`IHDR chunk has ${data.length} bytes instead of 13`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const width = view.getUint32(0);
  const height = view.getUint32(4);
  const [bitDepth, colorType, compression, filter, interlace] = data.subarray(8);
  if (width === 0 || height === 0 || width > 0x7fffffff || height > 0x7fffffff) {
    throw invalid(`header gives an invalid size ${width}×${height}`);
  }
  if (!(colorType in PNG_BIT_DEPTHS)) throw invalid(`has an invalid colour type ${colorType}`);
  if (!PNG_BIT_DEPTHS[colorType].includes(bitDepth)) {
    throw invalid(`has an invalid bit depth ${bitDepth} for colour type ${colorType}`);
  }
  if (compression !== 0) throw invalid(`has an unknown compression method ${compression}`);
  if (filter !== 0) throw invalid(`has an unknown filter method ${filter}`);
  if (interlace > 1) throw invalid(`has an unknown interlace method ${interlace}`);
  return { width, height, bitDepth, colorType, interlaced: interlace === 1 };
}

function layout(header: Header): Pass[] {
  const bitsPerPixel = CHANNELS[header.colorType] * header.bitDepth;
  return (header.interlaced ? ADAM7 : WHOLE_IMAGE).map(([x0, y0, dx, dy]) => {
    const width = Math.max(0, Math.ceil((header.width - x0) / dx));
    const height = width === 0 ? 0 : Math.max(0, Math.ceil((header.height - y0) / dy));
    return { x0, y0, dx, dy, width, height, rowBytes: Math.ceil((width * bitsPerPixel) / 8) };
  });
}

/** Inflates the zlib stream split over the IDAT chunks into exactly `size` bytes. */
async function inflate(parts: Uint8Array[], size: number): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  let filled = 0;
  const compressed = new Blob(parts.map((part) => part.slice()));
  const reader = compressed.stream().pipeThrough(new DecompressionStream("deflate")).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      // Stop a decompression bomb at the size the header promises.
      if (filled + value.length > size) {
        throw invalid(`holds more image data than its ${size}-byte header promises`);
      }
      out.set(value, filled);
      filled += value.length;
    }
  } catch (error) {
    if (error instanceof EdgeVitError) throw error;
    throw invalid(`image data is corrupt: ${error instanceof Error ? error.message : error}`);
  } finally {
    reader.cancel().catch(() => {});
  }
  if (filled < size) {
    throw invalid(`is truncated: its image data ends after ${filled} of ${size} bytes`);
  }
  return out;
}

/** Undoes the per-row filters of one pass; returns its rows without the filter bytes. */
function unfilter(
  raw: Uint8Array,
  offset: number,
  height: number,
  rowBytes: number,
  bytesPerPixel: number,
): Uint8Array {
  const rows = new Uint8Array(height * rowBytes);
  const none = new Uint8Array(rowBytes);
  for (let y = 0; y < height; y++) {
    const filter = raw[offset + y * (rowBytes + 1)];
    const src = raw.subarray(offset + y * (rowBytes + 1) + 1, offset + (y + 1) * (rowBytes + 1));
    const row = rows.subarray(y * rowBytes, (y + 1) * rowBytes);
    const up = y === 0 ? none : rows.subarray((y - 1) * rowBytes, y * rowBytes);
    switch (filter) {
      case 0:
        row.set(src);
        break;
      case 1:
        for (let i = 0; i < bytesPerPixel; i++) row[i] = src[i];
        for (let i = bytesPerPixel; i < rowBytes; i++) row[i] = src[i] + row[i - bytesPerPixel];
        break;
      case 2:
        for (let i = 0; i < rowBytes; i++) row[i] = src[i] + up[i];
        break;
      case 3:
        for (let i = 0; i < bytesPerPixel; i++) row[i] = src[i] + (up[i] >> 1);
        for (let i = bytesPerPixel; i < rowBytes; i++) {
          row[i] = src[i] + ((row[i - bytesPerPixel] + up[i]) >> 1);
        }
        break;
      case 4:
        // With nothing to the left, Paeth picks the byte above.
        for (let i = 0; i < bytesPerPixel; i++) row[i] = src[i] + up[i];
        for (let i = bytesPerPixel; i < rowBytes; i++) {
          const a = row[i - bytesPerPixel];
          const b = up[i];
          const c = up[i - bytesPerPixel];
          const pa = Math.abs(b - c);
          const pb = Math.abs(a - c);
          const pc = Math.abs(a + b - 2 * c);
          row[i] = src[i] + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
        }
        break;
      default:
        throw invalid(`row ${y} has an unknown filter type ${filter}`);
    }
  }
  return rows;
}

/** Writes `width` pixels of one unfiltered row into RGBA `out`. */
type Expand = (
  row: Uint8Array,
  width: number,
  out: Uint8Array,
  outRow: number,
  x0: number,
  dx: number,
) => void;

function expander(
  header: Header,
  palette: Uint8Array | undefined,
  transparency: Uint8Array | undefined,
): Expand {
  const { bitDepth: depth, colorType } = header;
  const wide = depth === 16;
  // tRNS names one transparent gray or RGB value at the file's bit depth.
  const key = transparency && (colorType === 0 || colorType === 2)
    ? readKey(transparency, colorType === 0 ? 1 : 3)
    : undefined;
  if (colorType === 3) {
    // PIL's palette starts as a gray ramp, so indices past the file's palette are gray.
    const table = new Uint8Array(256 * 4);
    for (let i = 0; i < 256; i++) table.set([i, i, i, 255], i * 4);
    for (let i = 0; i < palette!.length / 3; i++) {
      table.set(palette!.subarray(i * 3, i * 3 + 3), i * 4);
    }
    for (let i = 0; i < Math.min(256, transparency?.length ?? 0); i++) {
      table[i * 4 + 3] = transparency![i];
    }
    return (row, width, out, outRow, x0, dx) => {
      for (let x = 0; x < width; x++) {
        const index = readSample(row, x, depth);
        out.set(table.subarray(index * 4, index * 4 + 4), (outRow + x0 + x * dx) * 4);
      }
    };
  }
  if (colorType === 0) {
    const scale = depth < 8 ? 255 / ((1 << depth) - 1) : 1;
    return (row, width, out, outRow, x0, dx) => {
      for (let x = 0; x < width; x++) {
        const sample = readSample(row, x, depth);
        const gray = wide ? sample >> 8 : sample * scale;
        const o = (outRow + x0 + x * dx) * 4;
        out[o] = out[o + 1] = out[o + 2] = gray;
        out[o + 3] = key && sample === key[0] ? 0 : 255;
      }
    };
  }
  if (colorType === 6 && !wide) {
    return (row, width, out, outRow, x0, dx) => {
      if (dx === 1) out.set(row.subarray(0, width * 4), (outRow + x0) * 4);
      else {
        for (let x = 0; x < width; x++) {
          out.set(row.subarray(x * 4, x * 4 + 4), (outRow + x0 + x * dx) * 4);
        }
      }
    };
  }
  if (colorType === 2 && !wide && !key) {
    return (row, width, out, outRow, x0, dx) => {
      for (let x = 0, s = 0, o = (outRow + x0) * 4; x < width; x++, s += 3, o += 4 * dx) {
        out[o] = row[s];
        out[o + 1] = row[s + 1];
        out[o + 2] = row[s + 2];
        out[o + 3] = 255;
      }
    };
  }
  const channels = CHANNELS[colorType];
  const step = wide ? 2 : 1;
  return (row, width, out, outRow, x0, dx) => {
    for (let x = 0; x < width; x++) {
      const s = x * channels * step;
      const o = (outRow + x0 + x * dx) * 4;
      if (colorType === 4) {
        out[o] = out[o + 1] = out[o + 2] = row[s];
        out[o + 3] = row[s + step];
      } else {
        out[o] = row[s];
        out[o + 1] = row[s + step];
        out[o + 2] = row[s + 2 * step];
        if (colorType === 6) out[o + 3] = row[s + 3 * step];
        else if (key) {
          const matches = wide
            ? ((row[s] << 8) | row[s + 1]) === key[0] &&
              ((row[s + 2] << 8) | row[s + 3]) === key[1] &&
              ((row[s + 4] << 8) | row[s + 5]) === key[2]
            : row[s] === key[0] && row[s + 1] === key[1] && row[s + 2] === key[2];
          out[o + 3] = matches ? 0 : 255;
        } else out[o + 3] = 255;
      }
    }
  };
}

/** Sample `x` of a one-sample-per-pixel row at 1, 2, 4, 8 or 16 bits. */
function readSample(row: Uint8Array, x: number, depth: number): number {
  if (depth === 8) return row[x];
  if (depth === 16) return (row[2 * x] << 8) | row[2 * x + 1];
  const bit = x * depth;
  return (row[bit >> 3] >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
}

/** The 16-bit big-endian values of a gray or RGB tRNS chunk; none if it is too short. */
function readKey(transparency: Uint8Array, samples: number): number[] | undefined {
  if (transparency.length < samples * 2) return undefined;
  return Array.from(
    { length: samples },
    (_, i) => (transparency[2 * i] << 8) | transparency[2 * i + 1],
  );
}
