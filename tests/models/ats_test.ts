import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { atsSignificance, effectiveBudgets, sampleTokens } from "../../src/models/ats.ts";
import { buildAtsVit, createAtsHooks, withAts as withAtsOn } from "../../src/models/ats_vit.ts";
import { NaViT } from "../../src/models/navit.ts";
import { buildArchitecture, findArchitecture } from "../../src/models/registry.ts";
import { describeCheckpoint, type JsonObject } from "../../src/loaders/config.ts";
import {
  randomVitWeights,
  seededRandom,
  standardVitConfig,
  type VitConfig,
  VitModel,
} from "../../src/models/vit.ts";
import { loadModel } from "../../src/model.ts";
import { maxAbsDiff, PARITY_DIR, readCase, testBackends } from "./_fixtures.ts";

const backends = await testBackends();

/** The spec read literally: normalize, stable ascending order, cumulative sum, one scan per point. */
function specRule(s: number[], k: number): number[] {
  if (s.length <= k) return s.map((_, i) => i);
  const total = s.reduce((a, b) => a + b, 0) + 1e-6;
  const normed = s.map((v) => v / total);
  const order = normed.map((v, i) => ({ v, i }))
    .sort((a, b) => (a.v < b.v ? -1 : a.v > b.v ? 1 : a.i - b.i))
    .map((e) => e.i);
  const c: number[] = [];
  order.forEach((j, p) => c.push((p > 0 ? c[p - 1] : 0) + normed[j]));
  const kept = new Set<number>();
  for (let i = 0; i < k; i++) {
    const u = (i + 0.5) / k;
    let p = c.findIndex((value) => value >= u);
    if (p < 0) p = c.length - 1;
    kept.add(order[p]);
  }
  return [...kept].sort((a, b) => a - b);
}

Deno.test("sampleTokens keeps every token when there are no more than the budget", () => {
  assert.deepEqual([...sampleTokens([0.3, 0.1, 0.6], 3)], [0, 1, 2]);
  assert.deepEqual([...sampleTokens([0.3, 0.1, 0.6], 8)], [0, 1, 2]);
  assert.deepEqual([...sampleTokens([], 2)], []);
});

Deno.test("sampleTokens picks tokens where the evenly spaced points fall in the cumulative sum", () => {
  // ascending order 0,1,3,4 (ties by index) then 2; cumulative .1 .2 .3 .4 1.0;
  // points .125 .375 .625 .875 land on positions 1, 3, 4, 4: tokens 1, 4, 2, 2
  assert.deepEqual([...sampleTokens([0.1, 0.1, 0.6, 0.1, 0.1], 4)], [1, 2, 4]);
  // a dominant token takes every point: one token kept although the budget is 2
  assert.deepEqual([...sampleTokens([0, 0, 1], 2)], [2]);
  // order 1 (.05), 3 (.15), 0 (.3), 2 (.5): cumulative .05 .2 .5 1.0; points .25 .75
  assert.deepEqual([...sampleTokens([0.3, 0.05, 0.5, 0.15], 2)], [0, 2]);
});

Deno.test("sampleTokens lets the 1e-6 in the normalization push an exact tie to the next token", () => {
  // uniform: cumulative .25·(1-2.5e-7) falls just short of the point .25, so position 1 is
  // picked; likewise .75 → position 3
  assert.deepEqual([...sampleTokens([1, 1, 1, 1], 2)], [1, 3]);
});

Deno.test("sampleTokens orders ties by token index and clamps to the last position", () => {
  // all zero: no cumulative value reaches any point, so the last position of the stable
  // order (the highest index among the ties) is the only token kept
  assert.deepEqual([...sampleTokens([0, 0, 0, 0, 0], 3)], [4]);
  // a zero-significance token is never picked while others carry mass
  const kept = [...sampleTokens([0, 2, 0, 3, 1, 0], 4)];
  assert.ok(kept.every((j) => j === 1 || j === 3 || j === 4));
});

Deno.test("sampleTokens agrees with a literal reading of the spec on random inputs", () => {
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + Math.floor(random() * 70);
    const k = 1 + Math.floor(random() * 50);
    // some exact ties and zeros on purpose
    const s = Array.from({ length: n }, () => {
      const r = random();
      return r < 0.1 ? 0 : r < 0.2 ? 0.5 : r * r * r;
    });
    const kept = [...sampleTokens(s, k)];
    assert.deepEqual(kept, specRule(s, k), `n=${n} k=${k}`);
    assert.ok(kept.length <= Math.min(n, k) && kept.length >= 1);
    for (let i = 1; i < kept.length; i++) assert.ok(kept[i] > kept[i - 1]);
  }
});

Deno.test("sampleTokens rejects a budget below one and non-finite significance", () => {
  assert.throws(() => sampleTokens([1, 2], 0), EdgeVitError);
  assert.throws(() => sampleTokens([1, 2], 1.5), EdgeVitError);
  assert.throws(() => sampleTokens([1, NaN, 2], 1), EdgeVitError);
});

Deno.test("atsSignificance weighs each head's CLS attention by the value norm and sums heads", () => {
  // rows: CLS, p0, p1 (image 0); CLS, p0 (image 1); heads 2, row-major [rows, heads]
  const attention = new Float32Array([0.2, 0.4, 0.5, 0.25, 0.3, 0.35, 0.6, 0.1, 0.4, 0.9]);
  const norms = new Float32Array([9, 9, 2, 4, 1, 2, 9, 9, 3, 0.5]);
  const close = (actual: Float64Array, expected: number[]) => {
    assert.equal(actual.length, expected.length);
    actual.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-6, `${v} vs ${expected[i]}`));
  };
  close(atsSignificance(attention, norms, 2, 1, 2), [0.5 * 2 + 0.25 * 4, 0.3 + 0.35 * 2]);
  close(atsSignificance(attention, norms, 2, 4, 1), [0.4 * 3 + 0.9 * 0.5]);
});

Deno.test("effectiveBudgets lowers the checkpoint's budgets and never raises them", () => {
  assert.deepEqual(effectiveBudgets([48, 24]), [48, 24]);
  assert.deepEqual(effectiveBudgets([48, 24], 32), [32, 24]);
  assert.deepEqual(effectiveBudgets([48, 24], [100, 10]), [48, 10]);
  // a layer without a budget of its own takes the request's
  assert.deepEqual(effectiveBudgets([null, 24], 16), [16, 16]);
  assert.throws(() => effectiveBudgets([48, 24], [10]), EdgeVitError);
  assert.throws(() => effectiveBudgets([48, 24], 0), EdgeVitError);
});

// ─── ATS in models ──────────────────────────────────────────────────────────────────

const atsFixture = await readCase("vitpytorch-ats");
const atsPixels = atsFixture.input("pixel_values");
const atsShape = atsPixels.shape as [number, number, number, number];
const atsImage = 3 * 32 * 32;

for (const [name, create] of backends) {
  Deno.test(`ats_vit.ViT matches vit-pytorch's logits and kept token ids (${name})`, async () => {
    const model = buildAtsVit(await create(), atsFixture.config.kwargs, atsFixture.weights());
    const out = await model.forward(atsPixels.data, atsShape, { returnTokenIds: true });
    assert.ok(maxAbsDiff(out.logits, atsFixture.expected("logits").data) <= atsFixture.case.atol);
    const expected = atsFixture.expectedInt("token_ids"); // [images, 24], -1 = padding
    const width = expected.shape[1];
    const last = out.tokenIds![out.tokenIds!.length - 1];
    last.forEach((ids, image) => {
      const row = [...expected.data.subarray(image * width, (image + 1) * width)];
      assert.deepEqual([...ids], row.filter((id) => id >= 0));
    });
    model.dispose();
  });

  Deno.test(`ATS decides each image's tokens whatever else is in the batch (${name})`, async () => {
    const model = buildAtsVit(await create(), atsFixture.config.kwargs, atsFixture.weights());
    const first = atsPixels.data.subarray(0, atsImage);
    const alone = await model.forward(first, [1, 3, 32, 32], { returnTokenIds: true });
    // the same image between a flat image (few distinct tokens) and the fixture's second
    const batch = new Float32Array(3 * atsImage);
    batch.fill(0.25, 0, atsImage);
    batch.set(first, atsImage);
    batch.set(atsPixels.data.subarray(atsImage), 2 * atsImage);
    const mixed = await model.forward(batch, [3, 3, 32, 32], { returnTokenIds: true });
    assert.ok(maxAbsDiff(mixed.logits.subarray(10, 20), alone.logits) <= 1e-5);
    alone.tokenIds!.forEach((layer, l) => assert.deepEqual(mixed.tokenIds![l][1], layer[0]));
    model.dispose();
  });

  Deno.test(`a lower tokenBudget keeps fewer tokens and a higher one changes nothing (${name})`, async () => {
    const model = buildAtsVit(await create(), atsFixture.config.kwargs, atsFixture.weights());
    const full = await model.forward(atsPixels.data, atsShape, { returnTokenIds: true });
    const raised = await model.forward(atsPixels.data, atsShape, {
      returnTokenIds: true,
      tokenBudget: [1000, 1000],
    });
    assert.deepEqual(raised.logits, full.logits);
    assert.deepEqual(raised.tokenIds, full.tokenIds);
    const low = await model.forward(atsPixels.data, atsShape, {
      returnTokenIds: true,
      tokenBudget: 8,
    });
    for (const layer of low.tokenIds!) {
      for (const ids of layer) {
        assert.ok(ids.length >= 1 && ids.length <= 8);
        for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1]);
      }
    }
    low.tokensPerImage.forEach((tokens, i) => assert.ok(tokens < full.tokensPerImage[i]));
    // a later layer only keeps tokens the earlier one kept
    low.tokenIds![1].forEach((ids, image) =>
      ids.forEach((id) => assert.ok(low.tokenIds![0][image].includes(id)))
    );
    await assert.rejects(
      async () => await model.forward(atsPixels.data, atsShape, { tokenBudget: [8] }),
      /1 budgets for 2 layers/,
    );
    model.dispose();
  });

  Deno.test(`ATS switched on for a plain ViT prunes only when asked (${name})`, async () => {
    const config: VitConfig = standardVitConfig({
      imageSize: 24,
      patchSize: 4,
      dim: 32,
      depth: 3,
      heads: 2,
      mlpDim: 64,
      numClasses: 5,
    });
    const backend = await create();
    const weights = randomVitWeights(config, 5);
    const plain = VitModel.create(backend, config, weights);
    const switchable = VitModel.create(backend, config, weights, {
      hooks: createAtsHooks(config),
    });
    const withAts = VitModel.create(backend, config, weights, {
      hooks: createAtsHooks(config, { maxTokensPerDepth: [20, null, 6] }),
    });
    const random = seededRandom(9);
    const pixels = new Float32Array(2 * 3 * 24 * 24).map(() => random() * 2 - 1);
    const reference = await plain.forward(pixels, [2, 3, 24, 24]);
    // no budget anywhere: the same pass as the plain model
    const unpruned = await switchable.forward(pixels, [2, 3, 24, 24]);
    assert.deepEqual(unpruned.logits, reference.logits);
    // budgets at or above the 36 patches keep every token: still the same logits
    const roomy = await switchable.forward(pixels, [2, 3, 24, 24], { tokenBudget: 36 });
    assert.ok(maxAbsDiff(roomy.logits, reference.logits) <= 1e-6);
    const pruned = await withAts.forward(pixels, [2, 3, 24, 24], { returnTokenIds: true });
    const counts = pruned.tokenIds!.map((layer) => layer.map((ids) => ids.length));
    counts[0].forEach((count) => assert.ok(count <= 20));
    assert.deepEqual(counts[1], counts[0]); // layer 1 has no budget of its own
    counts[2].forEach((count) => assert.ok(count <= 6));
    assert.ok(maxAbsDiff(pruned.logits, reference.logits) > 1e-4);
    // a request lowers the switched-on budgets further
    const tighter = await withAts.forward(pixels, [2, 3, 24, 24], {
      returnTokenIds: true,
      tokenBudget: 4,
    });
    tighter.tokenIds!.forEach((layer) => layer.forEach((ids) => assert.ok(ids.length <= 4)));
    // the same switch on an already built model
    const wrapped = withAtsOn(VitModel.create(backend, config, weights), {
      maxTokensPerDepth: [20, null, 6],
    });
    const viaWrapper = await wrapped.forward(pixels, [2, 3, 24, 24], { returnTokenIds: true });
    assert.deepEqual(viaWrapper.logits, pruned.logits);
    assert.deepEqual(viaWrapper.tokenIds, pruned.tokenIds);
    wrapped.dispose();
    for (const model of [plain, switchable, withAts]) model.dispose();

    const noCls = { ...config, classToken: false, pool: "mean" as const };
    assert.throws(() => createAtsHooks(noCls, { maxTokensPerDepth: 8 }), /CLS token/);
    assert.throws(() => createAtsHooks(config, { maxTokensPerDepth: [8, 8] }), EdgeVitError);
    assert.throws(() => createAtsHooks(config, { maxTokensPerDepth: [8, 0, 8] }), EdgeVitError);
  });
}

Deno.test("ATS cannot be switched on for a model outside the ViT family", async () => {
  const navit = await readCase("vitpytorch-navit");
  const model = NaViT.build(new ReferenceBackend(), navit.config.kwargs, navit.weights());
  assert.throws(() => withAtsOn(model, { maxTokensPerDepth: 8 }), /ViT-family/);
  model.dispose();
});

Deno.test("the registry switches ATS on for Hugging Face and timm ViTs", async () => {
  for (const name of ["hf-vit", "timm-vit"]) {
    const fixture = await readCase(name);
    const checkpoint = describeCheckpoint(fixture.config as unknown as JsonObject, name);
    const entry = findArchitecture(checkpoint.library, checkpoint.architecture)!;
    const context = {
      checkpoint,
      backend: new ReferenceBackend(),
      precision: "f32" as const,
    };
    const { data, shape } = fixture.input("pixel_values");
    const pixelShape = shape as [number, number, number, number];
    // 16 patches: a budget of 16 keeps them all, so the logits stay PyTorch's
    const roomy = await buildArchitecture(entry, {
      ...context,
      weights: fixture.weights(),
      ats: { maxTokensPerDepth: 16 },
    });
    const same = await roomy.forward(data, pixelShape);
    assert.ok(maxAbsDiff(same.logits, fixture.expected("logits").data) <= fixture.case.atol);
    roomy.dispose();
    const pruning = await buildArchitecture(entry, {
      ...context,
      weights: fixture.weights(),
      ats: { maxTokensPerDepth: [6, 3] },
    });
    const out = await pruning.forward(data, pixelShape, { returnTokenIds: true });
    out.tokenIds![0].forEach((ids) => assert.ok(ids.length >= 1 && ids.length <= 6));
    out.tokenIds![1].forEach((ids) => assert.ok(ids.length >= 1 && ids.length <= 3));
    pruning.dispose();
  }
  // a model without a CLS token cannot prune, and the built model is freed
  const mean = await readCase("vitpytorch-vit-mean");
  const checkpoint = describeCheckpoint(mean.config as unknown as JsonObject, "mean");
  await assert.rejects(
    buildArchitecture(findArchitecture("vit-pytorch", "ViT")!, {
      checkpoint,
      weights: mean.weights(),
      backend: new ReferenceBackend(),
      precision: "f32",
      ats: { maxTokensPerDepth: 4 },
    }),
    /CLS token/,
  );
});

Deno.test("loadModel's ats option prunes a plain checkpoint and requests lower its budget", async () => {
  const dir = new URL("timm-vit/", PARITY_DIR);
  const fixture = await readCase("timm-vit");
  const { data, shape } = fixture.input("pixel_values");
  const pixelShape = shape as [number, number, number, number];
  const model = await loadModel(dir, { backend: "reference", ats: { maxTokensPerDepth: 10 } });
  const out = await model.run(data, pixelShape, { returnTokenIds: true });
  out.tokenIds!.flat().forEach((ids) => assert.ok(ids.length >= 1 && ids.length <= 10));
  const lower = await model.run(data, pixelShape, { returnTokenIds: true, tokenBudget: 2 });
  lower.tokenIds!.flat().forEach((ids) => assert.ok(ids.length >= 1 && ids.length <= 2));
  model.close();
});
