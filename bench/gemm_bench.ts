/**
 * `deno bench` suite of the wasm GEMM (`linear`) at the linear layers of a ViT-Tiny,
 * -Small and -Base block (197 tokens), relaxed-SIMD and plain SIMD builds side by side,
 * with the reference backend as the baseline on the smallest shape. Every configuration
 * is checked against the reference backend before it is timed. GFLOP/s: `gflops.ts`.
 *
 *     deno bench --allow-read bench/gemm_bench.ts
 *
 * @module
 */

import { ReferenceBackend } from "../src/backends/reference/reference_backend.ts";
import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { GEMM_SHAPES, gemmFlops, prepareGemm } from "./kernel_shapes.ts";

const backends = [
  await WasmBackend.create({ flavour: "relaxed" }),
  await WasmBackend.create({ flavour: "plain" }),
];

for (const shape of GEMM_SHAPES) {
  const group = `${shape.model} ${shape.layer} ${shape.m}×${shape.k}×${shape.n} (${
    (gemmFlops(shape) / 1e6).toFixed(0)
  } MFLOP)`;
  for (const backend of backends) {
    const gemm = await prepareGemm(backend, shape);
    Deno.bench({
      name: `wasm ${backend.flavour}`,
      group,
      baseline: backend.flavour === "relaxed",
      fn: gemm.run,
    });
  }
  if (shape.model === "ViT-Tiny" && shape.layer === "proj") {
    const gemm = await prepareGemm(new ReferenceBackend(), shape);
    Deno.bench({ name: "reference (TypeScript)", group, n: 5, warmup: 1, fn: gemm.run });
  }
}
