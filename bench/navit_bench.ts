/**
 * NaViT's Patch n' Pack on the engine:
 *
 * 1. Attention over one packed sequence of 8 images × 64 tokens vs one image of 512
 *    tokens (heads 3 × 64): with segment ids the kernel skips key blocks of other images,
 *    so the packed sequence should cost about Σnᵢ² = 8·64² instead of 512².
 * 2. A NaViT (patch 16, max 224², dim 192, depth 12, heads 3, MLP 768; random weights) on
 *    8 images of mixed aspect ratios at their own resolution, packed, vs the same 8
 *    images each padded/resized to 224² (what a fixed-size ViT would run).
 *
 *     deno bench --allow-read --allow-env bench/navit_bench.ts
 *     deno run --allow-read --allow-env bench/navit_bench.ts 15   # 15 interleaved rounds, medians
 *
 * @module
 */

import { resolveBackend } from "../src/model.ts";
import { interleavedMedians } from "./_rounds.ts";
import { NaViT, randomNaViTWeights } from "../src/models/navit.ts";
import { packGreedy } from "../src/models/packing.ts";
import type { PackedImage } from "../src/models/types.ts";
import { seededRandom } from "../src/models/vit.ts";

const choice = (Deno.env.get("EDGEVIT_BENCH_BACKEND") ?? "wasm") as "wasm";
const { backend } = await resolveBackend(choice);
const random = seededRandom(11);

// ─── 1. attention: packed 8 × 64 vs one image of 512 ───────────────────────────────

const heads = 3;
const headDim = 64;
const rows = 512;
const qkv = backend.upload(
  new Float32Array(rows * 3 * heads * headDim).map(() => random() * 2 - 1),
  [rows, 3 * heads * headDim],
);
const packedSegments = Int32Array.from({ length: rows }, (_, i) => Math.floor(i / 64));
const oneSegment = new Int32Array(rows);
const attend = (segments: Int32Array) => {
  const { output } = backend.attention(qkv, qkv, qkv, {
    heads,
    headDim,
    scale: headDim ** -0.5,
    qOffset: 0,
    kOffset: heads * headDim,
    vOffset: 2 * heads * headDim,
    querySegments: segments,
  });
  return output;
};

Deno.bench("attention, 1 image × 512 tokens", { group: "attention", baseline: true }, async () => {
  const out = attend(oneSegment);
  await backend.read(out);
  backend.release(out);
});
Deno.bench("attention, 8 images × 64 tokens packed", { group: "attention" }, async () => {
  const out = attend(packedSegments);
  await backend.read(out);
  backend.release(out);
});

// ─── 2. mixed aspect ratios: native and packed vs padded to 224² ────────────────────

const kwargs = {
  image_size: 224,
  patch_size: 16,
  num_classes: 1000,
  dim: 192,
  depth: 12,
  heads: 3,
  dim_head: 64,
  mlp_dim: 768,
};
// One pass per call on both sides (vit-pytorch's group_max_seq_len default), so the
// comparison is tokens, not pass count.
const model = NaViT.build(backend, kwargs, randomNaViTWeights(kwargs, 5), {
  maxSequenceLength: 2048,
});
const sizes = [
  [224, 112],
  [112, 224],
  [224, 160],
  [160, 224],
  [224, 64],
  [64, 224],
  [176, 224],
  [224, 224],
];
const images: PackedImage[] = sizes.map(([height, width]) => ({
  data: new Float32Array(3 * height * width).map(() => random() * 2 - 1),
  height,
  width,
}));
const padded = new Float32Array(8 * 3 * 224 * 224);
images.forEach((image, i) => {
  // top-left placement: the cost is what matters here, not the content
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < image.height; y++) {
      const src = (c * image.height + y) * image.width;
      padded.set(
        image.data.subarray(src, src + image.width),
        ((i * 3 + c) * 224 + y) * 224,
      );
    }
  }
});
const tokens = sizes.map(([h, w]) => (h / 16) * (w / 16));
const groups = packGreedy(tokens, model.maxSequenceLength);
console.log(
  [
    `backend: ${backend.name}`,
    `mixed sizes: ${sizes.map(([h, w]) => `${h}×${w}`).join(", ")}`,
    `tokens native: ${tokens.join(" + ")} = ${tokens.reduce((a, b) => a + b, 0)}` +
    ` in ${groups.length} packed sequences of ≤ ${model.maxSequenceLength}` +
    ` (${groups.map((g) => g.reduce((s, i) => s + tokens[i], 0)).join(", ")})`,
    `tokens padded to 224²: 8 × 196 = ${8 * 196}`,
  ].join("\n"),
);

Deno.bench(
  "NaViT, 8 images padded to 224²",
  { group: "navit", baseline: true, n: 5, warmup: 1 },
  async () => {
    await model.forward(padded, [8, 3, 224, 224]);
  },
);
Deno.bench(
  "NaViT, 8 images at their own size, packed",
  { group: "navit", n: 5, warmup: 1 },
  async () => {
    await model.forwardPacked(images);
  },
);

if (import.meta.main) {
  const rounds = Number(Deno.args[0] ?? 15);
  const timedAttention = (segments: Int32Array) => async () => {
    const out = attend(segments);
    await backend.read(out);
    backend.release(out);
  };
  await interleavedMedians([
    { name: "attention, 1 image × 512 tokens", run: timedAttention(oneSegment) },
    { name: "attention, 8 images × 64 tokens packed", run: timedAttention(packedSegments) },
  ], rounds * 4);
  await interleavedMedians([
    { name: "NaViT, 8 images padded to 224²", run: () => model.forward(padded, [8, 3, 224, 224]) },
    { name: "NaViT, 8 images at their own size, packed", run: () => model.forwardPacked(images) },
  ], rounds);
}
