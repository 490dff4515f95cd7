/**
 * Channel conversions with PIL's integer arithmetic, so a pipeline that PIL ran in
 * Python gives the same bytes here: alpha flattened onto an opaque background
 * (`Image.alpha_composite` then `convert("RGB")`), and RGB to PIL "L" grayscale.
 *
 * @module
 */

import type { RawImage } from "./raw_image.ts";

/** Colour that transparent pixels are composited onto. */
export type Background = "white" | "black";

/**
 * Composites straight RGBA onto an opaque white or black background, returning RGB.
 * Equal to PIL `Image.alpha_composite(background, image).convert("RGB")` for every
 * value (checked exhaustively in the tests). Images with 1 or 3 channels pass through.
 *
 * @example
 * ```ts
 * import { flattenAlpha } from "./color.ts";
 * const rgba = { data: new Uint8Array([200, 100, 0, 128]), width: 1, height: 1, channels: 4 as const };
 * const rgb = flattenAlpha(rgba, "white");
 * if (rgb.channels !== 3 || rgb.data[0] !== 227 || rgb.data[2] !== 127) throw new Error();
 * ```
 */
export function flattenAlpha(image: RawImage, background: Background = "white"): RawImage {
  if (image.channels !== 4) return image;
  const bg = background === "white" ? 255 : 0;
  const src = image.data; // [h, w, 4]
  const n = image.width * image.height;
  const out = new Uint8Array(n * 3); // [h, w, 3]
  for (let i = 0, s = 0, o = 0; i < n; i++, s += 4, o += 3) {
    const a = src[s + 3];
    if (a === 255) {
      out[o] = src[s];
      out[o + 1] = src[s + 1];
      out[o + 2] = src[s + 2];
    } else {
      // round((c·a + bg·(255 − a)) / 255); 255 is odd, so there is never a tie.
      const back = bg * (255 - a) + 127;
      out[o] = ((src[s] * a + back) / 255) | 0;
      out[o + 1] = ((src[s + 1] * a + back) / 255) | 0;
      out[o + 2] = ((src[s + 2] * a + back) / 255) | 0;
    }
  }
  return { data: out, width: image.width, height: image.height, channels: 3 };
}

/**
 * Converts RGB to one channel with PIL's "L" weights (ITU-R 601-2 luma,
 * 299/587/114 per mille, in PIL's 16-bit fixed point). A 1-channel image passes
 * through; RGBA must be flattened first.
 *
 * @example
 * ```ts
 * import { toGrayscale } from "./color.ts";
 * const rgb = { data: new Uint8Array([255, 0, 0, 0, 0, 255]), width: 2, height: 1, channels: 3 as const };
 * const gray = toGrayscale(rgb);
 * if (gray.data[0] !== 76 || gray.data[1] !== 29) throw new Error();
 * ```
 */
export function toGrayscale(image: RawImage): RawImage {
  if (image.channels === 1) return image;
  if (image.channels !== 3) throw new RangeError("toGrayscale() needs RGB; flatten alpha first");
  const src = image.data; // [h, w, 3]
  const n = image.width * image.height;
  const out = new Uint8Array(n); // [h, w]
  for (let i = 0, s = 0; i < n; i++, s += 3) {
    out[i] = (src[s] * 19595 + src[s + 1] * 38470 + src[s + 2] * 7471 + 0x8000) >>> 16;
  }
  return { data: out, width: image.width, height: image.height, channels: 1 };
}
