/**
 * A checkpoint's tensors by name, handed to a model's constructor. Models take what
 * they need by the checkpoint's own names (with a prefix, like candle's `vb.pp(...)`);
 * the store checks every shape and, once the model is built, that nothing was left
 * over, so a checkpoint that does not fit its config fails loudly at load time.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { type SafetensorsEntry, toFloat32 } from "./safetensors.ts";

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

  /** Wraps parsed safetensors entries (converted to float32 lazily, on first `get`). */
  static fromSafetensors(
    entries: Iterable<SafetensorsEntry>,
    source = "checkpoint",
  ): WeightStore {
    const store = new WeightStore(source);
    for (const entry of entries) {
      store.#entries.set(entry.name, () => ({ shape: entry.shape, data: toFloat32(entry) }));
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
