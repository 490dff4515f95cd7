/**
 * `deno bench` suite of the wasm fused attention: ViT-Tiny and ViT-Base heads at 197
 * tokens, ViT-Base at 1024 tokens as one sequence and as 4 packed images of 256 (segment
 * masking skips the other images' keys), relaxed-SIMD and plain SIMD builds side by side.
 * Every configuration is checked against the reference backend before it is timed.
 * GFLOP/s: `gflops.ts`.
 *
 *     deno bench --allow-read bench/attention_bench.ts
 *
 * @module
 */

import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { ATTENTION_SHAPES, attentionFlops, prepareAttention } from "./kernel_shapes.ts";

const backends = [
  await WasmBackend.create({ flavour: "relaxed" }),
  await WasmBackend.create({ flavour: "plain" }),
];

for (const shape of ATTENTION_SHAPES) {
  const group = `${shape.name} ${shape.heads}×${shape.headDim} (${
    (attentionFlops(shape) / 1e6).toFixed(0)
  } MFLOP)`;
  for (const backend of backends) {
    const attention = await prepareAttention(backend, shape);
    Deno.bench({
      name: `wasm ${backend.flavour}`,
      group,
      baseline: backend.flavour === "relaxed",
      fn: attention.run,
    });
  }
}
