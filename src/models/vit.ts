/**
 * The classic Vision Transformer (Dosovitskiy et al., 2020, arXiv 2010.11929) and its
 * distilled DeiT variant (Touvron et al., 2020, arXiv 2012.12877), as one canonical
 * model that every checkpoint layout maps onto:
 *
 * - vit-pytorch `ViT` (lucidrains/vit-pytorch `vit.py`, commit 69d24fe): patches
 *   flattened as `(p1 p2 c)`, LayerNorm → Linear → LayerNorm embedding, pool cls or mean;
 * - vit-pytorch `SimpleViT` (see `simple_vit.ts`): 2-D sin-cos positions, mean pool;
 * - Hugging Face `ViTForImageClassification`, `DeiTForImageClassification[WithTeacher]`
 *   and timm `vit_*` / `deit_*` (see `src/loaders/`): a strided conv patch embedding,
 *   rewritten at load as a linear layer over `(p1 p2 c)` patches.
 *
 * Everything runs as backend ops on 2-D activations `[Σ tokens, dim]`; the images of a
 * batch are contiguous *segments* of rows (no padding). Patchifying is a pure
 * rearrangement of the input, so it happens on the host before the single upload.
 *
 * ## Building blocks for other architectures
 * ATS, PatchMerger and NaViT reuse these pieces instead of copying them:
 * - {@link patchify}: `[n, c, h, w]` pixels → `[n·patches, ph·pw·c]` rows.
 * - {@link preparePatchEmbedding} / {@link embedPatches}: optional LayerNorm → Linear →
 *   optional LayerNorm on patch rows.
 * - {@link assembleTokens}: adds positions and puts prefix tokens (CLS, distillation)
 *   in front of each image's patches, returning a {@link TokenStream}.
 * - {@link prepareBlock} / {@link attentionBlock} / {@link mlpBlock} /
 *   {@link encoderBlock} / {@link runEncoder}: pre-norm transformer blocks with a fused
 *   qkv projection. {@link EncoderHooks} let a caller look at each layer's attention
 *   (with the CLS attention row and the value columns, which is what ATS needs) and
 *   keep only some rows, or replace the token stream after a block (PatchMerger).
 * - {@link poolTokens}: CLS / mean pooling per segment, final norm and head(s).
 * - {@link VitModel}: the whole model; `forwardWithHooks` runs it with hooks, so ATS can
 *   be switched on for any plain ViT with a CLS token.
 *
 * Ownership: block functions *consume* the `x` of the stream they are given (they
 * release it) and return a new stream; parameters are never released by them.
 *
 * @module
 */

import type {
  Backend,
  LinearSource,
  LinearWeights,
  Precision,
  QuantizedLinearSource,
  Tensor,
} from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import type { ForwardOptions, ForwardOutput, VisionArchitecture } from "./types.ts";

// ─── Canonical config and host weights ──────────────────────────────────────────────

/** One ViT, whatever library wrote it. */
export interface VitConfig {
  imageHeight: number;
  imageWidth: number;
  patchHeight: number;
  patchWidth: number;
  channels: number;
  /** Width of the residual stream. */
  dim: number;
  depth: number;
  heads: number;
  headDim: number;
  /** Hidden width of the MLP (GELU). */
  mlpDim: number;
  numClasses: number;
  /** A learned CLS token is the first token of every image. */
  classToken: boolean;
  /** A learned distillation token follows the CLS token (DeiT distilled). */
  distillationToken: boolean;
  /** `cls`: the CLS row feeds the head; `mean`: the mean of the patch rows does. */
  pool: "cls" | "mean";
  /**
   * Where the last LayerNorm sits: over every token before pooling (`tokens`), on the
   * pooled vector (`pooled`: timm's fc_norm, vit-pytorch's ATS `mlp_head`), or nowhere.
   */
  finalNorm: "tokens" | "pooled" | "none";
  /**
   * `single`: one head on the pooled vector. `distilled`: one head on the CLS row and one
   * on the distillation row, averaged (DeiT at inference).
   */
  head: "single" | "distilled";
  /** A LayerNorm right after the positions are added (timm `pre_norm`). */
  preNorm: boolean;
  /** The qkv projection has a bias. */
  qkvBias: boolean;
  /** The attention output is projected (vit-pytorch drops it when heads=1 and dim_head=dim). */
  attentionProjection: boolean;
  /** That projection has a bias (SimpleViT's has none). */
  projectionBias: boolean;
  /** LayerNorm epsilon of the encoder (and of the patch norms). */
  layerNormEps: number;
  /** `norm_linear_norm`: vit-pytorch; `conv`: a strided conv (HF, timm). */
  patchEmbedding: "norm_linear_norm" | "conv";
}

/** A LayerNorm's parameters; `beta` null means no bias. */
export interface NormWeights {
  gamma: Float32Array; // [dim]
  beta: Float32Array | null; // [dim]
}

/** A linear layer as float32 or as already-quantized int8. */
export type LinearParams = LinearSource | QuantizedLinearSource;

/** The patch embedding: optional norm over the flattened patch, linear, optional norm. */
export interface PatchEmbeddingWeights {
  inputNorm: NormWeights | null;
  /** `[dim, ph·pw·c]` with input columns in `(p1 p2 c)` order, as {@link patchify} writes. */
  linear: LinearParams;
  outputNorm: NormWeights | null;
}

/** One pre-norm transformer block. */
export interface BlockWeights {
  norm1: NormWeights;
  /** Fused `[3·heads·headDim, dim]`: rows q, then k, then v (head-major within each). */
  qkv: LinearParams;
  /** `[dim, heads·headDim]`, or null when the attention output is used as is. */
  proj: LinearParams | null;
  norm2: NormWeights;
  /** `[mlpDim, dim]`, followed by GELU (fused into the GEMM). */
  fc1: LinearParams;
  /** `[dim, mlpDim]`. */
  fc2: LinearParams;
}

/** Host-side weights of a {@link VitConfig}. */
export interface VitWeights {
  patchEmbedding: PatchEmbeddingWeights;
  /** `[prefix, dim]`: CLS (then distillation) token, with their positions already added. */
  prefixTokens: Float32Array | null;
  /** `[patches, dim]`: added to the patch rows, in raster order of the patch grid. */
  patchPositions: Float32Array;
  preNorm: NormWeights | null;
  blocks: BlockWeights[];
  finalNorm: NormWeights | null;
  /** One head, or two whose outputs are summed (distilled: already scaled by ½ each). */
  heads: LinearParams[];
}

/** Number of prefix tokens (CLS, distillation) in front of each image's patches. */
export function prefixCount(config: VitConfig): number {
  return (config.classToken ? 1 : 0) + (config.distillationToken ? 1 : 0);
}

/** Patches per image: `(h / ph) · (w / pw)`. */
export function patchCount(config: VitConfig): number {
  return (config.imageHeight / config.patchHeight) * (config.imageWidth / config.patchWidth);
}

/**
 * Checks that a config is self-consistent, so shape errors surface at load time with
 * the checkpoint's name rather than deep inside a kernel.
 *
 * @throws {EdgeVitError} `invalid_config`
 */
export function validateVitConfig(config: VitConfig, source = "config"): void {
  const fail = (message: string): never => {
    throw new EdgeVitError("invalid_config", `${source}: ${message}`);
  };
  for (
    const key of [
      "imageHeight",
      "imageWidth",
      "patchHeight",
      "patchWidth",
      "channels",
      "dim",
      "depth",
      "heads",
      "headDim",
      "mlpDim",
      "numClasses",
    ] as const
  ) {
    const value = config[key];
    if (!Number.isSafeInteger(value) || value <= 0) fail(`${key} must be a positive integer`);
  }
  if (config.imageHeight % config.patchHeight || config.imageWidth % config.patchWidth) {
    fail(
      `image ${config.imageHeight}×${config.imageWidth} is not divisible by patch ${config.patchHeight}×${config.patchWidth}`,
    );
  }
  if (!(config.layerNormEps > 0)) fail("layer norm epsilon must be positive");
  if (config.pool === "cls" && !config.classToken) fail("cls pooling needs a class token");
  if (config.head === "distilled" && !config.distillationToken) {
    fail("a distilled head needs a distillation token");
  }
  if (config.distillationToken && !config.classToken) {
    fail("a distillation token needs a class token");
  }
  if (!config.attentionProjection && config.heads * config.headDim !== config.dim) {
    fail("without an output projection, heads × headDim must equal dim");
  }
}

// ─── Segments: which rows belong to which image ─────────────────────────────────────

/** Row ranges of the images packed in one activation. */
export interface Segments {
  /** `[rows]`: segment id of every row, nondecreasing. */
  ids: Int32Array;
  /** `[segments + 1]`: first row of each segment, then the row count. */
  offsets: Int32Array;
}

/** Segments of the given lengths, in order. */
export function segmentsFromLengths(lengths: readonly number[]): Segments {
  const offsets = new Int32Array(lengths.length + 1);
  for (let s = 0; s < lengths.length; s++) offsets[s + 1] = offsets[s] + lengths[s];
  const ids = new Int32Array(offsets[lengths.length]);
  for (let s = 0; s < lengths.length; s++) ids.fill(s, offsets[s], offsets[s + 1]);
  return { ids, offsets };
}

/** `count` segments of `length` rows each. */
export function uniformSegments(count: number, length: number): Segments {
  return segmentsFromLengths(new Array<number>(count).fill(length));
}

/** Length of every segment. */
export function segmentLengths(segments: Segments): number[] {
  const lengths: number[] = [];
  for (let s = 0; s + 1 < segments.offsets.length; s++) {
    lengths.push(segments.offsets[s + 1] - segments.offsets[s]);
  }
  return lengths;
}

/**
 * The segments that remain after keeping `rows` (ascending within each segment, as
 * {@link Backend.gatherRows} will order them). Segments with no rows left stay, empty.
 */
export function selectSegments(segments: Segments, rows: Int32Array): Segments {
  const count = segments.offsets.length - 1;
  const lengths = new Array<number>(count).fill(0);
  let previous = -1;
  for (const row of rows) {
    const id = segments.ids[row];
    if (id === undefined || id < previous) {
      throw new EdgeVitError("invalid_argument", `row ${row} breaks the segment order`);
    }
    previous = id;
    lengths[id]++;
  }
  return segmentsFromLengths(lengths);
}

/** A packed activation and the images its rows belong to. */
export interface TokenStream {
  x: Tensor; // [rows, dim]
  segments: Segments;
}

// ─── Parameters on the backend ──────────────────────────────────────────────────────

/** A LayerNorm uploaded to a backend. */
export interface PreparedNorm {
  gamma: Tensor; // [dim]
  beta: Tensor | null; // [dim]
  eps: number;
}

/** Uploads a LayerNorm's parameters. */
export function prepareNorm(backend: Backend, norm: NormWeights, eps: number): PreparedNorm {
  return {
    gamma: backend.upload(norm.gamma, [norm.gamma.length]),
    beta: norm.beta ? backend.upload(norm.beta, [norm.beta.length]) : null,
    eps,
  };
}

/** Frees an uploaded LayerNorm. */
export function releaseNorm(backend: Backend, norm: PreparedNorm): void {
  backend.release(norm.gamma);
  if (norm.beta) backend.release(norm.beta);
}

/** Applies an uploaded LayerNorm (does not consume `x`). */
export function applyNorm(backend: Backend, x: Tensor, norm: PreparedNorm): Tensor {
  return backend.layerNorm(x, norm.gamma, norm.beta, norm.eps);
}

/** Packs a float32 linear layer at `precision`, or an int8 one as it is. */
export function prepareLinearParams(
  backend: Backend,
  params: LinearParams,
  precision: Precision,
): LinearWeights {
  if (params.weight instanceof Int8Array) {
    return backend.prepareQuantizedLinear(params as QuantizedLinearSource);
  }
  return backend.prepareLinear(params as LinearSource, { precision });
}

/** The patch embedding on a backend. */
export interface PreparedPatchEmbedding {
  inputNorm: PreparedNorm | null;
  linear: LinearWeights;
  outputNorm: PreparedNorm | null;
}

/** Uploads a patch embedding. */
export function preparePatchEmbedding(
  backend: Backend,
  weights: PatchEmbeddingWeights,
  eps: number,
  precision: Precision,
): PreparedPatchEmbedding {
  return {
    inputNorm: weights.inputNorm ? prepareNorm(backend, weights.inputNorm, eps) : null,
    linear: prepareLinearParams(backend, weights.linear, precision),
    outputNorm: weights.outputNorm ? prepareNorm(backend, weights.outputNorm, eps) : null,
  };
}

/** Frees an uploaded patch embedding. */
export function releasePatchEmbedding(backend: Backend, embedding: PreparedPatchEmbedding): void {
  if (embedding.inputNorm) releaseNorm(backend, embedding.inputNorm);
  backend.releaseLinear(embedding.linear);
  if (embedding.outputNorm) releaseNorm(backend, embedding.outputNorm);
}

/** One transformer block on a backend. */
export interface PreparedBlock {
  norm1: PreparedNorm;
  qkv: LinearWeights;
  proj: LinearWeights | null;
  norm2: PreparedNorm;
  fc1: LinearWeights;
  fc2: LinearWeights;
}

/** Uploads one block's parameters. */
export function prepareBlock(
  backend: Backend,
  block: BlockWeights,
  eps: number,
  precision: Precision,
): PreparedBlock {
  return {
    norm1: prepareNorm(backend, block.norm1, eps),
    qkv: prepareLinearParams(backend, block.qkv, precision),
    proj: block.proj ? prepareLinearParams(backend, block.proj, precision) : null,
    norm2: prepareNorm(backend, block.norm2, eps),
    fc1: prepareLinearParams(backend, block.fc1, precision),
    fc2: prepareLinearParams(backend, block.fc2, precision),
  };
}

/** Frees one block's parameters. */
export function releaseBlock(backend: Backend, block: PreparedBlock): void {
  releaseNorm(backend, block.norm1);
  backend.releaseLinear(block.qkv);
  if (block.proj) backend.releaseLinear(block.proj);
  releaseNorm(backend, block.norm2);
  backend.releaseLinear(block.fc1);
  backend.releaseLinear(block.fc2);
}

// ─── Patches and token assembly ─────────────────────────────────────────────────────

/**
 * Cuts images into patches, one row per patch, as einops
 * `b c (h p1) (w p2) -> (b h w) (p1 p2 c)` does.
 *
 * @param pixels `[n, channels, height, width]` row-major
 * @returns `[n · (height/ph) · (width/pw), ph · pw · channels]` row-major
 *
 * @example
 * ```ts
 * import { patchify } from "./vit.ts";
 * // one 1-channel 2×2 image, 1×1 patches: four rows of one value
 * console.log(patchify(new Float32Array([1, 2, 3, 4]), 1, 1, 2, 2, 1, 1)); // [1, 2, 3, 4]
 * ```
 */
export function patchify(
  pixels: Float32Array,
  images: number,
  channels: number,
  height: number,
  width: number,
  patchHeight: number,
  patchWidth: number,
): Float32Array {
  const gridH = height / patchHeight;
  const gridW = width / patchWidth;
  const patchDim = patchHeight * patchWidth * channels;
  const out = new Float32Array(images * gridH * gridW * patchDim); // [rows, patchDim]
  const plane = height * width;
  let o = 0;
  for (let b = 0; b < images; b++) {
    const image = b * channels * plane;
    for (let gy = 0; gy < gridH; gy++) {
      for (let gx = 0; gx < gridW; gx++) {
        for (let p1 = 0; p1 < patchHeight; p1++) {
          const rowStart = image + (gy * patchHeight + p1) * width + gx * patchWidth;
          for (let p2 = 0; p2 < patchWidth; p2++) {
            const pixel = rowStart + p2;
            for (let c = 0; c < channels; c++) out[o++] = pixels[pixel + c * plane];
          }
        }
      }
    }
  }
  return out;
}

/**
 * Rewrites a conv patch-embedding weight `[dim, c, ph, pw]` (HF, timm) as a linear
 * weight `[dim, ph·pw·c]` over {@link patchify}'s `(p1 p2 c)` columns: a stride-p conv
 * is exactly that linear layer applied to every patch.
 */
export function convToPatchLinear(
  weight: Float32Array,
  dim: number,
  channels: number,
  patchHeight: number,
  patchWidth: number,
): Float32Array {
  const patchDim = channels * patchHeight * patchWidth;
  const out = new Float32Array(dim * patchDim); // [dim, (p1 p2 c)]
  for (let d = 0; d < dim; d++) {
    for (let c = 0; c < channels; c++) {
      for (let p1 = 0; p1 < patchHeight; p1++) {
        for (let p2 = 0; p2 < patchWidth; p2++) {
          out[d * patchDim + (p1 * patchWidth + p2) * channels + c] =
            weight[((d * channels + c) * patchHeight + p1) * patchWidth + p2];
        }
      }
    }
  }
  return out;
}

/** Embeds patch rows `[rows, ph·pw·c]` → `[rows, dim]`; consumes `patches`. */
export function embedPatches(
  backend: Backend,
  patches: Tensor,
  embedding: PreparedPatchEmbedding,
): Tensor {
  let x = patches;
  if (embedding.inputNorm) x = swap(backend, x, applyNorm(backend, x, embedding.inputNorm));
  x = swap(backend, x, backend.linear(x, embedding.linear));
  if (embedding.outputNorm) x = swap(backend, x, applyNorm(backend, x, embedding.outputNorm));
  return x;
}

/** Releases `old` and returns `next`: keeps "consume and replace" chains short. */
function swap(backend: Backend, old: Tensor, next: Tensor): Tensor {
  backend.release(old);
  return next;
}

/** Row indices that tile `length` rows `times` times: positions for a batch. */
function tiledRows(times: number, length: number): Int32Array {
  const rows = new Int32Array(times * length);
  for (let t = 0; t < times; t++) for (let j = 0; j < length; j++) rows[t * length + j] = j;
  return rows;
}

/**
 * Adds positions to embedded patches and puts the prefix tokens in front of each
 * image's patches. Consumes `embedded`.
 *
 * @param embedded `[images · patches, dim]`, image-major
 * @param prefix `[prefix, dim]` prefix tokens (positions included), or null
 * @param positions `[patches, dim]`
 * @returns `[images · (prefix + patches), dim]` with one segment per image
 */
export function assembleTokens(
  backend: Backend,
  embedded: Tensor,
  images: number,
  patches: number,
  prefix: Tensor | null,
  positions: Tensor,
): TokenStream {
  const tiled = backend.gatherRows(positions, tiledRows(images, patches)); // [images·patches, dim]
  const placed = backend.add(embedded, tiled);
  backend.release(tiled);
  backend.release(embedded);
  const prefixRows = prefix ? prefix.shape[0] : 0;
  const segments = uniformSegments(images, prefixRows + patches);
  if (!prefix || prefixRows === 0) return { x: placed, segments };
  // [prefix; all patches] then one gather interleaves them image by image.
  const stacked = backend.concatRows([prefix, placed]);
  backend.release(placed);
  const order = new Int32Array(images * (prefixRows + patches));
  let o = 0;
  for (let b = 0; b < images; b++) {
    for (let p = 0; p < prefixRows; p++) order[o++] = p;
    for (let j = 0; j < patches; j++) order[o++] = prefixRows + b * patches + j;
  }
  const x = backend.gatherRows(stacked, order);
  backend.release(stacked);
  return { x, segments };
}

// ─── Transformer blocks with hooks ──────────────────────────────────────────────────

/** Attention geometry of a block. */
export interface AttentionShape {
  heads: number;
  headDim: number;
}

/** What an {@link EncoderHooks.afterAttention} hook sees. Tensors belong to the block. */
export interface AttentionHookContext {
  backend: Backend;
  layer: number;
  heads: number;
  headDim: number;
  /** `[rows, 3·heads·headDim]`: q, k, v of the layer (v starts at column 2·heads·headDim). */
  qkv: Tensor;
  /** `[rows, heads·headDim]`: attention output before the projection. */
  output: Tensor;
  /** `[rows, heads]`: each segment's CLS attention, when `wantsClsAttention` asked for it. */
  clsAttention?: Tensor;
  segments: Segments;
}

/** Rows to keep after a layer's attention, and the segments they form. */
export interface RowSelection {
  /** Ascending row indices into the layer's input. */
  rows: Int32Array;
  segments: Segments;
}

/** What an {@link EncoderHooks.afterBlock} hook sees. */
export interface BlockHookContext {
  backend: Backend;
  layer: number;
  stream: TokenStream;
}

/**
 * Optional per-layer callbacks of {@link runEncoder}. ATS uses `wantsClsAttention` and
 * `afterAttention` to prune tokens; PatchMerger uses `afterBlock` to replace the tokens.
 */
export interface EncoderHooks {
  /** Whether layer `layer`'s attention should also return the CLS attention rows. */
  wantsClsAttention?(layer: number): boolean;
  /**
   * Called after a layer's attention; return rows to keep (queries and residual are
   * gathered at those rows before the projection), or null to keep every row.
   */
  afterAttention?(
    context: AttentionHookContext,
  ): RowSelection | null | Promise<RowSelection | null>;
  /**
   * Called after a whole block; return a replacement stream (the hook then owns and
   * releases the old `x`), or null to go on unchanged.
   */
  afterBlock?(context: BlockHookContext): TokenStream | null | Promise<TokenStream | null>;
  /** Extra fields for the forward output (e.g. ATS token ids), read after the encoder. */
  finish?(): Partial<ForwardOutput>;
}

/**
 * Pre-norm self-attention with its residual: `x + proj(attention(LN(x)))`, the q, k, v
 * projections fused into one GEMM. Consumes `stream.x`.
 */
export async function attentionBlock(
  backend: Backend,
  stream: TokenStream,
  block: PreparedBlock,
  shape: AttentionShape,
  layer = 0,
  hooks?: EncoderHooks,
): Promise<TokenStream> {
  const { heads, headDim } = shape;
  const width = heads * headDim;
  const normed = applyNorm(backend, stream.x, block.norm1); // [rows, dim]
  const qkv = backend.linear(normed, block.qkv); // [rows, 3·width]
  backend.release(normed);
  const wantsCls = hooks?.wantsClsAttention?.(layer) ?? false;
  const result = backend.attention(qkv, qkv, qkv, {
    heads,
    headDim,
    scale: headDim ** -0.5,
    qOffset: 0,
    kOffset: width,
    vOffset: 2 * width,
    querySegments: stream.segments.ids,
    returnClsAttention: wantsCls,
    // int8 blocks take the int8 attention where the backend has one.
    precision: block.qkv.precision,
  });
  let output = result.output; // [rows, width]
  let residual = stream.x;
  let segments = stream.segments;
  try {
    if (hooks?.afterAttention) {
      const selection = await hooks.afterAttention({
        backend,
        layer,
        heads,
        headDim,
        qkv,
        output,
        clsAttention: result.clsAttention,
        segments,
      });
      if (selection) {
        output = swap(backend, output, backend.gatherRows(output, selection.rows));
        residual = backend.gatherRows(stream.x, selection.rows);
        backend.release(stream.x);
        segments = selection.segments;
      }
    }
  } finally {
    backend.release(qkv);
    if (result.clsAttention) backend.release(result.clsAttention);
  }
  if (block.proj) output = swap(backend, output, backend.linear(output, block.proj));
  const x = backend.add(residual, output);
  backend.release(output);
  backend.release(residual);
  return { x, segments };
}

/** Pre-norm MLP with its residual: `x + fc2(gelu(fc1(LN(x))))`. Consumes `x`. */
export function mlpBlock(backend: Backend, x: Tensor, block: PreparedBlock): Tensor {
  const normed = applyNorm(backend, x, block.norm2); // [rows, dim]
  const hidden = backend.linear(normed, block.fc1, "gelu"); // [rows, mlpDim]
  backend.release(normed);
  const out = backend.linear(hidden, block.fc2); // [rows, dim]
  backend.release(hidden);
  const sum = backend.add(x, out);
  backend.release(out);
  backend.release(x);
  return sum;
}

/** One whole block (attention, then MLP, then the `afterBlock` hook). Consumes `stream.x`. */
export async function encoderBlock(
  backend: Backend,
  stream: TokenStream,
  block: PreparedBlock,
  shape: AttentionShape,
  layer = 0,
  hooks?: EncoderHooks,
): Promise<TokenStream> {
  const attended = await attentionBlock(backend, stream, block, shape, layer, hooks);
  const out: TokenStream = { x: mlpBlock(backend, attended.x, block), segments: attended.segments };
  if (hooks?.afterBlock) {
    const replaced = await hooks.afterBlock({ backend, layer, stream: out });
    if (replaced) return replaced;
  }
  return out;
}

/**
 * One whole block computed only for the first `keep` rows of each segment (all of a
 * segment's rows when it has fewer), for a last block whose other rows nobody reads (CLS
 * pooling reads CLS and the distillation token). Every row still gives its key and value,
 * so each kept row gets exactly the value it gets in {@link encoderBlock}; the attention
 * of the other queries, their projection, residual and MLP are skipped. Consumes
 * `stream.x`.
 *
 * @returns the kept rows, as segments of `min(keep, length)` rows each
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { prefixEncoderBlock, prepareBlock, randomVitWeights, standardVitConfig, uniformSegments } from "./vit.ts";
 * const config = standardVitConfig({
 *   imageSize: 8, patchSize: 4, dim: 8, depth: 1, heads: 2, mlpDim: 16, numClasses: 2,
 * });
 * const backend = new ReferenceBackend();
 * const block = prepareBlock(backend, randomVitWeights(config).blocks[0], 1e-6, "f32");
 * // two images of CLS + 4 patches
 * const x = backend.upload(new Float32Array(10 * 8).fill(0.5), [10, 8]);
 * const out = prefixEncoderBlock(backend, { x, segments: uniformSegments(2, 5) }, block, config, 1);
 * console.log(out.x.shape); // [2, 8]: the two CLS rows
 * ```
 */
export function prefixEncoderBlock(
  backend: Backend,
  stream: TokenStream,
  block: PreparedBlock,
  shape: AttentionShape,
  keep: number,
): TokenStream {
  const { heads, headDim } = shape;
  const width = heads * headDim;
  const { ids, offsets } = stream.segments;
  const lengths = segmentLengths(stream.segments).map((length) => Math.min(length, keep));
  const segments = segmentsFromLengths(lengths);
  const rows = new Int32Array(segments.offsets[lengths.length]); // kept rows of the input
  const queryIds = new Int32Array(rows.length);
  for (let s = 0; s < lengths.length; s++) {
    for (let j = 0; j < lengths[s]; j++) {
      const at = segments.offsets[s] + j;
      rows[at] = offsets[s] + j;
      queryIds[at] = ids[offsets[s] + j];
    }
  }
  const normed = applyNorm(backend, stream.x, block.norm1); // [rows, dim]
  const qkv = backend.linear(normed, block.qkv); // [rows, 3·width]: keys and values of all rows
  backend.release(normed);
  let output: Tensor; // [kept, width]
  try {
    const queries = backend.gatherRows(qkv, rows); // [kept, 3·width]
    try {
      output = backend.attention(queries, qkv, qkv, {
        heads,
        headDim,
        scale: headDim ** -0.5,
        qOffset: 0,
        kOffset: width,
        vOffset: 2 * width,
        querySegments: queryIds,
        keySegments: ids,
        precision: block.qkv.precision,
      }).output;
    } finally {
      backend.release(queries);
    }
  } finally {
    backend.release(qkv);
  }
  const residual = backend.gatherRows(stream.x, rows); // [kept, dim]
  backend.release(stream.x);
  if (block.proj) output = swap(backend, output, backend.linear(output, block.proj));
  const x = backend.add(residual, output);
  backend.release(output);
  backend.release(residual);
  return { x: mlpBlock(backend, x, block), segments };
}

/** Whether `hooks` may look at or change a layer (then every row of it must be computed). */
function hooksActOnLayers(hooks: EncoderHooks | undefined): boolean {
  return hooks !== undefined &&
    (hooks.afterAttention !== undefined || hooks.afterBlock !== undefined ||
      hooks.wantsClsAttention !== undefined);
}

/**
 * Runs blocks in order. Consumes `stream.x`.
 *
 * @param outputRows when set, the caller reads only the first `outputRows` rows of each
 *   segment of the result (CLS pooling: 1, or 2 with a distilled head); unless a hook acts
 *   on the layers, the last block then computes only those rows
 *   ({@link prefixEncoderBlock}) and the result holds only them. Same values per row.
 * @returns the final stream and, per layer, the token count of every image entering it
 */
export async function runEncoder(
  backend: Backend,
  stream: TokenStream,
  blocks: readonly PreparedBlock[],
  shape: AttentionShape,
  hooks?: EncoderHooks,
  outputRows?: number,
): Promise<{ stream: TokenStream; tokensPerLayer: number[][] }> {
  const tokensPerLayer: number[][] = [];
  const prefixLast = outputRows !== undefined && outputRows > 0 && !hooksActOnLayers(hooks);
  let current = stream;
  for (let layer = 0; layer < blocks.length; layer++) {
    tokensPerLayer.push(segmentLengths(current.segments));
    try {
      if (prefixLast && layer === blocks.length - 1) {
        current = prefixEncoderBlock(backend, current, blocks[layer], shape, outputRows);
      } else {
        current = await encoderBlock(backend, current, blocks[layer], shape, layer, hooks);
      }
    } catch (error) {
      // the failing block may already have released x; a second release must not mask it
      try {
        backend.release(current.x);
      } catch { /* already released */ }
      throw error;
    }
  }
  return { stream: current, tokensPerLayer };
}

/** Final norm and head(s) on a backend. */
export interface PreparedHead {
  pool: "cls" | "mean";
  /** Prefix tokens in front of each segment's patch rows. */
  prefix: number;
  finalNorm: PreparedNorm | null;
  normPlace: "tokens" | "pooled" | "none";
  /** One head per pooled row kind: CLS (and distillation). */
  heads: LinearWeights[];
}

/**
 * Pools each segment and applies the final norm and head(s). Does not consume `x`.
 *
 * @returns `[segments, numClasses]` logits
 */
export function poolTokens(backend: Backend, stream: TokenStream, head: PreparedHead): Tensor {
  const { offsets } = stream.segments;
  const images = offsets.length - 1;
  const norm = head.finalNorm;
  if (head.pool === "cls") {
    // LayerNorm acts row by row, so norming only the pooled rows equals norming all tokens.
    const outputs: Tensor[] = [];
    for (let h = 0; h < head.heads.length; h++) {
      const rows = new Int32Array(images);
      for (let s = 0; s < images; s++) rows[s] = offsets[s] + h;
      let pooled = backend.gatherRows(stream.x, rows); // [images, dim]
      if (norm && head.normPlace !== "none") {
        pooled = swap(backend, pooled, applyNorm(backend, pooled, norm));
      }
      outputs.push(backend.linear(pooled, head.heads[h]));
      backend.release(pooled);
    }
    return sumAll(backend, outputs);
  }
  let tokens = stream.x;
  let owned = false;
  if (norm && head.normPlace === "tokens") {
    tokens = applyNorm(backend, tokens, norm);
    owned = true;
  }
  let meanOffsets = offsets;
  if (head.prefix > 0) {
    const rows: number[] = [];
    const lengths: number[] = [];
    for (let s = 0; s < images; s++) {
      for (let r = offsets[s] + head.prefix; r < offsets[s + 1]; r++) rows.push(r);
      lengths.push(offsets[s + 1] - offsets[s] - head.prefix);
    }
    const gathered = backend.gatherRows(tokens, Int32Array.from(rows));
    if (owned) backend.release(tokens);
    tokens = gathered;
    owned = true;
    meanOffsets = segmentsFromLengths(lengths).offsets;
  }
  let pooled = backend.segmentMean(tokens, meanOffsets); // [images, dim]
  if (owned) backend.release(tokens);
  if (norm && head.normPlace === "pooled") {
    pooled = swap(backend, pooled, applyNorm(backend, pooled, norm));
  }
  const outputs = head.heads.map((linear) => backend.linear(pooled, linear));
  backend.release(pooled);
  return sumAll(backend, outputs);
}

function sumAll(backend: Backend, parts: Tensor[]): Tensor {
  let total = parts[0];
  for (let i = 1; i < parts.length; i++) {
    const next = backend.add(total, parts[i]);
    backend.release(total);
    backend.release(parts[i]);
    total = next;
  }
  return total;
}

// ─── The model ──────────────────────────────────────────────────────────────────────

/** Options of {@link VitModel.create}. */
export interface VitModelOptions {
  precision?: Precision;
  /**
   * Hooks for each forward call (e.g. ATS built from `options.tokenBudget`); return
   * undefined for a plain pass.
   */
  hooks?: (options: ForwardOptions | undefined) => EncoderHooks | undefined;
  /** Name for error messages. */
  source?: string;
  /**
   * Compute every row of the last block even when only some are read (default false).
   * With CLS pooling and no hooks, the last block otherwise runs only for the rows the
   * head reads ({@link prefixEncoderBlock}): the same logits up to float rounding. For
   * tests and benches that compare both paths.
   */
  fullLastBlock?: boolean;
}

/**
 * A ViT on a backend, ready to run.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { randomVitWeights, VitModel, type VitConfig } from "./vit.ts";
 * const config: VitConfig = {
 *   imageHeight: 8, imageWidth: 8, patchHeight: 4, patchWidth: 4, channels: 3,
 *   dim: 16, depth: 1, heads: 2, headDim: 8, mlpDim: 32, numClasses: 3,
 *   classToken: true, distillationToken: false, pool: "cls", finalNorm: "tokens",
 *   head: "single", preNorm: false, qkvBias: true, attentionProjection: true,
 *   projectionBias: true, layerNormEps: 1e-6, patchEmbedding: "conv",
 * };
 * const model = VitModel.create(new ReferenceBackend(), config, randomVitWeights(config, 1));
 * const { logits } = await model.forward(new Float32Array(3 * 8 * 8), [1, 3, 8, 8]);
 * console.log(logits.length); // 3
 * model.dispose();
 * ```
 */
export class VitModel implements VisionArchitecture {
  readonly numClasses: number;
  readonly channels: number;
  readonly inputSize: { height: number; width: number };
  readonly patchSize: number;
  readonly precision: Precision;
  readonly backend: Backend;
  readonly config: Readonly<VitConfig>;
  readonly #embedding: PreparedPatchEmbedding;
  readonly #prefix: Tensor | null;
  readonly #positions: Tensor;
  readonly #preNorm: PreparedNorm | null;
  readonly #blocks: PreparedBlock[];
  readonly #head: PreparedHead;
  readonly #hooks: VitModelOptions["hooks"];
  readonly #fullLastBlock: boolean;
  #disposed = false;

  private constructor(
    backend: Backend,
    config: VitConfig,
    weights: VitWeights,
    options: VitModelOptions,
  ) {
    this.backend = backend;
    this.config = Object.freeze({ ...config });
    this.numClasses = config.numClasses;
    this.channels = config.channels;
    this.inputSize = { height: config.imageHeight, width: config.imageWidth };
    this.patchSize = config.patchHeight;
    this.precision = options.precision ?? "f32";
    this.#hooks = options.hooks;
    this.#fullLastBlock = options.fullLastBlock ?? false;
    const eps = config.layerNormEps;
    const precision = this.precision;
    this.#embedding = preparePatchEmbedding(backend, weights.patchEmbedding, eps, precision);
    const prefix = prefixCount(config);
    this.#prefix = prefix > 0 ? backend.upload(weights.prefixTokens!, [prefix, config.dim]) : null;
    this.#positions = backend.upload(weights.patchPositions, [patchCount(config), config.dim]);
    this.#preNorm = weights.preNorm ? prepareNorm(backend, weights.preNorm, eps) : null;
    this.#blocks = weights.blocks.map((block) => prepareBlock(backend, block, eps, precision));
    this.#head = {
      pool: config.pool,
      prefix,
      finalNorm: weights.finalNorm ? prepareNorm(backend, weights.finalNorm, eps) : null,
      normPlace: config.finalNorm,
      heads: weights.heads.map((head) => prepareLinearParams(backend, head, precision)),
    };
  }

  /**
   * Checks the weights against the config and uploads them.
   *
   * @throws {EdgeVitError} `invalid_config` / `invalid_checkpoint` when they disagree
   */
  static create(
    backend: Backend,
    config: VitConfig,
    weights: VitWeights,
    options: VitModelOptions = {},
  ): VitModel {
    const source = options.source ?? "ViT";
    validateVitConfig(config, source);
    checkVitWeights(config, weights, source);
    return new VitModel(backend, config, weights, options);
  }

  /** Runs the model on `[n, channels, height, width]` normalized pixels. */
  forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    return this.forwardWithHooks(pixels, shape, this.#hooks?.(options));
  }

  /** Runs the model with per-layer hooks (ATS on a plain ViT, probes in tests). */
  async forwardWithHooks(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    hooks?: EncoderHooks,
  ): Promise<ForwardOutput> {
    if (this.#disposed) throw new EdgeVitError("invalid_argument", "the model was closed");
    const config = this.config;
    const images = checkPixels(pixels, shape, config);
    const backend = this.backend;
    const patches = patchCount(config);
    const rows = patchify(
      pixels,
      images,
      config.channels,
      config.imageHeight,
      config.imageWidth,
      config.patchHeight,
      config.patchWidth,
    );
    const patchDim = config.patchHeight * config.patchWidth * config.channels;
    const embedded = embedPatches(
      backend,
      backend.upload(rows, [images * patches, patchDim]),
      this.#embedding,
    );
    let stream = assembleTokens(backend, embedded, images, patches, this.#prefix, this.#positions);
    if (this.#preNorm) {
      stream = {
        x: swap(backend, stream.x, applyNorm(backend, stream.x, this.#preNorm)),
        segments: stream.segments,
      };
    }
    // CLS pooling reads one row per head of each image: the last block computes only those.
    const head = this.#head;
    const readRows = head.pool === "cls" && !this.#fullLastBlock ? head.heads.length : undefined;
    const encoded = await runEncoder(backend, stream, this.#blocks, config, hooks, readRows);
    let logitsTensor: Tensor;
    try {
      logitsTensor = poolTokens(backend, encoded.stream, this.#head);
    } finally {
      backend.release(encoded.stream.x);
    }
    const logits = await backend.read(logitsTensor);
    backend.release(logitsTensor);
    const tokensPerImage = new Array<number>(images).fill(0);
    for (const layer of encoded.tokensPerLayer) {
      layer.forEach((count, image) =>
        tokensPerImage[image] += count / encoded.tokensPerLayer.length
      );
    }
    return { logits, tokensPerImage, ...hooks?.finish?.() };
  }

  /** Frees the uploaded weights; the model cannot run afterwards. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const backend = this.backend;
    releasePatchEmbedding(backend, this.#embedding);
    if (this.#prefix) backend.release(this.#prefix);
    backend.release(this.#positions);
    if (this.#preNorm) releaseNorm(backend, this.#preNorm);
    for (const block of this.#blocks) releaseBlock(backend, block);
    if (this.#head.finalNorm) releaseNorm(backend, this.#head.finalNorm);
    for (const head of this.#head.heads) backend.releaseLinear(head);
  }
}

/**
 * Checks `[n, c, h, w]` against the model's input and the array length.
 *
 * @returns n
 * @throws {EdgeVitError} `invalid_argument`
 */
export function checkPixels(
  pixels: Float32Array,
  shape: readonly number[],
  config: Pick<VitConfig, "channels" | "imageHeight" | "imageWidth">,
): number {
  if (!(pixels instanceof Float32Array)) {
    throw new EdgeVitError("invalid_argument", "pixels must be a Float32Array");
  }
  if (
    !Array.isArray(shape) || shape.length !== 4 ||
    !shape.every((dim) => Number.isSafeInteger(dim) && dim > 0)
  ) {
    throw new EdgeVitError(
      "invalid_argument",
      `shape must be [n, channels, height, width] of positive integers, got ${
        JSON.stringify(shape)
      }`,
    );
  }
  const [n, c, h, w] = shape;
  if (c !== config.channels || h !== config.imageHeight || w !== config.imageWidth) {
    throw new EdgeVitError(
      "invalid_argument",
      `the model takes [n, ${config.channels}, ${config.imageHeight}, ${config.imageWidth}] pixels, got [${shape}]`,
    );
  }
  if (pixels.length !== n * c * h * w) {
    throw new EdgeVitError(
      "invalid_argument",
      `pixels hold ${pixels.length} values but shape [${shape}] needs ${n * c * h * w}`,
    );
  }
  return n;
}

function linearShape(params: LinearParams): [number, number] {
  return [params.outFeatures, params.inFeatures];
}

/**
 * Checks every array of `weights` against `config` (loaders already check checkpoint
 * shapes; this catches hand-built weights and loader slips).
 *
 * @throws {EdgeVitError} `invalid_checkpoint`
 */
export function checkVitWeights(config: VitConfig, weights: VitWeights, source = "ViT"): void {
  const fail = (message: string): never => {
    throw new EdgeVitError("invalid_checkpoint", `${source}: ${message}`);
  };
  const { dim, mlpDim } = config;
  const width = config.heads * config.headDim;
  const patchDim = config.patchHeight * config.patchWidth * config.channels;
  const expectLinear = (
    what: string,
    params: LinearParams | null,
    out: number,
    inp: number,
    bias?: boolean,
  ) => {
    if (!params) return fail(`${what} is missing`);
    const [o, i] = linearShape(params);
    if (o !== out || i !== inp || params.weight.length !== o * i) {
      fail(`${what} is [${o}, ${i}], the config implies [${out}, ${inp}]`);
    }
    if (params.bias && params.bias.length !== out) fail(`${what} bias has the wrong length`);
    if (bias === true && !params.bias) fail(`${what} has no bias`);
  };
  const expectNorm = (what: string, norm: NormWeights | null, size: number) => {
    if (!norm) return fail(`${what} is missing`);
    if (norm.gamma.length !== size || (norm.beta && norm.beta.length !== size)) {
      fail(`${what} has ${norm.gamma.length} values, the config implies ${size}`);
    }
  };
  const embedding = weights.patchEmbedding;
  if (config.patchEmbedding === "norm_linear_norm") {
    expectNorm("patch input norm", embedding.inputNorm, patchDim);
    expectNorm("patch output norm", embedding.outputNorm, dim);
  }
  expectLinear("patch embedding", embedding.linear, dim, patchDim);
  const prefix = prefixCount(config);
  if ((weights.prefixTokens?.length ?? 0) !== prefix * dim) {
    fail(
      `prefix tokens hold ${weights.prefixTokens?.length ?? 0} values, expected ${prefix}×${dim}`,
    );
  }
  if (weights.patchPositions.length !== patchCount(config) * dim) {
    fail(
      `positions hold ${weights.patchPositions.length} values, expected ${
        patchCount(config)
      }×${dim}`,
    );
  }
  if (config.preNorm) expectNorm("pre-norm", weights.preNorm, dim);
  if (weights.blocks.length !== config.depth) {
    fail(`${weights.blocks.length} blocks, the config says ${config.depth}`);
  }
  weights.blocks.forEach((block, i) => {
    expectNorm(`block ${i} norm1`, block.norm1, dim);
    expectLinear(`block ${i} qkv`, block.qkv, 3 * width, dim);
    if (config.attentionProjection) expectLinear(`block ${i} proj`, block.proj, dim, width);
    else if (block.proj) fail(`block ${i} has a projection the config does not`);
    expectNorm(`block ${i} norm2`, block.norm2, dim);
    expectLinear(`block ${i} fc1`, block.fc1, mlpDim, dim);
    expectLinear(`block ${i} fc2`, block.fc2, dim, mlpDim);
  });
  if (config.finalNorm !== "none") expectNorm("final norm", weights.finalNorm, dim);
  const heads = config.head === "distilled" ? 2 : 1;
  if (weights.heads.length !== heads) fail(`${weights.heads.length} heads, expected ${heads}`);
  weights.heads.forEach((head, i) => expectLinear(`head ${i}`, head, config.numClasses, dim));
}

// ─── Helpers for loaders ────────────────────────────────────────────────────────────

/** Whether a linear layer is already int8 (a quantized checkpoint). */
export function isQuantizedLinear(params: LinearParams): params is QuantizedLinearSource {
  return params.weight instanceof Int8Array;
}

/** A float32 copy of a linear layer (int8 weights times their per-channel scales). */
export function dequantizeLinear(params: LinearParams): LinearSource {
  if (!isQuantizedLinear(params)) return params;
  const { outFeatures, inFeatures } = params;
  const weight = new Float32Array(outFeatures * inFeatures);
  for (let o = 0; o < outFeatures; o++) {
    for (let i = 0; i < inFeatures; i++) {
      weight[o * inFeatures + i] = params.weight[o * inFeatures + i] * params.scales[o];
    }
  }
  return { weight, bias: params.bias, outFeatures, inFeatures };
}

function concatBias(parts: readonly LinearParams[], rows: number): Float32Array | null {
  if (!parts.some((part) => part.bias)) return null;
  const bias = new Float32Array(rows);
  let at = 0;
  for (const part of parts) {
    if (part.bias) bias.set(part.bias, at);
    at += part.outFeatures;
  }
  return bias;
}

/**
 * Concatenates q, k, v linears (HF's separate projections) into one fused qkv. Int8
 * layers stay int8 (per-output-channel scales concatenate too).
 */
export function fuseQkv(q: LinearParams, k: LinearParams, v: LinearParams): LinearParams {
  const parts = [q, k, v];
  const rows = q.outFeatures + k.outFeatures + v.outFeatures;
  const bias = concatBias(parts, rows);
  if (parts.every(isQuantizedLinear)) {
    const weight = new Int8Array(rows * q.inFeatures);
    const scales = new Float32Array(rows);
    let at = 0;
    for (const part of parts as QuantizedLinearSource[]) {
      weight.set(part.weight, at * q.inFeatures);
      scales.set(part.scales, at);
      at += part.outFeatures;
    }
    return { weight, scales, bias, outFeatures: rows, inFeatures: q.inFeatures };
  }
  const floats = parts.map(dequantizeLinear);
  const weight = new Float32Array(rows * q.inFeatures);
  let offset = 0;
  for (const part of floats) {
    weight.set(part.weight, offset);
    offset += part.weight.length;
  }
  return { weight, bias, outFeatures: rows, inFeatures: q.inFeatures };
}

/**
 * Multiplies each output channel of a linear layer by `factors[o]` (a number applies to
 * all): `γ ⊙ (x·Wᵀ + b)` = `x·(γ⊙W)ᵀ + γ⊙b`. Exact for powers of two such as ½.
 * An int8 layer keeps its int8 weights: only scales (and signs) change.
 */
export function scaleOutputs(params: LinearParams, factors: number | Float32Array): LinearParams {
  const { outFeatures, inFeatures } = params;
  const factor = (o: number) => typeof factors === "number" ? factors : factors[o];
  const bias = new Float32Array(outFeatures);
  for (let o = 0; o < outFeatures; o++) bias[o] = (params.bias ? params.bias[o] : 0) * factor(o);
  const keepBias = params.bias !== null || typeof factors !== "number";
  if (isQuantizedLinear(params)) {
    // Negative factors flip the int8 row, so scales stay positive (symmetric range ±127).
    const weight = new Int8Array(params.weight);
    const scales = new Float32Array(outFeatures);
    for (let o = 0; o < outFeatures; o++) {
      const f = factor(o);
      scales[o] = params.scales[o] * Math.abs(f);
      if (f < 0) {
        for (let i = 0; i < inFeatures; i++) weight[o * inFeatures + i] *= -1;
      }
    }
    return { weight, scales, bias: keepBias ? bias : null, outFeatures, inFeatures };
  }
  const weight = new Float32Array(params.weight.length);
  for (let o = 0; o < outFeatures; o++) {
    const f = factor(o);
    for (let i = 0; i < inFeatures; i++) {
      weight[o * inFeatures + i] = params.weight[o * inFeatures + i] * f;
    }
  }
  return { weight, bias: keepBias ? bias : null, outFeatures, inFeatures };
}

/** Multiplies a linear layer by a constant (exact for powers of two such as ½). */
export function scaleLinear(params: LinearParams, factor: number): LinearParams {
  return scaleOutputs(params, factor);
}

/**
 * Folds a per-channel layer scale (timm `ls1.gamma`, `ls2.gamma`) into the linear layer
 * it follows.
 */
export function foldLayerScale(params: LinearParams, gamma: Float32Array): LinearParams {
  return scaleOutputs(params, gamma);
}

/** Adds `[prefix, dim]` positions to the prefix tokens (rows of one array). */
export function addRows(tokens: Float32Array, positions: Float32Array): Float32Array {
  const out = new Float32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) out[i] = tokens[i] + positions[i];
  return out;
}

/** The geometry that distinguishes one standard ViT from another. */
export interface VitGeometry {
  /** Square input side, or `[height, width]`. */
  imageSize: number | readonly [number, number];
  patchSize: number;
  dim: number;
  depth: number;
  heads: number;
  mlpDim: number;
  numClasses: number;
  channels?: number;
}

/**
 * A timm / DeiT-style ViT (conv patch embedding, CLS pooling, final norm over the
 * tokens, qkv bias, LayerNorm eps 1e-6) of the given geometry, like candle's
 * `vit_base_patch16_224()` presets; `overrides` changes any other field.
 *
 * @example
 * ```ts
 * import { standardVitConfig } from "./vit.ts";
 * const deitTiny = standardVitConfig({
 *   imageSize: 224, patchSize: 16, dim: 192, depth: 12, heads: 3, mlpDim: 768, numClasses: 1000,
 * });
 * console.log(deitTiny.headDim); // 64
 * ```
 */
export function standardVitConfig(
  geometry: VitGeometry,
  overrides: Partial<VitConfig> = {},
): VitConfig {
  const [imageHeight, imageWidth] = typeof geometry.imageSize === "number"
    ? [geometry.imageSize, geometry.imageSize]
    : geometry.imageSize;
  return {
    imageHeight,
    imageWidth,
    patchHeight: geometry.patchSize,
    patchWidth: geometry.patchSize,
    channels: geometry.channels ?? 3,
    dim: geometry.dim,
    depth: geometry.depth,
    heads: geometry.heads,
    headDim: geometry.dim / geometry.heads,
    mlpDim: geometry.mlpDim,
    numClasses: geometry.numClasses,
    classToken: true,
    distillationToken: false,
    pool: "cls",
    finalNorm: "tokens",
    head: "single",
    preNorm: false,
    qkvBias: true,
    attentionProjection: true,
    projectionBias: true,
    layerNormEps: 1e-6,
    patchEmbedding: "conv",
    ...overrides,
  };
}

/** A small deterministic PRNG (mulberry32) for tests and benches. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Random weights of the right shapes (benches, tests): linears uniform in ±1/√in, norms
 * near 1, small biases, so activations stay in a realistic range.
 */
export function randomVitWeights(config: VitConfig, seed = 1): VitWeights {
  const random = seededRandom(seed);
  const uniform = (length: number, scale: number) => {
    const out = new Float32Array(length);
    for (let i = 0; i < length; i++) out[i] = (random() * 2 - 1) * scale;
    return out;
  };
  const linear = (out: number, inp: number, bias = true): LinearSource => ({
    weight: uniform(out * inp, 1 / Math.sqrt(inp)),
    bias: bias ? uniform(out, 0.02) : null,
    outFeatures: out,
    inFeatures: inp,
  });
  const norm = (size: number): NormWeights => ({
    gamma: uniform(size, 0.1).map((value) => 1 + value),
    beta: uniform(size, 0.02),
  });
  const { dim, mlpDim } = config;
  const width = config.heads * config.headDim;
  const patchDim = config.patchHeight * config.patchWidth * config.channels;
  const prefix = prefixCount(config);
  const conv = config.patchEmbedding === "conv";
  return {
    patchEmbedding: {
      inputNorm: conv ? null : norm(patchDim),
      linear: linear(dim, patchDim),
      outputNorm: conv ? null : norm(dim),
    },
    prefixTokens: prefix > 0 ? uniform(prefix * dim, 0.5) : null,
    patchPositions: uniform(patchCount(config) * dim, 0.5),
    preNorm: config.preNorm ? norm(dim) : null,
    blocks: Array.from({ length: config.depth }, () => ({
      norm1: norm(dim),
      qkv: linear(3 * width, dim, config.qkvBias),
      proj: config.attentionProjection ? linear(dim, width, config.projectionBias) : null,
      norm2: norm(dim),
      fc1: linear(mlpDim, dim),
      fc2: linear(dim, mlpDim),
    })),
    finalNorm: config.finalNorm === "none" ? null : norm(dim),
    heads: Array.from(
      { length: config.head === "distilled" ? 2 : 1 },
      () => linear(config.numClasses, dim),
    ),
  };
}
