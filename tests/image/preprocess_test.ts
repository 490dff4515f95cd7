import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { decodeImage } from "../../src/image/decode.ts";
import {
  hfPreprocess,
  IMAGENET_DEFAULT_MEAN,
  nativeSize,
  navitPreprocess,
  normalizeImage,
  plainPreprocess,
  preprocess,
  preprocessNative,
  preprocessPixels,
  resizeTarget,
  timmPreprocess,
  transformImage,
} from "../../src/image/preprocess.ts";
import { resize } from "../../src/image/resize.ts";
import { compare, configOf, fixture, gunzip, REFERENCE } from "./_fixtures.ts";

function invalid(code: string) {
  return (error: unknown) => error instanceof EdgeVitError && error.code === code;
}

Deno.test("timm, Hugging Face and plain pipelines give PIL/torchvision's uint8 pixels exactly", async () => {
  const policies = new Set<string>();
  for (const entry of REFERENCE.pipelines) {
    const image = await decodeImage(fixture(entry.file), { channels: entry.channels });
    const out = transformImage(image, configOf(entry));
    const what = `${entry.policy} ${JSON.stringify(entry.config)} on ${entry.file}`;
    assert.deepEqual([out.width, out.height, out.channels], [
      entry.width,
      entry.height,
      entry.channels,
    ], what);
    const diff = compare(out.data, await gunzip(entry.expected));
    // The issue asks for a mean error within 1/255; the pipelines are in fact bit-exact.
    assert.ok(diff.mean <= 1, `${what}: mean abs error ${diff.mean}`);
    assert.equal(diff.differing, 0, `${what}: ${diff.differing} values differ, max ${diff.max}`);
    policies.add(entry.policy);
  }
  assert.deepEqual([...policies].sort(), ["hf", "plain", "timm"]);
});

Deno.test("preprocess() output equals torchvision ToTensor+Normalize and HF rescale+normalize", async () => {
  let checked = 0;
  for (const entry of REFERENCE.pipelines) {
    if (!entry.expectedFloat) continue;
    const out = await preprocess(fixture(entry.file), configOf(entry));
    assert.deepEqual([out.channels, out.height, out.width], [
      entry.channels,
      entry.height,
      entry.width,
    ]);
    assert.deepEqual([out.originalWidth, out.originalHeight], [
      entry.originalWidth,
      entry.originalHeight,
    ]);
    const bytes = await gunzip(entry.expectedFloat);
    const expected = new Float32Array(bytes.buffer, 0, bytes.length / 4); // [C, H, W]
    const diff = compare(out.data, expected);
    assert.ok(diff.max <= 1e-6, `${entry.file} ${entry.policy}: max ${diff.max}`);
    checked++;
  }
  assert.ok(checked >= 10, `only ${checked} float cases`);
});

Deno.test("preprocess() reports the displayed size of an EXIF-rotated photo", async () => {
  const out = await preprocess(fixture("rocket_exif6.jpg"), timmPreprocess());
  assert.deepEqual([out.originalWidth, out.originalHeight], [330, 220]);
  assert.deepEqual([out.channels, out.height, out.width, out.data.length], [
    3,
    224,
    224,
    3 * 224 * 224,
  ]);
});

Deno.test("preprocess() composites alpha onto the configured background", async () => {
  const config = plainPreprocess({}, { image_size: 32 });
  const white = await preprocess(fixture("coffee_alpha.png"), config);
  const black = await preprocess(fixture("coffee_alpha.png"), config, { background: "black" });
  // The corners are fully transparent.
  assert.equal(white.data[0], 1);
  assert.equal(black.data[0], 0);
});

Deno.test("preprocess() passes limits through and rejects bad bytes with typed errors", async () => {
  await assert.rejects(
    preprocess(fixture("chelsea.jpg"), timmPreprocess(), { maxPixels: 1000 }),
    invalid("too_large"),
  );
  await assert.rejects(preprocess(new Uint8Array(0), timmPreprocess()), invalid("invalid_image"));
});

Deno.test("timmPreprocess() applies timm's defaults and rounding", () => {
  const config = timmPreprocess();
  assert.deepEqual(config.resize, { mode: "shortest_edge", size: 256 }); // 224 / 0.875
  assert.equal(config.interpolation, "bicubic");
  assert.deepEqual(config.mean, IMAGENET_DEFAULT_MEAN);
  assert.deepEqual(config.crop, { height: 224, width: 224, offsets: "torchvision" });
  assert.deepEqual(timmPreprocess({ crop_pct: 0.9 }).resize, { mode: "shortest_edge", size: 248 });
  assert.deepEqual(timmPreprocess({ input_size: [3, 384, 384], crop_pct: 1 }).resize, {
    mode: "shortest_edge",
    size: 384,
  });
  const gray = timmPreprocess({ input_size: [1, 28, 28], mean: [0.5], std: [0.5] });
  assert.equal(gray.channels, 1);
  assert.throws(() => timmPreprocess({ input_size: [224, 224] }), invalid("invalid_config"));
  assert.throws(() => timmPreprocess({ input_size: [4, 224, 224] }), invalid("invalid_config"));
  assert.throws(() => timmPreprocess({ interpolation: "random" }), invalid("unsupported"));
  assert.throws(() => timmPreprocess({ crop_mode: "zoom" }), invalid("unsupported"));
  assert.throws(() => timmPreprocess({ std: [0, 1, 1] }), invalid("invalid_config"));
  assert.throws(() => timmPreprocess({ mean: [0.5, 0.5] }), invalid("invalid_config"));
});

Deno.test("hfPreprocess() follows ViTImageProcessor and DeiTImageProcessor defaults", () => {
  const vit = hfPreprocess({});
  assert.deepEqual(vit.resize, { mode: "exact", height: 224, width: 224 });
  assert.equal(vit.interpolation, "bilinear");
  assert.equal(vit.crop, null);
  assert.deepEqual(vit.mean, [0.5, 0.5, 0.5]);
  const deit = hfPreprocess({ image_processor_type: "DeiTImageProcessor" });
  assert.deepEqual(deit.resize, { mode: "exact", height: 256, width: 256 });
  assert.deepEqual(deit.crop, { height: 224, width: 224, offsets: "floor" });
  assert.equal(deit.interpolation, "bicubic");
  assert.deepEqual(hfPreprocess({ size: { shortest_edge: 256 } }).resize, {
    mode: "shortest_edge",
    size: 256,
  });
  const raw = hfPreprocess({ do_normalize: false, do_rescale: false, do_resize: false });
  assert.deepEqual([raw.rescale, raw.mean, raw.std, raw.resize], [1, [0, 0, 0], [1, 1, 1], null]);
  assert.equal(hfPreprocess({ resample: 1 }).interpolation, "lanczos");
  assert.throws(() => hfPreprocess({ resample: 9 }), invalid("invalid_config"));
  assert.throws(
    () => hfPreprocess({ size: { longest_edge: 5 } as never }),
    invalid("invalid_config"),
  );
  assert.throws(() => hfPreprocess({ size: 0 }), invalid("invalid_config"));
});

Deno.test("plainPreprocess() resizes straight to image_size with ToTensor defaults", () => {
  const config = plainPreprocess({}, { image_size: [32, 48], channels: 1 });
  assert.deepEqual(config.resize, { mode: "exact", height: 32, width: 48 });
  assert.deepEqual([config.channels, config.mean, config.std], [1, [0], [1]]);
  assert.equal(config.interpolation, "bilinear");
  const cropped = plainPreprocess({ crop_pct: 0.875, interpolation: "bicubic" }, {
    image_size: 224,
  });
  assert.deepEqual(cropped.resize, { mode: "shortest_edge", size: 256 });
  assert.throws(() => plainPreprocess({}, {}), invalid("invalid_config"));
  assert.throws(
    () => plainPreprocess({ channels: 2 }, { image_size: 8 }),
    invalid("invalid_config"),
  );
  assert.throws(
    () => plainPreprocess({ mean: [1, 2] }, { image_size: 8 }),
    invalid("invalid_config"),
  );
});

Deno.test("resizeTarget() rounds like torchvision and timm", () => {
  // torchvision Resize(256) on 500×375 (w×h): long = int(256 · 500 / 375) = 341.
  assert.deepEqual(resizeTarget(375, 500, { mode: "shortest_edge", size: 256 }), [256, 341]);
  assert.deepEqual(resizeTarget(500, 375, { mode: "shortest_edge", size: 256 }), [341, 256]);
  // timm ResizeKeepRatio: Python round, half to even (2.5 → 2, 3.5 → 4).
  const keep = { mode: "keep_ratio", height: 2, width: 2, longest: 0 } as const;
  assert.deepEqual(resizeTarget(4, 5, keep), [2, 2]);
  assert.deepEqual(resizeTarget(4, 7, keep), [2, 4]);
  assert.deepEqual(resizeTarget(10, 20, { mode: "keep_ratio", height: 4, width: 4, longest: 1 }), [
    2,
    4,
  ]);
});

Deno.test("normalizeImage() writes planar CHW with float32 rounding", () => {
  const image = {
    data: new Uint8Array([0, 128, 255, 10, 20, 30]),
    width: 2,
    height: 1,
    channels: 3 as const,
  };
  const out = normalizeImage(image, { rescale: 1 / 255, mean: [0, 0.5, 1], std: [1, 0.5, 2] });
  // Pixel 0 is (0, 128, 255), pixel 1 is (10, 20, 30): plane R then G then B.
  const f = Math.fround;
  const expected = [
    f(0),
    f(f(10 / 255)),
    f(f(f(128 / 255) - f(0.5)) / f(0.5)),
    f(f(f(20 / 255) - f(0.5)) / f(0.5)),
    f(f(f(1) - f(1)) / f(2)),
    f(f(f(30 / 255) - f(1)) / f(2)),
  ];
  assert.deepEqual([...out], expected);
  assert.throws(
    () => normalizeImage(image, { rescale: 1, mean: [0], std: [1] }),
    invalid("invalid_argument"),
  );
});

Deno.test("preprocessPixels() takes raw dataset pixels and converts channels", () => {
  const gray = {
    data: new Uint8Array(28 * 28).map((_, i) => i % 256),
    width: 28,
    height: 28,
    channels: 1 as const,
  };
  const out = preprocessPixels(
    gray,
    plainPreprocess({ mean: 0.5, std: 0.5 }, { image_size: 28, channels: 1 }),
  );
  assert.equal(out.data.length, 784);
  assert.equal(out.data[255], 1);
  assert.equal(out.data[0], -1);
  const rgb = preprocessPixels(gray, plainPreprocess({}, { image_size: 14 }));
  assert.equal(rgb.channels, 3);
  assert.deepEqual(rgb.data.subarray(0, 196), rgb.data.subarray(196, 392));
  assert.throws(
    () => preprocessPixels({ ...gray, width: 27 }, plainPreprocess({}, { image_size: 14 })),
    invalid("invalid_argument"),
  );
});

Deno.test("nativeSize() keeps patch multiples, limits and aspect ratio, and never upscales", () => {
  let seed = 5;
  const random = (n: number) => 1 + ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  for (let trial = 0; trial < 500; trial++) {
    const h = random(2000), w = random(2000), p = [4, 8, 14, 16, 32][trial % 5];
    const limits = { patchSize: p, maxHeight: p * random(24), maxWidth: p * random(24) };
    const maxPatches = trial % 3 === 0 ? random(300) : undefined;
    const [oh, ow] = nativeSize(h, w, { ...limits, maxPatches });
    const what = `${h}×${w} p${p} max ${limits.maxHeight}×${limits.maxWidth}/${maxPatches}`;
    assert.ok(oh % p === 0 && ow % p === 0 && oh >= p && ow >= p, what);
    assert.ok(oh <= limits.maxHeight && ow <= limits.maxWidth, what);
    const cap = maxPatches ?? (limits.maxHeight / p) * (limits.maxWidth / p);
    assert.ok((oh / p) * (ow / p) <= cap, what);
    // No enlargement beyond rounding to the nearest patch (or the one-patch minimum).
    assert.ok(oh <= Math.max(p, h + p / 2) && ow <= Math.max(p, w + p / 2), what);
  }
  // Within the limits and already multiples of the patch: untouched.
  assert.deepEqual(nativeSize(48, 64, { patchSize: 16, maxHeight: 256, maxWidth: 256 }), [48, 64]);
  // 1000×500 in 16 px patches, at most 64: 11.3×5.7 rounds to 11×6 = 66, so the longer
  // side gives one back → 10×6.
  assert.deepEqual(
    nativeSize(1000, 500, { patchSize: 16, maxHeight: 512, maxWidth: 512, maxPatches: 64 }),
    [160, 96],
  );
  assert.deepEqual(
    nativeSize(10, 20, { patchSize: 8, maxHeight: 64, maxWidth: 64, upscale: true }),
    [32, 64],
  );
  assert.throws(
    () => nativeSize(10, 10, { patchSize: 16, maxHeight: 8, maxWidth: 64 }),
    invalid("invalid_config"),
  );
});

Deno.test("preprocessNative() resizes a photo to its NaViT size with PIL-exact pixels", async () => {
  const config = navitPreprocess({ mean: 0.5, std: 0.5 }, { image_size: 256, patch_size: 16 });
  const out = await preprocessNative(fixture("astronaut.webp"), config); // 240×300 (w×h)
  assert.deepEqual([out.height, out.width, out.originalHeight, out.originalWidth], [
    256,
    208,
    300,
    240,
  ]);
  const decoded = await decodeImage(fixture("astronaut.webp"));
  const pixels = resize(decoded, 208, 256, "bilinear");
  assert.deepEqual(
    out.data,
    normalizeImage(pixels, { rescale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }),
  );
  assert.throws(() => navitPreprocess({}, { image_size: 64 }), invalid("invalid_config"));
});
