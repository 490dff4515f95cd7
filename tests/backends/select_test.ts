/**
 * Backend selection. This machine (and CI) has only Mesa's llvmpipe fallback adapter, so
 * a "real" adapter is simulated by wrapping it with `isFallbackAdapter: false`.
 */

import assert from "node:assert/strict";
import type { Backend } from "../../src/backends/backend.ts";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { fallbackBackend, selectBackend } from "../../src/backends/select.ts";
import { EdgeVitError } from "../../src/errors.ts";

/** Stands in for the wasm backend so these tests do not depend on it. */
function fakeWasm(): Promise<Backend> {
  const backend = new ReferenceBackend();
  Object.defineProperty(backend, "name", { value: "wasm" });
  return Promise.resolve(backend);
}

/** A GPU whose only adapter is llvmpipe presented as a hardware adapter. */
function gpuWithRealAdapter(): Pick<GPU, "requestAdapter"> {
  return {
    async requestAdapter() {
      const adapter = await navigator.gpu.requestAdapter({ forceFallbackAdapter: true });
      if (!adapter) {
        throw new Error("no WebGPU adapter: install mesa-vulkan-drivers and libvulkan1");
      }
      return {
        info: { ...adapterInfo(adapter), isFallbackAdapter: false, description: "pretend GPU" },
        limits: adapter.limits,
        features: adapter.features,
        requestDevice: (descriptor?: GPUDeviceDescriptor) => adapter.requestDevice(descriptor),
      } as unknown as GPUAdapter;
    },
  };
}

function adapterInfo(adapter: GPUAdapter): Record<string, unknown> {
  const info = adapter.info as unknown as Record<string, unknown>;
  return { vendor: info.vendor, architecture: info.architecture, device: info.device };
}

Deno.test("auto picks WebGPU when a real adapter is present", async () => {
  const logs: string[] = [];
  const selected = await selectBackend({
    backend: "auto",
    gpu: gpuWithRealAdapter(),
    createWasm: fakeWasm,
    log: (message) => logs.push(message),
  });
  try {
    assert.equal(selected.backend.name, "webgpu");
    assert.match(selected.description, /pretend GPU/);
    assert.equal(selected.fallbackReason, undefined);
    assert.deepEqual(logs, []);
  } finally {
    selected.backend.dispose();
  }
});

Deno.test("auto uses wasm, not a fallback adapter, and says why once", async () => {
  const logs: string[] = [];
  const log = (message: string) => logs.push(message);
  for (let i = 0; i < 2; i++) {
    const selected = await selectBackend({ backend: "auto", createWasm: fakeWasm, log });
    assert.equal(selected.backend.name, "wasm");
    assert.match(selected.fallbackReason!, /fallback \(software\)|no WebGPU adapter/);
    selected.backend.dispose();
  }
  assert.equal(logs.length, 1, "the reason is logged once");
  assert.match(logs[0], /using the wasm backend/);
});

Deno.test("auto falls back to wasm when the adapter request hangs", async () => {
  const logs: string[] = [];
  const hanging = { requestAdapter: () => new Promise<GPUAdapter | null>(() => {}) };
  const selected = await selectBackend({
    backend: "auto",
    gpu: hanging,
    adapterTimeoutMs: 50,
    createWasm: fakeWasm,
    log: (message) => logs.push(message),
  });
  assert.equal(selected.backend.name, "wasm");
  assert.match(selected.fallbackReason!, /did not answer within 50 ms/);
  assert.equal(logs.length, 1);
});

Deno.test("auto falls back to wasm when WebGPU is not enabled or has no adapter", async () => {
  const none = { requestAdapter: () => Promise.resolve(null) };
  const selected = await selectBackend({ gpu: none, createWasm: fakeWasm, log: () => {} });
  assert.equal(selected.backend.name, "wasm");
  assert.match(selected.fallbackReason!, /no WebGPU adapter/);
});

Deno.test("without a loadable wasm backend, auto ends on the reference backend", async () => {
  const logs: string[] = [];
  const selected = await fallbackBackend("no GPU here", {
    createWasm: () => Promise.reject(new Error("wasm backend missing")),
    log: (message) => logs.push(message),
  });
  assert.equal(selected.backend.name, "reference");
  assert.match(logs[0], /no GPU here; and wasm backend missing/);
});

Deno.test("webgpu-fallback uses the software adapter when asked explicitly", async () => {
  const selected = await selectBackend({ backend: "webgpu-fallback", adapterTimeoutMs: 20_000 });
  try {
    assert.equal(selected.backend.name, "webgpu");
    assert.match(selected.description, /fallback adapter/);
    const x = selected.backend.upload(new Float32Array([1, -1]), [1, 2]);
    assert.deepEqual(
      [...await selected.backend.read(selected.backend.softmax(x))].map((v) =>
        Math.round(v * 1e4) / 1e4
      ),
      [0.8808, 0.1192],
    );
  } finally {
    selected.backend.dispose();
  }
});

Deno.test("an explicit webgpu choice refuses a fallback adapter with a clear error", async () => {
  const fallbackOnly = {
    requestAdapter: () => navigator.gpu.requestAdapter({ forceFallbackAdapter: true }),
  };
  await assert.rejects(
    selectBackend({ backend: "webgpu", gpu: fallbackOnly }),
    (error: unknown) =>
      error instanceof EdgeVitError && error.code === "backend_failure" &&
      /webgpu-fallback/.test(error.message),
  );
});

Deno.test("reference is always available and unknown names are rejected", async () => {
  const selected = await selectBackend({ backend: "reference" });
  assert.equal(selected.backend.name, "reference");
  await assert.rejects(
    selectBackend({ backend: "cuda" as never }),
    (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
  );
});
