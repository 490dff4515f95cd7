import assert from "node:assert/strict";
import { Counter, Gauge, Histogram, ServerMetrics } from "../../src/server/metrics.ts";

Deno.test("a counter renders one sample per label set with escaped label values", () => {
  const counter = new Counter("things_total", "Things.");
  counter.inc({ route: "/a", status: "200" });
  counter.inc({ status: "200", route: "/a" }, 2);
  counter.inc({ route: 'we"ird\\', status: "500" });
  assert.equal(counter.get({ route: "/a", status: "200" }), 3);
  const lines = counter.render().split("\n");
  assert.deepEqual(lines, [
    "# HELP things_total Things.",
    "# TYPE things_total counter",
    'things_total{route="/a",status="200"} 3',
    'things_total{route="we\\"ird\\\\",status="500"} 1',
  ]);
});

Deno.test("a histogram renders cumulative buckets, +Inf, sum and count", () => {
  const histogram = new Histogram("size", "Sizes.", [4, 1, 2]);
  for (const value of [1, 1, 3, 9]) histogram.observe({ model: "m" }, value);
  const lines = histogram.render().split("\n").slice(2);
  assert.deepEqual(lines, [
    'size_bucket{le="1",model="m"} 2',
    'size_bucket{le="2",model="m"} 2',
    'size_bucket{le="4",model="m"} 3',
    'size_bucket{le="+Inf",model="m"} 4',
    'size_sum{model="m"} 14',
    'size_count{model="m"} 4',
  ]);
  assert.equal(histogram.count({ model: "m" }), 4);
});

Deno.test("a gauge reads its collectors at render time", () => {
  const gauge = new Gauge("depth", "Depth.");
  let depth = 1;
  gauge.collect(() => [[{ model: "m" }, depth]]);
  assert.match(gauge.render(), /depth\{model="m"\} 1$/);
  depth = 5;
  assert.match(gauge.render(), /depth\{model="m"\} 5$/);
});

Deno.test("the server metrics render as valid Prometheus text with process memory", () => {
  const metrics = new ServerMetrics();
  metrics.requests.inc({ route: "/healthz", method: "GET", status: "200" });
  metrics.batchSize.observe({ model: "m" }, 3);
  const text = metrics.render();
  assert.ok(text.endsWith("\n"));
  for (const line of text.trimEnd().split("\n")) {
    assert.match(line, /^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? [-+\d.eInfNa]+)$/, line);
  }
  assert.match(text, /edgevit_process_memory_bytes\{kind="rss"\} \d+/);
  assert.match(text, /edgevit_batch_size_count\{model="m"\} 1/);
});
