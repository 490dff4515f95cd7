/**
 * Adaptive Token Sampling in the engine (Fayyaz et al., 2021, arXiv 2111.15667):
 *
 * - {@link createAtsHooks}: ATS as {@link EncoderHooks} of `vit.ts`, so it can be switched
 *   on for any ViT with a CLS token (vit-pytorch, Hugging Face, timm), since it has no
 *   weights of its own;
 * - {@link buildAtsVit}: vit-pytorch's `ats_vit.ViT` (lucidrains/vit-pytorch,
 *   `vit_pytorch/ats_vit.py`) loaded from its state dict, with the deterministic sampling
 *   rule of `shared/specs/ats-sampling.md` (see `ats.ts`) in place of Gumbel sampling.
 *
 * How a pruning layer runs: attention over all of the layer's tokens as usual, also
 * returning each image's CLS attention row; the value norms come from `headNorms` over
 * the V columns of the fused qkv. The host picks the kept tokens per image, then the
 * attention output rows and the residual rows are gathered at the kept rows (CLS first)
 * before the output projection. Attention rows are independent of each other, so
 * gathering the full output equals `A[:, kept, :] · V`.
 *
 * Each image keeps its own set and is pruned only when *it* has more patch tokens than the
 * budget. vit-pytorch decides on the padded batch length instead (so an image with few
 * tokens can be resampled because another image in the batch has many); here an image's
 * result never depends on what else is in its batch, which a served model needs. With
 * batches of one, or images that all exceed the budget, both agree.
 *
 * @module
 */

import type { Backend, Precision } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { ConfigReader } from "../loaders/config.ts";
import {
  readNormLinearNormEmbedding,
  readVitPytorchBlock,
  readVitPytorchGeometry,
  TORCH_LAYER_NORM_EPS,
  type VitPytorchGeometry,
} from "../loaders/vit_pytorch.ts";
import type { WeightStore } from "../loaders/weights.ts";
import { atsSignificance, effectiveBudgets, sampleTokens } from "./ats.ts";
import type { ForwardOptions, ForwardOutput, VisionArchitecture } from "./types.ts";
import {
  addRows,
  type AttentionHookContext,
  type BlockWeights,
  type EncoderHooks,
  patchCount,
  prefixCount,
  type RowSelection,
  selectSegments,
  type VitConfig,
  VitModel,
  type VitWeights,
} from "./vit.ts";

/** How ATS is switched on for a model: one budget per layer (`null`: that layer keeps all). */
export interface AtsSettings {
  /**
   * Most patch tokens each layer keeps: one number for every layer, or one entry per
   * layer (`null` for a layer that does not prune).
   */
  maxTokensPerDepth: number | readonly (number | null)[];
}

/**
 * Checks ATS settings against a model and expands them to one budget per layer.
 *
 * @throws {EdgeVitError} `unsupported` for a model without a CLS token, `invalid_config`
 *   for budgets that are not positive integers or a list of the wrong length
 */
export function atsBudgets(config: VitConfig, settings?: AtsSettings): (number | null)[] {
  if (!config.classToken) {
    throw new EdgeVitError(
      "unsupported",
      "ATS needs a CLS token: its significance is the attention the CLS token pays",
    );
  }
  if (!settings) return new Array(config.depth).fill(null);
  const given = settings.maxTokensPerDepth;
  const list = typeof given === "number" ? new Array(config.depth).fill(given) : [...given];
  if (list.length !== config.depth) {
    throw new EdgeVitError(
      "invalid_config",
      `ATS max_tokens_per_depth lists ${list.length} budgets for ${config.depth} layers`,
    );
  }
  list.forEach((budget, layer) => {
    if (budget !== null && !(Number.isSafeInteger(budget) && budget > 0)) {
      throw new EdgeVitError(
        "invalid_config",
        `ATS budget of layer ${layer} must be a positive integer, got ${JSON.stringify(budget)}`,
      );
    }
  });
  return list;
}

/**
 * ATS as encoder hooks for a ViT with a CLS token, one set of hooks per forward call.
 * Pass the result as `hooks` of {@link VitModel.create}. Without budgets in the settings,
 * a pass prunes only when a request asks for it with `tokenBudget`.
 *
 * @param config the model's config (needs a CLS token)
 * @param settings the budgets per layer (the checkpoint's, or the loader option's)
 * @returns a factory of per-call hooks; undefined from it means a plain pass
 * @throws {EdgeVitError} see {@link atsBudgets}
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { randomVitWeights, type VitConfig, VitModel } from "./vit.ts";
 * import { createAtsHooks } from "./ats_vit.ts";
 * const config: VitConfig = {
 *   imageHeight: 16, imageWidth: 16, patchHeight: 4, patchWidth: 4, channels: 3,
 *   dim: 16, depth: 2, heads: 2, headDim: 8, mlpDim: 32, numClasses: 3,
 *   classToken: true, distillationToken: false, pool: "cls", finalNorm: "tokens",
 *   head: "single", preNorm: false, qkvBias: true, attentionProjection: true,
 *   projectionBias: true, layerNormEps: 1e-6, patchEmbedding: "conv",
 * };
 * const model = VitModel.create(new ReferenceBackend(), config, randomVitWeights(config), {
 *   hooks: createAtsHooks(config, { maxTokensPerDepth: [8, 4] }),
 * });
 * const out = await model.forward(new Float32Array(3 * 16 * 16), [1, 3, 16, 16], {
 *   returnTokenIds: true,
 * });
 * console.log(out.tokenIds![1][0].length <= 4); // true
 * model.dispose();
 * ```
 */
export function createAtsHooks(
  config: VitConfig,
  settings?: AtsSettings,
): (options: ForwardOptions | undefined) => EncoderHooks | undefined {
  const configured = atsBudgets(config, settings);
  const prefix = prefixCount(config);
  return (options) => {
    const budgets = effectiveBudgets(configured, options?.tokenBudget);
    if (budgets.every((budget) => budget === null) && !options?.returnTokenIds) return undefined;
    return new AtsPass(budgets, prefix, options?.returnTokenIds ?? false);
  };
}

/**
 * Switches ATS on for an already built ViT with a CLS token (vit-pytorch `ViT`, Hugging
 * Face, timm, DeiT): each forward runs the model with ATS hooks, `settings` giving the
 * budgets, which requests may lower further with `tokenBudget`.
 *
 * @param architecture a model built by `vit.ts` ({@link VitModel})
 * @param settings budgets per layer
 * @returns a model that prunes; it owns `architecture` (disposing it disposes both)
 * @throws {EdgeVitError} `unsupported` for other architectures or a model without CLS token;
 *   `invalid_config` for bad budgets
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { randomVitWeights, type VitConfig, VitModel } from "./vit.ts";
 * import { withAts } from "./ats_vit.ts";
 * const config: VitConfig = {
 *   imageHeight: 16, imageWidth: 16, patchHeight: 4, patchWidth: 4, channels: 3,
 *   dim: 16, depth: 2, heads: 2, headDim: 8, mlpDim: 32, numClasses: 3,
 *   classToken: true, distillationToken: false, pool: "cls", finalNorm: "tokens",
 *   head: "single", preNorm: false, qkvBias: true, attentionProjection: true,
 *   projectionBias: true, layerNormEps: 1e-6, patchEmbedding: "conv",
 * };
 * const plain = VitModel.create(new ReferenceBackend(), config, randomVitWeights(config));
 * const pruned = withAts(plain, { maxTokensPerDepth: 8 });
 * const out = await pruned.forward(new Float32Array(3 * 16 * 16), [1, 3, 16, 16]);
 * console.log(out.tokensPerImage[0] < 16); // true
 * pruned.dispose();
 * ```
 */
export function withAts(architecture: VisionArchitecture, settings: AtsSettings): AtsVit {
  if (!(architecture instanceof VitModel)) {
    throw new EdgeVitError(
      "unsupported",
      "ATS can be switched on for ViT-family models (vit-pytorch ViT, Hugging Face, timm) only",
    );
  }
  return new AtsVit(architecture, createAtsHooks(architecture.config, settings));
}

/** A ViT run with ATS hooks; see {@link withAts}. */
export class AtsVit implements VisionArchitecture {
  readonly numClasses: number;
  readonly channels: number;
  readonly inputSize: { height: number; width: number };
  readonly patchSize: number;
  readonly precision: Precision;
  readonly backend: Backend;
  readonly #hooks: (options: ForwardOptions | undefined) => EncoderHooks | undefined;

  constructor(
    /** The ViT being pruned. */
    readonly model: VitModel,
    hooks: (options: ForwardOptions | undefined) => EncoderHooks | undefined,
  ) {
    this.#hooks = hooks;
    this.numClasses = model.numClasses;
    this.channels = model.channels;
    this.inputSize = model.inputSize;
    this.patchSize = model.patchSize;
    this.precision = model.precision;
    this.backend = model.backend;
  }

  async forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    return await this.model.forwardWithHooks(pixels, shape, this.#hooks(options));
  }

  dispose(): void {
    this.model.dispose();
  }
}

/** The state of ATS over one forward pass: which original patches each row holds. */
class AtsPass implements EncoderHooks {
  /** `tokenIds[layer][image]`: original patch indices kept after that layer. */
  readonly #tokenIds: Int32Array[][] = [];
  /** Original patch index of each patch row, per image (null until the first layer). */
  #patchIds: Int32Array[] | null = null;

  constructor(
    readonly budgets: readonly (number | null)[],
    readonly prefix: number,
    readonly returnTokenIds: boolean,
  ) {}

  wantsClsAttention(layer: number): boolean {
    return this.budgets[layer] !== null;
  }

  async afterAttention(context: AttentionHookContext): Promise<RowSelection | null> {
    const { backend, layer, heads, headDim, segments } = context;
    const { offsets } = segments;
    const images = offsets.length - 1;
    const prefix = this.prefix;
    this.#patchIds ??= Array.from(
      { length: images },
      (_, s) => Int32Array.from({ length: offsets[s + 1] - offsets[s] - prefix }, (_, j) => j),
    );
    const budget = this.budgets[layer];
    const patchCounts = this.#patchIds.map((ids) => ids.length);
    const prunes = budget !== null && context.clsAttention !== undefined &&
      patchCounts.some((count) => count > budget);
    if (!prunes) {
      this.#record();
      return null;
    }
    const width = heads * headDim;
    const norms = backend.headNorms(context.qkv, heads, headDim, 2 * width); // [rows, heads]
    let clsAttention: Float32Array;
    let valueNorms: Float32Array;
    try {
      [clsAttention, valueNorms] = await Promise.all([
        backend.read(context.clsAttention!),
        backend.read(norms),
      ]);
    } finally {
      backend.release(norms);
    }
    const rows: number[] = [];
    for (let s = 0; s < images; s++) {
      const start = offsets[s];
      for (let p = 0; p < prefix; p++) rows.push(start + p);
      const ids = this.#patchIds[s];
      if (ids.length <= budget!) {
        for (let j = 0; j < ids.length; j++) rows.push(start + prefix + j);
        continue;
      }
      const significance = atsSignificance(
        clsAttention,
        valueNorms,
        heads,
        start + prefix,
        ids.length,
      );
      const kept = sampleTokens(significance, budget!);
      for (const j of kept) rows.push(start + prefix + j);
      this.#patchIds[s] = Int32Array.from(kept, (j) => ids[j]);
    }
    this.#record();
    const selected = Int32Array.from(rows);
    return { rows: selected, segments: selectSegments(segments, selected) };
  }

  finish(): Partial<ForwardOutput> {
    return this.returnTokenIds ? { tokenIds: this.#tokenIds } : {};
  }

  #record(): void {
    if (this.returnTokenIds && this.#patchIds) {
      this.#tokenIds.push(this.#patchIds.map((ids) => new Int32Array(ids)));
    }
  }
}

// ─── vit-pytorch checkpoints ────────────────────────────────────────────────────────

/**
 * The blocks of a vit-pytorch ViT-family `Transformer` (`ats_vit`, `vit_with_patch_merger`
 * name them as `vit.ViT` does: Attention `to_qkv` without bias, `to_out.0`; FeedForward
 * `net.0`, `net.1`, `net.4`).
 */
export function readVitPytorchBlocks(
  store: WeightStore,
  geometry: VitPytorchGeometry,
  projection: boolean,
): BlockWeights[] {
  return Array.from(
    { length: geometry.depth },
    (_, layer) =>
      readVitPytorchBlock(store, `transformer.layers.${layer}`, geometry, {
        outName: "to_out.0",
        fc2Index: 4,
        projection,
        projectionBias: true,
      }),
  );
}

/** The canonical config fields every vit-pytorch ViT-family model shares. */
export function vitPytorchFamilyConfig(
  geometry: VitPytorchGeometry,
): Omit<VitConfig, "classToken" | "pool" | "finalNorm" | "attentionProjection"> {
  return {
    ...geometry,
    distillationToken: false,
    head: "single",
    preNorm: false,
    qkvBias: false,
    projectionBias: true,
    layerNormEps: TORCH_LAYER_NORM_EPS,
    patchEmbedding: "norm_linear_norm",
  };
}

/** Options of the vit-pytorch builders. */
export interface BuildOptions {
  precision?: Precision;
  /** Name for error messages. */
  source?: string;
}

/**
 * vit-pytorch's `ats_vit.ViT` from its kwargs and state dict. `max_tokens_per_depth` is
 * the per-layer budget; requests may lower it with `tokenBudget`.
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
 * import { buildAtsVit } from "./ats_vit.ts";
 * const dir = "../shared/fixtures/parity/vitpytorch-ats";
 * const { kwargs } = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const model = buildAtsVit(new ReferenceBackend(), kwargs, WeightStore.fromSafetensors(file.tensors.values()));
 * const out = await model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32], { returnTokenIds: true });
 * console.log(out.tokenIds!.length); // 2 layers
 * model.dispose();
 * ```
 */
export function buildAtsVit(
  backend: Backend,
  kwargs: Record<string, unknown>,
  store: WeightStore,
  options: BuildOptions = {},
): VitModel {
  const source = options.source ?? "ats_vit.ViT";
  const reader = new ConfigReader(kwargs, `${source} kwargs`);
  const geometry = readVitPytorchGeometry(reader);
  const config: VitConfig = {
    ...vitPytorchFamilyConfig(geometry),
    classToken: true,
    pool: "cls",
    // mlp_head = LayerNorm → Linear on the CLS row
    finalNorm: "pooled",
    attentionProjection: true,
  };
  const budgets = reader.numbers("max_tokens_per_depth", config.depth);
  if (!budgets) {
    throw new EdgeVitError(
      "invalid_config",
      `${source} kwargs: "max_tokens_per_depth" (one budget per layer) is required`,
    );
  }
  const hooks = createAtsHooks(config, { maxTokensPerDepth: budgets });
  const { dim } = config;
  const patches = patchCount(config);
  const positions = store.getSqueezed("pos_embedding", [patches + 1, dim]).data;
  const cls = store.getSqueezed("cls_token", [1, dim]).data;
  const weights: VitWeights = {
    patchEmbedding: readNormLinearNormEmbedding(store, geometry),
    prefixTokens: addRows(cls, positions.subarray(0, dim)),
    patchPositions: positions.slice(dim),
    preNorm: null,
    blocks: readVitPytorchBlocks(store, geometry, true),
    finalNorm: store.layerNorm("mlp_head.0", dim),
    heads: [store.linear("mlp_head.1", config.numClasses, dim)],
  };
  store.assertAllUsed();
  return VitModel.create(backend, config, weights, {
    precision: options.precision,
    hooks,
    source,
  });
}
