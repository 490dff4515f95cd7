/**
 * Resampling that gives the same bytes as Pillow's `Image.resize` (which is what
 * torchvision's `Resize` and Hugging Face image processors call on PIL images).
 *
 * Pillow's algorithm, which this reproduces step by step:
 * - separable: a horizontal pass into a uint8 temporary (only over the source rows the
 *   vertical pass will read), then a vertical pass; each pass rounds to uint8;
 * - each output pixel `i` is centred at `(i + 0.5) · scale` in the source; when
 *   downscaling, the filter is stretched by `scale` (antialiasing), so its support
 *   covers `support · scale` source pixels each side;
 * - weights are normalized to sum 1, then turned into 22-bit fixed point (rounded half
 *   away from zero); sums start at ½ and are shifted back and clamped to 0–255;
 * - nearest neighbour takes source pixel `floor((i + 0.5) · scale)` (with Pillow's
 *   accumulated coordinate), no filtering.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import type { RawImage } from "./raw_image.ts";

/**
 * Resampling filter, named and shaped as PIL's: NEAREST, BILINEAR, BICUBIC (a = −0.5),
 * and the rarer BOX, HAMMING and LANCZOS (a = 3).
 */
export type Interpolation = "nearest" | "bilinear" | "bicubic" | "box" | "hamming" | "lanczos";

/** PIL's integer resample codes, as Hugging Face configs store them (`"resample": 3`). */
export const PIL_RESAMPLE: Record<number, Interpolation> = {
  0: "nearest",
  1: "lanczos",
  2: "bilinear",
  3: "bicubic",
  4: "box",
  5: "hamming",
};

const PRECISION_BITS = 22; // 32 − 8 − 2, as in Pillow's 8-bit resampler
const HALF = 1 << (PRECISION_BITS - 1);

interface Filter {
  support: number;
  weight(x: number): number;
}

function sinc(x: number): number {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

const FILTERS: Record<Exclude<Interpolation, "nearest">, Filter> = {
  box: {
    support: 0.5,
    weight: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0),
  },
  bilinear: {
    support: 1,
    weight(x) {
      if (x < 0) x = -x;
      return x < 1 ? 1 - x : 0;
    },
  },
  // Keys' cubic convolution with a = −0.5, evaluated in the same order as Pillow so the
  // doubles (and hence the fixed-point weights) agree bit for bit.
  bicubic: {
    support: 2,
    weight(x) {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  hamming: {
    support: 1,
    weight(x) {
      if (x < 0) x = -x;
      if (x === 0) return 1;
      if (x >= 1) return 0;
      x *= Math.PI;
      return (Math.sin(x) / x) * (0.54 + 0.46 * Math.cos(x));
    },
  },
  lanczos: {
    support: 3,
    weight: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0),
  },
};

/** Per-output-pixel source windows and fixed-point weights of one axis. */
interface Coefficients {
  /** Taps per output pixel (stride of `weights`). */
  taps: number;
  /** `[outSize]` first source index of each window. */
  start: Int32Array;
  /** `[outSize]` number of source pixels in each window. */
  count: Int32Array;
  /** `[outSize, taps]` 22-bit fixed-point weights. */
  weights: Int32Array;
}

function coefficients(inSize: number, outSize: number, filter: Filter): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * taps);
  const w = new Float64Array(taps);
  const ss = 1 / filterScale;
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    // Pillow rounds by truncation after adding ½ (C cast semantics).
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const v = filter.weight((x + xmin - center + 0.5) * ss);
      w[x] = v;
      total += v;
    }
    for (let x = 0; x < xmax; x++) {
      const v = total !== 0 ? w[x] / total : w[x];
      const fixed = v * (1 << PRECISION_BITS);
      weights[i * taps + x] = v < 0 ? Math.trunc(fixed - 0.5) : Math.trunc(fixed + 0.5);
    }
    start[i] = xmin;
    count[i] = xmax;
  }
  return { taps, start, count, weights };
}

function clip8(sum: number): number {
  const v = sum >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over source rows [rowStart, rowStart + rows). */
function resampleHorizontal(
  src: RawImage,
  rowStart: number,
  rows: number,
  outWidth: number,
  k: Coefficients,
): Uint8Array {
  const c = src.channels;
  const inRow = src.width * c;
  const outRow = outWidth * c;
  const out = new Uint8Array(rows * outRow); // [rows, outWidth, c]
  const { taps, start, count, weights } = k;
  const data = src.data;
  for (let y = 0; y < rows; y++) {
    const rowBase = (y + rowStart) * inRow;
    let o = y * outRow;
    for (let x = 0; x < outWidth; x++) {
      const kBase = x * taps;
      const n = count[x];
      let s = rowBase + start[x] * c;
      // RGB is the hot case: one walk over the taps for all three channels.
      if (c === 3) {
        let r = HALF, g = HALF, b = HALF;
        for (let t = 0; t < n; t++, s += 3) {
          const w = weights[kBase + t];
          r += data[s] * w;
          g += data[s + 1] * w;
          b += data[s + 2] * w;
        }
        out[o++] = clip8(r);
        out[o++] = clip8(g);
        out[o++] = clip8(b);
      } else {
        for (let ch = 0; ch < c; ch++) {
          let sum = HALF;
          for (let t = 0, i = s + ch; t < n; t++, i += c) sum += data[i] * weights[kBase + t];
          out[o++] = clip8(sum);
        }
      }
    }
  }
  return out;
}

/** Vertical pass; `start` indices are relative to the first row of `src`. */
function resampleVertical(
  src: Uint8Array,
  width: number,
  c: number,
  outHeight: number,
  k: Coefficients,
  startShift: number,
): Uint8Array {
  const row = width * c;
  const out = new Uint8Array(outHeight * row); // [outHeight, width, c]
  const acc = new Float64Array(row); // [width · c] running sums of one output row
  const { taps, start, count, weights } = k;
  for (let y = 0; y < outHeight; y++) {
    const kBase = y * taps;
    const n = count[y];
    const first = (start[y] - startShift) * row;
    acc.fill(HALF);
    // Row by row, so the source is read sequentially rather than down columns.
    for (let t = 0; t < n; t++) {
      const w = weights[kBase + t];
      const s0 = first + t * row;
      for (let i = 0; i < row; i++) acc[i] += src[s0 + i] * w;
    }
    const o = y * row;
    for (let i = 0; i < row; i++) out[o + i] = clip8(acc[i]);
  }
  return out;
}

function resizeNearest(image: RawImage, width: number, height: number): RawImage {
  const c = image.channels;
  // Pillow walks the source coordinate by repeated addition from scale/2, so do the same.
  const xs = new Int32Array(width);
  const sx = image.width / width;
  for (let x = 0, xo = sx * 0.5; x < width; x++, xo += sx) xs[x] = Math.floor(xo);
  const sy = image.height / height;
  const out = new Uint8Array(width * height * c); // [height, width, c]
  let o = 0;
  for (let y = 0, yo = sy * 0.5; y < height; y++, yo += sy) {
    const rowBase = Math.floor(yo) * image.width * c;
    for (let x = 0; x < width; x++) {
      const s = rowBase + xs[x] * c;
      for (let ch = 0; ch < c; ch++) out[o++] = image.data[s + ch];
    }
  }
  return { data: out, width, height, channels: c };
}

/**
 * Resizes to `width × height` exactly as Pillow's `Image.resize(size, filter)` does on
 * an 8-bit image of the same mode ("L", "RGB"; RGBA is resampled per channel without
 * premultiplying, so flatten alpha first to match PIL).
 *
 * @param image Source pixels.
 * @param width Output width (≥ 1).
 * @param height Output height (≥ 1).
 * @param interpolation `"bicubic"` (PIL.BICUBIC), `"bilinear"`, `"nearest"`, `"box"`,
 *   `"hamming"` or `"lanczos"`.
 * @returns A new image; the source is copied when the size already matches.
 *
 * @example
 * ```ts
 * import { resize } from "./resize.ts";
 * const gray = { data: new Uint8Array([0, 100, 200, 255]), width: 4, height: 1, channels: 1 as const };
 * const half = resize(gray, 2, 1, "bilinear");
 * if (half.width !== 2 || half.data[0] !== 71 || half.data[1] !== 209) throw new Error();
 * ```
 */
export function resize(
  image: RawImage,
  width: number,
  height: number,
  interpolation: Interpolation,
): RawImage {
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0)) {
    throw new EdgeVitError(
      "invalid_argument",
      `Resize target must be positive integers, got ${width}×${height}`,
    );
  }
  if (width === image.width && height === image.height) {
    return { ...image, data: image.data.slice() };
  }
  if (interpolation === "nearest") return resizeNearest(image, width, height);
  const filter = FILTERS[interpolation];
  if (!filter) {
    throw new EdgeVitError("invalid_argument", `Unknown interpolation "${interpolation}"`);
  }
  const c = image.channels;
  const needH = width !== image.width;
  const needV = height !== image.height;
  const kv = coefficients(image.height, height, filter);
  let data = image.data;
  let rowShift = 0;
  if (needH) {
    const kh = coefficients(image.width, width, filter);
    // Only the source rows the vertical pass reads go through the horizontal pass.
    const first = needV ? kv.start[0] : 0;
    const last = needV ? kv.start[height - 1] + kv.count[height - 1] : image.height;
    data = resampleHorizontal(image, first, last - first, width, kh);
    rowShift = first;
  }
  if (needV) data = resampleVertical(data, width, c, height, kv, rowShift);
  return { data, width, height, channels: c };
}
