/**
 * Shapes and helpers shared by the kernel benchmarks (`gflops.ts`, `gemm_bench.ts`,
 * `attention_bench.ts`): the GEMMs of one ViT-Tiny/Small/Base block at 197 tokens, the
 * attention calls at 197 and 1024 tokens, deterministic inputs, and a check of every
 * timed configuration against the reference backend before it is timed.
 *
 * @module
 */

import type { AttentionOptions, Backend, Tensor } from "../src/backends/backend.ts";
import {
  quantizePerChannel,
  ReferenceBackend,
} from "../src/backends/reference/reference_backend.ts";
import { gemmInt8Reference } from "../src/backends/wasm/int8.ts";

/** One linear layer of a ViT block: `[m, k] · [n, k]ᵀ`. */
export interface GemmShape {
  model: string;
  layer: string;
  m: number;
  k: number;
  n: number;
}

function block(model: string, dim: number, hidden: number): GemmShape[] {
  return [
    { model, layer: "qkv", m: 197, k: dim, n: 3 * dim },
    { model, layer: "proj", m: 197, k: dim, n: dim },
    { model, layer: "fc1", m: 197, k: dim, n: hidden },
    { model, layer: "fc2", m: 197, k: hidden, n: dim },
  ];
}

/** The four linear layers of a ViT-Tiny, -Small and -Base block at 197 tokens. */
export const GEMM_SHAPES: GemmShape[] = [
  ...block("ViT-Tiny", 192, 768),
  ...block("ViT-Small", 384, 1536),
  ...block("ViT-Base", 768, 3072),
];

/** One attention call: `tokens` rows split into `segments` equal images. */
export interface AttentionShape {
  name: string;
  tokens: number;
  heads: number;
  headDim: number;
  segments: number;
}

export const ATTENTION_SHAPES: AttentionShape[] = [
  { name: "ViT-Tiny 197", tokens: 197, heads: 3, headDim: 64, segments: 1 },
  { name: "ViT-Base 197", tokens: 197, heads: 12, headDim: 64, segments: 1 },
  { name: "ViT-Base 1024", tokens: 1024, heads: 12, headDim: 64, segments: 1 },
  { name: "ViT-Base 1024 packed 4×256", tokens: 1024, heads: 12, headDim: 64, segments: 4 },
];

/** Multiply-adds ×2 of one GEMM. */
export function gemmFlops({ m, k, n }: GemmShape): number {
  return 2 * m * k * n;
}

/** q·kᵀ and p·v flops actually needed (Σ nᵢ² over segments), softmax not counted. */
export function attentionFlops({ tokens, heads, headDim, segments }: AttentionShape): number {
  const per = tokens / segments;
  return 4 * segments * per * per * heads * headDim;
}

/** Deterministic uniform values in [-scale, scale). */
export function random(count: number, seed: number, scale = 1): Float32Array {
  let state = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = ((state >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}

const reference = new ReferenceBackend();

function assertClose(got: Float32Array, want: Float32Array, what: string, tol: number): void {
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i])))) {
      throw new Error(`${what}: element ${i} is ${got[i]}, reference ${want[i]}`);
    }
  }
}

/**
 * A prepared GEMM on `backend`, checked against the reference on a few rows: float32
 * within 1e-4, int8 bit for bit against the TypeScript model of the wasm int8 kernel.
 */
export async function prepareGemm(
  backend: Backend,
  shape: GemmShape,
  precision: "f32" | "int8" = "f32",
): Promise<{ run(): void; dispose(): void }> {
  if (precision === "int8") return await prepareGemmInt8(backend, shape);
  const { m, k, n } = shape;
  const source = {
    weight: random(n * k, k + n, 0.05),
    bias: random(n, n),
    outFeatures: n,
    inFeatures: k,
  };
  const input = random(m * k, m + k);
  const weights = backend.prepareLinear(source);
  const x = backend.upload(input, [m, k]);
  // Check rows 0, middle, last of the full-size product against the reference.
  const rows = Int32Array.from([0, m >> 1, m - 1]);
  const y = backend.linear(x, weights, "gelu");
  const picked = backend.gatherRows(y, rows);
  const want = await reference.read(
    reference.linear(
      reference.gatherRows(reference.upload(input, [m, k]), rows),
      reference.prepareLinear(source),
      "gelu",
    ),
  );
  assertClose(await backend.read(picked), want, `${shape.model} ${shape.layer}`, 1e-4);
  backend.release(y);
  backend.release(picked);
  return {
    run() {
      backend.release(backend.linear(x, weights));
    },
    dispose() {
      backend.release(x);
      backend.releaseLinear(weights);
    },
  };
}

async function prepareGemmInt8(
  backend: Backend,
  shape: GemmShape,
): Promise<{ run(): void; dispose(): void }> {
  const { m, k, n } = shape;
  const quantized = quantizePerChannel({
    weight: random(n * k, k + n, 0.05),
    bias: random(n, n),
    outFeatures: n,
    inFeatures: k,
  });
  const input = random(m * k, m + k);
  const weights = backend.prepareQuantizedLinear(quantized);
  const x = backend.upload(input, [m, k]);
  const rows = [0, m >> 1, m - 1];
  const y = backend.linear(x, weights);
  const got = await backend.read(backend.gatherRows(y, Int32Array.from(rows)));
  rows.forEach((row, i) => {
    const want = gemmInt8Reference(
      input.subarray(row * k, (row + 1) * k),
      1,
      k,
      quantized.weight,
      quantized.scales,
      quantized.bias,
    );
    for (let j = 0; j < n; j++) {
      if (got[i * n + j] !== want[j]) {
        throw new Error(`${shape.model} ${shape.layer} int8: [${row}, ${j}] differs`);
      }
    }
  });
  backend.release(y);
  return {
    run() {
      backend.release(backend.linear(x, weights));
    },
    dispose() {
      backend.release(x);
      backend.releaseLinear(weights);
    },
  };
}

/** A prepared attention call on `backend` over a fused qkv tensor, checked first. */
export async function prepareAttention(
  backend: Backend,
  shape: AttentionShape,
): Promise<{ run(): void; dispose(): void }> {
  const { tokens, heads, headDim, segments } = shape;
  const width = heads * headDim;
  const data = random(tokens * 3 * width, tokens + width, 2);
  const querySegments = Int32Array.from(
    { length: tokens },
    (_, i) => Math.floor(i * segments / tokens),
  );
  const options: AttentionOptions = {
    heads,
    headDim,
    scale: headDim ** -0.5,
    kOffset: width,
    vOffset: 2 * width,
    querySegments,
  };
  const qkv = backend.upload(data, [tokens, 3 * width]);
  // Checked on the first 33 query rows of every segment against the reference.
  const rows: number[] = [];
  for (let s = 0; s < segments; s++) {
    const first = Math.ceil(s * tokens / segments);
    for (let i = 0; i < 33; i++) rows.push(first + i);
  }
  const picks = Int32Array.from(rows);
  const out = backend.attention(qkv, qkv, qkv, options).output;
  const picked = backend.gatherRows(out, picks);
  const rq = reference.upload(data, [tokens, 3 * width]);
  // The reference computes only the checked query rows: q rows gathered, k and v complete.
  const qRows = reference.gatherRows(rq, picks);
  const want = reference.attention(qRows, rq, rq, {
    ...options,
    querySegments: Int32Array.from(rows, (r) => querySegments[r]),
    keySegments: querySegments,
  }).output;
  assertClose(await backend.read(picked), await reference.read(want), shape.name, 1e-4);
  backend.release(out);
  backend.release(picked);
  return {
    run() {
      backend.release(backend.attention(qkv, qkv, qkv, options).output);
    },
    dispose() {
      backend.release(qkv as Tensor);
    },
  };
}
