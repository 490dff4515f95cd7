/**
 * A checkpoint's tensors by name, handed to a model's constructor. Models take what
 * they need by the checkpoint's own names (with a prefix, like candle's `vb.pp(...)`);
 * the store checks every shape and, once the model is built, that nothing was left
 * over, so a checkpoint that does not fit its config fails loudly at load time.
 *
 * @module
 */

import type { LinearSource, QuantizedLinearSource } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { type SafetensorsEntry, viewFloat32 } from "./safetensors.ts";

/** A host-side float32 tensor. */
export interface HostTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * A linear layer's weight as an int8 checkpoint stores it (see `quantized.ts`): symmetric
 * int8 with one scale per output channel, i.e. per index of the first axis.
 */
export interface QuantizedHostTensor {
  /** `[out, ...]`: a linear `[out, in]`, or a conv patch embedding `[out, c, ph, pw]`. */
  readonly shape: readonly number[];
  readonly data: Int8Array;
  /** `[out]`: real weight = scale × int8. */
  readonly scales: Float32Array;
}

/** A linear layer's weight matrix: float32, or int8 with per-output-channel scales. */
export type LinearMatrix = HostTensor | QuantizedHostTensor;

/** Whether a linear weight is int8. */
export function isQuantizedMatrix(matrix: LinearMatrix): matrix is QuantizedHostTensor {
  return matrix.data instanceof Int8Array;
}

/** Suffix of the per-channel scales beside an int8 weight: `blocks.0.attn.qkv.weight_scale`. */
export const SCALE_SUFFIX = "_scale";

/**
 * Named float32 weights with shape checks and leftover detection.
 *
 * @example
 * ```ts
 * import { WeightStore } from "./weights.ts";
 * const store = WeightStore.fromHost({ "head.weight": { shape: [2, 3], data: new Float32Array(6) } });
 * const head = store.get("head.weight", [2, 3]);
 * store.assertAllUsed(); // passes: every tensor was taken
 * console.log(head.shape);
 * ```
 */
export class WeightStore {
  readonly #entries = new Map<string, () => HostTensor>();
  /** int8 weights of a quantized checkpoint, by name (their scales are not entries). */
  readonly #quantized = new Map<string, () => QuantizedHostTensor>();
  /** Every name in the file's order, int8 weights included (their scales are not). */
  #order: string[] = [];
  readonly #used = new Set<string>();
  /** Names taken as linear weights ({@link linear}, {@link linearWeight}), in order. */
  readonly #linearNames: string[] = [];
  readonly #source: string;

  private constructor(source: string) {
    this.#source = source;
  }

  /**
   * Wraps parsed safetensors entries, converted to float32 lazily on first `get`; aligned
   * F32 data is a read-only view into the file (no copy), so builders must not write
   * into the arrays they take.
   */
  static fromSafetensors(
    entries: Iterable<SafetensorsEntry>,
    source = "checkpoint",
  ): WeightStore {
    const store = new WeightStore(source);
    const all = new Map<string, SafetensorsEntry>();
    for (const entry of entries) all.set(entry.name, entry);
    for (const entry of all.values()) {
      const scale = entry.dtype === "I8" ? all.get(entry.name + SCALE_SUFFIX) : undefined;
      if (scale) {
        store.#quantized.set(entry.name, () => readQuantized(entry, scale, source));
        all.delete(scale.name);
        store.#entries.delete(scale.name);
        continue;
      }
      store.#entries.set(entry.name, () => ({ shape: entry.shape, data: viewFloat32(entry) }));
    }
    store.#order = [...all.keys()];
    return store;
  }

  /** Wraps tensors already on the host (tests, converted checkpoints). */
  static fromHost(tensors: Record<string, HostTensor>, source = "weights"): WeightStore {
    const store = new WeightStore(source);
    for (const [name, tensor] of Object.entries(tensors)) store.#entries.set(name, () => tensor);
    store.#order = Object.keys(tensors);
    return store;
  }

  /** Whether a tensor of that name exists. */
  has(name: string): boolean {
    return this.#entries.has(name) || this.#quantized.has(name);
  }

  /** All tensor names (an int8 weight's scales are part of it, not a name of their own). */
  names(): string[] {
    return [...this.#order];
  }

  /** Whether `name` is an int8 weight with per-channel scales. */
  isQuantized(name: string): boolean {
    return this.#quantized.has(name);
  }

  /** A tensor's shape without taking it (float32 or int8), or undefined when absent. */
  shapeOf(name: string): readonly number[] | undefined {
    const quantized = this.#quantized.get(name);
    if (quantized) return quantized().shape;
    return this.#entries.get(name)?.().shape;
  }

  /** Names taken so far as linear weights, in the order the model took them. */
  linearWeightNames(): string[] {
    return [...this.#linearNames];
  }

  /**
   * Takes a tensor, checking its shape when `shape` is given (`-1` matches any size).
   *
   * @throws {EdgeVitError} `invalid_checkpoint` when missing or of another shape
   */
  get(name: string, shape?: readonly number[]): HostTensor {
    const load = this.#entries.get(name);
    if (!load) {
      if (this.#quantized.has(name)) {
        throw new EdgeVitError(
          "invalid_checkpoint",
          `${this.#source}: tensor "${name}" is int8, but the model reads it as float32 (only linear weights may be quantized)`,
        );
      }
      throw new EdgeVitError("invalid_checkpoint", `${this.#source}: missing tensor "${name}"`);
    }
    const tensor = load();
    this.#checkShape(name, tensor.shape, shape);
    this.#used.add(name);
    return tensor;
  }

  /**
   * Takes a linear layer's weight matrix (or a conv patch embedding's `[out, c, ph, pw]`
   * weight): float32, or int8 with its per-output-channel scales in a quantized checkpoint.
   * Records the name as a linear weight, which is how the quantizer learns what to quantize;
   * with `keepFloat` it does not, so a model that must keep a layer float32 at int8 gets
   * it saved as float32 in a quantized checkpoint as well.
   *
   * @throws {EdgeVitError} `invalid_checkpoint` when missing or of another shape
   */
  linearWeight(
    name: string,
    shape?: readonly number[],
    options: { keepFloat?: boolean } = {},
  ): LinearMatrix {
    const quantized = this.#quantized.get(name);
    let matrix: LinearMatrix;
    if (quantized) {
      matrix = quantized();
      this.#checkShape(name, matrix.shape, shape);
      this.#used.add(name);
    } else {
      matrix = this.get(name, shape);
    }
    if (!options.keepFloat && !this.#linearNames.includes(name)) this.#linearNames.push(name);
    return matrix;
  }

  #checkShape(name: string, actual: readonly number[], shape?: readonly number[]): void {
    if (
      shape &&
      (shape.length !== actual.length ||
        shape.some((dim, i) => dim !== -1 && dim !== actual[i]))
    ) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${this.#source}: tensor "${name}" has shape [${actual}], the config implies [${shape}]`,
      );
    }
  }

  /**
   * Takes a tensor whose leading size-1 axes may be present or not (vit-pytorch
   * `cls_token` is `[1, dim]` in one version and `[1, 1, dim]` in another, HF and timm
   * positions are `[1, tokens, dim]`): the shape must equal `shape` once those are dropped.
   */
  getSqueezed(name: string, shape: readonly number[]): HostTensor {
    const load = this.#entries.get(name);
    if (!load) {
      throw new EdgeVitError("invalid_checkpoint", `${this.#source}: missing tensor "${name}"`);
    }
    const tensor = load();
    const actual = [...tensor.shape];
    while (actual.length > shape.length && actual[0] === 1) actual.shift();
    if (actual.length !== shape.length || actual.some((dim, i) => dim !== shape[i])) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${this.#source}: tensor "${name}" has shape [${tensor.shape}], the config implies [${shape}]`,
      );
    }
    this.#used.add(name);
    return { shape: [...shape], data: tensor.data };
  }

  /**
   * Takes a PyTorch `nn.Linear` as `<prefix>.weight` `[out, in]` and `<prefix>.bias`; in an
   * int8 checkpoint the weight comes with its scales as a {@link QuantizedLinearSource}.
   *
   * @param bias `true`: required; `false`: must be absent; `"optional"`: either
   */
  linear(
    prefix: string,
    outFeatures: number,
    inFeatures: number,
    bias: boolean | "optional" = true,
  ): LinearSource | QuantizedLinearSource {
    const matrix = this.linearWeight(`${prefix}.weight`, [outFeatures, inFeatures]);
    const biasName = `${prefix}.bias`;
    let biasData: Float32Array | null = null;
    if (bias === true || (bias === "optional" && this.has(biasName))) {
      biasData = this.get(biasName, [outFeatures]).data;
    } else if (this.has(biasName)) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${this.#source}: tensor "${biasName}" exists but the config says the layer has no bias`,
      );
    }
    if (isQuantizedMatrix(matrix)) {
      return {
        weight: matrix.data,
        scales: matrix.scales,
        bias: biasData,
        outFeatures,
        inFeatures,
      };
    }
    return { weight: matrix.data, bias: biasData, outFeatures, inFeatures };
  }

  /**
   * Takes a LayerNorm as `<prefix>.weight` / `<prefix>.bias` (or other names, e.g.
   * vit-pytorch NaViT's `gamma` / `beta`); the bias may be absent when `bias` is false.
   */
  layerNorm(
    prefix: string,
    size: number,
    options: { bias?: boolean; gamma?: string; beta?: string } = {},
  ): { gamma: Float32Array; beta: Float32Array | null } {
    const gamma = this.get(`${prefix}.${options.gamma ?? "weight"}`, [size]).data;
    const beta = options.bias === false
      ? null
      : this.get(`${prefix}.${options.beta ?? "bias"}`, [size]).data;
    return { gamma, beta };
  }

  /** Like {@link get} but returns null when the tensor is absent. */
  maybe(name: string, shape?: readonly number[]): HostTensor | null {
    return this.has(name) ? this.get(name, shape) : null;
  }

  /** Marks tensors as intentionally unused (e.g. buffers a model recomputes). */
  ignore(...names: string[]): void {
    for (const name of names) if (this.has(name)) this.#used.add(name);
  }

  /**
   * Fails when the checkpoint holds tensors the model never took: they mean the
   * config describes another model than the weights.
   */
  assertAllUsed(): void {
    const extra = this.names().filter((name) => !this.#used.has(name));
    if (extra.length > 0) {
      const shown = extra.slice(0, 8).map((name) => `"${name}"`).join(", ");
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${this.#source}: ${extra.length} unexpected tensor(s) not used by the model: ${shown}${
          extra.length > 8 ? ", …" : ""
        }`,
      );
    }
  }
}

/**
 * Reads an int8 weight and its `[out]` float32 scales, checking that they fit together.
 *
 * @throws {EdgeVitError} `invalid_checkpoint`
 */
function readQuantized(
  entry: SafetensorsEntry,
  scale: SafetensorsEntry,
  source: string,
): QuantizedHostTensor {
  const fail = (message: string): never => {
    throw new EdgeVitError("invalid_checkpoint", `${source}: ${message}`);
  };
  if (entry.shape.length < 2) fail(`int8 tensor "${entry.name}" must have an output axis and more`);
  const out = entry.shape[0];
  if (scale.shape.length !== 1 || scale.shape[0] !== out) {
    fail(`"${scale.name}" has shape [${scale.shape}], expected [${out}] (one scale per row)`);
  }
  const scales = viewFloat32(scale);
  for (const value of scales) {
    if (!(Number.isFinite(value) && value > 0)) {
      fail(`"${scale.name}" holds ${value}; scales must be positive and finite`);
    }
  }
  const data = new Int8Array(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
  return { shape: entry.shape, data, scales };
}
