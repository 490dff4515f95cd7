/**
 * Every case of ../shared/fixtures/parity whose architecture is registered, run through
 * `loadModel` on the reference and wasm backends (tests/backends/webgpu_parity_test.ts: WebGPU),
 * compared with PyTorch's logits within the case's own `atol`. Cases are read
 * generically from case.json, so a newly registered architecture is picked up here
 * without touching this file.
 */

import assert from "node:assert/strict";
import { type BackendChoice, loadModel } from "../src/model.ts";
import { assertMatchesFixture, readCases } from "./_parity.ts";

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

const cases = readCases();
const backends: BackendChoice[] = ["reference", "wasm"];

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
        await assertMatchesFixture(model, c);
      } finally {
        model.close();
      }
    });
  }
}
