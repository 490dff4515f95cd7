/**
 * Decode speed of the image decoders (JPEG, PNG, WebP) at ~224² and ~1000², and the
 * cost of the rest of the preprocessing (Pillow-exact resize, normalize).
 *
 * The test images are made at startup from the committed chelsea.jpg fixture: resized
 * with bicubic and given deterministic noise (so they compress like a photo, not like a
 * smooth upscale), then encoded with the @jsquash encoders (JPEG q85 4:2:0, PNG RGB,
 * lossy WebP q80).
 *
 *   deno bench --allow-read bench/image_bench.ts
 */

import encodeJpeg from "@jsquash/jpeg/encode.js";
import decodePngWasm from "@jsquash/png/decode.js";
import encodePng from "@jsquash/png/encode.js";
import encodeWebp from "@jsquash/webp/encode.js";
import { decodeImage, initDecoders } from "../src/image/decode.ts";
import { decodePng } from "../src/image/png.ts";
import { preprocess, timmPreprocess, transformImage } from "../src/image/preprocess.ts";
import type { RawImage } from "../src/image/raw_image.ts";
import { resize } from "../src/image/resize.ts";

const source = await decodeImage(
  Deno.readFileSync(new URL("../tests/fixtures/images/chelsea.jpg", import.meta.url)),
);

function photo(width: number, height: number): ImageData {
  const rgb = resize(source, width, height, "bicubic");
  const rgba = new Uint8ClampedArray(width * height * 4); // [h, w, 4]
  let seed = 1;
  for (let i = 0; i < width * height; i++) {
    for (let k = 0; k < 3; k++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      rgba[4 * i + k] = rgb.data[3 * i + k] + ((seed >>> 24) % 17) - 8;
    }
    rgba[4 * i + 3] = 255;
  }
  return { data: rgba, width, height, colorSpace: "srgb" } as ImageData;
}

const sizes = [[224, 224], [1000, 1000]] as const;
const files: Record<string, Uint8Array> = {};
for (const [w, h] of sizes) {
  const image = photo(w, h);
  files[`jpeg ${w}²`] = new Uint8Array(await encodeJpeg(image, { quality: 85 }));
  files[`png ${w}²`] = new Uint8Array(await encodePng(image));
  files[`webp ${w}²`] = new Uint8Array(await encodeWebp(image, { quality: 80 }));
}
await initDecoders();
for (const [name, bytes] of Object.entries(files)) {
  console.log(`${name}: ${(bytes.length / 1024).toFixed(0)} KiB`);
}

for (const [name, bytes] of Object.entries(files)) {
  Deno.bench(`decode ${name}`, { group: name.split(" ")[1] }, async () => {
    await decodeImage(bytes);
  });
}

// The PNG decoder against the Rust `png` wasm build it replaced (which decodes to the
// same bytes but breaks after a few hundred corrupt files), both to straight RGBA.
for (const [w] of sizes) {
  const bytes = files[`png ${w}²`];
  Deno.bench(`png ${w}² decodePng (TypeScript + DecompressionStream)`, {
    group: `png codec ${w}²`,
    baseline: true,
  }, async () => {
    await decodePng(bytes);
  });
  Deno.bench(`png ${w}² @jsquash/png (Rust png, wasm; before)`, {
    group: `png codec ${w}²`,
  }, async () => {
    await decodePngWasm(bytes.slice().buffer);
  });
}

const timm = timmPreprocess({ input_size: [3, 224, 224], crop_pct: 0.9, interpolation: "bicubic" });
const big: RawImage = await decodeImage(files["jpeg 1000²"]);

Deno.bench("resize+crop 1000² → 248 bicubic → 224 (timm)", { group: "transform" }, () => {
  transformImage(big, timm);
});
Deno.bench("resize 1000² → 224² bilinear (HF ViT)", { group: "transform" }, () => {
  resize(big, 224, 224, "bilinear");
});
Deno.bench("preprocess jpeg 1000² end to end (timm 224)", { group: "end to end" }, async () => {
  await preprocess(files["jpeg 1000²"], timm);
});
Deno.bench("preprocess jpeg 224² end to end (timm 224)", { group: "end to end" }, async () => {
  await preprocess(files["jpeg 224²"], timm);
});
