/**
 * A checkpoint's tensors by name, handed to a model's constructor. Models take what
 * they need by the checkpoint's own names (with a prefix, like candle's `vb.pp(...)`);
 * the store checks every shape and, once the model is built, that nothing was left
 * over, so a checkpoint that does not fit its config fails loudly at load time.
 *
 * @module
 */

import type { LinearSource } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { type SafetensorsEntry, viewFloat32 } from "./safetensors.ts";

/** A host-side float32 tensor. */
export interface HostTensor {
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

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
  readonly #used = new Set<string>();
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
    for (const entry of entries) {
      store.#entries.set(entry.name, () => ({ shape: entry.shape, data: viewFloat32(entry) }));
    }
    return store;
  }

  /** Wraps tensors already on the host (tests, converted checkpoints). */
  static fromHost(tensors: Record<string, HostTensor>, source = "weights"): WeightStore {
    const store = new WeightStore(source);
    for (const [name, tensor] of Object.entries(tensors)) store.#entries.set(name, () => tensor);
    return store;
  }

  /** Whether a tensor of that name exists. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** All tensor names. */
  names(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * Takes a tensor, checking its shape when `shape` is given (`-1` matches any size).
   *
   * @throws {EdgeVitError} `invalid_checkpoint` when missing or of another shape
   */
  get(name: string, shape?: readonly number[]): HostTensor {
    const load = this.#entries.get(name);
    if (!load) {
      throw new EdgeVitError("invalid_checkpoint", `${this.#source}: missing tensor "${name}"`);
    }
    const tensor = load();
    if (
      shape &&
      (shape.length !== tensor.shape.length ||
        shape.some((dim, i) => dim !== -1 && dim !== tensor.shape[i]))
    ) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${this.#source}: tensor "${name}" has shape [${tensor.shape}], the config implies [${shape}]`,
      );
    }
    this.#used.add(name);
    return tensor;
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
   * Takes a PyTorch `nn.Linear` as `<prefix>.weight` `[out, in]` and `<prefix>.bias`.
   *
   * @param bias `true`: required; `false`: must be absent; `"optional"`: either
   */
  linear(
    prefix: string,
    outFeatures: number,
    inFeatures: number,
    bias: boolean | "optional" = true,
  ): LinearSource {
    const weight = this.get(`${prefix}.weight`, [outFeatures, inFeatures]).data;
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
    return { weight, bias: biasData, outFeatures, inFeatures };
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
    for (const name of names) if (this.#entries.has(name)) this.#used.add(name);
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
