/**
 * The dynamic batcher: images from concurrent requests wait in one queue per model
 * and run through the model together, so the per-call cost (weight reads, dispatch,
 * small GEMMs) is paid once per batch instead of once per image.
 *
 * When to start a batch (only one runs at a time per model):
 * - at once when the batch is full (`maxBatch` images or `maxBatchTokens` tokens);
 * - as soon as no other request is on its way in (being read or decoded) and a couple
 *   of event-loop turns brought nobody new; after a few batches whose turns found nobody
 *   (one client at a time) it stops taking them and only probes now and then, so a lone
 *   client never waits for company that is not coming;
 * - otherwise when the oldest image has waited `maxWaitMs`, or as long as a batch
 *   takes to run, whichever is shorter.
 * Images that arrive while a batch runs gather for the next one. Only jobs with the
 * same key (model options that must agree within a forward call, e.g. the ATS token
 * budget) share a batch; the oldest job's key goes first, so no key starves.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { HttpError } from "./http_errors.ts";

/** Event-loop turns with nobody new and nobody on the way before a partial batch leaves. */
const QUIET_TURNS = 2;
/** Batches in a row whose turns found nobody before turns are taken as not paying. */
export const BARREN_LIMIT = 8;
/**
 * While turns do not pay (one client at a time), only every this many batches probes, with
 * one turn: rarer than 1 in 100, so a lone client's p99 latency never includes a probe.
 */
const PROBE_EVERY = 128;

/** Limits of a {@link Batcher}. */
export interface BatcherOptions {
  /** Most images in one batch; 1 turns batching off. */
  maxBatch: number;
  /** Longest time the oldest queued image waits for more to join its batch. */
  maxWaitMs: number;
  /** Most patch tokens in one batch (the encoder's work); one image always fits. */
  maxBatchTokens: number;
  /** Most images waiting; one more is refused with 503 and `Retry-After`. */
  maxQueue: number;
}

/** What a batch reports when it finishes. */
export interface BatchStats {
  key: string;
  size: number;
  tokens: number;
  runMs: number;
}

/** How a job's result comes back. */
export interface JobResult<O> {
  value: O;
  /** From submission until its batch started. */
  queueMs: number;
  /** The batch's time in the model. */
  runMs: number;
  batchSize: number;
}

/** Options of {@link Batcher.submit}. */
export interface SubmitOptions {
  /** Jobs share a batch only with jobs of the same key. */
  key?: string;
  /** Tokens this job costs (counts towards `maxBatchTokens`). */
  cost?: number;
  /** Aborting removes the job if it is still queued, rejecting with `signal.reason`. */
  signal?: AbortSignal;
}

/** Hands a batch of items to the model; must return one output per item, in order. */
export type BatchRunner<I, O> = (items: I[], key: string) => Promise<O[]>;

interface Job<I, O> {
  item: I;
  key: string;
  cost: number;
  enqueuedAt: number;
  resolve: (result: JobResult<O>) => void;
  reject: (reason: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** Announced arrivals, released as they are submitted or given up. */
export interface Arrivals {
  /** One announced job arrived (was submitted) or will not come. */
  done(): void;
  /** Releases every announced job not yet done (idempotent). */
  release(): void;
}

/**
 * Gathers jobs into batches; see the module doc for the policy.
 *
 * @example
 * ```ts
 * import { Batcher } from "./batcher.ts";
 * const batcher = new Batcher<number, number>(
 *   async (items) => items.map((x) => x * 2),
 *   { maxBatch: 8, maxWaitMs: 2, maxBatchTokens: 1024, maxQueue: 64 },
 * );
 * const results = await Promise.all([1, 2, 3].map((x) => batcher.submit(x)));
 * console.log(results.map((r) => r.value)); // [2, 4, 6]
 * ```
 */
export class Batcher<I, O> {
  readonly options: BatcherOptions;
  readonly #run: BatchRunner<I, O>;
  readonly #onBatch?: (stats: BatchStats) => void;
  #queue: Job<I, O>[] = [];
  #running = false;
  #expected = 0;
  #wake: (() => void) | null = null;
  /** Gathers in a row whose turns found no company (see {@link #gather}). */
  #barren = 0;
  #sinceProbe = 0;
  #closed = false;
  #averageBatchMs = 0;
  #idleWaiters: (() => void)[] = [];

  readonly #incoming?: () => number;

  /**
   * @param run hands a batch to the model
   * @param options limits
   * @param onBatch called after each batch (metrics)
   * @param incoming how many jobs are on their way beyond those announced with
   *   {@link expect} (e.g. requests whose bodies are still being read); call
   *   {@link poke} when it drops
   */
  constructor(
    run: BatchRunner<I, O>,
    options: BatcherOptions,
    onBatch?: (stats: BatchStats) => void,
    incoming?: () => number,
  ) {
    for (const [name, value] of Object.entries(options)) {
      if (!(value >= 0) || (name !== "maxWaitMs" && !(value >= 1))) {
        throw new RangeError(`batcher option ${name} must be positive, got ${value}`);
      }
    }
    this.#run = run;
    this.options = { ...options };
    this.#onBatch = onBatch;
    this.#incoming = incoming;
  }

  /** Re-evaluates a waiting batch (call when the `incoming` count drops). */
  poke(): void {
    this.#pump();
  }

  /** Images waiting (not yet in a running batch). */
  get depth(): number {
    return this.#queue.length;
  }

  /** Whether a batch is running. */
  get busy(): boolean {
    return this.#running;
  }

  /**
   * Announces `count` jobs on their way (their requests are being read or decoded), so
   * a partial batch waits up to `maxWaitMs` for them instead of leaving at once. Call
   * `done()` right after submitting each one, and `release()` when giving up.
   */
  expect(count: number): Arrivals {
    let left = count;
    this.#expected += left;
    return {
      done: () => {
        if (left <= 0) return;
        left--;
        this.#expected--;
        this.#pump();
      },
      release: () => {
        if (left <= 0) return;
        this.#expected -= left;
        left = 0;
        this.#pump();
      },
    };
  }

  /**
   * Queues one job and resolves with its output once its batch has run.
   *
   * @throws {HttpError} 503 `queue_full` (with `Retry-After`) or `shutting_down`
   */
  submit(item: I, options: SubmitOptions = {}): Promise<JobResult<O>> {
    if (this.#closed) {
      return Promise.reject(
        new HttpError(503, "shutting_down", "the server is shutting down", { "retry-after": "1" }),
      );
    }
    if (options.signal?.aborted) return Promise.reject(options.signal.reason);
    if (this.#queue.length >= this.options.maxQueue) {
      return Promise.reject(
        new HttpError(
          503,
          "queue_full",
          `the batch queue is full (${this.options.maxQueue} images); retry later`,
          { "retry-after": String(this.#retryAfterSeconds()) },
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const job: Job<I, O> = {
        item,
        key: options.key ?? "",
        cost: Math.max(0, options.cost ?? 1),
        enqueuedAt: performance.now(),
        resolve,
        reject,
        signal: options.signal,
      };
      if (job.signal) {
        job.onAbort = () => {
          const index = this.#queue.indexOf(job);
          if (index < 0) return; // already running: its batch finishes regardless
          this.#queue.splice(index, 1);
          reject(job.signal!.reason);
          this.#pump();
        };
        job.signal.addEventListener("abort", job.onAbort, { once: true });
      }
      this.#queue.push(job);
      this.#pump();
    });
  }

  /** Refuses new jobs; queued ones still run. Await {@link idle} to know when they have. */
  close(): void {
    this.#closed = true;
    this.#pump();
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.#running && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #retryAfterSeconds(): number {
    const batches = Math.ceil(this.#queue.length / this.options.maxBatch) + 1;
    return Math.max(1, Math.ceil((batches * this.#averageBatchMs) / 1000));
  }

  #pump(): void {
    if (this.#running) {
      this.#wakeUp();
      return;
    }
    if (this.#queue.length === 0) {
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const wake of waiters) wake();
      return;
    }
    this.#running = true;
    void this.#cycle();
  }

  async #cycle(): Promise<void> {
    try {
      const { batch, tokens } = await this.#gather();
      if (batch.length > 0) await this.#execute(batch, tokens);
    } finally {
      this.#running = false;
      this.#pump();
    }
  }

  /** The batch the oldest job would lead now, and whether it can take no more. */
  #select(): { batch: Job<I, O>[]; tokens: number; full: boolean } {
    const head = this.#queue[0];
    const batch: Job<I, O>[] = [];
    let tokens = 0;
    for (const job of this.#queue) {
      if (job.key !== head.key) continue;
      if (batch.length > 0 && tokens + job.cost > this.options.maxBatchTokens) {
        return { batch, tokens, full: true };
      }
      batch.push(job);
      tokens += job.cost;
      if (batch.length >= this.options.maxBatch) return { batch, tokens, full: true };
    }
    return { batch, tokens, full: false };
  }

  /**
   * Waits for company, then takes the batch out of the queue. While requests are on
   * their way in (being read or decoded) it sleeps until one is submitted or given up
   * (no spinning: the CPU is theirs). When none is, it yields a turn or two of the
   * event loop, because Deno hands the handler about one new request per turn and none
   * while a batch computes, so requests that queued up in the socket during the last
   * batch are only seen that way. It never waits past `maxWaitMs`, nor past the time a
   * batch takes to run: by then the next batch would have served the latecomers.
   */
  async #gather(): Promise<{ batch: Job<I, O>[]; tokens: number }> {
    let quiet = 0;
    let turned = false;
    let found = false;
    // A turn costs little on an idle machine but can take ~0.3 ms on a loaded one, so
    // when recent turns found nobody (one client at a time) only an occasional batch
    // probes; any sign of company turns them back on.
    const looking = this.#barren < BARREN_LIMIT || this.#queue.length > 1;
    const probe = looking || ++this.#sinceProbe >= PROBE_EVERY;
    const turnsWanted = looking ? QUIET_TURNS : 1;
    if (probe) this.#sinceProbe = 0;
    while (true) {
      if (this.#queue.length === 0) return { batch: [], tokens: 0 };
      const { batch, tokens, full } = this.#select();
      const waited = performance.now() - this.#queue[0].enqueuedAt;
      const coming = this.#coming();
      const patience = Math.min(this.options.maxWaitMs, this.#averageBatchMs || Infinity);
      const settled = coming === 0 && (quiet >= turnsWanted || !probe);
      if (full || settled || this.#closed || waited >= patience) {
        if (found || batch.length > 1) this.#barren = 0;
        else if (turned) this.#barren++;
        const chosen = new Set(batch);
        this.#queue = this.#queue.filter((job) => !chosen.has(job));
        for (const job of batch) {
          if (job.onAbort) job.signal!.removeEventListener("abort", job.onAbort);
        }
        return { batch, tokens };
      }
      if (coming > 0) {
        await this.#sleep(patience - waited);
        quiet = 0;
      } else {
        const queued = this.#queue.length;
        await this.#turn();
        turned = true;
        const news = this.#queue.length !== queued || this.#coming() > 0;
        if (news) found = true;
        quiet = news ? 0 : quiet + 1;
      }
    }
  }

  #coming(): number {
    return this.#expected + (this.#incoming?.() ?? 0);
  }

  /** Sleeps until {@link #wakeUp} (a submission, an arrival given up) or `ms` pass. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.#wake === done) this.#wake = null;
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.#wake = done;
    });
  }

  #wakeUp(): void {
    this.#wake?.();
  }

  /**
   * Resolves after one event-loop turn with I/O polled in between (~10 µs). Not a
   * timer (clamped to ≥ 1 ms) nor a MessageChannel (measured at ~2.5 ms per round trip
   * while the server is busy).
   */
  #turn(): Promise<void> {
    return new Promise((resolve) => setImmediate(resolve));
  }

  async #execute(batch: Job<I, O>[], tokens: number): Promise<void> {
    const start = performance.now();
    try {
      const outputs = await this.#run(batch.map((job) => job.item), batch[0].key);
      if (outputs.length !== batch.length) {
        throw new Error(`batch runner returned ${outputs.length} outputs for ${batch.length}`);
      }
      const runMs = performance.now() - start;
      this.#averageBatchMs = this.#averageBatchMs === 0
        ? runMs
        : 0.8 * this.#averageBatchMs + 0.2 * runMs;
      this.#onBatch?.({ key: batch[0].key, size: batch.length, tokens, runMs });
      batch.forEach((job, i) =>
        job.resolve({
          value: outputs[i],
          queueMs: start - job.enqueuedAt,
          runMs,
          batchSize: batch.length,
        })
      );
    } catch (error) {
      for (const job of batch) job.reject(error);
    }
  }
}
