/**
 * Shared pieces of the server tests: a real server on a loopback port, real encoded
 * images, and hand-made malformed ones.
 */

import encodeJpeg from "@jsquash/jpeg/encode.js";
import encodePng from "@jsquash/png/encode.js";
import encodeWebp from "@jsquash/webp/encode.js";
import {
  createHandler,
  type EdgeVitHandler,
  type HandlerOptions,
} from "../../src/server/handler.ts";

/** Bytes backed by a plain ArrayBuffer (what fetch bodies and Blobs accept). */
export type Bytes = Uint8Array<ArrayBuffer>;

/** A small real vit-pytorch ViT (32×32 RGB, patch 8, 10 classes). */
export const VIT_FIXTURE = "../shared/fixtures/parity/vitpytorch-vit-cls";
/** A small real vit-pytorch NaViT (any size up to 64×64, patch 8). */
export const NAVIT_FIXTURE = "../shared/fixtures/parity/vitpytorch-navit";

/** The backend the server tests run models on. */
export const TEST_BACKEND = "wasm";

/** A handler served by Deno.serve on 127.0.0.1 at a free port. */
export interface RunningServer {
  base: string;
  handler: EdgeVitHandler;
  close(): Promise<void>;
}

/** Starts the real handler on a loopback port and waits until its models are ready. */
export async function startServer(options: HandlerOptions): Promise<RunningServer> {
  const handler = createHandler({ models: [VIT_FIXTURE], backend: TEST_BACKEND, ...options });
  const listening = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => listening.resolve(port),
  }, handler);
  const port = await listening.promise;
  await handler.ready;
  return {
    base: `http://127.0.0.1:${port}`,
    handler,
    async close() {
      handler.drain();
      await server.shutdown();
      await handler.close();
    },
  };
}

/** Deterministic RGBA test pattern: gradients plus a seeded texture. */
export function pattern(width: number, height: number, seed: number): ImageData {
  const data = new Uint8ClampedArray(width * height * 4); // [h, w, 4]
  let state = seed * 2654435761 >>> 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      state = (state * 1664525 + 1013904223) >>> 0;
      const i = (y * width + x) * 4;
      data[i] = (x * 255) / Math.max(1, width - 1);
      data[i + 1] = (y * 255) / Math.max(1, height - 1);
      data[i + 2] = (state >>> 24) ^ (seed * 40);
      data[i + 3] = 255;
    }
  }
  return { data, width, height, colorSpace: "srgb" } as ImageData;
}

export async function png(width: number, height: number, seed = 1): Promise<Bytes> {
  return new Uint8Array(await encodePng(pattern(width, height, seed)));
}

export async function jpeg(width: number, height: number, seed = 1): Promise<Bytes> {
  return new Uint8Array(await encodeJpeg(pattern(width, height, seed), { quality: 90 }));
}

export async function webp(width: number, height: number, seed = 1): Promise<Bytes> {
  return new Uint8Array(await encodeWebp(pattern(width, height, seed)));
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * A PNG whose header claims `width × height` but carries no pixel data: a decoder that
 * trusted it would allocate width × height × 4 bytes.
 */
export function pngClaiming(width: number, height: number): Bytes {
  const out = new Uint8Array(8 + 25);
  out.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const view = new DataView(out.buffer);
  view.setUint32(8, 13);
  out.set([0x49, 0x48, 0x44, 0x52], 12); // "IHDR"
  view.setUint32(16, width);
  view.setUint32(20, height);
  out.set([8, 6, 0, 0, 0], 24); // 8-bit RGBA, no interlace
  view.setUint32(29, crc32(out.subarray(12, 29)));
  return out;
}

/** Base64 of bytes (for JSON requests). */
export function base64(bytes: Uint8Array): string {
  return bytes.toBase64();
}

/** A classify response body. */
export interface ClassifyBody {
  results: { top: { label: string; index: number; score: number }[]; tokens: number }[];
  model: string;
  backend: string;
  precision: string;
  timings: { queueMs: number; preprocessMs: number; inferenceMs: number };
}

/** POSTs one raw image and returns the parsed JSON. */
export async function classifyRaw(
  base: string,
  bytes: Uint8Array,
  type = "image/png",
  query = "",
): Promise<{ status: number; body: ClassifyBody }> {
  const response = await fetch(`${base}/v1/classify${query}`, {
    method: "POST",
    headers: { "content-type": type },
    body: bytes as Uint8Array<ArrayBuffer>,
  });
  return { status: response.status, body: await response.json() };
}

/** Reads one metric sample's value from Prometheus text (NaN when absent). */
export function metricValue(text: string, sample: string): number {
  for (const line of text.split("\n")) {
    if (line.startsWith(sample + " ")) return Number(line.slice(sample.length + 1));
  }
  return NaN;
}
