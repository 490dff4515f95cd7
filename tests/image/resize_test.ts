import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { flattenAlpha, toGrayscale } from "../../src/image/color.ts";
import { centerCrop, cropStart } from "../../src/image/crop.ts";
import type { RawImage } from "../../src/image/raw_image.ts";
import { type Interpolation, resize } from "../../src/image/resize.ts";
import { compare, gunzip, REFERENCE } from "./_fixtures.ts";

Deno.test("resize() equals PIL Image.resize for every filter on odd sizes, up and down", async () => {
  const { data, cases } = REFERENCE.resize;
  const blob = await gunzip(data);
  const seen = new Set<string>();
  for (const k of cases) {
    const c = k.channels as 1 | 3;
    const input: RawImage = {
      data: blob.subarray(k.offset, k.offset + k.width * k.height * c),
      width: k.width,
      height: k.height,
      channels: c,
    };
    const expected = blob.subarray(k.outOffset, k.outOffset + k.outWidth * k.outHeight * c);
    const out = resize(input, k.outWidth, k.outHeight, k.interpolation as Interpolation);
    const diff = compare(out.data, expected);
    assert.equal(
      diff.differing,
      0,
      `${k.interpolation} ${k.width}×${k.height}×${c} → ${k.outWidth}×${k.outHeight}: ${diff.differing} differ`,
    );
    seen.add(k.interpolation);
  }
  assert.deepEqual([...seen].sort(), [
    "bicubic",
    "bilinear",
    "box",
    "hamming",
    "lanczos",
    "nearest",
  ]);
});

Deno.test("resize() to the same size returns an equal copy", () => {
  const image: RawImage = { data: new Uint8Array([1, 2, 3, 4]), width: 2, height: 2, channels: 1 };
  const out = resize(image, 2, 2, "bicubic");
  assert.deepEqual(out.data, image.data);
  assert.notEqual(out.data, image.data);
});

Deno.test("resize() keeps a constant image constant with every filter", () => {
  const image: RawImage = {
    data: new Uint8Array(13 * 7 * 3).fill(200),
    width: 13,
    height: 7,
    channels: 3,
  };
  for (const f of ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"] as const) {
    for (const [w, h] of [[1, 1], [5, 3], [40, 21]]) {
      const out = resize(image, w, h, f);
      assert.ok(out.data.every((v) => v === 200), `${f} ${w}×${h}`);
    }
  }
});

Deno.test("resize() rejects non-positive or fractional targets and unknown filters", () => {
  const image: RawImage = { data: new Uint8Array(4), width: 2, height: 2, channels: 1 };
  for (const [w, h] of [[0, 2], [2, -1], [1.5, 2], [NaN, 2]]) {
    assert.throws(
      () => resize(image, w, h, "bilinear"),
      (e: unknown) => e instanceof EdgeVitError && e.code === "invalid_argument",
    );
  }
  assert.throws(
    () => resize(image, 3, 3, "spline" as Interpolation),
    (e: unknown) => e instanceof EdgeVitError && e.code === "invalid_argument",
  );
});

Deno.test("flattenAlpha() equals PIL alpha_composite onto white and black for all values", async () => {
  const rgba = new Uint8Array(256 * 256 * 4); // [value, alpha, 4]
  for (let v = 0; v < 256; v++) {
    for (let a = 0; a < 256; a++) rgba.set([v, 255 - v, v, a], (v * 256 + a) * 4);
  }
  const image: RawImage = { data: rgba, width: 256, height: 256, channels: 4 };
  for (const background of ["white", "black"] as const) {
    const expected = await gunzip(REFERENCE.alpha[background]);
    const out = flattenAlpha(image, background);
    const red = out.data.filter((_, i) => i % 3 === 0);
    assert.equal(compare(red, expected).differing, 0, background);
  }
});

Deno.test("toGrayscale() uses PIL's L weights and keeps gray pixels unchanged", () => {
  const rgb: RawImage = {
    data: new Uint8Array([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 37, 37, 37]),
    width: 5,
    height: 1,
    channels: 3,
  };
  assert.deepEqual([...toGrayscale(rgb).data], [76, 150, 29, 255, 37]);
  assert.throws(() => toGrayscale({ ...rgb, channels: 4, width: 1, height: 1 }), RangeError);
});

Deno.test("centerCrop() places odd crops like torchvision (half to even) or Hugging Face (floor)", () => {
  // torchvision: round((size − crop) / 2) with Python's round.
  assert.equal(cropStart(5, 2, "torchvision"), 2); // 1.5 → 2
  assert.equal(cropStart(7, 2, "torchvision"), 2); // 2.5 → 2
  assert.equal(cropStart(9, 2, "torchvision"), 4); // 3.5 → 4
  assert.equal(cropStart(7, 2, "floor"), 2);
  assert.equal(cropStart(9, 2, "floor"), 3);
  // Padding: torchvision puts floor(extra / 2) before, HF floor((size − crop) / 2).
  assert.equal(cropStart(3, 6, "torchvision"), -1);
  assert.equal(cropStart(3, 6, "floor"), -2);
});

Deno.test("centerCrop() pads with the fill colour where the crop is larger than the image", () => {
  const image: RawImage = {
    data: new Uint8Array([10, 20, 30, 40]),
    width: 2,
    height: 2,
    channels: 1,
  };
  const out = centerCrop(image, 4, 3, "torchvision", [7]);
  assert.deepEqual([...out.data], [7, 10, 20, 7, 7, 30, 40, 7, 7, 7, 7, 7]);
  const zero = centerCrop(image, 3, 1, "floor");
  assert.deepEqual([...zero.data], [0, 10, 20]);
});
