/**
 * The parity fixtures (../shared/fixtures/parity and this repository's own), read
 * generically from each case.json, and the one comparison every backend's parity test
 * runs: logits within the case's atol, ATS token ids exactly, and for packed cases each
 * image alone equal to its row of the packed result.
 */

import assert from "node:assert/strict";
import { describeCheckpoint, parseConfigJson } from "../src/loaders/config.ts";
import { parseSafetensors, toFloat32, toInt32 } from "../src/loaders/safetensors.ts";
import type { Model } from "../src/model.ts";
import { findArchitecture } from "../src/models/registry.ts";

/** The shared fixtures, and this repository's own (distilled DeiT, made by PyTorch too). */
export const ROOTS = [
  new URL("../../shared/fixtures/parity/", import.meta.url),
  new URL("./fixtures/parity/", import.meta.url),
];

export interface ParityCase {
  name: string;
  dir: URL;
  library: string;
  architecture: string;
  registered: boolean;
  spec: {
    call: "forward" | "forwardPacked";
    input?: string;
    images?: string[];
    groups?: number[][];
    output: string;
    atol: number;
  };
}

export function readCases(): ParityCase[] {
  const cases: ParityCase[] = [];
  for (const root of ROOTS) {
    for (const entry of Deno.readDirSync(root)) {
      if (entry.isDirectory) cases.push(readCase(root, entry.name));
    }
  }
  return cases.sort((a, b) => a.name.localeCompare(b.name));
}

function readCase(root: URL, name: string): ParityCase {
  const dir = new URL(`${name}/`, root);
  const config = parseConfigJson(Deno.readTextFileSync(new URL("config.json", dir)));
  const info = describeCheckpoint(config, name);
  return {
    name,
    dir,
    library: info.library,
    architecture: info.architecture,
    registered: findArchitecture(info.library, info.architecture) !== undefined,
    spec: JSON.parse(Deno.readTextFileSync(new URL("case.json", dir))),
  };
}

function readTensors(url: URL) {
  return parseSafetensors(Deno.readFileSync(url), url.pathname).tensors;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length, "logit counts differ");
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Runs case `c` on `model` and asserts it matches the fixture's expected outputs. */
export async function assertMatchesFixture(model: Model, c: ParityCase): Promise<void> {
  const inputs = readTensors(new URL("inputs.safetensors", c.dir));
  const expectedTensors = readTensors(new URL("expected.safetensors", c.dir));
  const expected = toFloat32(expectedTensors.get(c.spec.output)!);
  if (c.spec.call === "forward") {
    const input = inputs.get(c.spec.input!)!;
    const output = await model.run(toFloat32(input), input.shape, { returnTokenIds: true });
    const diff = maxAbsDiff(output.logits, expected);
    assert.ok(diff <= c.spec.atol, `max |Δ| ${diff} > atol ${c.spec.atol}`);
    const expectedIds = expectedTensors.get("token_ids");
    if (expectedIds) {
      assert.ok(output.tokenIds, "the model returned no token ids");
      const last = output.tokenIds[output.tokenIds.length - 1];
      const ids = toInt32(expectedIds);
      const [images, width] = expectedIds.shape;
      for (let i = 0; i < images; i++) {
        const row = Array.from(ids.subarray(i * width, (i + 1) * width)).filter((id) => id >= 0);
        assert.deepEqual(Array.from(last[i]), row, `token ids of image ${i}`);
      }
    }
  } else {
    const images = c.spec.images!.map((name) => {
      const tensor = inputs.get(name)!;
      return { data: toFloat32(tensor), height: tensor.shape[1], width: tensor.shape[2] };
    });
    const packed = await model.forwardPacked(images, c.spec.groups);
    const diff = maxAbsDiff(packed, expected);
    assert.ok(diff <= c.spec.atol, `packed: max |Δ| ${diff} > atol ${c.spec.atol}`);
    const classes = model.numClasses;
    for (let i = 0; i < images.length; i++) {
      const alone = await model.forwardPacked([images[i]]);
      const row = expected.subarray(i * classes, (i + 1) * classes);
      const aloneDiff = maxAbsDiff(alone, row);
      assert.ok(aloneDiff <= c.spec.atol, `image ${i} alone: max |Δ| ${aloneDiff}`);
    }
  }
}
