import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { checkLimits, DEFAULT_MAX_PIXELS, sniffImage } from "../../src/image/sniff.ts";
import { fixture, pngHeader, REFERENCE } from "./_fixtures.ts";

/** SOI + SOFn segment of a baseline-looking JPEG. */
function jpegHeader(width: number, height: number, components = 3, precision = 8, sof = 0xc0) {
  return new Uint8Array([
    0xff,
    0xd8,
    0xff,
    0xe0,
    0,
    4,
    0,
    0, // a short APP0 to skip
    0xff,
    sof,
    0,
    8 + 3 * components,
    precision,
    height >> 8,
    height & 255,
    width >> 8,
    width & 255,
    components,
    ...new Array(3 * components).fill(1),
  ]);
}

function riff(chunk: string, payload: number[]): Uint8Array {
  const body = [..."WEBP"].map((c) => c.charCodeAt(0)).concat(
    [...chunk].map((c) => c.charCodeAt(0)),
    [payload.length & 255, payload.length >> 8, 0, 0],
    payload,
  );
  const size = body.length;
  return new Uint8Array([0x52, 0x49, 0x46, 0x46, size & 255, size >> 8, 0, 0, ...body]);
}

function rejects(bytes: Uint8Array, code: string, pattern?: RegExp) {
  assert.throws(
    () => sniffImage(bytes),
    (error: unknown) => {
      assert.ok(error instanceof EdgeVitError, `expected EdgeVitError, got ${error}`);
      assert.equal(error.code, code, error.message);
      if (pattern) assert.match(error.message, pattern);
      return true;
    },
  );
}

Deno.test("sniffImage() reads format and stored size of every fixture", () => {
  const expected: Record<string, [string, number, number]> = {
    "chelsea.jpg": ["jpeg", 360, 240],
    "coffee_alpha.png": ["png", 300, 200],
    "coffee_alpha.webp": ["webp", 150, 100], // VP8X + ALPH + VP8
    "astronaut.webp": ["webp", 240, 300], // simple VP8
    "logo_lossless.webp": ["webp", 100, 100], // VP8L
    "rocket_exif6.jpg": ["jpeg", 220, 330], // stored rotated
    "orient_8.webp": ["webp", 30, 20], // VP8X + VP8L + EXIF
    "palette_trns.png": ["png", 48, 32],
  };
  for (const [name, [format, width, height]] of Object.entries(expected)) {
    assert.deepEqual(sniffImage(fixture(name)), { format, width, height }, name);
  }
  assert.ok(Object.keys(REFERENCE.inputs).includes("chelsea.jpg"));
});

Deno.test("sniffImage() parses crafted JPEG, PNG and WebP headers", () => {
  assert.deepEqual(sniffImage(jpegHeader(640, 480)), { format: "jpeg", width: 640, height: 480 });
  assert.deepEqual(sniffImage(jpegHeader(17, 9, 1, 8, 0xc2)), {
    format: "jpeg",
    width: 17,
    height: 9,
  });
  assert.deepEqual(sniffImage(pngHeader(100000, 100000)), {
    format: "png",
    width: 100000,
    height: 100000,
  });
  // VP8: frame tag, start code, 14-bit width/height.
  const vp8 = riff("VP8 ", [0x10, 0, 0, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
  assert.deepEqual(sniffImage(vp8), { format: "webp", width: 320, height: 240 });
  // VP8L: 0x2f, then (width − 1) and (height − 1) in 14 bits each.
  const bits = (99 | (49 << 14)) >>> 0;
  const vp8l = riff("VP8L", [0x2f, bits & 255, (bits >> 8) & 255, (bits >> 16) & 255, bits >>> 24]);
  assert.deepEqual(sniffImage(vp8l), { format: "webp", width: 100, height: 50 });
});

Deno.test("sniffImage() rejects empty input as invalid_image", () => {
  rejects(new Uint8Array(0), "invalid_image", /empty/);
});

Deno.test("sniffImage() names GIF, BMP, TIFF and HEIF as unsupported media types", () => {
  rejects(
    new TextEncoder().encode("GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
    "unsupported_media_type",
    /GIF/,
  );
  rejects(
    new TextEncoder().encode("BM6\x00\x00\x00\x00\x00\x00\x006\x00"),
    "unsupported_media_type",
    /BMP/,
  );
  rejects(new Uint8Array([0x49, 0x49, 0x2a, 0, 8, 0, 0, 0]), "unsupported_media_type", /TIFF/);
  rejects(
    new Uint8Array([0, 0, 0, 24, ...new TextEncoder().encode("ftypheic"), 0, 0, 0, 0]),
    "unsupported_media_type",
    /HEIF/,
  );
});

Deno.test("sniffImage() rejects random bytes as unsupported_media_type", () => {
  let seed = 12345;
  for (let trial = 0; trial < 20; trial++) {
    const bytes = new Uint8Array(1 + trial * 13);
    for (let i = 0; i < bytes.length; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      bytes[i] = seed >>> 24;
    }
    if (bytes[0] === 0xff || bytes[0] === 0x89 || bytes[0] === 0x52) bytes[0] = 0x00;
    rejects(bytes, "unsupported_media_type", /not a JPEG, PNG or WebP/);
  }
});

Deno.test("sniffImage() rejects zero width or height as invalid_image", () => {
  rejects(pngHeader(0, 10), "invalid_image", /zero size/);
  rejects(pngHeader(10, 0), "invalid_image", /zero size/);
  rejects(jpegHeader(0, 10), "invalid_image", /zero size/);
  rejects(jpegHeader(10, 0), "invalid_image", /zero size/);
  rejects(riff("VP8 ", [0x10, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0xf0, 0]), "invalid_image", /zero/);
});

Deno.test("sniffImage() rejects truncated and malformed headers as invalid_image", () => {
  rejects(new Uint8Array([0xff, 0xd8, 0xff]), "invalid_image", /JPEG is truncated/);
  rejects(jpegHeader(640, 480).subarray(0, 14), "invalid_image", /JPEG/);
  rejects(new Uint8Array([0xff, 0xd8, 0xff, 0xda, 0, 2]), "invalid_image", /no frame header/);
  rejects(pngHeader(640, 480).subarray(0, 20), "invalid_image", /PNG is truncated/);
  rejects(pngHeader(640, 480, 3, 2), "invalid_image", /bit depth 3/);
  const badIhdr = pngHeader(640, 480);
  badIhdr[12] = 0x58;
  rejects(badIhdr, "invalid_image", /IHDR/);
  rejects(riff("VP8 ", [0x10, 0]), "invalid_image", /WebP is truncated/);
  rejects(riff("VP8 ", [0x10, 0, 0, 0x9d, 0x01, 0x2b, 1, 0, 1, 0]), "invalid_image", /start code/);
  rejects(riff("VP8L", [0x2e, 0, 0, 0, 0]), "invalid_image", /signature/);
  rejects(riff("JUNK", [0, 0, 0, 0, 0, 0, 0, 0]), "invalid_image", /unknown chunk/);
  rejects(fixture("chelsea.jpg").subarray(0, 100), "invalid_image", /JPEG/);
});

Deno.test("sniffImage() refuses animated WebP, CMYK, 12-bit and lossless JPEG", () => {
  const animated = riff("VP8X", [0x02, 0, 0, 0, 9, 0, 0, 9, 0, 0]);
  rejects(animated, "unsupported_media_type", /Animated WebP/);
  rejects(jpegHeader(8, 8, 4), "unsupported_media_type", /4 components/);
  rejects(jpegHeader(8, 8, 3, 12), "unsupported_media_type", /12-bit/);
  rejects(jpegHeader(8, 8, 3, 8, 0xc3), "unsupported_media_type", /Lossless JPEG/);
});

Deno.test("checkLimits() enforces maxPixels and maxSide with too_large", () => {
  const info = { format: "png" as const, width: 4000, height: 3000 };
  checkLimits(info, { maxPixels: 12_000_000 });
  assert.throws(
    () => checkLimits(info, { maxPixels: 11_999_999 }),
    (e: unknown) =>
      e instanceof EdgeVitError && e.code === "too_large" && /12000000/.test(e.message),
  );
  assert.throws(
    () => checkLimits(info, { maxSide: 3999 }),
    (e: unknown) => e instanceof EdgeVitError && e.code === "too_large" && /3999/.test(e.message),
  );
  assert.throws(
    () => checkLimits({ format: "png", width: 100000, height: 100000 }),
    (e: unknown) => e instanceof EdgeVitError && e.code === "too_large",
  );
  checkLimits({ format: "jpeg", width: 8000, height: DEFAULT_MAX_PIXELS / 8000 });
});
