/**
 * PatchMerger (Renggli et al., 2022, arXiv 2202.12015): a learned merge of an image's
 * tokens into `M` tokens, as vit-pytorch's `vit_with_patch_merger` computes it
 * (lucidrains/vit-pytorch, `vit_pytorch/vit_with_patch_merger.py`):
 * `LN(x)`, then `softmax(queries · LN(x)ᵀ · dim^-½) · LN(x)` over each image's tokens,
 * with no residual.
 *
 * Here it is one backend attention op with a single head of width `dim`: q = the `M`
 * learned queries tiled once per image (query segment = image), k = v = the normed
 * tokens (key segment = image), so a batch merges in one call without padding.
 *
 * - {@link PatchMerger}: the module on its own, over a {@link TokenStream};
 * - {@link patchMergerHooks}: it as an `afterBlock` hook of `vit.ts`'s encoder;
 * - {@link buildPatchMergerVit}: vit-pytorch's `vit_with_patch_merger.ViT`, where the
 *   merge follows block `patch_merge_layer - 1` (0-based), i.e. after the first
 *   `patch_merge_layer` blocks; default `depth // 2`; 0 (or more than `depth`) never merges,
 *   as in vit-pytorch.
 *
 * @module
 */

import type { Backend, Precision, Tensor } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { ConfigReader } from "../loaders/config.ts";
import { readNormLinearNormEmbedding, readVitPytorchGeometry } from "../loaders/vit_pytorch.ts";
import type { WeightStore } from "../loaders/weights.ts";
import { type BuildOptions, readVitPytorchBlocks, vitPytorchFamilyConfig } from "./ats_vit.ts";
import type { ForwardOptions, ForwardOutput, VisionArchitecture } from "./types.ts";
import {
  applyNorm,
  type EncoderHooks,
  type NormWeights,
  patchCount,
  type PreparedNorm,
  prepareNorm,
  releaseNorm,
  segmentLengths,
  type TokenStream,
  uniformSegments,
  type VitConfig,
  VitModel,
  type VitWeights,
} from "./vit.ts";

/** A PatchMerger's parameters on the host. */
export interface PatchMergerWeights {
  /** `[M, dim]` learned queries. */
  queries: Float32Array;
  norm: NormWeights;
}

/**
 * The PatchMerger module on a backend.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { PatchMerger } from "./patch_merger.ts";
 * import { uniformSegments } from "./vit.ts";
 * const backend = new ReferenceBackend();
 * const dim = 4;
 * const merger = PatchMerger.create(backend, {
 *   queries: new Float32Array(2 * dim).map((_, i) => Math.sin(i)),
 *   norm: { gamma: new Float32Array(dim).fill(1), beta: new Float32Array(dim) },
 * }, 1e-5);
 * // two images of 5 and 3 tokens → 2 tokens each
 * const x = backend.upload(new Float32Array(8 * dim).map((_, i) => Math.cos(i)), [8, dim]);
 * const merged = merger.apply({ x, segments: { ids: new Int32Array([0, 0, 0, 0, 0, 1, 1, 1]), offsets: new Int32Array([0, 5, 8]) } });
 * console.log(merged.x.shape); // [4, 4]
 * merger.dispose();
 * ```
 */
export class PatchMerger {
  /** Tokens each image is merged into. */
  readonly tokens: number;
  readonly dim: number;
  readonly #backend: Backend;
  readonly #queries: Tensor; // [M, dim]
  readonly #norm: PreparedNorm;

  private constructor(backend: Backend, weights: PatchMergerWeights, eps: number) {
    const dim = weights.norm.gamma.length;
    if (dim === 0 || weights.queries.length === 0 || weights.queries.length % dim !== 0) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `PatchMerger queries hold ${weights.queries.length} values, not a multiple of dim ${dim}`,
      );
    }
    this.#backend = backend;
    this.dim = dim;
    this.tokens = weights.queries.length / dim;
    this.#queries = backend.upload(weights.queries, [this.tokens, dim]);
    this.#norm = prepareNorm(backend, weights.norm, eps);
  }

  /**
   * Uploads a PatchMerger.
   *
   * @param weights `queries` `[M, dim]` and the LayerNorm
   * @param eps the LayerNorm's epsilon (`nn.LayerNorm`: 1e-5)
   */
  static create(backend: Backend, weights: PatchMergerWeights, eps = 1e-5): PatchMerger {
    return new PatchMerger(backend, weights, eps);
  }

  /**
   * Merges each image (segment) of `stream` into {@link tokens} rows. Does not consume
   * `stream.x`.
   *
   * @returns `[images · M, dim]` with one segment of `M` rows per image
   * @throws {EdgeVitError} `invalid_argument` for an image with no tokens
   */
  apply(stream: TokenStream): TokenStream {
    const backend = this.#backend;
    const lengths = segmentLengths(stream.segments);
    if (lengths.some((length) => length === 0)) {
      throw new EdgeVitError("invalid_argument", "PatchMerger got an image with no tokens");
    }
    const images = lengths.length;
    const M = this.tokens;
    const tiled = new Int32Array(images * M);
    for (let i = 0; i < tiled.length; i++) tiled[i] = i % M;
    const segments = uniformSegments(images, M);
    const queries = backend.gatherRows(this.#queries, tiled); // [images·M, dim]
    const normed = applyNorm(backend, stream.x, this.#norm); // [rows, dim]
    try {
      const { output } = backend.attention(queries, normed, normed, {
        heads: 1,
        headDim: this.dim,
        scale: this.dim ** -0.5,
        querySegments: segments.ids,
        keySegments: stream.segments.ids,
      });
      return { x: output, segments };
    } finally {
      backend.release(queries);
      backend.release(normed);
    }
  }

  /** Frees the uploaded parameters. */
  dispose(): void {
    this.#backend.release(this.#queries);
    releaseNorm(this.#backend, this.#norm);
  }
}

/**
 * Encoder hooks that merge the tokens after block `layerIndex` (0-based).
 *
 * @example
 * ```ts
 * import { patchMergerHooks } from "./patch_merger.ts";
 * // given a PatchMerger `merger` and a VitModel built with `{ hooks: () => patchMergerHooks(merger, 5) }`,
 * // the tokens are merged after the sixth block
 * console.log(typeof patchMergerHooks);
 * ```
 */
export function patchMergerHooks(merger: PatchMerger, layerIndex: number): EncoderHooks {
  return {
    afterBlock({ backend, layer, stream }) {
      if (layer !== layerIndex) return null;
      const merged = merger.apply(stream);
      backend.release(stream.x);
      return merged;
    },
  };
}

/**
 * vit-pytorch's `vit_with_patch_merger.ViT` from its kwargs and state dict: no CLS token,
 * the PatchMerger after block `patch_merge_layer - 1`, a final LayerNorm over the tokens,
 * mean pooling and a linear head.
 *
 * @param backend where the model runs
 * @param kwargs the constructor arguments (config.json's `kwargs`)
 * @param store the state dict under vit-pytorch's names
 * @throws {EdgeVitError} `invalid_config` / `invalid_checkpoint` when they disagree
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { parseSafetensors } from "../loaders/safetensors.ts";
 * import { WeightStore } from "../loaders/weights.ts";
 * import { buildPatchMergerVit } from "./patch_merger.ts";
 * const dir = "../shared/fixtures/parity/vitpytorch-patchmerger";
 * const { kwargs } = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const model = buildPatchMergerVit(new ReferenceBackend(), kwargs, WeightStore.fromSafetensors(file.tensors.values()));
 * const out = await model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]);
 * console.log(out.tokensPerImage); // [36]: 64 tokens in block 0, 8 in block 1
 * model.dispose();
 * ```
 */
export function buildPatchMergerVit(
  backend: Backend,
  kwargs: Record<string, unknown>,
  store: WeightStore,
  options: BuildOptions = {},
): PatchMergerVit {
  const source = options.source ?? "vit_with_patch_merger.ViT";
  const reader = new ConfigReader(kwargs, `${source} kwargs`);
  const geometry = readVitPytorchGeometry(reader);
  // vit-pytorch drops to_out when a single head already spans dim
  const projection = !(geometry.heads === 1 && geometry.headDim === geometry.dim);
  const config: VitConfig = {
    ...vitPytorchFamilyConfig(geometry),
    classToken: false,
    pool: "mean",
    finalNorm: "tokens", // transformer.norm, before the mean
    attentionProjection: projection,
  };
  // default(patch_merge_layer, depth // 2): 0 is kept as 0, which never merges
  const mergeLayer = reader.count("patch_merge_layer", Math.floor(config.depth / 2));
  const mergeTokens = reader.int("patch_merge_num_tokens", 8);
  const { dim } = config;
  const patches = patchCount(config);
  // pos_embedding has num_patches + 1 rows, but without a CLS token only the first
  // num_patches are added.
  const positions = store.getSqueezed("pos_embedding", [patches + 1, dim]).data;
  const weights: VitWeights = {
    patchEmbedding: readNormLinearNormEmbedding(store, geometry),
    prefixTokens: null,
    patchPositions: positions.slice(0, patches * dim),
    preNorm: null,
    blocks: readVitPytorchBlocks(store, geometry, projection),
    finalNorm: store.layerNorm("transformer.norm", dim),
    heads: [store.linear("mlp_head.1", config.numClasses, dim)],
  };
  const mergerWeights: PatchMergerWeights = {
    queries: store.get("transformer.patch_merger.queries", [mergeTokens, dim]).data,
    norm: store.layerNorm("transformer.patch_merger.norm", dim),
  };
  store.assertAllUsed();
  const merger = PatchMerger.create(backend, mergerWeights, config.layerNormEps);
  const layerIndex = mergeLayer - 1;
  try {
    const inner = VitModel.create(backend, config, weights, {
      precision: options.precision,
      hooks: () => patchMergerHooks(merger, layerIndex),
      source,
    });
    return new PatchMergerVit(inner, merger, layerIndex);
  } catch (error) {
    merger.dispose();
    throw error;
  }
}

/** A ViT whose encoder merges its tokens once; owns the merger's parameters. */
export class PatchMergerVit implements VisionArchitecture {
  readonly numClasses: number;
  readonly channels: number;
  readonly inputSize: { height: number; width: number };
  readonly patchSize: number;
  readonly precision: Precision;
  readonly backend: Backend;
  #disposed = false;

  constructor(
    /** The ViT running with the merge hook. */
    readonly model: VitModel,
    readonly merger: PatchMerger,
    /** 0-based block after which the merge happens (-1 or ≥ depth: never). */
    readonly mergeAfterBlock: number,
  ) {
    this.numClasses = model.numClasses;
    this.channels = model.channels;
    this.inputSize = model.inputSize;
    this.patchSize = model.patchSize;
    this.precision = model.precision;
    this.backend = model.backend;
  }

  /** The ViT's config. */
  get config(): Readonly<VitConfig> {
    return this.model.config;
  }

  forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    return this.model.forward(pixels, shape, options);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.model.dispose();
    this.merger.dispose();
  }
}
