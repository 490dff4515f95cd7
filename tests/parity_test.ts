/**
 * Every case of ../shared/fixtures/parity whose architecture is registered, run through
 * `loadModel` on the reference backend and on the wasm backend (when it exists),
 * compared with PyTorch's logits within the case's own `atol`. Cases are read
 * generically from case.json, so a newly registered architecture is picked up here
 * without touching this file.
 */

import assert from "node:assert/strict";
import { describeCheckpoint, parseConfigJson } from "../src/loaders/config.ts";
import { parseSafetensors, toFloat32, toInt32 } from "../src/loaders/safetensors.ts";
import { type BackendChoice, loadModel } from "../src/model.ts";
import { findArchitecture } from "../src/models/registry.ts";

/** The shared fixtures, and this repository's own (distilled DeiT, made by PyTorch too). */
const ROOTS = [
  new URL("../../shared/fixtures/parity/", import.meta.url),
  new URL("./fixtures/parity/", import.meta.url),
];

/**
 * Architectures the project plan names (issues 3 and 4) per library. A fixture whose
 * architecture is neither registered nor here is a surprise and fails the pending test.
 */
const PLANNED: Record<string, readonly string[]> = {
  "vit-pytorch": ["ViT", "SimpleViT", "NaViT", "ats_vit.ViT", "vit_with_patch_merger.ViT"],
  transformers: [
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
  ],
  timm: ["vit_*", "deit_*"],
};

interface ParityCase {
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

function readCases(): ParityCase[] {
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

const cases = readCases();
const backends: BackendChoice[] = ["reference"];
try {
  Deno.statSync(new URL("../src/backends/wasm/wasm_backend.ts", import.meta.url));
  backends.push("wasm");
} catch {
  // the wasm backend has not landed in this checkout; the reference run still covers parity
}

Deno.test("the parity fixtures exist and at least the classic ViT family is registered", () => {
  assert.ok(cases.length >= 7, `only ${cases.length} parity cases found`);
  for (const name of ["vitpytorch-vit-cls", "vitpytorch-vit-mean", "vitpytorch-simplevit"]) {
    assert.ok(cases.find((c) => c.name === name)?.registered, `${name} is not registered`);
  }
  for (const name of ["hf-vit", "timm-vit", "hf-deit-teacher", "timm-deit-distilled"]) {
    assert.ok(cases.find((c) => c.name === name)?.registered, `${name} is not registered`);
  }
});

Deno.test("unregistered parity cases are all planned architectures (listed as pending)", () => {
  const pending = cases.filter((c) => !c.registered);
  for (const c of pending) {
    const planned = (PLANNED[c.library] ?? []).some((name) =>
      name.endsWith("*") ? c.architecture.startsWith(name.slice(0, -1)) : name === c.architecture
    );
    assert.ok(
      planned,
      `${c.name}: ${c.library} architecture "${c.architecture}" is in no issue of the plan`,
    );
  }
  if (pending.length > 0) {
    console.log(`pending: ${pending.map((c) => `${c.name} (${c.architecture})`).join(", ")}`);
  }
});

for (const backend of backends) {
  for (const c of cases.filter((c) => c.registered)) {
    Deno.test(`${c.name} matches PyTorch within its atol on the ${backend} backend`, async () => {
      const model = await loadModel(c.dir, { backend });
      try {
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
              const row = Array.from(ids.subarray(i * width, (i + 1) * width)).filter((id) =>
                id >= 0
              );
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
      } finally {
        model.close();
      }
    });
  }
}
