/**
 * Center crop (with padding when the crop is larger than the image), placed the way
 * each reference pipeline places it.
 *
 * @module
 */

import type { RawImage } from "./raw_image.ts";

/**
 * Where a center crop starts when the image and crop sizes differ by an odd amount:
 * - `"torchvision"`: `round((image − crop) / 2)` with Python's round-half-to-even, and
 *   when padding, `floor((crop − image) / 2)` before (torchvision `CenterCrop`, timm);
 * - `"floor"`: `floor((image − crop) / 2)` (Hugging Face `center_crop`).
 */
export type CropOffsets = "torchvision" | "floor";

/** Python's `round()` of a multiple of ½: halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** First source row/column of a center crop along one axis (negative when padding). */
export function cropStart(size: number, crop: number, offsets: CropOffsets): number {
  if (offsets === "floor") return Math.floor((size - crop) / 2);
  return crop > size ? -Math.floor((crop - size) / 2) : roundHalfEven((size - crop) / 2);
}

/**
 * Center-crops to `width × height`; where the crop reaches past the image it is filled
 * with `fill` (one value per channel, default 0, as torchvision pads).
 *
 * @example
 * ```ts
 * import { centerCrop } from "./crop.ts";
 * const row = { data: new Uint8Array([1, 2, 3, 4, 5]), width: 5, height: 1, channels: 1 as const };
 * // (5 − 2) / 2 = 1.5: torchvision rounds to 2 (even), Hugging Face floors to 1.
 * if (centerCrop(row, 2, 1, "torchvision").data[0] !== 3) throw new Error();
 * if (centerCrop(row, 2, 1, "floor").data[0] !== 2) throw new Error();
 * ```
 */
export function centerCrop(
  image: RawImage,
  width: number,
  height: number,
  offsets: CropOffsets,
  fill?: readonly number[],
): RawImage {
  const c = image.channels;
  if (width === image.width && height === image.height) return image;
  const top = cropStart(image.height, height, offsets);
  const left = cropStart(image.width, width, offsets);
  const out = new Uint8Array(width * height * c); // [height, width, c]
  if (fill) {
    for (let i = 0; i < width * height; i++) {
      for (let k = 0; k < c; k++) out[i * c + k] = fill[k] ?? fill[0] ?? 0;
    }
  }
  const x0 = Math.max(0, -left);
  const x1 = Math.min(width, image.width - left);
  for (let y = 0; y < height; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= image.height || x1 <= x0) continue;
    const src = (sy * image.width + left + x0) * c;
    out.set(image.data.subarray(src, src + (x1 - x0) * c), (y * width + x0) * c);
  }
  return { data: out, width, height, channels: c };
}
