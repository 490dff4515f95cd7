/**
 * NaViT (Patch n' Pack; Dehghani et al., 2023, arXiv 2307.06304) as vit-pytorch's
 * `na_vit.NaViT` computes it (lucidrains/vit-pytorch, `vit_pytorch/na_vit.py`):
 *
 * - each image is cut into `p × p` patches at its own resolution, a patch flattened as
 *   `(c p1 p2)`, embedded by LayerNorm → Linear → LayerNorm;
 * - factorized absolute 2-D positions: `pos_embed_height[row] + pos_embed_width[col]`;
 * - pre-norm blocks whose LayerNorms have a fixed `beta` buffer, bias-free q / kv / out
 *   projections, and per-head RMS norms of q and k (`F.normalize · √d · gamma`) that
 *   replace the usual `d^-½` scale;
 * - a final LayerNorm, then attention pooling: one learned query per image attends to
 *   that image's tokens, plus the query as residual; then LayerNorm → Linear (no bias).
 *
 * vit-pytorch pads the packed sequences of a batch to one length and masks attention to
 * `image_id(i) == image_id(j)` and to real keys. Here a packed sequence is the images'
 * tokens stacked with one segment id per image and nothing else: a query's softmax runs
 * over exactly the keys the mask leaves (the same image's tokens), every other op works
 * row by row, and padded rows only ever produce outputs that vit-pytorch discards. So the
 * results are the same, without computing the padding or the masked blocks.
 *
 * @module
 */

import type { Backend, LinearWeights, Precision, Tensor } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { ConfigReader } from "../loaders/config.ts";
import { linearFromMatrix, matrixRows, stackMatrices } from "../loaders/quantized.ts";
import { type HostTensor, type LinearMatrix, WeightStore } from "../loaders/weights.ts";
import { packGreedy, validateGroups } from "./packing.ts";
import type {
  ForwardOptions,
  ForwardOutput,
  KeptFloatReport,
  PackedImage,
  VisionArchitecture,
} from "./types.ts";
import { prepareLinearParams, seededRandom } from "./vit.ts";

/** vit-pytorch `NaViT` constructor arguments (the ones inference needs). */
export interface NaViTConfig {
  /** Largest image: `[height, width]` (an int in kwargs means a square). */
  imageSize: [number, number];
  patchSize: number;
  numClasses: number;
  dim: number;
  depth: number;
  heads: number;
  dimHead: number;
  mlpDim: number;
  channels: number;
}

/** F.layer_norm's default. */
const LAYER_NORM_EPS = 1e-5;

/**
 * Reads NaViT's kwargs as vit-pytorch's constructor takes them.
 *
 * @throws {EdgeVitError} `invalid_config` for missing or malformed fields
 *
 * @example
 * ```ts
 * import { parseNaViTConfig } from "./navit.ts";
 * const config = parseNaViTConfig({
 *   image_size: 64, patch_size: 8, num_classes: 10, dim: 64, depth: 2, heads: 4, mlp_dim: 128,
 * });
 * console.log(config.imageSize, config.dimHead); // [64, 64] 64
 * ```
 */
export function parseNaViTConfig(kwargs: Record<string, unknown>, source = "NaViT"): NaViTConfig {
  const reader = new ConfigReader(kwargs, `${source} kwargs`);
  const imageSize = reader.pair("image_size");
  const patchSize = reader.int("patch_size");
  if (imageSize.some((side) => side % patchSize !== 0)) {
    throw new EdgeVitError(
      "invalid_config",
      `${source}: image_size [${imageSize}] is not a multiple of patch_size ${patchSize}`,
    );
  }
  return {
    imageSize,
    patchSize,
    numClasses: reader.int("num_classes"),
    dim: reader.int("dim"),
    depth: reader.int("depth"),
    heads: reader.int("heads"),
    dimHead: reader.int("dim_head", 64),
    mlpDim: reader.int("mlp_dim"),
    channels: reader.int("channels", 3),
  };
}

/** Limits an image must respect to be fed to a NaViT as it is. */
export interface NaViTLimits {
  patchSize: number;
  /** Largest height and width (the model's `image_size`). */
  maxHeight: number;
  maxWidth: number;
  /** Most patches per image (default: the whole `image_size` grid). */
  maxPatches?: number;
}

/**
 * The resize policy for feeding arbitrary images to a NaViT: keep the aspect ratio,
 * shrink (never enlarge) by the one factor that fits the image within `maxHeight ×
 * maxWidth` and within `maxPatches` patches, then round each side to the nearest multiple
 * of the patch size (down where rounding up would break a limit; at least one patch).
 * Small images keep their few tokens, which is where NaViT saves work over a fixed size.
 * The service's image pipeline (`preprocessNative` in `src/image/preprocess.ts`) resizes
 * by this same policy (a test holds the two together); this copy keeps the model free of
 * the decoders' imports.
 *
 * @param height source height in pixels
 * @param width source width in pixels
 * @returns the size to resize to: both sides multiples of `patchSize`, within the limits
 * @throws {EdgeVitError} `invalid_argument` for a non-positive size
 *
 * @example
 * ```ts
 * import { navitTargetSize } from "./navit.ts";
 * // a 480×640 photo for a 224² model with 16-pixel patches
 * console.log(navitTargetSize(480, 640, { patchSize: 16, maxHeight: 224, maxWidth: 224 }));
 * // { height: 176, width: 224 }
 * ```
 */
export function navitTargetSize(
  height: number,
  width: number,
  limits: NaViTLimits,
): { height: number; width: number } {
  if (!(height > 0 && width > 0 && Number.isFinite(height) && Number.isFinite(width))) {
    throw new EdgeVitError("invalid_argument", `image size ${height}×${width} is not positive`);
  }
  const p = limits.patchSize;
  const maxH = Math.floor(limits.maxHeight / p);
  const maxW = Math.floor(limits.maxWidth / p);
  const maxPatches = limits.maxPatches ?? maxH * maxW;
  const scale = Math.min(
    1,
    limits.maxHeight / height,
    limits.maxWidth / width,
    Math.sqrt((maxPatches * p * p) / (height * width)),
  );
  let rows = Math.min(maxH, Math.max(1, Math.round((height * scale) / p)));
  let cols = Math.min(maxW, Math.max(1, Math.round((width * scale) / p)));
  // Rounding both sides up can overshoot the patch budget: give back on the longer side.
  while (rows * cols > maxPatches && (rows > 1 || cols > 1)) {
    if (rows >= cols) rows--;
    else cols--;
  }
  return { height: rows * p, width: cols * p };
}

interface Block {
  norm: [Tensor, Tensor];
  /** to_q and the k half of to_kv stacked: `[2·inner, dim]`. */
  qk: LinearWeights;
  /** The v half of to_kv: `[inner, dim]`. */
  v: LinearWeights;
  /** q_norm and k_norm gammas, head-major: `[2·inner]`. */
  qkGamma: Tensor;
  out: LinearWeights;
  ffNorm: [Tensor, Tensor];
  ff1: LinearWeights;
  ff2: LinearWeights;
}

/**
 * The largest attention logit NaViT's q/k RMS norms allow before int8 keeps the layers
 * that feed it float32. A head's logit is `q·k` with `‖q‖ ≤ √d·max|γ_q|` and
 * `‖k‖ ≤ √d·max|γ_k|`, so `d·max|γ_q|·max|γ_k|` bounds it; vit-pytorch initialises γ to
 * 1 (bound d: 16–64) and the trained navit-fmnist has |γ| ≤ 1.1 (bound 28). int8 moves a
 * projection by ~0.5% of its size, so at a bound of 256 a logit moves by about one unit,
 * an e-fold change of its softmax weight; past that the softmax is close to an argmax,
 * and any perturbation upstream (not only in q and k: every earlier layer feeds them)
 * changes which token wins. The shared random fixture's gains are ≈13 (bound ≈ 3000):
 * one int8 layer anywhere before its last attention drops the logits' cosine to ≈0.93.
 */
export const SHARP_ATTENTION_LOGIT_BOUND = 256;

/** Which linear layers must stay float32 at int8, from the q/k norm gains. */
interface KeptFloat {
  /** The patch embedding. */
  embedding: boolean;
  /** Per block: q and k (`logits`); v, out and the MLP (`rest`). */
  blocks: { logits: boolean; rest: boolean }[];
  /** The attention pool's q and k. */
  pool: boolean;
  maxLogitBound: number;
}

/**
 * Keeps float32 every linear layer upstream of the last sharp attention's logits (the
 * pool's v and out and the head never are): `gains` holds `[γ_q, γ_k]`, each
 * `[heads, 1, d]`, per block and then for the pool.
 */
function keptFloatLinears(
  gains: readonly (readonly [Float32Array, Float32Array])[],
  heads: number,
  dimHead: number,
): KeptFloat {
  const bounds = gains.map(([gq, gk]) => {
    let bound = 0;
    for (let h = 0; h < heads; h++) {
      let q = 0;
      let k = 0;
      for (let i = h * dimHead; i < (h + 1) * dimHead; i++) {
        q = Math.max(q, Math.abs(gq[i]));
        k = Math.max(k, Math.abs(gk[i]));
      }
      bound = Math.max(bound, dimHead * q * k);
    }
    return bound;
  });
  const last = bounds.findLastIndex((bound) => !(bound <= SHARP_ATTENTION_LOGIT_BOUND));
  const depth = gains.length - 1;
  return {
    embedding: last >= 0,
    blocks: Array.from({ length: depth }, (_, layer) => ({
      logits: layer <= last,
      rest: layer < last,
    })),
    pool: last === depth,
    maxLogitBound: Math.max(...bounds),
  };
}

interface Pool {
  norm: [Tensor, Tensor];
  q: LinearWeights;
  k: LinearWeights;
  v: LinearWeights;
  qGamma: Tensor;
  kGamma: Tensor;
  out: LinearWeights;
}

/**
 * vit-pytorch's NaViT on a backend.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { parseSafetensors } from "../loaders/safetensors.ts";
 * import { WeightStore } from "../loaders/weights.ts";
 * import { NaViT } from "./navit.ts";
 * const dir = "../shared/fixtures/parity/vitpytorch-navit";
 * const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
 * const file = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
 * const model = NaViT.build(
 *   new ReferenceBackend(),
 *   config.kwargs,
 *   WeightStore.fromSafetensors(file.tensors.values()),
 * );
 * const image = { data: new Float32Array(3 * 16 * 24), height: 16, width: 24 };
 * const { logits } = await model.forwardPacked([image, image]);
 * console.log(logits.length); // 20
 * model.dispose();
 * ```
 */
export class NaViT implements VisionArchitecture {
  readonly numClasses: number;
  readonly channels: number;
  readonly inputSize = null;
  readonly patchSize: number;
  readonly precision: Precision;
  readonly config: NaViTConfig;
  /** Longest packed sequence one pass takes when the caller gives no groups. */
  readonly maxSequenceLength: number;

  readonly #backend: Backend;
  readonly #tensors: Tensor[] = [];
  readonly #linears: LinearWeights[] = [];
  /**
   * At int8: how many linear layers stay float32 because they feed a sharp attention
   * (see {@link SHARP_ATTENTION_LOGIT_BOUND}), out of how many; null when all are int8
   * or the model runs at float32.
   */
  readonly keptFloat: KeptFloatReport | null;
  readonly #patchNorm: [Tensor, Tensor];
  readonly #patchLinear: LinearWeights;
  readonly #embedNorm: [Tensor, Tensor];
  readonly #posHeight: Tensor; // [maxRows, dim]
  readonly #posWidth: Tensor; // [maxCols, dim]
  readonly #blocks: Block[] = [];
  readonly #finalNorm: [Tensor, Tensor];
  readonly #poolQuery: Float32Array; // [dim]
  readonly #pool: Pool;
  readonly #headNorm: [Tensor, Tensor];
  readonly #head: LinearWeights;

  private constructor(
    backend: Backend,
    config: NaViTConfig,
    store: WeightStore,
    precision: Precision,
    maxSequenceLength: number | undefined,
  ) {
    this.#backend = backend;
    this.config = config;
    this.precision = precision;
    this.numClasses = config.numClasses;
    this.channels = config.channels;
    this.patchSize = config.patchSize;
    const { dim, heads, dimHead, mlpDim, channels, patchSize, depth } = config;
    const inner = heads * dimHead;
    const patchDim = channels * patchSize * patchSize;
    const rows = config.imageSize[0] / patchSize;
    const cols = config.imageSize[1] / patchSize;
    this.maxSequenceLength = maxSequenceLength ?? rows * cols;

    const vector = (name: string, length: number): Tensor =>
      this.#upload(store.get(name, [length]).data, [length]);
    const norm = (prefix: string, length: number): [Tensor, Tensor] => [
      vector(`${prefix}.gamma`, length),
      vector(`${prefix}.beta`, length),
    ];
    // Weights may be int8 with per-row scales (a quantized checkpoint): row splits and
    // stacks below keep them int8.
    const headGamma = (name: string): Float32Array => store.get(name, [heads, 1, dimHead]).data;
    const float = keptFloatLinears(
      [
        ...Array.from({ length: depth }, (_, layer) =>
          [
            headGamma(`transformer.layers.${layer}.0.q_norm.gamma`),
            headGamma(`transformer.layers.${layer}.0.k_norm.gamma`),
          ] as const),
        [headGamma("attn_pool.q_norm.gamma"), headGamma("attn_pool.k_norm.gamma")],
      ],
      heads,
      dimHead,
    );
    let floatLayers = 0;
    const linear = (
      weight: LinearMatrix,
      bias: HostTensor | null,
      keepFloat: boolean,
    ): LinearWeights => {
      if (keepFloat) floatLayers++;
      const prepared = prepareLinearParams(
        backend,
        linearFromMatrix(weight, bias?.data ?? null),
        keepFloat ? "f32" : precision,
      );
      this.#linears.push(prepared);
      return prepared;
    };
    const matrix = (name: string, shape: readonly number[], keepFloat: boolean) =>
      store.linearWeight(name, shape, { keepFloat });

    this.#patchNorm = norm("to_patch_embedding.0", patchDim);
    this.#patchLinear = linear(
      matrix("to_patch_embedding.1.weight", [dim, patchDim], float.embedding),
      store.get("to_patch_embedding.1.bias", [dim]),
      float.embedding,
    );
    this.#embedNorm = norm("to_patch_embedding.2", dim);
    this.#posHeight = this.#upload(store.get("pos_embed_height", [rows, dim]).data, [rows, dim]);
    this.#posWidth = this.#upload(store.get("pos_embed_width", [cols, dim]).data, [cols, dim]);

    for (let layer = 0; layer < depth; layer++) {
      const prefix = `transformer.layers.${layer}`;
      const { logits, rest } = float.blocks[layer];
      // to_kv holds k (which feeds the logits) and v (which does not): one file tensor,
      // so it stays float when either half must.
      const toQ = matrix(`${prefix}.0.to_q.weight`, [inner, dim], logits);
      const toKv = matrix(`${prefix}.0.to_kv.weight`, [2 * inner, dim], logits || rest);
      const qkGamma = new Float32Array(2 * inner);
      qkGamma.set(headGamma(`${prefix}.0.q_norm.gamma`));
      qkGamma.set(headGamma(`${prefix}.0.k_norm.gamma`), inner);
      this.#blocks.push({
        norm: norm(`${prefix}.0.norm`, dim),
        qk: linear(stackMatrices([toQ, matrixRows(toKv, 0, inner)]), null, logits),
        v: linear(matrixRows(toKv, inner, 2 * inner), null, rest),
        qkGamma: this.#upload(qkGamma, [2 * inner]),
        out: linear(matrix(`${prefix}.0.to_out.0.weight`, [dim, inner], rest), null, rest),
        ffNorm: norm(`${prefix}.1.0`, dim),
        ff1: linear(
          matrix(`${prefix}.1.1.weight`, [mlpDim, dim], rest),
          store.get(`${prefix}.1.1.bias`, [mlpDim]),
          rest,
        ),
        ff2: linear(
          matrix(`${prefix}.1.4.weight`, [dim, mlpDim], rest),
          store.get(`${prefix}.1.4.bias`, [dim]),
          rest,
        ),
      });
    }
    this.#finalNorm = norm("transformer.norm", dim);

    this.#poolQuery = new Float32Array(store.get("attn_pool_queries", [dim]).data);
    const poolLogits = float.pool;
    const poolKv = matrix("attn_pool.to_kv.weight", [2 * inner, dim], poolLogits);
    this.#pool = {
      norm: norm("attn_pool.norm", dim),
      q: linear(matrix("attn_pool.to_q.weight", [inner, dim], poolLogits), null, poolLogits),
      k: linear(matrixRows(poolKv, 0, inner), null, poolLogits),
      // v rides in the same file tensor as k; in memory it runs at int8 all the same.
      v: linear(matrixRows(poolKv, inner, 2 * inner), null, false),
      qGamma: this.#upload(headGamma("attn_pool.q_norm.gamma"), [inner]),
      kGamma: this.#upload(headGamma("attn_pool.k_norm.gamma"), [inner]),
      out: linear(matrix("attn_pool.to_out.0.weight", [dim, inner], false), null, false),
    };
    this.#headNorm = norm("mlp_head.0", dim);
    this.#head = linear(
      matrix("mlp_head.1.weight", [config.numClasses, dim], false),
      null,
      false,
    );
    store.assertAllUsed();
    this.keptFloat = precision === "int8" && floatLayers > 0
      ? {
        layers: floatLayers,
        of: this.#linears.length,
        reason: `q/k norm gains bound the attention logits by ±${
          Math.round(float.maxLogitBound)
        } (> ${SHARP_ATTENTION_LOGIT_BOUND}): such a softmax is nearly an argmax, and int8 error in any layer that feeds it flips which token wins`,
      }
      : null;
  }

  /**
   * Builds a NaViT from vit-pytorch kwargs and a state dict.
   *
   * @param backend where the weights go and the ops run
   * @param kwargs the `NaViT(...)` constructor arguments (config.json's `kwargs`)
   * @param store the checkpoint's tensors under vit-pytorch's names
   * @param options `precision` of the linear layers; `maxSequenceLength` of the packer
   *   (default: the model's most patches per image)
   * @throws {EdgeVitError} `invalid_config` / `invalid_checkpoint` when config and weights
   *   do not fit
   */
  static build(
    backend: Backend,
    kwargs: Record<string, unknown>,
    store: WeightStore,
    options: { precision?: Precision; maxSequenceLength?: number; source?: string } = {},
  ): NaViT {
    const config = parseNaViTConfig(kwargs, options.source);
    const max = options.maxSequenceLength;
    if (max !== undefined && !(Number.isSafeInteger(max) && max > 0)) {
      throw new EdgeVitError(
        "invalid_argument",
        `maxSequenceLength must be a positive integer, got ${max}`,
      );
    }
    return new NaViT(
      backend,
      config,
      store,
      options.precision ?? "f32",
      options.maxSequenceLength,
    );
  }

  get backend(): Backend {
    return this.#backend;
  }

  /**
   * A uniform batch `[n, channels, height, width]`, each image run as NaViT runs it at
   * that resolution (packed by the greedy packer).
   */
  forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
    options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    const [n, channels, height, width] = shape;
    const size = channels * height * width;
    if (!shape.every((dim) => Number.isInteger(dim) && dim >= 1) || pixels.length !== n * size) {
      return Promise.reject(
        new EdgeVitError(
          "invalid_argument",
          `pixels hold ${pixels.length} values, shape [${shape}] needs ${n * size}`,
        ),
      );
    }
    if (channels !== this.channels) {
      return Promise.reject(
        new EdgeVitError(
          "invalid_argument",
          `the model takes ${this.channels} channels, got ${channels}`,
        ),
      );
    }
    const images = Array.from({ length: n }, (_, i) => ({
      data: pixels.subarray(i * size, (i + 1) * size),
      height,
      width,
    }));
    return this.forwardPacked(images, undefined, options);
  }

  /**
   * Classifies images of different sizes, packed into sequences.
   *
   * @param images normalized `[channels, height, width]` images; sides must be multiples
   *   of the patch size and within the model's `image_size` (see {@link navitTargetSize})
   * @param groups which images share a packed sequence (indices into `images`, each image
   *   once); default: {@link packGreedy} up to {@link maxSequenceLength} tokens
   * @returns logits with row `i` for image `i`, whatever sequence it was packed in
   * @throws {EdgeVitError} `invalid_argument` for a bad image or bad groups
   */
  async forwardPacked(
    images: readonly PackedImage[],
    groups?: readonly (readonly number[])[],
    _options?: ForwardOptions,
  ): Promise<ForwardOutput> {
    if (images.length === 0) {
      throw new EdgeVitError("invalid_argument", "forwardPacked needs at least one image");
    }
    const grids = images.map((image, i) => this.#grid(image, i));
    const lengths = grids.map(([rows, cols]) => rows * cols);
    if (groups) validateGroups(groups, images.length);
    const sequences = groups ?? packGreedy(lengths, this.maxSequenceLength);
    const { numClasses } = this.config;
    const logits = new Float32Array(images.length * numClasses);
    for (const group of sequences) {
      const rows = await this.#runSequence(group.map((i) => images[i]), group.map((i) => grids[i]));
      group.forEach((image, k) => {
        logits.set(rows.subarray(k * numClasses, (k + 1) * numClasses), image * numClasses);
      });
    }
    return { logits, tokensPerImage: lengths };
  }

  /** Frees the uploaded weights. */
  dispose(): void {
    for (const tensor of this.#tensors.splice(0)) this.#backend.release(tensor);
    for (const linear of this.#linears.splice(0)) this.#backend.releaseLinear(linear);
  }

  #upload(data: Float32Array, shape: number[]): Tensor {
    const tensor = this.#backend.upload(data, shape);
    this.#tensors.push(tensor);
    return tensor;
  }

  /** Validates an image and returns its patch grid `[rows, cols]`. */
  #grid(image: PackedImage, index: number): [number, number] {
    const { patchSize: p, channels, imageSize } = this.config;
    const { height, width, data } = image;
    const fail = (message: string): never => {
      throw new EdgeVitError("invalid_argument", `image ${index}: ${message}`);
    };
    if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
      fail(`size ${height}×${width} is not a positive integer size`);
    }
    if (height % p !== 0 || width % p !== 0) {
      fail(`size ${height}×${width} is not a multiple of the patch size ${p}`);
    }
    if (height > imageSize[0] || width > imageSize[1]) {
      fail(
        `size ${height}×${width} exceeds the model's image_size ${imageSize[0]}×${imageSize[1]}`,
      );
    }
    if (!(data instanceof Float32Array) || data.length !== channels * height * width) {
      fail(
        `holds ${data?.length} values, ${channels}×${height}×${width} needs ${
          channels * height * width
        }`,
      );
    }
    return [height / p, width / p];
  }

  /** One packed sequence → `[images, numClasses]` logits. */
  async #runSequence(
    images: readonly PackedImage[],
    grids: readonly [number, number][],
  ): Promise<Float32Array> {
    const backend = this.#backend;
    const { patchSize: p, channels, dim, heads, dimHead } = this.config;
    const inner = heads * dimHead;
    const patchDim = channels * p * p;
    const tokens = grids.reduce((sum, [rows, cols]) => sum + rows * cols, 0);
    const patches = new Float32Array(tokens * patchDim); // [tokens, c·p·p]
    const rowIndex = new Int32Array(tokens);
    const colIndex = new Int32Array(tokens);
    const segments = new Int32Array(tokens);
    let token = 0;
    images.forEach((image, k) => {
      const [rows, cols] = grids[k];
      const { data, width, height } = image;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++, token++) {
          rowIndex[token] = r;
          colIndex[token] = c;
          segments[token] = k;
          // vit-pytorch flattens a patch as (c p1 p2): channel-major.
          let o = token * patchDim;
          for (let ch = 0; ch < channels; ch++) {
            for (let y = 0; y < p; y++) {
              const src = ch * height * width + (r * p + y) * width + c * p;
              patches.set(data.subarray(src, src + p), o);
              o += p;
            }
          }
        }
      }
    });

    // Tensors of this pass, released when it ends.
    const scratch: Tensor[] = [];
    const keep = <T extends Tensor>(tensor: T): T => {
      scratch.push(tensor);
      return tensor;
    };
    try {
      let x = keep(backend.upload(patches, [tokens, patchDim]));
      x = keep(backend.layerNorm(x, ...this.#patchNorm, LAYER_NORM_EPS));
      x = keep(backend.linear(x, this.#patchLinear));
      x = keep(backend.layerNorm(x, ...this.#embedNorm, LAYER_NORM_EPS)); // [tokens, dim]
      const posH = keep(backend.gatherRows(this.#posHeight, rowIndex));
      const posW = keep(backend.gatherRows(this.#posWidth, colIndex));
      x = keep(backend.add(keep(backend.add(x, posH)), posW));

      for (const block of this.#blocks) {
        const normed = keep(backend.layerNorm(x, ...block.norm, LAYER_NORM_EPS));
        const qk = keep(backend.rmsNorm(
          keep(backend.linear(normed, block.qk)),
          block.qkGamma,
          dimHead,
          rmsEps(dimHead),
        )); // [tokens, 2·inner]
        const v = keep(backend.linear(normed, block.v)); // [tokens, inner]
        const attended = backend.attention(qk, qk, v, {
          heads,
          headDim: dimHead,
          scale: 1, // the RMS norms already scale q and k by √d
          qOffset: 0,
          kOffset: inner,
          querySegments: segments,
          // Layers the sharp-attention rule keeps in float32 keep a float32 attention.
          precision: block.qk.precision === "int8" && block.v.precision === "int8" ? "int8" : "f32",
        }).output;
        keep(attended);
        x = keep(backend.add(x, keep(backend.linear(attended, block.out))));
        const ffIn = keep(backend.layerNorm(x, ...block.ffNorm, LAYER_NORM_EPS));
        const hidden = keep(backend.linear(ffIn, block.ff1, "gelu")); // [tokens, mlpDim]
        x = keep(backend.add(x, keep(backend.linear(hidden, block.ff2))));
      }
      const encoded = keep(backend.layerNorm(x, ...this.#finalNorm, LAYER_NORM_EPS));

      // Attention pooling: one copy of the learned query per image, segment k for image k.
      const count = images.length;
      const queriesHost = new Float32Array(count * dim); // [images, dim]
      for (let k = 0; k < count; k++) queriesHost.set(this.#poolQuery, k * dim);
      const queries = keep(backend.upload(queriesHost, [count, dim]));
      const pool = this.#pool;
      const qIn = keep(backend.layerNorm(queries, ...pool.norm, LAYER_NORM_EPS));
      const q = keep(backend.rmsNorm(
        keep(backend.linear(qIn, pool.q)),
        pool.qGamma,
        dimHead,
        rmsEps(dimHead),
      ));
      // The pool's LayerNorm applies to its queries only; keys and values come from the
      // encoder output as it is.
      const k = keep(backend.rmsNorm(
        keep(backend.linear(encoded, pool.k)),
        pool.kGamma,
        dimHead,
        rmsEps(dimHead),
      ));
      const v = keep(backend.linear(encoded, pool.v));
      const pooled = keep(
        backend.attention(q, k, v, {
          heads,
          headDim: dimHead,
          scale: 1,
          querySegments: Int32Array.from({ length: count }, (_, i) => i),
          keySegments: segments,
          precision: pool.q.precision === "int8" && pool.k.precision === "int8" ? "int8" : "f32",
        }).output,
      ); // [images, inner]
      const y = keep(backend.add(keep(backend.linear(pooled, pool.out)), queries));
      const logits = keep(
        backend.linear(keep(backend.layerNorm(y, ...this.#headNorm, LAYER_NORM_EPS)), this.#head),
      );
      return await backend.read(logits);
    } finally {
      for (const tensor of new Set(scratch)) backend.release(tensor);
    }
  }
}

/**
 * `F.normalize` divides by `max(‖x‖, 1e-12)`; as an RMS norm, `x / sqrt(mean(x²) + eps)`,
 * the same floor is `eps = 1e-24 / d`. It only matters for an all-zero head slice.
 */
function rmsEps(headDim: number): number {
  return 1e-24 / headDim;
}

/**
 * A random NaViT state dict under vit-pytorch's names (benches, tests): linears uniform
 * in ±1/√in, norm scales near 1, small biases, so activations stay realistic.
 *
 * @example
 * ```ts
 * import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
 * import { NaViT, randomNaViTWeights } from "./navit.ts";
 * const kwargs = { image_size: 32, patch_size: 8, num_classes: 3, dim: 16, depth: 1, heads: 2, dim_head: 8, mlp_dim: 32 };
 * const model = NaViT.build(new ReferenceBackend(), kwargs, randomNaViTWeights(kwargs));
 * console.log(model.maxSequenceLength); // 16
 * ```
 */
export function randomNaViTWeights(kwargs: Record<string, unknown>, seed = 1): WeightStore {
  const config = parseNaViTConfig(kwargs);
  const random = seededRandom(seed);
  const tensors: Record<string, HostTensor> = {};
  const put = (name: string, shape: number[], scale: number, offset = 0) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    for (let i = 0; i < size; i++) data[i] = offset + (random() * 2 - 1) * scale;
    tensors[name] = { shape, data };
  };
  const linear = (name: string, out: number, inp: number, bias: boolean) => {
    put(`${name}.weight`, [out, inp], 1 / Math.sqrt(inp));
    if (bias) put(`${name}.bias`, [out], 0.02);
  };
  const norm = (name: string, size: number) => {
    put(`${name}.gamma`, [size], 0.1, 1);
    put(`${name}.beta`, [size], 0.02);
  };
  const { dim, heads, dimHead, mlpDim, channels, patchSize, depth, numClasses } = config;
  const inner = heads * dimHead;
  const patchDim = channels * patchSize * patchSize;
  const attention = (prefix: string) => {
    norm(`${prefix}.norm`, dim);
    put(`${prefix}.q_norm.gamma`, [heads, 1, dimHead], 0.1, 1);
    put(`${prefix}.k_norm.gamma`, [heads, 1, dimHead], 0.1, 1);
    linear(`${prefix}.to_q`, inner, dim, false);
    linear(`${prefix}.to_kv`, 2 * inner, dim, false);
    linear(`${prefix}.to_out.0`, dim, inner, false);
  };
  norm("to_patch_embedding.0", patchDim);
  linear("to_patch_embedding.1", dim, patchDim, true);
  norm("to_patch_embedding.2", dim);
  put("pos_embed_height", [config.imageSize[0] / patchSize, dim], 0.5);
  put("pos_embed_width", [config.imageSize[1] / patchSize, dim], 0.5);
  for (let layer = 0; layer < depth; layer++) {
    attention(`transformer.layers.${layer}.0`);
    norm(`transformer.layers.${layer}.1.0`, dim);
    linear(`transformer.layers.${layer}.1.1`, mlpDim, dim, true);
    linear(`transformer.layers.${layer}.1.4`, dim, mlpDim, true);
  }
  norm("transformer.norm", dim);
  put("attn_pool_queries", [dim], 1);
  attention("attn_pool");
  norm("mlp_head.0", dim);
  linear("mlp_head.1", numClasses, dim, false);
  return WeightStore.fromHost(tensors, "random NaViT");
}
