import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { BARREN_LIMIT, Batcher, type BatcherOptions } from "../../src/server/batcher.ts";
import { HttpError } from "../../src/server/http_errors.ts";

const OPTIONS: BatcherOptions = { maxBatch: 8, maxWaitMs: 5, maxBatchTokens: 1000, maxQueue: 64 };

/** A runner that doubles its inputs, records batches, and can be held closed. */
function recorder() {
  const batches: { items: number[]; key: string }[] = [];
  let gate = Promise.withResolvers<void>();
  gate.resolve();
  return {
    batches,
    hold() {
      gate = Promise.withResolvers<void>();
    },
    open() {
      gate.resolve();
    },
    /** Resolves once `count` batches have started running. */
    async started(count: number) {
      while (batches.length < count) await new Promise((resolve) => setTimeout(resolve, 1));
    },
    run: async (items: number[], key: string) => {
      batches.push({ items: [...items], key });
      await gate.promise;
      return items.map((x) => x * 2);
    },
  };
}

Deno.test("a lone job runs at once instead of waiting for company", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, { ...OPTIONS, maxWaitMs: 60_000 });
  const result = await batcher.submit(21);
  assert.equal(result.value, 42);
  assert.equal(result.batchSize, 1);
  assert.ok(result.queueMs < 1000, `queued ${result.queueMs} ms`);
});

Deno.test("jobs arriving while a batch runs are gathered into the next batch", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, OPTIONS);
  r.hold();
  const first = batcher.submit(1);
  await r.started(1);
  const rest = [2, 3, 4, 5, 6].map((x) => batcher.submit(x));
  assert.equal(batcher.depth, 5);
  r.open();
  const results = await Promise.all([first, ...rest]);
  assert.deepEqual(results.map((r) => r.value), [2, 4, 6, 8, 10, 12]);
  assert.deepEqual(r.batches.map((b) => b.items), [[1], [2, 3, 4, 5, 6]]);
  assert.deepEqual(results.map((r) => r.batchSize), [1, 5, 5, 5, 5, 5]);
  assert.equal(batcher.depth, 0);
});

Deno.test("announced arrivals hold a partial batch until they come", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, { ...OPTIONS, maxWaitMs: 10_000 });
  const arrivals = batcher.expect(3);
  const jobs: Promise<unknown>[] = [];
  for (const x of [1, 2, 3]) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    jobs.push(batcher.submit(x));
    arrivals.done();
  }
  await Promise.all(jobs);
  assert.deepEqual(r.batches.map((b) => b.items), [[1, 2, 3]]);
});

Deno.test("a partial batch leaves after maxWaitMs when announced arrivals never come", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, { ...OPTIONS, maxWaitMs: 20 });
  const arrivals = batcher.expect(2);
  const job = batcher.submit(7);
  arrivals.done();
  const result = await job;
  assert.equal(result.value, 14);
  assert.ok(result.queueMs >= 15, `left after ${result.queueMs} ms, before maxWaitMs`);
  arrivals.release();
});

Deno.test("batches are cut at maxBatch images and at maxBatchTokens tokens", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, { ...OPTIONS, maxBatch: 3, maxBatchTokens: 10 });
  r.hold();
  const blocker = batcher.submit(0, { cost: 1 });
  await r.started(1);
  const jobs = [
    batcher.submit(1, { cost: 1 }),
    batcher.submit(2, { cost: 1 }),
    batcher.submit(3, { cost: 1 }),
    batcher.submit(4, { cost: 1 }),
    batcher.submit(5, { cost: 6 }),
    batcher.submit(6, { cost: 6 }),
    batcher.submit(7, { cost: 50 }),
  ];
  r.open();
  await Promise.all([blocker, ...jobs]);
  // A single job over the token budget still runs alone rather than never.
  assert.deepEqual(r.batches.map((b) => b.items), [[0], [1, 2, 3], [4, 5], [6], [7]]);
});

Deno.test("jobs with different keys never share a batch and the oldest key goes first", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, OPTIONS);
  r.hold();
  const blocker = batcher.submit(0, { key: "a" });
  await r.started(1);
  const jobs = [
    batcher.submit(1, { key: "b" }),
    batcher.submit(2, { key: "a" }),
    batcher.submit(3, { key: "b" }),
    batcher.submit(4, { key: "a" }),
  ];
  r.open();
  await Promise.all([blocker, ...jobs]);
  assert.deepEqual(r.batches, [
    { items: [0], key: "a" },
    { items: [1, 3], key: "b" },
    { items: [2, 4], key: "a" },
  ]);
});

Deno.test("a full queue refuses a job with 503 queue_full and a Retry-After", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, { ...OPTIONS, maxQueue: 2 });
  r.hold();
  const running = batcher.submit(0);
  await r.started(1);
  const queued = [batcher.submit(1), batcher.submit(2)];
  await assert.rejects(batcher.submit(3), (error: unknown) => {
    assert.ok(error instanceof HttpError);
    assert.equal(error.status, 503);
    assert.equal(error.code, "queue_full");
    assert.ok(Number(error.headers["retry-after"]) >= 1);
    return true;
  });
  r.open();
  assert.deepEqual((await Promise.all([running, ...queued])).map((x) => x.value), [0, 2, 4]);
});

Deno.test("aborting a queued job removes it and rejects it with the abort reason", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, OPTIONS);
  r.hold();
  const running = batcher.submit(0);
  await r.started(1);
  const controller = new AbortController();
  const doomed = batcher.submit(1, { signal: controller.signal });
  const kept = batcher.submit(2);
  const reason = new Error("deadline");
  controller.abort(reason);
  await assert.rejects(doomed, (error) => error === reason);
  assert.equal(batcher.depth, 1);
  r.open();
  await Promise.all([running, kept]);
  assert.deepEqual(r.batches.map((b) => b.items), [[0], [2]]);
});

Deno.test("a failing batch rejects its own jobs and later batches still run", async () => {
  let calls = 0;
  const batcher = new Batcher<number, number>(async (items) => {
    calls++;
    await Promise.resolve();
    if (calls === 1) throw new Error("backend lost");
    return items;
  }, OPTIONS);
  await assert.rejects(batcher.submit(1), /backend lost/);
  assert.equal((await batcher.submit(2)).value, 2);
});

Deno.test("a closed batcher refuses new jobs but finishes queued ones before idle resolves", async () => {
  const r = recorder();
  const batcher = new Batcher(r.run, OPTIONS);
  r.hold();
  const jobs = [batcher.submit(1), batcher.submit(2)];
  batcher.close();
  await assert.rejects(batcher.submit(3), (error) => (error as HttpError).status === 503);
  const idle = batcher.idle();
  r.open();
  await idle;
  assert.deepEqual((await Promise.all(jobs)).map((x) => x.value), [2, 4]);
});

Deno.test("batcher options that make no sense are refused", () => {
  assert.throws(
    () => new Batcher((x: number[]) => Promise.resolve(x), { ...OPTIONS, maxBatch: 0 }),
    RangeError,
  );
  assert.throws(
    () => new Batcher((x: number[]) => Promise.resolve(x), { ...OPTIONS, maxWaitMs: -1 }),
    RangeError,
  );
});

Deno.test("turns catch a job one macrotask behind, until lone jobs switch them off and company switches them back on", async () => {
  // Batches that take 2 ms, so waiting a turn (µs) is worth it: the batcher never
  // waits longer than a batch takes.
  const r = { batches: [] as { items: number[] }[] };
  const run = (items: number[]) => {
    r.batches.push({ items: [...items] });
    const end = performance.now() + 2;
    while (performance.now() < end) { /* compute */ }
    return Promise.resolve(items);
  };
  const batcher = new Batcher(run, { ...OPTIONS, maxWaitMs: 1000 });
  const pair = async (a: number, b: number) => {
    const first = batcher.submit(a);
    const second = new Promise<unknown>((resolve) =>
      setImmediate(() => resolve(batcher.submit(b)))
    );
    await Promise.all([first, second]);
  };
  await pair(1, 2);
  assert.deepEqual(r.batches.at(-1)!.items, [1, 2], "a fresh batcher looks one turn ahead");

  for (let i = 0; i < BARREN_LIMIT; i++) await batcher.submit(100 + i);
  const before = r.batches.length;
  await pair(3, 4);
  assert.deepEqual(
    r.batches.slice(before).map((b) => b.items),
    [[3], [4]],
    "after lone jobs it no longer waits a turn",
  );

  // In one-client mode the first job leaves at once; those queued behind it are company.
  await Promise.all([5, 6, 7].map((x) => batcher.submit(x)));
  assert.deepEqual(r.batches.slice(-2).map((b) => b.items), [[5], [6, 7]]);
  await pair(8, 9);
  assert.deepEqual(r.batches.at(-1)!.items, [8, 9], "company switches the look-ahead back on");
});
