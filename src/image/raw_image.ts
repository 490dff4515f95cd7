/**
 * The decoded-image type shared by every step between the decoder and normalization.
 *
 * @module
 */

/** Interleaved 8-bit pixels, row-major `[height, width, channels]`. */
export interface RawImage {
  /** `[height, width, channels]` uint8, rows top to bottom. */
  data: Uint8Array;
  width: number;
  height: number;
  /** 1 = grayscale (PIL "L"), 3 = RGB, 4 = RGBA (straight, not premultiplied alpha). */
  channels: 1 | 3 | 4;
}
