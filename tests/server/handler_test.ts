import assert from "node:assert/strict";
import {
  base64,
  type ClassifyBody,
  classifyRaw,
  jpeg,
  metricValue,
  NAVIT_FIXTURE,
  png,
  pngClaiming,
  type RunningServer,
  startServer,
  TEST_BACKEND,
  VIT_FIXTURE,
  webp,
} from "./_helpers.ts";
import { loadModel } from "../../mod.ts";

function assertWellFormed(body: ClassifyBody, images: number, topK: number) {
  assert.equal(body.results.length, images);
  for (const result of body.results) {
    assert.equal(result.top.length, topK);
    assert.ok(Number.isInteger(result.tokens) && result.tokens > 0);
    for (let i = 0; i < result.top.length; i++) {
      const { label, index, score } = result.top[i];
      assert.equal(typeof label, "string");
      assert.ok(Number.isInteger(index) && index >= 0);
      assert.ok(score > 0 && score <= 1);
      if (i > 0) assert.ok(score <= result.top[i - 1].score, "top is sorted by score");
    }
  }
  for (const key of ["queueMs", "preprocessMs", "inferenceMs"] as const) {
    assert.ok(Number.isFinite(body.timings[key]) && body.timings[key] >= 0, key);
  }
  assert.equal(typeof body.model, "string");
  assert.equal(typeof body.backend, "string");
  assert.equal(body.precision, "f32");
}

function sameTop(a: ClassifyBody["results"][number], b: ClassifyBody["results"][number]) {
  assert.deepEqual(a.top.map((t) => t.index), b.top.map((t) => t.index));
  a.top.forEach((t, i) => assert.ok(Math.abs(t.score - b.top[i].score) < 1e-6));
  assert.equal(a.tokens, b.tokens);
}

async function withServer(
  options: Parameters<typeof startServer>[0],
  body: (server: RunningServer) => Promise<void>,
) {
  const server = await startServer(options);
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

Deno.test("health, readiness and the model list answer once the model is warmed up", async () => {
  await withServer({}, async ({ base }) => {
    const health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: "ok" });
    const ready = await fetch(`${base}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { status: "ready", models: ["vitpytorch-vit-cls"] });
    const models = await (await fetch(`${base}/v1/models`)).json();
    assert.equal(models.models.length, 1);
    const [model] = models.models;
    assert.equal(model.name, "vitpytorch-vit-cls");
    assert.equal(model.default, true);
    assert.equal(model.numClasses, 10);
    assert.equal(model.labels.length, 10);
    assert.deepEqual(model.inputSize, { height: 32, width: 32 });
    assert.equal(model.packed, false);
    assert.equal(model.backend, TEST_BACKEND);
    assert.equal(model.library, "vit-pytorch");
    assert.equal(model.architecture, "ViT");
    assert.equal(model.config.kwargs.dim, 64, "the checkpoint's own config.json");
  });
});

Deno.test("a raw PNG, JPEG or WebP body is classified with topK results and timings", async () => {
  await withServer({}, async ({ base }) => {
    const cases: [Uint8Array, string][] = [
      [await png(40, 30, 1), "image/png"],
      [await jpeg(64, 48, 2), "image/jpeg"],
      [await webp(33, 31, 3), "image/webp"],
    ];
    for (const [bytes, type] of cases) {
      const { status, body } = await classifyRaw(base, bytes, type, "?topK=3");
      assert.equal(status, 200, JSON.stringify(body));
      assertWellFormed(body, 1, 3);
      assert.equal(body.model, "vitpytorch-vit-cls");
      assert.equal(body.results[0].tokens, 17, "16 patches and the CLS token");
    }
    const all = await classifyRaw(base, await png(20, 20), "image/png", "?topK=50");
    assertWellFormed(all.body, 1, 10);
    const sum = all.body.results[0].top.reduce((total, t) => total + t.score, 0);
    assert.ok(Math.abs(sum - 1) < 1e-6, "all classes' scores sum to 1");
  });
});

Deno.test("multipart and JSON requests with several images answer in request order", async () => {
  await withServer({ maxWaitMs: 20 }, async ({ base }) => {
    const images = [await png(32, 32, 11), await jpeg(50, 40, 12), await webp(24, 36, 13)];
    const types = ["image/png", "image/jpeg", "image/webp"];
    const singles = await Promise.all(
      images.map(async (bytes, i) => (await classifyRaw(base, bytes, types[i])).body.results[0]),
    );
    // The three images must be told apart, or order would not be tested.
    assert.ok(new Set(singles.map((s) => s.top[0].score.toFixed(6))).size === 3);

    const form = new FormData();
    images.forEach((bytes, i) =>
      form.append("image", new Blob([bytes], { type: types[i] }), `${i}`)
    );
    form.append("topK", "5");
    const multipart = await fetch(`${base}/v1/classify`, { method: "POST", body: form });
    assert.equal(multipart.status, 200);
    const fromForm: ClassifyBody = await multipart.json();
    assertWellFormed(fromForm, 3, 5);
    fromForm.results.forEach((result, i) => sameTop(result, singles[i]));

    const response = await fetch(`${base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ images: images.map(base64), topK: 5 }),
    });
    assert.equal(response.status, 200);
    const fromJson: ClassifyBody = await response.json();
    assertWellFormed(fromJson, 3, 5);
    fromJson.results.forEach((result, i) => sameTop(result, singles[i]));

    const one = await fetch(`${base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        image: `data:image/png;base64,${base64(images[0])}`,
        topK: 2,
        model: "vitpytorch-vit-cls",
      }),
    });
    const fromDataUrl: ClassifyBody = await one.json();
    assertWellFormed(fromDataUrl, 1, 2);
    assert.deepEqual(fromDataUrl.results[0].top.map((t) => t.index), [
      singles[0].top[0].index,
      singles[0].top[1].index,
    ]);
  });
});

Deno.test("bad requests get the right status and a JSON error with a code", async () => {
  await withServer({ maxBodyBytes: 64 * 1024, maxPixels: 1_000_000 }, async ({ base }) => {
    const good = await png(32, 32);
    const post = (body: BodyInit, type?: string, query = "") =>
      fetch(`${base}/v1/classify${query}`, {
        method: "POST",
        headers: type ? { "content-type": type } : {},
        body,
      });
    const expectError = async (response: Response, status: number, code: string) => {
      assert.equal(response.status, status, `${code}: got ${response.status}`);
      assert.match(response.headers.get("content-type") ?? "", /application\/json/);
      const body = await response.json();
      assert.equal(body.error.code, code);
      assert.ok(typeof body.error.message === "string" && body.error.message.length > 0);
      return response;
    };

    await expectError(await fetch(`${base}/nope`), 404, "not_found");
    const wrongMethod = await expectError(
      await fetch(`${base}/v1/classify`),
      405,
      "method_not_allowed",
    );
    assert.equal(wrongMethod.headers.get("allow"), "POST");
    await expectError(
      await fetch(`${base}/healthz`, { method: "DELETE" }),
      405,
      "method_not_allowed",
    );
    await expectError(await post("hello", "text/plain"), 415, "unsupported_media_type");
    await expectError(
      await post(good, "image/gif"),
      415,
      "unsupported_media_type",
    );
    await expectError(await post("{not json", "application/json"), 400, "bad_request");
    await expectError(await post('{"topK": 3}', "application/json"), 400, "bad_request");
    await expectError(await post('{"image": "***"}', "application/json"), 400, "bad_request");
    await expectError(await post('{"images": []}', "application/json"), 400, "bad_request");
    const noImage = new FormData();
    noImage.append("file", new Blob([good]));
    await expectError(await post(noImage), 400, "bad_request");
    await expectError(await post(new Uint8Array(0), "image/png"), 400, "bad_request");
    await expectError(
      await post(new Uint8Array(100 * 1024), "image/png"),
      413,
      "too_large",
    );
    // Streamed (chunked) with no Content-Length: cut off while reading.
    const chunked = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 10; i++) controller.enqueue(new Uint8Array(10 * 1024));
        controller.close();
      },
    });
    await expectError(
      await fetch(`${base}/v1/classify`, {
        method: "POST",
        headers: { "content-type": "image/png" },
        body: chunked,
        duplex: "half",
      } as RequestInit),
      413,
      "too_large",
    );
    await expectError(await post(pngClaiming(100_000, 100_000), "image/png"), 413, "too_large");
    await expectError(await post(pngClaiming(1001, 1000), "image/png"), 413, "too_large");
    await expectError(
      await post(good.slice(0, good.length - 40), "image/png"),
      422,
      "invalid_image",
    );
    await expectError(
      await post(good, "image/png", "?model=nope"),
      404,
      "model_not_found",
    );
    await expectError(
      await post(good, "image/png", "?topK=0"),
      400,
      "bad_request",
    );
    await expectError(
      await post(good, "image/png", "?tokenBudget=abc"),
      400,
      "bad_request",
    );

    // After all that, a good request still works.
    const { status, body } = await classifyRaw(base, good);
    assert.equal(status, 200);
    assertWellFormed(body, 1, 5);
  });
});

Deno.test("with an API key, /v1 and /metrics need it while health checks stay open", async () => {
  await withServer({ apiKey: "k3y" }, async ({ base }) => {
    const image = await png(32, 32);
    const classify = (headers: Record<string, string>) =>
      fetch(`${base}/v1/classify`, {
        method: "POST",
        headers: { "content-type": "image/png", ...headers },
        body: image,
      });
    const badKeys: Record<string, string>[] = [{}, { authorization: "Bearer wrong" }, {
      "x-api-key": "k3",
    }];
    for (const headers of badKeys) {
      const response = await classify(headers);
      assert.equal(response.status, 401);
      assert.equal((await response.json()).error.code, "unauthorized");
      assert.match(response.headers.get("www-authenticate") ?? "", /Bearer/);
    }
    assert.equal((await classify({ authorization: "Bearer k3y" })).status, 200);
    assert.equal((await classify({ "x-api-key": "k3y" })).status, 200);
    assert.equal((await fetch(`${base}/v1/models`)).status, 401);
    assert.equal((await fetch(`${base}/metrics`)).status, 401);
    assert.equal(
      (await fetch(`${base}/metrics`, { headers: { authorization: "Bearer k3y" } })).status,
      200,
    );
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
  });
});

/** Waits until the server reports `count` classify requests in progress. */
async function admitted(base: string, count: number) {
  for (let i = 0; i < 400; i++) {
    const text = await (await fetch(`${base}/metrics`)).text();
    if (metricValue(text, "edgevit_requests_in_flight") === count) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`the server never had ${count} requests in flight`);
}

/** A request body that sends a few bytes and then stalls until `release` resolves. */
function stallingBody(release: Promise<void>, bytes: Uint8Array) {
  return new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(bytes.slice(0, 8));
      await release;
      controller.enqueue(bytes.slice(8));
      controller.close();
    },
  });
}

Deno.test("a full server answers 503 with Retry-After, and a stalled request times out with 504", async () => {
  await withServer({ maxQueue: 1, deadlineMs: 400 }, async ({ base }) => {
    const image = await png(32, 32);
    const release = Promise.withResolvers<void>();
    const stalled = fetch(`${base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "image/png" },
      body: stallingBody(release.promise, image),
      duplex: "half",
    } as RequestInit);
    await admitted(base, 1);
    const refused = await classifyRaw(base, image);
    assert.equal(refused.status, 503);
    assert.equal((refused.body as unknown as { error: { code: string } }).error.code, "queue_full");

    const timedOut = await stalled;
    assert.equal(timedOut.status, 504);
    assert.equal((await timedOut.json()).error.code, "deadline_exceeded");
    release.resolve();

    const { status } = await classifyRaw(base, image);
    assert.equal(status, 200, "the slot is free again after the deadline");
  });
});

Deno.test("queue_full carries a Retry-After header", async () => {
  await withServer({ maxQueue: 1, deadlineMs: 300 }, async ({ base }) => {
    const image = await png(32, 32);
    const release = Promise.withResolvers<void>();
    const stalled = fetch(`${base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "image/png" },
      body: stallingBody(release.promise, image),
      duplex: "half",
    } as RequestInit);
    await admitted(base, 1);
    const refused = await fetch(`${base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "image/png" },
      body: image,
    });
    assert.equal(refused.status, 503);
    assert.ok(Number(refused.headers.get("retry-after")) >= 1);
    await refused.body?.cancel();
    release.resolve();
    await (await stalled).body?.cancel();
  });
});

Deno.test("concurrent requests are batched together and each gets its own result", async () => {
  await withServer({ maxBatch: 8, maxWaitMs: 200 }, async ({ base, handler }) => {
    const images = await Promise.all(Array.from({ length: 8 }, (_, i) => png(32, 32, 100 + i)));
    // Each image's answer on its own, from the engine (a run of lone requests here would
    // put the batcher into its one-client mode, where it only probes for company).
    const model = await loadModel(VIT_FIXTURE, { backend: TEST_BACKEND });
    const alone = await Promise.all(images.map(async (image) => ({
      top: (await model.classify(image, { topK: 5 })).map((c) => ({ ...c })),
      tokens: 17,
    })));
    model.close();
    const waves = 6;
    const batchesBefore = handler.metrics.batchSize.count({ model: "vitpytorch-vit-cls" });
    for (let wave = 0; wave < waves; wave++) {
      const together = await Promise.all(images.map((image) => classifyRaw(base, image)));
      together.forEach(({ status, body }, i) => {
        assert.equal(status, 200);
        sameTop(body.results[0], alone[i]);
      });
    }
    const batches = handler.metrics.batchSize.count({ model: "vitpytorch-vit-cls" }) -
      batchesBefore;
    assert.ok(batches < waves * 8, `${waves * 8} concurrent requests ran in ${batches} batches`);

    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.equal(
      metricValue(
        metrics,
        'edgevit_http_requests_total{method="POST",route="/v1/classify",status="200"}',
      ),
      waves * 8,
    );
    for (
      const name of [
        "edgevit_http_request_duration_seconds_bucket",
        "edgevit_batch_size_bucket",
        "edgevit_batch_tokens_bucket",
        'edgevit_queue_depth{model="vitpytorch-vit-cls"}',
        "edgevit_process_memory_bytes",
      ]
    ) {
      assert.ok(metrics.includes(name), `metrics lack ${name}`);
    }
    assert.equal(metricValue(metrics, 'edgevit_queue_depth{model="vitpytorch-vit-cls"}'), 0);
    assert.equal(
      metricValue(metrics, 'edgevit_images_classified_total{model="vitpytorch-vit-cls"}'),
      waves * 8,
    );
  });
});

Deno.test("a NaViT model packs mixed resolutions and each image gets its own-size result", async () => {
  await withServer(
    { models: [NAVIT_FIXTURE], maxBatch: 8, maxWaitMs: 200 },
    async ({ base, handler }) => {
      const models = await (await fetch(`${base}/v1/models`)).json();
      assert.equal(models.models[0].packed, true);
      const sizes: [number, number][] = [[16, 16], [64, 32], [24, 56], [40, 40]];
      const images = await Promise.all(sizes.map(([w, h], i) => png(w, h, 200 + i)));
      const alone: ClassifyBody["results"] = [];
      for (const image of images) alone.push((await classifyRaw(base, image)).body.results[0]);
      // Token counts follow each image's own size (8-pixel patches), no padding.
      assert.deepEqual(alone.map((r) => r.tokens), sizes.map(([w, h]) => (w / 8) * (h / 8)));
      const waves = 10;
      const tokensBefore = handler.metrics.batchTokens.count({ model: "vitpytorch-navit" });
      for (let wave = 0; wave < waves; wave++) {
        const together = await Promise.all(images.map((image) => classifyRaw(base, image)));
        together.forEach(({ status, body }, i) => {
          assert.equal(status, 200);
          sameTop(body.results[0], alone[i]);
        });
      }
      const batches = handler.metrics.batchTokens.count({ model: "vitpytorch-navit" }) -
        tokensBefore;
      assert.ok(batches < waves * 4, `${waves * 4} images ran in ${batches} packed batches`);
    },
  );
});

Deno.test("the service answers what the engine's own classify answers for the same bytes", async () => {
  const model = await loadModel(VIT_FIXTURE, { backend: TEST_BACKEND });
  try {
    await withServer({}, async ({ base }) => {
      for (
        const [bytes, type] of [[await jpeg(80, 60, 21), "image/jpeg"], [
          await png(17, 45, 22),
          "image/png",
        ]] as const
      ) {
        const direct = await model.classify(bytes, { topK: 4 });
        const { status, body } = await classifyRaw(base, bytes, type, "?topK=4");
        assert.equal(status, 200);
        assert.deepEqual(body.results[0].top.map((t) => t.index), direct.map((c) => c.index));
        assert.deepEqual(body.results[0].top.map((t) => t.label), direct.map((c) => c.label));
        body.results[0].top.forEach((t, i) =>
          assert.ok(Math.abs(t.score - direct[i].score) < 1e-6)
        );
      }
    });
  } finally {
    model.close();
  }
});

Deno.test("tokenBudget lowers an ATS model's tokens per request and matches the engine at that budget", async () => {
  const ats = "../shared/fixtures/parity/vitpytorch-ats";
  const model = await loadModel(ats, { backend: TEST_BACKEND });
  try {
    await withServer({ models: [ats], maxWaitMs: 50 }, async ({ base }) => {
      const image = await png(32, 32, 31);
      const full = await classifyRaw(base, image, "image/png", "?topK=3");
      const json = await fetch(`${base}/v1/classify?topK=3`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ image: base64(image), tokenBudget: 2 }),
      });
      const pruned: ClassifyBody = await json.json();
      assert.equal(full.status, 200);
      assert.equal(json.status, 200);
      assert.ok(
        pruned.results[0].tokens < full.body.results[0].tokens,
        `budget 2 kept ${pruned.results[0].tokens} tokens, no budget ${
          full.body.results[0].tokens
        }`,
      );
      const direct = await model.classify(image, { topK: 3, tokenBudget: 2 });
      assert.deepEqual(pruned.results[0].top.map((t) => t.index), direct.map((c) => c.index));
      pruned.results[0].top.forEach((t, i) =>
        assert.ok(Math.abs(t.score - direct[i].score) < 1e-6)
      );

      // Requests with different budgets arriving together are answered each at its own budget.
      const [a, b] = await Promise.all([
        classifyRaw(base, image, "image/png", "?tokenBudget=2"),
        classifyRaw(base, image, "image/png", "?tokenBudget=40"),
      ]);
      assert.equal(a.body.results[0].tokens, pruned.results[0].tokens);
      assert.ok(b.body.results[0].tokens > a.body.results[0].tokens);
    });
  } finally {
    model.close();
  }
});

Deno.test("several models are served side by side and picked by name", async () => {
  await withServer(
    { models: [VIT_FIXTURE, `navit=${NAVIT_FIXTURE}`] },
    async ({ base }) => {
      const listed = await (await fetch(`${base}/v1/models`)).json();
      assert.deepEqual(
        listed.models.map((m: { name: string; default: boolean; packed: boolean }) => [
          m.name,
          m.default,
          m.packed,
        ]),
        [["vitpytorch-vit-cls", true, false], ["navit", false, true]],
      );
      const image = await png(40, 24, 41);
      const byDefault = await classifyRaw(base, image);
      assert.equal(byDefault.body.model, "vitpytorch-vit-cls");
      const byName = await classifyRaw(base, image, "image/png", "?model=navit");
      assert.equal(byName.status, 200);
      assert.equal(byName.body.model, "navit");
      assert.equal(byName.body.results[0].tokens, (40 / 8) * (24 / 8), "NaViT at the image's size");
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /edgevit_queue_depth\{model="navit"\} 0/);
    },
  );
});
