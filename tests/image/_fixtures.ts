/**
 * Shared helpers of the image tests: the committed fixtures in
 * tests/fixtures/images/ (made by make_reference.py) and comparisons.
 *
 * @module
 */

import { hfPreprocess, plainPreprocess, timmPreprocess } from "../../src/image/preprocess.ts";
import type { PreprocessConfig } from "../../src/image/preprocess.ts";

export const FIXTURES = new URL("../fixtures/images/", import.meta.url);

// deno-lint-ignore no-explicit-any
export const REFERENCE: any = JSON.parse(
  Deno.readTextFileSync(new URL("reference.json", FIXTURES)),
);

export function fixture(name: string): Uint8Array<ArrayBuffer> {
  return Deno.readFileSync(new URL(name, FIXTURES));
}

/** Reads a gzip'd reference array. */
export async function gunzip(name: string): Promise<Uint8Array> {
  const stream = new Blob([fixture(name)]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes.slice());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Mean and max absolute difference, and the number of differing values. */
export function compare(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
): { mean: number; max: number; differing: number } {
  if (actual.length !== expected.length) {
    throw new Error(`length ${actual.length} vs ${expected.length}`);
  }
  let sum = 0, max = 0, differing = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    sum += d;
    if (d > max) max = d;
    if (d !== 0) differing++;
  }
  return { mean: sum / Math.max(1, actual.length), max, differing };
}

/** The config a loader would build for a reference pipeline case. */
// deno-lint-ignore no-explicit-any
export function configOf(entry: any): PreprocessConfig {
  if (entry.policy === "timm") return timmPreprocess(entry.config);
  if (entry.policy === "hf") return hfPreprocess(entry.config, entry.kind);
  return plainPreprocess(entry.config);
}

/** Signature + IHDR chunk (CRC not checked by the sniffer) + an empty IDAT. */
export function pngHeader(width: number, height: number, depth = 8, colorType = 2): Uint8Array {
  const out = new Uint8Array(8 + 25 + 12);
  out.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const view = new DataView(out.buffer);
  view.setUint32(8, 13);
  out.set([0x49, 0x48, 0x44, 0x52], 12);
  view.setUint32(16, width);
  view.setUint32(20, height);
  out.set([depth, colorType, 0, 0, 0], 24);
  view.setUint32(33, 0);
  out.set([0x49, 0x44, 0x41, 0x54], 37);
  return out;
}

/** CRC-32 as PNG chunks use it, bit by bit: a reference independent of src/image/png.ts. */
export function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const byte of bytes) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}
