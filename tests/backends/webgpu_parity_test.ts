/**
 * Every registered parity fixture of ../shared/fixtures/parity run end to end on the
 * WebGPU backend (llvmpipe's fallback adapter, asked for explicitly: CI has no GPU),
 * compared with PyTorch's logits within the case's own atol. One backend serves every
 * case, which also checks that models can share a device and release their weights.
 */

import assert from "node:assert/strict";
import { describeCheckpoint, parseConfigJson } from "../../src/loaders/config.ts";
import { parseSafetensors, toFloat32, toInt32 } from "../../src/loaders/safetensors.ts";
import { loadModel } from "../../src/model.ts";
import { findArchitecture } from "../../src/models/registry.ts";
import { WebGpuBackend } from "../../src/backends/webgpu/webgpu_backend.ts";

const ROOT = new URL("../../../shared/fixtures/parity/", import.meta.url);

interface CaseSpec {
  call: "forward" | "forwardPacked";
  input?: string;
  images?: string[];
  groups?: number[][];
  output: string;
  atol: number;
}

function registeredCases(): { name: string; dir: URL; spec: CaseSpec }[] {
  const cases = [];
  for (const entry of Deno.readDirSync(ROOT)) {
    if (!entry.isDirectory) continue;
    const dir = new URL(`${entry.name}/`, ROOT);
    const info = describeCheckpoint(
      parseConfigJson(Deno.readTextFileSync(new URL("config.json", dir))),
      entry.name,
    );
    if (!findArchitecture(info.library, info.architecture)) continue;
    const spec = JSON.parse(Deno.readTextFileSync(new URL("case.json", dir))) as CaseSpec;
    cases.push({ name: entry.name, dir, spec });
  }
  return cases.sort((a, b) => a.name.localeCompare(b.name));
}

function tensors(url: URL) {
  return parseSafetensors(Deno.readFileSync(url), url.pathname).tensors;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length, "logit counts differ");
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("every registered parity fixture matches PyTorch on the WebGPU backend", async (t) => {
  const cases = registeredCases();
  assert.ok(
    cases.length >= 5,
    `only ${cases.length} registered parity cases under ${ROOT.pathname}`,
  );
  let backend: WebGpuBackend;
  try {
    backend = await WebGpuBackend.create({ allowFallbackAdapter: true, timeoutMs: 20_000 });
  } catch (error) {
    throw new Error(
      "no WebGPU adapter: install the apt packages mesa-vulkan-drivers and libvulkan1 " +
        `(Mesa's llvmpipe) to run the WebGPU tests without a GPU. Cause: ${
          error instanceof Error ? error.message : error
        }`,
    );
  }
  try {
    for (const c of cases) {
      await t.step(`${c.name} within atol ${c.spec.atol}`, async () => {
        const model = await loadModel(c.dir, { backend });
        try {
          assert.equal(model.backend, "webgpu");
          const inputs = tensors(new URL("inputs.safetensors", c.dir));
          const expectedTensors = tensors(new URL("expected.safetensors", c.dir));
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
                const row = [...ids.subarray(i * width, (i + 1) * width)].filter((id) => id >= 0);
                assert.deepEqual([...last[i]], row, `ATS token ids of image ${i}`);
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
          }
        } finally {
          model.close();
        }
      });
    }
    assert.equal(backend.stats().weightBuffers, 0, "closing the models freed their weights");
  } finally {
    backend.dispose();
  }
});
