import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { loadModel } from "../../src/model.ts";
import type { WebGpuBackend } from "../../src/backends/webgpu/webgpu_backend.ts";
import { servedModelFromModel, withWasmFailover } from "../../src/server/model_loader.ts";
import { VIT_FIXTURE } from "./_helpers.ts";

const PHOTO = new URL("../fixtures/images/chelsea.jpg", import.meta.url);

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("a WebGPU model whose device is lost keeps serving on wasm, same answers", async () => {
  const gpuModel = await loadModel(VIT_FIXTURE, { backend: "webgpu-fallback" });
  assert.equal(gpuModel.backend, "webgpu");
  const logs: string[] = [];
  let reloads = 0;
  const served = withWasmFailover(
    servedModelFromModel("vit", gpuModel),
    async () => {
      reloads++;
      return servedModelFromModel("vit", await loadModel(VIT_FIXTURE, { backend: "wasm" }));
    },
    (message) => logs.push(message),
  );
  try {
    const image = await served.preprocess(await Deno.readFile(PHOTO));
    const onGpu = await served.infer([image, image], {});
    assert.equal(served.backend, "webgpu");

    const device = (gpuModel.architecture.backend as WebGpuBackend).device;
    device.destroy();
    await device.lost;

    const afterLoss = await served.infer([image, image], {});
    assert.equal(served.backend, "wasm");
    assert.ok(maxAbsDiff(afterLoss.logits, onGpu.logits) < 1e-4, "wasm answers like the GPU did");
    assert.equal(logs.length, 1);
    assert.match(logs[0], /WebGPU backend failed .*serving on wasm/);

    const later = await served.infer([image], {});
    assert.equal(later.logits.length, served.numClasses);
    assert.equal(reloads, 1, "the wasm copy is loaded once");
  } finally {
    served.close();
  }
});

Deno.test("errors that are not device failures pass through the WebGPU failover untouched", async () => {
  const gpuModel = await loadModel(VIT_FIXTURE, { backend: "webgpu-fallback" });
  let reloads = 0;
  const served = withWasmFailover(servedModelFromModel("vit", gpuModel), () => {
    reloads++;
    throw new Error("must not reload");
  }, () => {});
  try {
    const image = await served.preprocess(await Deno.readFile(PHOTO));
    const wrongSize = {
      ...image,
      height: image.height * 2,
      data: new Float32Array(2 * image.data.length),
    };
    await assert.rejects(
      () => served.infer([wrongSize], {}),
      (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
    );
    assert.equal(served.backend, "webgpu");
    assert.equal(reloads, 0);
  } finally {
    served.close();
  }
});
