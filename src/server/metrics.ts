/**
 * A small Prometheus registry (text exposition format 0.0.4): counters, gauges and
 * histograms with labels. Label values come only from the server's own vocabulary
 * (route names, status codes, model names), never from raw request paths, so a flood
 * of random URLs cannot grow it without bound.
 *
 * @module
 */

import process from "node:process";

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const names = Object.keys(labels).sort();
  if (names.length === 0) return "";
  const parts = names.map((name) => `${name}="${escapeLabel(labels[name])}"`);
  return `{${parts.join(",")}}`;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

interface Metric {
  readonly name: string;
  render(): string;
}

/** A monotonically increasing count per label set. */
export class Counter implements Metric {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelKey(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelKey(labels)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [key, value] of this.#values) {
      lines.push(`${this.name}${key} ${formatNumber(value)}`);
    }
    return lines.join("\n");
  }
}

/** A value that goes up and down, set directly or read from a callback at scrape time. */
export class Gauge implements Metric {
  readonly #values = new Map<string, number>();
  readonly #collectors: (() => Array<[Labels, number]>)[] = [];
  constructor(readonly name: string, readonly help: string) {}

  set(labels: Labels, value: number): void {
    this.#values.set(labelKey(labels), value);
  }

  /** Registers a callback that yields current values when /metrics is scraped. */
  collect(collector: () => Array<[Labels, number]>): void {
    this.#collectors.push(collector);
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} gauge`];
    const values = new Map(this.#values);
    for (const collector of this.#collectors) {
      for (const [labels, value] of collector()) values.set(labelKey(labels), value);
    }
    for (const [key, value] of values) lines.push(`${this.name}${key} ${formatNumber(value)}`);
    return lines.join("\n");
  }
}

interface HistogramSeries {
  labels: Labels;
  /** Non-cumulative count per bucket; the last entry is +Inf. */
  counts: number[];
  sum: number;
  count: number;
}

/** Observations in fixed, cumulative buckets (`le`), with their sum and count. */
export class Histogram implements Metric {
  readonly #series = new Map<string, HistogramSeries>();
  readonly buckets: readonly number[];
  constructor(readonly name: string, readonly help: string, buckets: readonly number[]) {
    this.buckets = [...buckets].sort((a, b) => a - b);
  }

  observe(labels: Labels, value: number): void {
    const key = labelKey(labels);
    let series = this.#series.get(key);
    if (!series) {
      series = { labels, counts: new Array(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    let bucket = this.buckets.findIndex((bound) => value <= bound);
    if (bucket < 0) bucket = this.buckets.length;
    series.counts[bucket]++;
    series.sum += value;
    series.count++;
  }

  /** Number of observations for a label set (tests and the load bench read it). */
  count(labels: Labels = {}): number {
    return this.#series.get(labelKey(labels))?.count ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const series of this.#series.values()) {
      let cumulative = 0;
      for (let i = 0; i <= this.buckets.length; i++) {
        cumulative += series.counts[i];
        const le = i < this.buckets.length ? formatNumber(this.buckets[i]) : "+Inf";
        lines.push(`${this.name}_bucket${labelKey({ ...series.labels, le })} ${cumulative}`);
      }
      const key = labelKey(series.labels);
      lines.push(`${this.name}_sum${key} ${formatNumber(series.sum)}`);
      lines.push(`${this.name}_count${key} ${series.count}`);
    }
    return lines.join("\n");
  }
}

/**
 * The server's metrics. One instance per handler.
 *
 * @example
 * ```ts
 * import { ServerMetrics } from "./metrics.ts";
 * const metrics = new ServerMetrics();
 * metrics.requests.inc({ route: "/healthz", method: "GET", status: "200" });
 * console.log(metrics.render().includes('edgevit_http_requests_total{method="GET"')); // true
 * ```
 */
export class ServerMetrics {
  readonly requests = new Counter(
    "edgevit_http_requests_total",
    "HTTP requests by route, method and status code.",
  );
  readonly requestSeconds = new Histogram(
    "edgevit_http_request_duration_seconds",
    "Time from receiving a request to its response, by route.",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  readonly images = new Counter(
    "edgevit_images_classified_total",
    "Images classified, by model.",
  );
  readonly queueSeconds = new Histogram(
    "edgevit_queue_wait_seconds",
    "Time an image waited in the batch queue before its batch started, by model.",
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  );
  readonly preprocessSeconds = new Histogram(
    "edgevit_preprocess_duration_seconds",
    "Time to decode, resize and normalize one image, by model.",
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
  );
  readonly batchSeconds = new Histogram(
    "edgevit_batch_duration_seconds",
    "Time one batch spent in the model, by model.",
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  );
  readonly batchSize = new Histogram(
    "edgevit_batch_size",
    "Images per batch, by model.",
    [1, 2, 4, 8, 16, 32, 64, 128, 256],
  );
  readonly batchTokens = new Histogram(
    "edgevit_batch_tokens",
    "Patch tokens per batch (the encoder's work), by model.",
    [16, 64, 256, 1024, 4096, 16384, 65536, 262144],
  );
  readonly queueDepth = new Gauge(
    "edgevit_queue_depth",
    "Images waiting in the batch queue, by model.",
  );
  readonly inFlight = new Gauge(
    "edgevit_requests_in_flight",
    "Classify requests admitted and not yet answered.",
  );
  readonly cpu = new Gauge(
    "process_cpu_seconds_total",
    "User and system CPU time the process has used (a counter; read at scrape time).",
  );
  readonly memory = new Gauge(
    "edgevit_process_memory_bytes",
    "Process memory by kind (rss, heap_used, heap_total, external).",
  );

  constructor() {
    this.cpu.collect(() => {
      const usage = process.cpuUsage(); // µs
      return [[{}, (usage.user + usage.system) / 1e6]];
    });
    this.memory.collect(() => {
      // Edge runtimes may lack it; the metric is then simply absent.
      if (typeof Deno === "undefined" || typeof Deno.memoryUsage !== "function") return [];
      // Leak tests run the server with --v8-flags=--expose-gc: collect first, so the
      // numbers show what is retained rather than when the collector last ran.
      (globalThis as { gc?: () => void }).gc?.();
      const usage = Deno.memoryUsage();
      return [
        [{ kind: "rss" }, usage.rss],
        [{ kind: "heap_used" }, usage.heapUsed],
        [{ kind: "heap_total" }, usage.heapTotal],
        [{ kind: "external" }, usage.external],
      ];
    });
  }

  /** The Prometheus text exposition of every metric. */
  render(): string {
    const all: Metric[] = [
      this.requests,
      this.requestSeconds,
      this.images,
      this.queueSeconds,
      this.preprocessSeconds,
      this.batchSeconds,
      this.batchSize,
      this.batchTokens,
      this.queueDepth,
      this.inFlight,
      this.cpu,
      this.memory,
    ];
    return all.map((metric) => metric.render()).join("\n") + "\n";
  }
}
