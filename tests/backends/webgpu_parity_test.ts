/**
 * Every registered parity fixture run end to end on the WebGPU backend (llvmpipe's
 * fallback adapter, asked for explicitly: CI has no GPU), with the same comparison as
 * tests/parity_test.ts. One backend serves every case, which also checks that models
 * can share a device and release their weights.
 */

import assert from "node:assert/strict";
import { loadModel } from "../../src/model.ts";
import { WebGpuBackend } from "../../src/backends/webgpu/webgpu_backend.ts";
import { assertMatchesFixture, readCases } from "../_parity.ts";

Deno.test("every registered parity fixture matches PyTorch on the WebGPU backend", async (t) => {
  const cases = readCases().filter((c) => c.registered);
  assert.ok(
    cases.length >= 5,
    `only ${cases.length} registered parity cases`,
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
          await assertMatchesFixture(model, c);
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
