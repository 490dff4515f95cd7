/**
 * Load generator for the edge service. Starts `src/server/main.ts` twice as child
 * processes on 127.0.0.1, one with batching off (`--max-batch 1`) and one with it on,
 * then sends a bounded number of classify requests from 1, 8 and 32 concurrent clients
 * over loopback, alternating between the two servers trial by trial so both see the
 * same background load, and prints the median throughput, p50 and p99 latency and
 * mean batch size per level. It stops by itself.
 *
 *     deno task bench:load [--model DIR] [--backend wasm] [--precision f32|int8]
 *       [--clients 1,8,32] [--requests 1000] [--trials 3] [--max-batch 16] [--max-wait-ms 2]
 *
 * Without `--model` it serves the server's default model (models/patchmerger-fmnist)
 * when present, else a stand-in with vit-fmnist's geometry and random weights (speed
 * does not depend on the weights' values), written to a temporary folder.
 *
 * @module
 */

import encodePng from "@jsquash/png/encode.js";
import process from "node:process";
import { serializeSafetensors } from "../src/loaders/safetensors.ts";
import type { Precision } from "../src/backends/backend.ts";
import { type BackendChoice, loadModel } from "../src/model.ts";
import { DEFAULT_MODEL } from "../src/server/config.ts";

interface Options {
  model: string | null;
  backend: string;
  precision: string;
  clients: number[];
  requests: number;
  trials: number;
  maxBatch: number;
  maxWaitMs: number;
}

function parseArgs(args: string[]): Options {
  const options: Options = {
    model: null,
    backend: "wasm",
    precision: "f32",
    clients: [1, 8, 32],
    requests: 1000,
    trials: 3,
    maxBatch: 16,
    maxWaitMs: 2,
  };
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split("=", 2);
    const value = inline ?? args[++i];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    switch (flag) {
      case "--model":
        options.model = value;
        break;
      case "--backend":
        options.backend = value;
        break;
      case "--precision":
        options.precision = value;
        break;
      case "--clients":
        options.clients = value.split(",").map(Number);
        break;
      case "--requests":
        options.requests = Number(value);
        break;
      case "--trials":
        options.trials = Number(value);
        break;
      case "--max-batch":
        options.maxBatch = Number(value);
        break;
      case "--max-wait-ms":
        options.maxWaitMs = Number(value);
        break;
      default:
        throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!(options.requests > 0 && options.requests <= 100_000)) {
    throw new Error("--requests must be between 1 and 100000 (the load is bounded)");
  }
  if (!(options.trials >= 1 && options.trials <= 20)) throw new Error("--trials must be 1…20");
  return options;
}

/** models/vit-fmnist's first-round geometry, for the stand-in. */
const FMNIST_VIT = {
  image_size: [28, 28],
  patch_size: 4,
  pool: "cls",
  num_classes: 10,
  channels: 1,
  dim: 64,
  depth: 4,
  heads: 4,
  dim_head: 16,
  mlp_dim: 128,
};

/** Writes a vit-pytorch ViT with vit-fmnist's first-round geometry and random weights. */
export async function writeStandIn(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-standin-" });
  const { dim, depth, heads, dim_head: headDim, mlp_dim: mlp, channels, num_classes } = FMNIST_VIT;
  const patchDim = channels * FMNIST_VIT.patch_size ** 2;
  const tokens = (28 / FMNIST_VIT.patch_size) ** 2 + 1;
  let seed = 12345;
  const random = (n: number, scale: number, offset = 0) =>
    Float32Array.from({ length: n }, () => {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      return offset + scale * (seed / 2 ** 32 - 0.5);
    });
  const t = (shape: number[], scale = 0.2, offset = 0) => ({
    dtype: "F32" as const,
    shape,
    data: random(shape.reduce((a, b) => a * b, 1), scale, offset),
  });
  const tensors: Record<string, ReturnType<typeof t>> = {
    cls_token: t([1, dim]),
    pos_embedding: t([tokens, dim]),
    "to_patch_embedding.1.weight": t([patchDim], 0.1, 1),
    "to_patch_embedding.1.bias": t([patchDim]),
    "to_patch_embedding.2.weight": t([dim, patchDim]),
    "to_patch_embedding.2.bias": t([dim]),
    "to_patch_embedding.3.weight": t([dim], 0.1, 1),
    "to_patch_embedding.3.bias": t([dim]),
    "transformer.norm.weight": t([dim], 0.1, 1),
    "transformer.norm.bias": t([dim]),
    "mlp_head.weight": t([num_classes, dim]),
    "mlp_head.bias": t([num_classes]),
  };
  const inner = heads * headDim;
  for (let i = 0; i < depth; i++) {
    const p = `transformer.layers.${i}`;
    tensors[`${p}.0.norm.weight`] = t([dim], 0.1, 1);
    tensors[`${p}.0.norm.bias`] = t([dim]);
    tensors[`${p}.0.to_qkv.weight`] = t([3 * inner, dim]);
    tensors[`${p}.0.to_out.0.weight`] = t([dim, inner]);
    tensors[`${p}.0.to_out.0.bias`] = t([dim]);
    tensors[`${p}.1.net.0.weight`] = t([dim], 0.1, 1);
    tensors[`${p}.1.net.0.bias`] = t([dim]);
    tensors[`${p}.1.net.1.weight`] = t([mlp, dim]);
    tensors[`${p}.1.net.1.bias`] = t([mlp]);
    tensors[`${p}.1.net.4.weight`] = t([dim, mlp]);
    tensors[`${p}.1.net.4.bias`] = t([dim]);
  }
  await Deno.writeFile(`${dir}/model.safetensors`, serializeSafetensors(tensors));
  await Deno.writeTextFile(
    `${dir}/config.json`,
    JSON.stringify({
      library: "vit-pytorch",
      architecture: "ViT",
      kwargs: FMNIST_VIT,
      preprocess: { channels: 1, mean: [0.286], std: [0.353] },
    }),
  );
  return dir;
}

interface Server {
  child: Deno.ChildProcess;
  base: string;
}

async function startServer(options: Options, model: string, maxBatch: number): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      new URL("../src/server/main.ts", import.meta.url).pathname,
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--model",
      model,
      "--backend",
      options.backend,
      "--precision",
      options.precision,
      "--max-batch",
      String(maxBatch),
      "--max-wait-ms",
      String(options.maxWaitMs),
      "--max-queue",
      "1024",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port = 0;
  while (!port) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`server exited before listening:\n${text}`);
    text += value;
    port = Number(text.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//)?.[1] ?? 0);
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    const response = await fetch(`${base}/readyz`);
    await response.body?.cancel();
    if (response.ok) return { child, base };
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error("server never became ready");
}

async function stopServer(server: Server): Promise<void> {
  server.child.kill("SIGTERM");
  const status = await server.child.status;
  if (status.code !== 0) throw new Error(`server exited with ${status.code}`);
}

/** A deterministic test image at the model's input size (or 64×64 for any-size models). */
async function makeImage(base: string): Promise<Uint8Array<ArrayBuffer>> {
  const models = await (await fetch(`${base}/v1/models`)).json();
  const size = models.models[0].inputSize ?? { height: 64, width: 64 };
  const { height, width } = size;
  const data = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      const inside = Math.abs(x - width / 2) < width / 4 && Math.abs(y - height / 2) < height / 3;
      data[i] = data[i + 1] = data[i + 2] = inside ? 200 : 10;
      data[i + 3] = 255;
    }
  }
  return new Uint8Array(await encodePng({ data, width, height, colorSpace: "srgb" } as ImageData));
}

/** CPU time (user + system) this process has used, in ms. */
function selfCpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

/**
 * The server's batch counters and CPU time, from /metrics. Wall-clock figures on a
 * shared machine mostly measure the scheduler; CPU time per request measures the
 * server's own work.
 */
async function serverStats(base: string): Promise<{ sum: number; count: number; cpuMs: number }> {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  let count = 0;
  let cpuMs = NaN;
  for (const line of text.split("\n")) {
    const value = Number(line.split(" ")[1]);
    if (line.startsWith("edgevit_batch_size_sum")) sum += value;
    if (line.startsWith("edgevit_batch_size_count")) count += value;
    if (line.startsWith("process_cpu_seconds_total ")) cpuMs = value * 1000;
  }
  return { sum, count, cpuMs };
}

interface Level {
  batching: boolean;
  clients: number;
  requests: number;
  seconds: number;
  throughput: number;
  p50: number;
  p99: number;
  meanBatch: number;
  /** Server CPU time per request, ms. */
  serverCpu: number;
  /** p99 of the server's own timings (queue + preprocess + inference), ms. */
  serverP99: number;
  /** This load generator's own CPU time per request, ms (it shares the machine's cores). */
  clientCpu: number;
  errors: number;
}

function percentile(sorted: number[], p: number): number {
  const index = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, index)];
}

async function runLevel(
  server: Server,
  image: Uint8Array<ArrayBuffer>,
  clients: number,
  requests: number,
  batching: boolean,
): Promise<Level> {
  const base = server.base;
  const before = await serverStats(base);
  const latencies: number[] = [];
  const served: number[] = [];
  let errors = 0;
  let next = 0;
  const clientCpu0 = selfCpuMs();
  const start = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next < requests) {
      next++;
      const sent = performance.now();
      const response = await fetch(`${base}/v1/classify`, {
        method: "POST",
        headers: { "content-type": "image/png" },
        body: image,
      });
      const body = await response.json();
      latencies.push(performance.now() - sent);
      if (!response.ok) {
        errors++;
        continue;
      }
      const { queueMs, preprocessMs, inferenceMs } = body.timings;
      served.push(queueMs + preprocessMs + inferenceMs);
    }
  }));
  const seconds = (performance.now() - start) / 1000;
  const clientCpu = (selfCpuMs() - clientCpu0) / requests;
  const after = await serverStats(base);
  const serverCpu = (after.cpuMs - before.cpuMs) / requests;
  latencies.sort((a, b) => a - b);
  served.sort((a, b) => a - b);
  return {
    batching,
    clients,
    requests,
    seconds,
    throughput: requests / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    meanBatch: (after.sum - before.sum) / Math.max(1, after.count - before.count),
    serverCpu,
    serverP99: percentile(served, 99),
    clientCpu,
    errors,
  };
}

/**
 * The model alone: CPU ms per image of a forward at batch 1, 4 and 16 (what batching can
 * save at most, before HTTP, decoding and JSON take their share). Every size runs until
 * the wasm has tiered up (V8 compiles it on background threads, which count in process
 * CPU time) before any is timed, then the sizes take turns, so neither compilation nor
 * a change in background load lands on one size only.
 */
async function forwardCost(
  model: string,
  backend: string,
  precision: string,
): Promise<Record<number, number>> {
  const loaded = await loadModel(model, {
    backend: backend as BackendChoice,
    precision: precision as Precision,
  });
  const { channels } = loaded.config;
  const { height, width } = loaded.config.inputSize ?? { height: 64, width: 64 };
  const sizes = [1, 4, 16];
  const spent: Record<number, number> = {};
  const images: Record<number, number> = {};
  try {
    const inputs = sizes.map((n) => ({
      n,
      pixels: new Float32Array(n * channels * height * width),
      shape: [n, channels, height, width] as [number, number, number, number],
    }));
    for (let round = 0; round < 2; round++) {
      for (const { n, pixels, shape } of inputs) {
        for (let i = 0; i < Math.ceil(800 / n); i++) await loaded.forward(pixels, shape);
      }
    }
    for (let round = 0; round < 4; round++) {
      for (const { n, pixels, shape } of inputs) {
        const runs = Math.ceil(240 / n);
        const before = selfCpuMs();
        for (let i = 0; i < runs; i++) await loaded.forward(pixels, shape);
        spent[n] = (spent[n] ?? 0) + selfCpuMs() - before;
        images[n] = (images[n] ?? 0) + runs * n;
      }
    }
  } finally {
    loaded.close();
  }
  return Object.fromEntries(sizes.map((n) => [n, spent[n] / images[n]]));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function main() {
  const options = parseArgs(Deno.args);
  let model = options.model;
  let standIn: string | null = null;
  if (!model) {
    try {
      await Deno.stat(`models/${DEFAULT_MODEL}/config.json`);
      model = `models/${DEFAULT_MODEL}`;
    } catch {
      standIn = await writeStandIn();
      model = standIn;
    }
  }
  console.log(
    `model ${standIn ? "stand-in (vit-fmnist geometry, random weights)" : model}, ` +
      `backend ${options.backend}, precision ${options.precision}, ${options.requests} requests per level and trial, ` +
      `${options.trials} trials; batching on = --max-batch ${options.maxBatch} ` +
      `--max-wait-ms ${options.maxWaitMs}, off = --max-batch 1`,
  );
  const servers: Server[] = [];
  try {
    const costs = await forwardCost(model, options.backend, options.precision);
    console.log(
      `forward alone, CPU ms per image: ${
        Object.entries(costs).map(([n, ms]) => `batch ${n}: ${ms.toFixed(3)}`).join(", ")
      }`,
    );
    servers.push(await startServer(options, model, 1));
    servers.push(await startServer(options, model, options.maxBatch));
    const image = await makeImage(servers[0].base);
    for (const server of servers) {
      await runLevel(server, image, 8, Math.min(300, options.requests), false); // warm-up
    }
    const runs: Level[] = [];
    for (let trial = 0; trial < options.trials; trial++) {
      for (const clients of options.clients) {
        // Alternate which mode goes first, so neither always follows the other.
        const order = trial % 2 === 0 ? [0, 1] : [1, 0];
        for (const index of order) {
          const level = await runLevel(
            servers[index],
            image,
            clients,
            options.requests,
            index === 1,
          );
          runs.push(level);
          console.log(
            `trial ${trial + 1} batching ${level.batching ? "on " : "off"} clients ` +
              `${String(clients).padStart(2)}: ${level.throughput.toFixed(1)} req/s, ` +
              `p50 ${level.p50.toFixed(2)} ms, p99 ${level.p99.toFixed(2)} ms, ` +
              `mean batch ${level.meanBatch.toFixed(2)}, ` +
              `server CPU ${level.serverCpu.toFixed(3)} ms/request, ` +
              `client CPU ${level.clientCpu.toFixed(3)} ms/request` +
              (level.errors ? `, ${level.errors} errors` : ""),
          );
        }
      }
    }
    const summary = (clients: number, batching: boolean) => {
      const levels = runs.filter((r) => r.clients === clients && r.batching === batching);
      return {
        throughput: median(levels.map((r) => r.throughput)),
        p50: median(levels.map((r) => r.p50)),
        p99: median(levels.map((r) => r.p99)),
        meanBatch: median(levels.map((r) => r.meanBatch)),
        serverCpu: median(levels.map((r) => r.serverCpu)),
        serverP99: median(levels.map((r) => r.serverP99)),
        clientCpu: median(levels.map((r) => r.clientCpu)),
        errors: levels.reduce((total, r) => total + r.errors, 0),
      };
    };
    console.log(`\nMedians of ${options.trials} trials:\n`);
    console.log(
      "| clients | batching | req/s | p50 ms | p99 ms | server p99 ms | mean batch | " +
        "server CPU ms/request | client CPU ms/request |",
    );
    console.log(
      "| ------: | -------- | ----: | -----: | -----: | ------------: | ---------: | " +
        "--------------------: | --------------------: |",
    );
    for (const clients of options.clients) {
      for (const batching of [false, true]) {
        const m = summary(clients, batching);
        console.log(
          `| ${clients} | ${batching ? "on" : "off"} | ${m.throughput.toFixed(0)} | ` +
            `${m.p50.toFixed(2)} | ${m.p99.toFixed(2)} | ${m.serverP99.toFixed(2)} | ` +
            `${m.meanBatch.toFixed(2)} | ` +
            `${m.serverCpu.toFixed(3)} | ${m.clientCpu.toFixed(3)} |`,
        );
      }
    }
    console.log("");
    for (const clients of options.clients) {
      const off = summary(clients, false);
      const on = summary(clients, true);
      console.log(
        `${clients} clients, batching on vs off: throughput ×${
          (on.throughput / off.throughput).toFixed(2)
        }, p50 ×${(on.p50 / off.p50).toFixed(2)}, p99 ×${(on.p99 / off.p99).toFixed(2)}, ` +
          `server p99 ×${(on.serverP99 / off.serverP99).toFixed(2)}, ` +
          `server CPU per request ×${(on.serverCpu / off.serverCpu).toFixed(2)}`,
      );
    }
  } finally {
    for (const server of servers) await stopServer(server);
    if (standIn) await Deno.remove(standIn, { recursive: true });
  }
}

if (import.meta.main) await main();
