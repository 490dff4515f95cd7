import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { nativeSize } from "../../src/image/preprocess.ts";
import { NaViT, navitTargetSize, randomNaViTWeights } from "../../src/models/navit.ts";
import { seededRandom } from "../../src/models/vit.ts";
import type { PackedImage } from "../../src/models/types.ts";
import { maxAbsDiff, readCase, testBackends } from "./_fixtures.ts";

const fixture = await readCase("vitpytorch-navit");
const imageNames = fixture.case.images as string[];
const images: PackedImage[] = imageNames.map((name) => {
  const { data, shape } = fixture.input(name);
  return { data, height: shape[1], width: shape[2] };
});
const expected = fixture.expected("logits").data;
const numClasses = fixture.config.kwargs.num_classes as number;

const backends = await testBackends();

for (const [name, create] of backends) {
  Deno.test(`NaViT matches vit-pytorch on the packed fixture (${name})`, async () => {
    const model = NaViT.build(await create(), fixture.config.kwargs, fixture.weights());
    const { logits, tokensPerImage } = await model.forwardPacked(
      images,
      fixture.case.groups as number[][],
    );
    assert.ok(maxAbsDiff(logits, expected) <= fixture.case.atol);
    assert.deepEqual(tokensPerImage, [24, 16, 4, 15]);
    model.dispose();
  });

  Deno.test(`NaViT gives each image the same logits alone and packed with others (${name})`, async () => {
    const model = NaViT.build(await create(), fixture.config.kwargs, fixture.weights());
    const alone = await Promise.all(images.map((image) => model.forwardPacked([image])));
    // all four in one sequence, in another order, and the greedy default
    const orders = [[[3, 1, 0, 2]], [[2], [0, 3, 1]], undefined];
    for (const groups of orders) {
      const { logits } = await model.forwardPacked(images, groups);
      alone.forEach((single, i) => {
        const row = logits.subarray(i * numClasses, (i + 1) * numClasses);
        assert.ok(maxAbsDiff(row, single.logits) <= 1e-5, `image ${i}, groups ${groups}`);
      });
    }
    model.dispose();
  });

  Deno.test(`NaViT forward on a uniform batch equals forwardPacked (${name})`, async () => {
    const model = NaViT.build(await create(), fixture.config.kwargs, fixture.weights());
    const { data } = fixture.input("image_3"); // [3, 40, 24]
    const pixels = new Float32Array(2 * data.length);
    pixels.set(data);
    pixels.set(data.map((v) => -v), data.length);
    const batch = await model.forward(pixels, [2, 3, 40, 24]);
    const packed = await model.forwardPacked([
      { data, height: 40, width: 24 },
      { data: pixels.subarray(data.length), height: 40, width: 24 },
    ], [[0], [1]]);
    assert.ok(maxAbsDiff(batch.logits, packed.logits) <= 1e-5);
    assert.ok(maxAbsDiff(batch.logits.subarray(0, numClasses), expected.subarray(30)) <= 1e-4);
    model.dispose();
  });
}

Deno.test("NaViT rejects images it cannot patchify with a clear error", async () => {
  const model = NaViT.build(new ReferenceBackend(), fixture.config.kwargs, fixture.weights());
  const image = (height: number, width: number, length = 3 * height * width) => ({
    data: new Float32Array(length),
    height,
    width,
  });
  const cases: [PackedImage[], RegExp][] = [
    [[image(16, 20)], /not a multiple of the patch size 8/],
    [[image(72, 8)], /exceeds the model's image_size 64×64/],
    [[image(16, 16, 100)], /holds 100 values/],
    [[image(0, 8)], /not a positive integer size/],
    [[], /at least one image/],
  ];
  for (const [batch, message] of cases) {
    await assert.rejects(model.forwardPacked(batch), (error: Error) => {
      assert.ok(error instanceof EdgeVitError);
      assert.match(error.message, message);
      return true;
    });
  }
  await assert.rejects(model.forwardPacked([image(8, 8)], [[0, 0]]), EdgeVitError);
  await assert.rejects(model.forward(new Float32Array(10), [1, 3, 8, 8]), EdgeVitError);
  await assert.rejects(model.forward(new Float32Array(64), [1, 1, 8, 8]), /3 channels/);
  model.dispose();
});

Deno.test("NaViT refuses a checkpoint whose tensors disagree with its kwargs", () => {
  const kwargs = { ...fixture.config.kwargs, dim: 32 };
  assert.throws(() => NaViT.build(new ReferenceBackend(), kwargs, fixture.weights()), EdgeVitError);
  assert.throws(
    () =>
      NaViT.build(
        new ReferenceBackend(),
        { ...fixture.config.kwargs, patch_size: 7 },
        fixture.weights(),
      ),
    /not a multiple of patch_size/,
  );
});

Deno.test("navitTargetSize keeps the aspect ratio within the size and patch limits", () => {
  const limits = { patchSize: 16, maxHeight: 224, maxWidth: 224 };
  assert.deepEqual(navitTargetSize(480, 640, limits), { height: 176, width: 224 });
  assert.deepEqual(navitTargetSize(640, 480, limits), { height: 224, width: 176 });
  // small images are not enlarged: 40×100 becomes 48×96 (nearest multiples of 16)
  assert.deepEqual(navitTargetSize(40, 100, limits), { height: 48, width: 96 });
  // a thin strip keeps at least one patch across
  assert.deepEqual(navitTargetSize(3, 2000, limits), { height: 16, width: 224 });
  // a patch budget below the grid shrinks both sides by the same factor
  const budgeted = navitTargetSize(1000, 1000, { ...limits, maxPatches: 64 });
  assert.deepEqual(budgeted, { height: 128, width: 128 });
  let seed = 3;
  const random = () => ((seed = (seed * 69069 + 1) % 4294967296) / 4294967296);
  for (let trial = 0; trial < 200; trial++) {
    const h = 1 + Math.floor(random() * 3000);
    const w = 1 + Math.floor(random() * 3000);
    const maxPatches = 1 + Math.floor(random() * 196);
    const size = navitTargetSize(h, w, { ...limits, maxPatches });
    assert.equal(size.height % 16, 0);
    assert.equal(size.width % 16, 0);
    assert.ok(size.height >= 16 && size.height <= 224 && size.width >= 16 && size.width <= 224);
    assert.ok((size.height / 16) * (size.width / 16) <= maxPatches);
  }
  assert.throws(() => navitTargetSize(0, 10, limits), EdgeVitError);
});

for (const [name, create] of backends) {
  Deno.test(`NaViT packing never changes a result, for many sizes and packer limits (${name})`, async () => {
    const backend = await create();
    const kwargs = {
      image_size: [48, 40],
      patch_size: 8,
      num_classes: 4,
      dim: 24,
      depth: 2,
      heads: 3,
      dim_head: 8,
      mlp_dim: 48,
    };
    const random = seededRandom(21);
    const sizes = [[8, 8], [48, 40], [16, 40], [40, 16], [24, 24], [8, 40], [48, 8], [32, 16]];
    const images = sizes.map(([height, width]) => ({
      data: new Float32Array(3 * height * width).map(() => random() * 2 - 1),
      height,
      width,
    }));
    const alone = NaViT.build(backend, kwargs, randomNaViTWeights(kwargs, 2));
    const singles = await Promise.all(images.map((image) => alone.forwardPacked([image])));
    for (const maxSequenceLength of [30, 45, 100, 1000]) {
      const model = NaViT.build(backend, kwargs, randomNaViTWeights(kwargs, 2), {
        maxSequenceLength,
      });
      const { logits, tokensPerImage } = await model.forwardPacked(images);
      assert.deepEqual(tokensPerImage, sizes.map(([h, w]) => (h / 8) * (w / 8)));
      singles.forEach((single, i) => {
        assert.ok(maxAbsDiff(logits.subarray(i * 4, (i + 1) * 4), single.logits) <= 1e-5);
      });
      model.dispose();
    }
    alone.dispose();
    assert.throws(
      () =>
        NaViT.build(new ReferenceBackend(), kwargs, randomNaViTWeights(kwargs), {
          maxSequenceLength: 0,
        }),
      EdgeVitError,
    );
  });
}

Deno.test("navitTargetSize is the policy the image pipeline's nativeSize applies", () => {
  let seed = 17;
  const random = () => ((seed = (seed * 69069 + 1) % 4294967296) / 4294967296);
  for (let trial = 0; trial < 500; trial++) {
    const patchSize = [8, 14, 16, 32][trial % 4];
    const limits = {
      patchSize,
      maxHeight: patchSize * (1 + Math.floor(random() * 20)),
      maxWidth: patchSize * (1 + Math.floor(random() * 20)),
      maxPatches: trial % 3 === 0 ? 1 + Math.floor(random() * 300) : undefined,
    };
    const h = 1 + Math.floor(random() * 2500);
    const w = 1 + Math.floor(random() * 2500);
    const ours = navitTargetSize(h, w, limits);
    assert.deepEqual([ours.height, ours.width], nativeSize(h, w, limits), `${h}×${w}`);
  }
});
