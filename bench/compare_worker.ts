/**
 * One onnxruntime runner of bench/compare.ts, in its own worker. onnxruntime-web fixes
 * its thread count once per module instance, so the 1- and 2-thread runners each need
 * a fresh isolate; onnxruntime-node runs here too so every ORT runner is timed the same
 * way (inside the worker, around `session.run` only).
 *
 * Protocol: `{op: "load", runtime, threads, onnxPath}` → `{ok}`;
 * `{op: "run", pixels, shape, repeat}` → `{ok, logits, ms, cpuMs}` (per forward,
 * averaged over `repeat` back-to-back forwards); `{op: "close"}` → `{ok}`.
 * Failures answer `{ok: false, error}`.
 *
 * @module
 */

import process from "node:process";
import { loadOnnxModel, type OnnxModel } from "../src/backends/ort/ort_model.ts";

type Request =
  | { op: "load"; runtime: "ort-web" | "ort-node"; threads: number; onnxPath: string }
  | { op: "run"; pixels: Float32Array; shape: [number, number, number, number]; repeat: number }
  | { op: "close" };

interface NodeTensor {
  readonly data: unknown;
}
interface NodeSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  run(feeds: Record<string, unknown>): Promise<Record<string, NodeTensor>>;
  release(): Promise<void>;
}

let web: OnnxModel | null = null;
let node:
  | { session: NodeSession; makeTensor: (x: Float32Array, dims: number[]) => unknown }
  | null = null;

async function load(request: Extract<Request, { op: "load" }>): Promise<void> {
  if (request.runtime === "ort-web") {
    web = await loadOnnxModel(request.onnxPath, { device: "wasm", threads: request.threads });
    return;
  }
  const ort = await import("onnxruntime-node");
  const session = await ort.InferenceSession.create(request.onnxPath, {
    executionProviders: ["cpu"],
    intraOpNumThreads: request.threads,
    interOpNumThreads: 1,
    executionMode: "sequential",
    graphOptimizationLevel: "all",
  }) as unknown as NodeSession;
  node = {
    session,
    makeTensor: (x, dims) => new ort.Tensor("float32", x, dims),
  };
}

/** Process CPU time (all threads) in ms; runners take turns, so it is this runner's. */
function cpuMs(usage: { user: number; system: number }): number {
  return (usage.user + usage.system) / 1000;
}

async function run(pixels: Float32Array, shape: [number, number, number, number], repeat: number) {
  let last = await once(pixels, shape);
  let { ms, cpuMs } = last;
  for (let i = 1; i < repeat; i++) {
    last = await once(pixels, shape);
    ms += last.ms;
    cpuMs += last.cpuMs;
  }
  return { logits: last.logits, ms: ms / repeat, cpuMs: cpuMs / repeat };
}

async function once(pixels: Float32Array, shape: [number, number, number, number]) {
  if (web) {
    const cpu = process.cpuUsage();
    const start = performance.now();
    const logits = await web.forward(pixels, shape);
    const ms = performance.now() - start;
    return { logits, ms, cpuMs: cpuMs(process.cpuUsage(cpu)) };
  }
  if (node) {
    const { session, makeTensor } = node;
    const cpu = process.cpuUsage();
    const start = performance.now();
    const outputs = await session.run({ [session.inputNames[0]]: makeTensor(pixels, shape) });
    const ms = performance.now() - start;
    const used = cpuMs(process.cpuUsage(cpu));
    const name = session.outputNames.includes("logits") ? "logits" : session.outputNames[0];
    return { logits: (outputs[name].data as Float32Array).slice(), ms, cpuMs: used };
  }
  throw new Error("no model loaded");
}

// Typed by hand: the worker lib's globals clash with the window lib when bench/ is
// type-checked as one program.
const scope = self as unknown as {
  onmessage: ((event: MessageEvent<Request>) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
};

scope.onmessage = async (event: MessageEvent<Request>) => {
  const request = event.data;
  try {
    if (request.op === "load") {
      await load(request);
      scope.postMessage({ ok: true });
    } else if (request.op === "run") {
      const result = await run(request.pixels, request.shape, request.repeat ?? 1);
      scope.postMessage({ ok: true, ...result }, [result.logits.buffer as ArrayBuffer]);
    } else {
      web?.close();
      await node?.session.release();
      web = null;
      node = null;
      scope.postMessage({ ok: true });
    }
  } catch (error) {
    scope.postMessage({ ok: false, error: String(error instanceof Error ? error.message : error) });
  }
};
