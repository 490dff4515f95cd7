import assert from "node:assert/strict";
import { atsSignificance, effectiveBudgets, sampleTokens } from "../../src/models/ats.ts";
import { EdgeVitError } from "../../src/errors.ts";

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
