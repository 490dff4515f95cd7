/**
 * Test helpers: read one parity fixture case of `../shared/fixtures/parity/` (beside the
 * repository) with the project's own safetensors reader.
 *
 * @module
 */

import type { Backend } from "../../src/backends/backend.ts";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { parseSafetensors, toFloat32, toInt32 } from "../../src/loaders/safetensors.ts";
import { WeightStore } from "../../src/loaders/weights.ts";

/** The parity fixtures folder, resolved from this file so any working directory works. */
export const PARITY_DIR = new URL("../../../shared/fixtures/parity/", import.meta.url);

/** One parity case, read from disk. */
export interface FixtureCase {
  config: { architecture: string; kwargs: Record<string, unknown> };
  case: Record<string, unknown> & { atol: number };
  /** A fresh store of the model's weights (stores track which tensors were taken). */
  weights(): WeightStore;
  input(name: string): { data: Float32Array; shape: readonly number[] };
  expected(name: string): { data: Float32Array; shape: readonly number[] };
  expectedInt(name: string): { data: Int32Array; shape: readonly number[] };
}

/** Reads the case folder `name`. */
export async function readCase(name: string): Promise<FixtureCase> {
  const dir = new URL(`${name}/`, PARITY_DIR);
  const text = (file: string) => Deno.readTextFile(new URL(file, dir));
  const bytes = (file: string) => Deno.readFile(new URL(file, dir));
  const config = JSON.parse(await text("config.json"));
  const caseJson = JSON.parse(await text("case.json"));
  const model = parseSafetensors(await bytes("model.safetensors"), `${name}/model.safetensors`);
  const inputs = parseSafetensors(await bytes("inputs.safetensors"), `${name}/inputs`);
  const expected = parseSafetensors(await bytes("expected.safetensors"), `${name}/expected`);
  const entry = (file: typeof inputs, key: string) => {
    const found = file.tensors.get(key);
    if (!found) throw new Error(`${name}: no tensor ${key}`);
    return found;
  };
  return {
    config,
    case: caseJson,
    weights: () => WeightStore.fromSafetensors(model.tensors.values(), `${name}/model`),
    input: (key) => {
      const found = entry(inputs, key);
      return { data: toFloat32(found), shape: found.shape };
    },
    expected: (key) => {
      const found = entry(expected, key);
      return { data: toFloat32(found), shape: found.shape };
    },
    expectedInt: (key) => {
      const found = entry(expected, key);
      return { data: toInt32(found), shape: found.shape };
    },
  };
}

/** Largest absolute difference of two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/**
 * The backends model tests run on: the reference, and the wasm backend once
 * `src/backends/wasm/wasm_backend.ts` exists in the checkout (it is imported lazily so
 * these tests also run where it has not landed).
 */
export async function testBackends(): Promise<[string, () => Promise<Backend>][]> {
  const backends: [string, () => Promise<Backend>][] = [
    ["reference", () => Promise.resolve(new ReferenceBackend())],
  ];
  const wasm = new URL("../../src/backends/wasm/wasm_backend.ts", import.meta.url);
  try {
    await Deno.stat(wasm);
  } catch {
    return backends;
  }
  const module = await import(wasm.href) as { WasmBackend: { create(): Promise<Backend> } };
  let shared: Promise<Backend> | null = null;
  // One instance for every test of a file: creating one compiles the module.
  backends.push(["wasm", () => shared ??= module.WasmBackend.create()]);
  return backends;
}
