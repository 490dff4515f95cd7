import assert from "node:assert/strict";
import encodePng from "@jsquash/png/encode.js";
import { DEFAULT_MODEL } from "../../src/server/config.ts";
import { TEST_BACKEND } from "./_helpers.ts";
import { spawnServer } from "./_process.ts";

/** Debian's dataset-fashion-mnist (installed by .ci/run). */
const DATASET = "/usr/share/datasets/fashion-mnist";
const IMAGES = 200;

async function gunzip(path: string): Promise<Uint8Array> {
  const file = await Deno.open(path);
  const stream = file.readable.pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Test image `i` of the IDX file as a grayscale PNG, the way a client would send it. */
async function testImagePng(images: Uint8Array, i: number): Promise<Uint8Array<ArrayBuffer>> {
  const pixels = images.subarray(16 + i * 784, 16 + (i + 1) * 784); // [28, 28]
  const rgba = new Uint8ClampedArray(784 * 4);
  for (let j = 0; j < 784; j++) {
    rgba[4 * j] = rgba[4 * j + 1] = rgba[4 * j + 2] = pixels[j];
    rgba[4 * j + 3] = 255;
  }
  const image = { data: rgba, width: 28, height: 28, colorSpace: "srgb" } as ImageData;
  return new Uint8Array(await encodePng(image));
}

Deno.test("serve with no --model classifies real Fashion-MNIST test images with the embedded default model", async () => {
  const images = await gunzip(`${DATASET}/t10k-images-idx3-ubyte.gz`);
  const labels = await gunzip(`${DATASET}/t10k-labels-idx1-ubyte.gz`);
  const server = await spawnServer(["--port", "0", "--backend", TEST_BACKEND]);
  try {
    const models = await (await fetch(`${server.base}/v1/models`)).json();
    assert.equal(DEFAULT_MODEL, "patchmerger-fmnist");
    assert.equal(models.models[0].name, DEFAULT_MODEL);
    assert.equal(models.models[0].labels[7], "Sneaker");

    let correct = 0;
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < IMAGES) {
        const i = next++;
        const response = await fetch(`${server.base}/v1/classify?topK=1`, {
          method: "POST",
          headers: { "content-type": "image/png" },
          body: await testImagePng(images, i),
        });
        assert.equal(response.status, 200);
        const body = await response.json();
        if (body.results[0].top[0].index === labels[8 + i]) correct++;
      }
    }));
    // The model scores ~90 % on the whole test split; 200 images leave a few points of noise.
    assert.ok(correct / IMAGES >= 0.82, `accuracy ${correct / IMAGES} on ${IMAGES} test images`);
  } finally {
    server.child.kill("SIGTERM");
    assert.equal((await server.status).code, 0);
  }
});
