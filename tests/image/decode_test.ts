import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { toGrayscale } from "../../src/image/color.ts";
import { decodeImage } from "../../src/image/decode.ts";
import { applyOrientation, readOrientation } from "../../src/image/exif.ts";
import { compare, crc32, fixture, gunzip, pngHeader, REFERENCE, sha256 } from "./_fixtures.ts";

async function rejectsWith(promise: Promise<unknown>, code: string, what: string) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof EdgeVitError, `${what}: expected EdgeVitError, got ${error}`);
    assert.equal(error.code, code, `${what}: ${error.message}`);
    return true;
  });
}

Deno.test("decodeImage() gives PIL's pixels for every fixture (JPEG, PNG, WebP, alpha, palette)", async () => {
  assert.ok(REFERENCE.decode.length >= 10);
  for (const entry of REFERENCE.decode) {
    const image = await decodeImage(fixture(entry.file), { background: entry.background });
    assert.equal(image.channels, 3);
    assert.deepEqual([image.width, image.height], [entry.width, entry.height], entry.file);
    assert.equal(await sha256(image.data), entry.sha256, `${entry.file} on ${entry.background}`);
  }
});

Deno.test("decodeImage() applies all eight EXIF orientations like PIL's exif_transpose", async () => {
  assert.equal(REFERENCE.orientation.length, 10);
  for (const entry of REFERENCE.orientation) {
    const bytes = fixture(entry.file);
    const format = entry.file.endsWith(".jpg")
      ? "jpeg"
      : entry.file.endsWith(".png")
      ? "png"
      : "webp";
    assert.equal(readOrientation(bytes, format), entry.orientation, entry.file);
    const image = await decodeImage(bytes);
    assert.equal(image.orientation, entry.orientation);
    assert.deepEqual([image.width, image.height], [entry.width, entry.height], entry.file);
    const expected = await gunzip(entry.expected);
    assert.equal(compare(image.data, expected).differing, 0, entry.file);
  }
});

Deno.test("decodeImage() can leave the stored orientation alone", async () => {
  const stored = await decodeImage(fixture("rocket_exif6.jpg"), { orientation: false });
  assert.deepEqual([stored.width, stored.height, stored.orientation], [220, 330, 6]);
  const shown = await decodeImage(fixture("rocket_exif6.jpg"));
  assert.deepEqual([shown.width, shown.height], [330, 220]);
  assert.deepEqual(applyOrientation(stored, 6).data, shown.data);
});

Deno.test("applyOrientation() inverts: 6 then 8 and 5 twice give the original", () => {
  const image = {
    data: new Uint8Array(7 * 3 * 3).map((_, i) => i),
    width: 7,
    height: 3,
    channels: 3 as const,
  };
  assert.deepEqual(applyOrientation(applyOrientation(image, 6), 8).data, image.data);
  assert.deepEqual(applyOrientation(applyOrientation(image, 5), 5).data, image.data);
  assert.deepEqual(applyOrientation(applyOrientation(image, 7), 7).data, image.data);
  assert.deepEqual(applyOrientation(applyOrientation(image, 3), 3).data, image.data);
  assert.equal(applyOrientation(image, 1), image);
  assert.equal(applyOrientation(image, 9), image);
});

Deno.test("decodeImage() converts to PIL 'L' grayscale when asked for one channel", async () => {
  const rgb = await decodeImage(fixture("chelsea.jpg"));
  const gray = await decodeImage(fixture("chelsea.jpg"), { channels: 1 });
  assert.equal(gray.channels, 1);
  assert.deepEqual(gray.data, toGrayscale(rgb).data);
});

Deno.test("decodeImage() rejects truncated JPEG, PNG and WebP as invalid_image", async () => {
  for (const name of ["chelsea.jpg", "coffee_alpha.png", "astronaut.webp", "logo_lossless.webp"]) {
    const bytes = fixture(name);
    const cuts = [0.01, 0.3, 0.6, 0.9].map((f) => Math.floor(bytes.length * f));
    if (name.endsWith(".jpg")) cuts.push(bytes.length - 2); // only the EOI marker missing
    if (name.endsWith(".webp")) cuts.push(bytes.length - 10);
    for (const cut of cuts) {
      await rejectsWith(
        decodeImage(bytes.subarray(0, cut)),
        "invalid_image",
        `${name} cut at ${cut}`,
      );
    }
  }
});

Deno.test("decodeImage() survives corrupted data: a typed error or an image, never a crash", async () => {
  let seed = 99;
  const random = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (const name of ["chelsea.jpg", "coffee_alpha.png", "astronaut.webp", "logo_lossless.webp"]) {
    const original = fixture(name);
    for (let trial = 0; trial < 12; trial++) {
      const bytes = original.slice();
      // Leave the header alone so the decoder, not the sniffer, meets the damage.
      for (let k = 0; k < 8; k++) {
        const at = 64 + Math.floor(random() * (bytes.length - 64));
        bytes[at] = Math.floor(random() * 256);
      }
      try {
        const image = await decodeImage(bytes);
        assert.equal(image.data.length, image.width * image.height * 3);
      } catch (error) {
        assert.ok(error instanceof EdgeVitError, `${name} trial ${trial}: ${error}`);
        assert.equal(error.code, "invalid_image", error.message);
      }
    }
  }
  // The decoders still work after all of that.
  const after = await decodeImage(fixture("chelsea.jpg"));
  assert.equal(after.width, 360);
});

/** Rewrites every complete chunk's CRC of a PNG in place. */
function recomputeCrcs(bytes: Uint8Array) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 8; at + 12 <= bytes.length;) {
    const end = at + 8 + view.getUint32(at);
    if (end + 4 > bytes.length) return;
    view.setUint32(end, crc32(bytes.subarray(at + 4, end)));
    at = end + 4;
  }
}

Deno.test("decoders keep working after a thousand corrupt files of each format", async () => {
  // Before, each failed libjpeg or Rust PNG decode leaked its wasm stack frame: after a
  // few hundred the JPEG decoder hung and the PNG decoder faulted on every file.
  let seed = 7;
  const random = () => (seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32;
  for (const name of ["orient_1.jpg", "png/rgb8_adam7.png", "orient_8.webp"]) {
    const original = fixture(name);
    const before = await decodeImage(original);
    const failures = new Map<string, number>();
    for (let trial = 0; trial < 1200; trial++) {
      let bytes = original.slice();
      if (trial % 4 === 3) bytes = bytes.subarray(0, 1 + Math.floor(random() * (bytes.length - 1)));
      else {
        for (let k = 0; k < 4; k++) {
          bytes[20 + Math.floor(random() * (bytes.length - 20))] = random() * 256;
        }
        // PNG checks its CRCs first; recompute them so the damage reaches the image data.
        if (name.endsWith(".png")) recomputeCrcs(bytes);
      }
      try {
        await decodeImage(bytes);
      } catch (error) {
        assert.ok(error instanceof EdgeVitError, `${name} trial ${trial}: ${error}`);
        const kind = error.message.replace(/[\d:].*$/s, "");
        failures.set(kind, (failures.get(kind) ?? 0) + 1);
      }
    }
    // Most damage must reach the codec itself, not just the header checks in front of it.
    const inCodec = [...failures].filter(([kind]) =>
      /could not be decoded|image data|filter type/.test(kind)
    )
      .reduce((sum, [, n]) => sum + n, 0);
    assert.ok(inCodec >= 300, `${name}: ${JSON.stringify([...failures])}`);
    const after = await decodeImage(original);
    assert.deepEqual(after.data, before.data, name);
  }
});

Deno.test("decodeImage() rejects a valid header followed by garbage", async () => {
  const png = new Uint8Array(200);
  png.set(pngHeader(64, 64));
  png.fill(0xab, 45);
  await rejectsWith(decodeImage(png), "invalid_image", "PNG with garbage IDAT");
  const jpeg = fixture("chelsea.jpg").slice(0, 700);
  const garbage = new Uint8Array(2000).fill(0x5a);
  const joined = new Uint8Array([...jpeg, ...garbage, 0xff, 0xd9]);
  const result = await decodeImage(joined).then(() => "decoded", (e) => e);
  // libjpeg may decode gray filler or stop; either way no crash and a typed outcome.
  assert.ok(
    result === "decoded" || (result instanceof EdgeVitError && result.code === "invalid_image"),
  );
});

Deno.test("decodeImage() rejects a PNG claiming 100000×100000 before allocating pixels", async () => {
  const before = Deno.memoryUsage().rss;
  await rejectsWith(decodeImage(pngHeader(100000, 100000)), "too_large", "huge PNG");
  // 10¹⁰ RGBA pixels would be 40 GB; the header check costs nothing measurable.
  assert.ok(Deno.memoryUsage().rss - before < 64 * 2 ** 20);
});

Deno.test("decodeImage() enforces caller limits on real images", async () => {
  const bytes = fixture("chelsea.jpg"); // 360×240 = 86400 px
  await decodeImage(bytes, { maxPixels: 86400, maxSide: 360 });
  await rejectsWith(decodeImage(bytes, { maxPixels: 86399 }), "too_large", "maxPixels");
  await rejectsWith(decodeImage(bytes, { maxSide: 359 }), "too_large", "maxSide");
});

Deno.test("decodeImage() rejects empty, zero-size, GIF and random input with typed errors", async () => {
  await rejectsWith(decodeImage(new Uint8Array(0)), "invalid_image", "empty");
  await rejectsWith(decodeImage(pngHeader(0, 64)), "invalid_image", "zero width");
  const gif = new TextEncoder().encode("GIF89a\x01\x00\x01\x00\x80\x00\x00");
  await rejectsWith(decodeImage(gif), "unsupported_media_type", "GIF");
  const random = new Uint8Array(4096).map((_, i) => (i * 7919 + 13) % 251);
  await rejectsWith(decodeImage(random), "unsupported_media_type", "random bytes");
});

Deno.test("concurrent JPEG decodes each get their own result and error", async () => {
  const good = fixture("chelsea.jpg");
  const bad = good.subarray(0, good.length - 2);
  const results = await Promise.allSettled([
    decodeImage(good),
    decodeImage(bad),
    decodeImage(good),
    decodeImage(fixture("rocket_exif6.jpg")),
  ]);
  assert.equal(results[0].status, "fulfilled");
  assert.equal(results[1].status, "rejected");
  assert.equal(results[2].status, "fulfilled");
  assert.equal(results[3].status, "fulfilled");
  const first = (results[0] as PromiseFulfilledResult<{ data: Uint8Array }>).value.data;
  const third = (results[2] as PromiseFulfilledResult<{ data: Uint8Array }>).value.data;
  assert.deepEqual(first, third);
});
