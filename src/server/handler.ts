/**
 * The HTTP handler: a plain `(req: Request) => Promise<Response>` that runs under
 * `Deno.serve`, `deno serve` and edge runtimes. It validates and decodes requests,
 * feeds images through one dynamic {@link Batcher} per model, and answers JSON.
 *
 * Defences, in the order a request meets them: the route and method, the API key, an
 * admission limit (503 + `Retry-After` past `maxQueue` requests in flight), the
 * declared body size, a streamed body size limit, the image count, each image's
 * header (format and pixel count, before any pixel is allocated), then decoding.
 * A deadline covers all of it (504), including slow bodies and time in the queue.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { checkLimits, sniffImage } from "../image/sniff.ts";
import { type Arrivals, Batcher, type JobResult } from "./batcher.ts";
import { DEFAULT_MODEL, splitModelArg } from "./config.ts";
import type { ImageProbe, InferenceOptions, PreparedImage, ServedModel } from "./engine.ts";
import { errorResponse, HttpError } from "./http_errors.ts";
import { ServerMetrics } from "./metrics.ts";
import { loadServedModel, servedModelFromModel } from "./model_loader.ts";
import { Model } from "../model.ts";

export { DEFAULT_MODEL };

/** Path of the embedded default model, wherever the process runs from. */
export function defaultModelLocation(): string {
  const url = new URL(`../../models/${DEFAULT_MODEL}`, import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : url.href;
}

/** Options of {@link createHandler}. */
export interface HandlerOptions extends Partial<HandlerLimits> {
  /**
   * Model folders or URLs (`name=location` names one; otherwise the folder name is its
   * name), models from `loadModel` (named `model`, `model-2`, ...; the handler closes
   * them), or models already wrapped for serving. The first is the default model.
   * Default: the embedded default model ({@link DEFAULT_MODEL}).
   */
  models?: readonly (string | Model | ServedModel)[];
  /** Backend to load models on ("auto" default). */
  backend?: string;
  /** "f32" (default) or "int8". */
  precision?: string;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <key>` or `x-api-key: <key>`. */
  apiKey?: string | null;
  /** Run one warm-up batch per model before /readyz says ready (default true). */
  warmup?: boolean;
}

/**
 * Creates the edgevit HTTP handler: loads the models in the background (`/readyz`
 * answers 200 once they are loaded and warmed up) and serves `/v1/classify`,
 * `/v1/models`, `/healthz`, `/readyz` and `/metrics`.
 *
 * @example
 * ```ts
 * import { createHandler } from "./handler.ts";
 * const handler = createHandler({
 *   models: ["../shared/fixtures/parity/vitpytorch-vit-cls"],
 *   backend: "wasm",
 *   maxBatch: 16,
 * });
 * await handler.ready; // loaded and warmed up
 * const response = await handler(new Request("http://localhost/v1/models"));
 * console.log(response.status); // 200
 * await handler.close();
 * // In a server: Deno.serve({ hostname: "127.0.0.1", port: 8000 }, handler);
 * ```
 */
export function createHandler(options: HandlerOptions = {}): EdgeVitHandler {
  const specs = options.models && options.models.length > 0
    ? options.models
    : [defaultModelLocation()];
  return createServingHandler({
    ...options,
    probe: (bytes, limits) => {
      const info = sniffImage(bytes);
      checkLimits(info, limits);
      return info;
    },
    models: async () => {
      const models: ServedModel[] = [];
      try {
        for (const [i, spec] of specs.entries()) {
          if (spec instanceof Model) {
            models.push(servedModelFromModel(i === 0 ? "model" : `model-${i + 1}`, spec));
          } else if (typeof spec !== "string") {
            models.push(spec);
          } else {
            const { name, location } = splitModelArg(spec);
            models.push(
              await loadServedModel(location, {
                name,
                backend: options.backend,
                precision: options.precision,
                maxPixels: options.maxPixels,
              }),
            );
          }
        }
      } catch (error) {
        // Whatever was loaded before the failure would otherwise never be freed.
        for (const model of models) model.close();
        throw error;
      }
      return models;
    },
  });
}

/** Limits of the handler; see {@link import("./config.ts").ServerConfig} for their meaning. */
export interface HandlerLimits {
  maxBatch: number;
  maxWaitMs: number;
  maxBatchTokens: number;
  maxQueue: number;
  deadlineMs: number;
  maxBodyBytes: number;
  maxPixels: number;
  maxImages: number;
  topK: number;
}

/** Options of {@link createServingHandler}. */
export interface ServingHandlerOptions extends Partial<HandlerLimits> {
  /**
   * The models, the first being the default; or a function that loads them (the handler
   * answers `/healthz` at once and `/readyz` once they are loaded and warmed up).
   */
  models: readonly ServedModel[] | (() => Promise<readonly ServedModel[]>);
  /** Reads format and size from an image header without decoding it. */
  probe: ImageProbe;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <key>` or `x-api-key: <key>`. */
  apiKey?: string | null;
  /** Run one warm-up batch per model before becoming ready (default true). */
  warmup?: boolean;
  metrics?: ServerMetrics;
}

/** The handler, with the hooks a server needs around it. */
export interface EdgeVitHandler {
  (request: Request): Promise<Response>;
  /** Resolves when every model is loaded and warmed up; rejects when loading failed. */
  readonly ready: Promise<void>;
  readonly metrics: ServerMetrics;
  /** Stops admitting classify requests (503) and makes /readyz fail, for a graceful shutdown. */
  drain(): void;
  /** Resolves once no classify request is in progress (call after {@link drain}). */
  settled(): Promise<void>;
  /** Drains, waits for queued and running batches, then frees the models. */
  close(): Promise<void>;
}

const DEFAULT_LIMITS: HandlerLimits = {
  maxBatch: 16,
  maxWaitMs: 2,
  maxBatchTokens: 16384,
  maxQueue: 256,
  deadlineMs: 10_000,
  maxBodyBytes: 16 * 1024 * 1024,
  maxPixels: 40_000_000,
  maxImages: 32,
  topK: 5,
};

/** Route → allowed methods. Anything else is "other" in metrics (bounded label values). */
const ROUTES: Record<string, readonly string[]> = {
  "/v1/classify": ["POST"],
  "/v1/models": ["GET", "HEAD"],
  "/healthz": ["GET", "HEAD"],
  "/readyz": ["GET", "HEAD"],
  "/metrics": ["GET", "HEAD"],
};

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
const RAW_IMAGE_TYPES = new Set([
  "image/jpeg",
  "image/jpg",
  "image/png",
  "image/webp",
  "application/octet-stream",
]);

interface Job {
  image: PreparedImage;
  options: InferenceOptions;
}

interface JobOutput {
  logits: Float32Array;
  tokens: number;
}

interface Entry {
  model: ServedModel;
  batcher: Batcher<Job, JobOutput>;
}

interface ClassifyInput {
  images: Uint8Array[];
  topK?: unknown;
  model?: unknown;
  tokenBudget?: unknown;
}

/** A 200 JSON response (errors go through errorResponse). */
function json(body: unknown): Response {
  return new Response(JSON.stringify(body), {
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function noop(): void {}

/** Equal-time comparison, so response times do not reveal how much of a key matched. */
function sameKey(given: string, expected: string): boolean {
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(expected);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i % Math.max(1, a.length)] ?? 0) ^ b[i];
  return diff === 0;
}

function mediaType(request: Request): string {
  return (request.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
}

async function readBody(request: Request, limit: number, signal: AbortSignal): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const cancel = () => reader.cancel().catch(noop);
  signal.addEventListener("abort", cancel, { once: true });
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        cancel();
        throw new HttpError(413, "too_large", `request body is over the limit of ${limit} bytes`);
      }
      chunks.push(value);
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    if (signal.aborted) throw signal.reason;
    throw new HttpError(400, "bad_request", "the request body could not be read");
  } finally {
    signal.removeEventListener("abort", cancel);
  }
  if (signal.aborted) throw signal.reason;
  if (chunks.length === 1) return chunks[0];
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

function decodeBase64(value: unknown, where: string): Uint8Array {
  if (typeof value !== "string") {
    throw new HttpError(400, "bad_request", `${where} must be a base64 string`);
  }
  // Accept data URLs as browsers produce them.
  const comma = value.startsWith("data:") ? value.indexOf(",") : -1;
  const text = (comma >= 0 ? value.slice(comma + 1) : value).replace(/\s+/g, "");
  try {
    return Uint8Array.fromBase64(text);
  } catch {
    try {
      return Uint8Array.fromBase64(text, { alphabet: "base64url" });
    } catch {
      throw new HttpError(400, "bad_request", `${where} is not valid base64`);
    }
  }
}

async function parseClassifyBody(
  request: Request,
  limits: HandlerLimits,
  signal: AbortSignal,
): Promise<ClassifyInput> {
  const type = mediaType(request);
  const isMultipart = type === "multipart/form-data";
  const isJson = type === "application/json";
  if (!RAW_IMAGE_TYPES.has(type) && !isMultipart && !isJson) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      type === ""
        ? "missing Content-Type: send image/jpeg, image/png, image/webp, multipart/form-data or application/json"
        : `Content-Type ${type} is not supported: send image/jpeg, image/png, image/webp, multipart/form-data or application/json`,
    );
  }
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limits.maxBodyBytes) {
    throw new HttpError(
      413,
      "too_large",
      `request body of ${declared} bytes is over the limit of ${limits.maxBodyBytes} bytes`,
    );
  }
  const body = await readBody(request, limits.maxBodyBytes, signal);
  if (body.byteLength === 0) throw new HttpError(400, "bad_request", "the request body is empty");

  if (isJson) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(body));
    } catch {
      throw new HttpError(400, "bad_request", "the body is not valid JSON");
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new HttpError(400, "bad_request", 'the JSON body must be an object with "image"');
    }
    const fields = parsed as Record<string, unknown>;
    let images: Uint8Array[];
    if (fields.images !== undefined) {
      if (!Array.isArray(fields.images) || fields.images.length === 0) {
        throw new HttpError(400, "bad_request", '"images" must be a non-empty array of base64');
      }
      if (fields.images.length > limits.maxImages) throw tooManyImages(limits);
      images = fields.images.map((item, i) => decodeBase64(item, `images[${i}]`));
    } else if (fields.image !== undefined) {
      images = [decodeBase64(fields.image, '"image"')];
    } else {
      throw new HttpError(400, "bad_request", 'the JSON body needs "image" or "images" (base64)');
    }
    return { images, topK: fields.topK, model: fields.model, tokenBudget: fields.tokenBudget };
  }

  if (isMultipart) {
    let form: FormData;
    try {
      form = await new Response(body as Uint8Array<ArrayBuffer>, {
        headers: { "content-type": request.headers.get("content-type")! },
      }).formData();
    } catch {
      throw new HttpError(400, "bad_request", "the multipart body is malformed");
    }
    const parts = form.getAll("image");
    if (parts.length === 0) {
      throw new HttpError(400, "bad_request", 'the form has no "image" part');
    }
    if (parts.length > limits.maxImages) throw tooManyImages(limits);
    const images: Uint8Array[] = [];
    for (const part of parts) {
      if (typeof part === "string") {
        throw new HttpError(400, "bad_request", 'each "image" part must be a file');
      }
      images.push(new Uint8Array(await part.arrayBuffer()));
    }
    const field = (name: string) => {
      const value = form.get(name);
      return typeof value === "string" ? value : undefined;
    };
    return {
      images,
      topK: field("topK"),
      model: field("model"),
      tokenBudget: field("tokenBudget"),
    };
  }

  return { images: [body] };
}

function tooManyImages(limits: HandlerLimits): HttpError {
  return new HttpError(413, "too_large", `more than ${limits.maxImages} images in one request`);
}

/** Reads a positive whole number from a JSON number or a query/form string. */
function positiveInteger(value: unknown, name: string): number | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  const number = typeof value === "string" && /^\s*\d+\s*$/.test(value)
    ? Number(value)
    : typeof value === "number"
    ? value
    : NaN;
  if (!Number.isSafeInteger(number) || number < 1) {
    throw new HttpError(400, "bad_request", `${name} must be a whole number ≥ 1`);
  }
  return number;
}

function topOf(row: Float32Array, labels: readonly string[], k: number) {
  let max = -Infinity;
  for (const value of row) if (value > max) max = value;
  let total = 0;
  for (const value of row) total += Math.exp(value - max);
  const order = Array.from(row.keys()).sort((a, b) => row[b] - row[a]).slice(0, k);
  return order.map((index) => ({
    label: labels[index] ?? String(index),
    index,
    score: Math.exp(row[index] - max) / total,
  }));
}

/**
 * Builds the handler around already-loaded models (or a loader) and an image probe.
 * {@link import("./mod.ts").createHandler} wraps it with model loading by path.
 *
 * @example
 * ```ts ignore
 * import { createServingHandler } from "./handler.ts";
 * const handler = createServingHandler({ models: [servedModel], probe: readImageHeader });
 * Deno.serve({ port: 8000 }, handler);
 * ```
 */
export function createServingHandler(options: ServingHandlerOptions): EdgeVitHandler {
  const limits: HandlerLimits = { ...DEFAULT_LIMITS };
  for (const key of Object.keys(DEFAULT_LIMITS) as (keyof HandlerLimits)[]) {
    const value = options[key];
    if (value !== undefined) limits[key] = value;
  }
  const metrics = options.metrics ?? new ServerMetrics();
  const apiKey = options.apiKey ?? null;
  const entries = new Map<string, Entry>();
  let defaultName = "";
  let readyState: "loading" | "ready" | "failed" = "loading";
  let loadError = "";
  let draining = false;
  let inFlight = 0;
  let settledWaiters: (() => void)[] = [];
  /** Admitted classify requests that have not yet submitted all their images. */
  let preparing = 0;
  const donePreparing = () => {
    preparing--;
    for (const entry of entries.values()) entry.batcher.poke();
  };

  metrics.queueDepth.collect(() =>
    [...entries.values()].map((entry) => [{ model: entry.model.name }, entry.batcher.depth])
  );
  metrics.inFlight.collect(() => [[{}, inFlight]]);

  const addModel = (model: ServedModel) => {
    if (entries.has(model.name)) {
      throw new EdgeVitError("invalid_argument", `two models are named "${model.name}"`);
    }
    const batcher = new Batcher<Job, JobOutput>(
      async (jobs) => {
        const output = await model.infer(jobs.map((job) => job.image), jobs[0].options);
        const classes = model.numClasses;
        if (output.logits.length !== jobs.length * classes) {
          throw new EdgeVitError(
            "backend_failure",
            `model returned ${output.logits.length} logits for ${jobs.length} images`,
          );
        }
        return jobs.map((job, i) => ({
          logits: output.logits.slice(i * classes, (i + 1) * classes),
          tokens: output.tokensPerImage[i] ?? job.image.tokens,
        }));
      },
      {
        maxBatch: limits.maxBatch,
        maxWaitMs: limits.maxWaitMs,
        maxBatchTokens: limits.maxBatchTokens,
        maxQueue: limits.maxQueue,
      },
      (stats) => {
        metrics.batchSize.observe({ model: model.name }, stats.size);
        metrics.batchTokens.observe({ model: model.name }, stats.tokens);
        metrics.batchSeconds.observe({ model: model.name }, stats.runMs / 1000);
      },
      // Requests still being read or decoded will most likely join a batch soon.
      () => preparing,
    );
    entries.set(model.name, { model, batcher });
    if (defaultName === "") defaultName = model.name;
  };

  const ready = (async () => {
    const models = typeof options.models === "function" ? await options.models() : options.models;
    if (models.length === 0) throw new EdgeVitError("invalid_argument", "no model to serve");
    for (const model of models) addModel(model);
    if (options.warmup ?? true) { for (const model of models) await model.warmup(); }
    readyState = "ready";
  })();
  ready.catch((error) => {
    readyState = "failed";
    loadError = error instanceof Error ? error.message : String(error);
  });

  const authorized = (request: Request): boolean => {
    if (apiKey === null) return true;
    const header = request.headers.get("authorization");
    const bearer = header?.match(/^Bearer\s+(.+)$/i)?.[1];
    const given = bearer ?? request.headers.get("x-api-key");
    return given !== null && sameKey(given.trim(), apiKey);
  };

  const describeModels = () =>
    [...entries.values()].map(({ model }) => ({
      name: model.name,
      default: model.name === defaultName,
      backend: model.backend,
      precision: model.precision,
      packed: model.packed,
      numClasses: model.numClasses,
      labels: model.labels,
      ...model.describe(),
    }));

  const waitReady = async (signal: AbortSignal) => {
    if (readyState === "ready") return;
    if (readyState === "failed") {
      throw new HttpError(503, "not_ready", `the model failed to load: ${loadError}`);
    }
    await raceAbort(ready, signal).catch((error) => {
      if (signal.aborted) throw error;
      throw new HttpError(503, "not_ready", `the model failed to load: ${loadError}`);
    });
  };

  const classify = async (request: Request, url: URL, signal: AbortSignal) => {
    preparing++;
    let prepared = false;
    const finishPreparing = () => {
      if (prepared) return;
      prepared = true;
      donePreparing();
    };
    try {
      return await classifyPrepared(request, url, signal, finishPreparing);
    } finally {
      finishPreparing();
    }
  };

  const classifyPrepared = async (
    request: Request,
    url: URL,
    signal: AbortSignal,
    finishPreparing: () => void,
  ) => {
    const input = await parseClassifyBody(request, limits, signal);
    await waitReady(signal);
    const query = url.searchParams;
    const name = input.model ?? query.get("model") ?? defaultName;
    if (typeof name !== "string") {
      throw new HttpError(400, "bad_request", "model must be a string");
    }
    const entry = entries.get(name);
    if (!entry) {
      throw new HttpError(404, "model_not_found", `no model named "${name}" is loaded`);
    }
    const { model, batcher } = entry;
    const topK = Math.min(
      positiveInteger(input.topK ?? query.get("topK") ?? undefined, "topK") ?? limits.topK,
      model.numClasses,
    );
    const tokenBudget = positiveInteger(
      input.tokenBudget ?? query.get("tokenBudget") ?? undefined,
      "tokenBudget",
    );
    if (input.images.length > limits.maxImages) throw tooManyImages(limits);

    // Headers first, for every image, so an oversized image costs no decoding at all.
    for (const bytes of input.images) {
      const header = options.probe(bytes, { maxPixels: limits.maxPixels });
      // Also enforced here, so a probe that ignores limits cannot let a huge image through.
      if (header.width * header.height > limits.maxPixels) {
        throw new HttpError(
          413,
          "too_large",
          `image is ${header.width}×${header.height} = ${
            header.width * header.height
          } pixels; the limit is ${limits.maxPixels}`,
        );
      }
    }

    const inference: InferenceOptions = tokenBudget === undefined ? {} : { tokenBudget };
    const key = tokenBudget === undefined ? "" : `tokenBudget=${tokenBudget}`;
    const local = new AbortController();
    const abortLocal = () => local.abort(signal.reason);
    signal.addEventListener("abort", abortLocal, { once: true });
    const arrivals: Arrivals = batcher.expect(input.images.length);
    const pending: Promise<JobResult<JobOutput>>[] = [];
    let preprocessMs = 0;
    try {
      for (const [i, bytes] of input.images.entries()) {
        const start = performance.now();
        const image = await model.preprocess(bytes);
        const spent = performance.now() - start;
        preprocessMs += spent;
        metrics.preprocessSeconds.observe({ model: model.name }, spent / 1000);
        if (local.signal.aborted) throw local.signal.reason;
        const last = i === input.images.length - 1;
        if (last) {
          // Nothing more of this request is coming: say so before the last image is
          // queued, so a batch waiting only for us may leave the moment it is. (The
          // batcher resumes on a microtask, after the synchronous submit below.)
          arrivals.done();
          finishPreparing();
        }
        const job = batcher.submit(
          { image, options: inference },
          { key, cost: image.tokens, signal: local.signal },
        );
        job.catch(noop);
        pending.push(job);
        // After submitting, so the batcher never sees the job as neither coming nor queued.
        if (!last) arrivals.done();
      }
      const results = await Promise.all(pending);
      metrics.images.inc({ model: model.name }, results.length);
      let queueMs = 0;
      let inferenceMs = 0;
      for (const result of results) {
        queueMs = Math.max(queueMs, result.queueMs);
        inferenceMs = Math.max(inferenceMs, result.runMs);
        metrics.queueSeconds.observe({ model: model.name }, result.queueMs / 1000);
      }
      return json({
        results: results.map((result) => ({
          top: topOf(result.value.logits, model.labels, topK),
          tokens: result.value.tokens,
        })),
        model: model.name,
        backend: model.backend,
        precision: model.precision,
        timings: {
          queueMs: round(queueMs),
          preprocessMs: round(preprocessMs),
          inferenceMs: round(inferenceMs),
        },
      });
    } catch (error) {
      // Jobs of this request still queued are of no use to anyone now.
      local.abort(error);
      throw error;
    } finally {
      arrivals.release();
      signal.removeEventListener("abort", abortLocal);
    }
  };

  const admitClassify = async (request: Request, url: URL): Promise<Response> => {
    if (draining) {
      throw new HttpError(503, "shutting_down", "the server is shutting down", {
        "retry-after": "1",
      });
    }
    if (inFlight >= limits.maxQueue) {
      throw new HttpError(
        503,
        "queue_full",
        `${limits.maxQueue} requests are already in progress; retry later`,
        { "retry-after": "1" },
      );
    }
    inFlight++;
    const deadline = new AbortController();
    const timer = setTimeout(
      () =>
        deadline.abort(
          new HttpError(
            504,
            "deadline_exceeded",
            `the request was not answered within ${limits.deadlineMs} ms`,
          ),
        ),
      limits.deadlineMs,
    );
    try {
      return await raceAbort(classify(request, url, deadline.signal), deadline.signal);
    } finally {
      clearTimeout(timer);
      inFlight--;
      if (inFlight === 0) {
        const waiters = settledWaiters;
        settledWaiters = [];
        for (const wake of waiters) wake();
      }
    }
  };

  const route = async (request: Request, url: URL, path: string): Promise<Response> => {
    const allowed = ROUTES[path];
    if (!allowed) throw new HttpError(404, "not_found", `no route ${url.pathname}`);
    if (!allowed.includes(request.method)) {
      throw new HttpError(
        405,
        "method_not_allowed",
        `${request.method} is not allowed on ${path}; use ${allowed.join(" or ")}`,
        { allow: allowed.join(", ") },
      );
    }
    if (path === "/healthz") return json({ status: "ok" });
    if (path === "/readyz") {
      if (draining) {
        throw new HttpError(503, "shutting_down", "the server is shutting down");
      }
      if (readyState !== "ready") {
        throw new HttpError(
          503,
          "not_ready",
          readyState === "failed" ? `the model failed to load: ${loadError}` : "models are loading",
          { "retry-after": "1" },
        );
      }
      return json({ status: "ready", models: [...entries.keys()] });
    }
    if (!authorized(request)) {
      throw new HttpError(
        401,
        "unauthorized",
        "a valid API key is required (Authorization: Bearer <key> or x-api-key)",
        { "www-authenticate": 'Bearer realm="edgevit"' },
      );
    }
    if (path === "/metrics") {
      return new Response(metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/v1/models") {
      if (readyState !== "ready") await waitReady(AbortSignal.timeout(limits.deadlineMs));
      return json({ models: describeModels() });
    }
    return await admitClassify(request, url);
  };

  const handler = async (request: Request): Promise<Response> => {
    const start = performance.now();
    let path = "other";
    let response: Response;
    try {
      const url = new URL(request.url);
      path = url.pathname in ROUTES ? url.pathname : "other";
      response = await route(request, url, url.pathname);
    } catch (error) {
      if (!(error instanceof HttpError) && !(error instanceof EdgeVitError)) {
        console.error("edgevit: request failed:", error);
      }
      response = errorResponse(error);
    }
    // While draining, ask keep-alive clients to reconnect (to another instance).
    if (draining) response.headers.set("connection", "close");
    const method = KNOWN_METHODS.has(request.method) ? request.method : "other";
    metrics.requests.inc({ route: path, method, status: String(response.status) });
    metrics.requestSeconds.observe({ route: path }, (performance.now() - start) / 1000);
    return response;
  };

  const drain = () => {
    draining = true;
  };

  return Object.assign(handler, {
    ready,
    metrics,
    drain,
    settled: () =>
      inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => {
        settledWaiters.push(resolve);
      }),
    async close() {
      drain();
      await ready.catch(noop);
      for (const { batcher } of entries.values()) {
        batcher.close();
        await batcher.idle();
      }
      for (const { model } of entries.values()) model.close();
    },
  });
}

/** Settles with `promise`, or rejects with the signal's reason as soon as it aborts. */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  promise.catch(noop); // the loser of the race must not become an unhandled rejection
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}
