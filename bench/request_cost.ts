/**
 * What one classify request costs the server's thread, split into the model's forward and
 * everything else, batching off and on (issue 7). The handler runs in this process, without
 * HTTP, fed PNG requests by `--clients` concurrent callers; CPU ms per request are measured
 * for the real model and for the same model whose forward is replaced by a stub that
 * returns zeros at once (same decoding, batcher, metrics and JSON), with `--max-batch 1`
 * and 16. The four handlers take turns, round by round, so background load hits all alike.
 *
 *     deno run --allow-read --allow-env bench/request_cost.ts [--model DIR]
 *       [--precision f32|int8] [--clients 32] [--requests 2000] [--rounds 4]
 *
 * @module
 */

import encodePng from "@jsquash/png/encode.js";
import process from "node:process";
import { DEFAULT_MODEL } from "../src/server/config.ts";
import type { ServedModel } from "../src/server/engine.ts";
import { createHandler, type EdgeVitHandler } from "../src/server/handler.ts";
import { loadServedModel } from "../src/server/model_loader.ts";

function option(flag: string, fallback: string): string {
  const i = Deno.args.indexOf(flag);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

/** The model with its forward replaced by zeros: what a request costs besides the model. */
function stubbed(model: ServedModel): ServedModel {
  return {
    name: model.name,
    numClasses: model.numClasses,
    labels: model.labels,
    backend: model.backend,
    precision: model.precision,
    packed: model.packed,
    describe: () => model.describe(),
    preprocess: (bytes) => model.preprocess(bytes),
    infer: (images) =>
      Promise.resolve({
        logits: new Float32Array(images.length * model.numClasses),
        tokensPerImage: images.map((image) => image.tokens),
      }),
    warmup: () => Promise.resolve(),
    close: () => model.close(),
  };
}

async function testImage(height: number, width: number): Promise<Uint8Array<ArrayBuffer>> {
  const data = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < data.length; i += 4) {
    data[i] = data[i + 1] = data[i + 2] = (i * 7) % 200;
    data[i + 3] = 255;
  }
  return new Uint8Array(await encodePng({ data, width, height, colorSpace: "srgb" } as ImageData));
}

async function drive(
  handler: EdgeVitHandler,
  image: Uint8Array<ArrayBuffer>,
  clients: number,
  requests: number,
): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (next++ < requests) {
      const response = await handler(
        new Request("http://127.0.0.1/v1/classify", {
          method: "POST",
          headers: { "content-type": "image/png" },
          body: image,
        }),
      );
      const body = await response.json();
      if (!response.ok) throw new Error(`classify failed: ${JSON.stringify(body)}`);
    }
  }));
}

async function main() {
  const dir = option("--model", `models/${DEFAULT_MODEL}`);
  const precision = option("--precision", "f32");
  const clients = Number(option("--clients", "32"));
  const requests = Number(option("--requests", "2000"));
  const rounds = Number(option("--rounds", "4"));
  const configs: { label: string; stub: boolean; maxBatch: number }[] = [
    { label: "model, batching off", stub: false, maxBatch: 1 },
    { label: "model, batching on", stub: false, maxBatch: 16 },
    { label: "stub, batching off", stub: true, maxBatch: 1 },
    { label: "stub, batching on", stub: true, maxBatch: 16 },
  ];
  const handlers: EdgeVitHandler[] = [];
  let image: Uint8Array<ArrayBuffer> | null = null;
  for (const config of configs) {
    const model = await loadServedModel(dir, { name: "m", backend: "wasm", precision });
    const size = model.describe().inputSize as { height: number; width: number } | null;
    image ??= await testImage(size?.height ?? 64, size?.width ?? 64);
    const handler = createHandler({
      models: [config.stub ? stubbed(model) : model],
      maxBatch: config.maxBatch,
      maxQueue: 1024,
    });
    await handler.ready;
    await drive(handler, image, clients, requests); // warm-up, past the wasm tier-up
    handlers.push(handler);
  }
  const spent = configs.map(() => 0);
  try {
    for (let round = 0; round < rounds; round++) {
      for (const [i, handler] of handlers.entries()) {
        const before = cpuMs();
        await drive(handler, image!, clients, requests);
        spent[i] += cpuMs() - before;
      }
    }
  } finally {
    for (const handler of handlers) await handler.close();
  }
  const perRequest = spent.map((ms) => ms / (rounds * requests));
  console.log(
    `${dir}, ${precision}, ${clients} concurrent callers, ${rounds}×${requests} requests ` +
      `per handler, in-process (no HTTP): CPU ms per request\n`,
  );
  console.log("| handler | batching off | batching on | on / off |");
  console.log("| ------- | -----------: | ----------: | -------: |");
  const row = (label: string, off: number, on: number) =>
    console.log(`| ${label} | ${off.toFixed(3)} | ${on.toFixed(3)} | ×${(on / off).toFixed(2)} |`);
  row("whole request", perRequest[0], perRequest[1]);
  row("all but the forward (stub)", perRequest[2], perRequest[3]);
  row("forward (difference)", perRequest[0] - perRequest[2], perRequest[1] - perRequest[3]);
}

if (import.meta.main) await main();
