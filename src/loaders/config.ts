/**
 * config.json reading: which library wrote a checkpoint (vit-pytorch manifest, Hugging
 * Face, timm), and typed accessors that turn a missing or ill-typed field into an
 * `invalid_config` {@link EdgeVitError} naming the field, instead of `undefined` math.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/** A parsed JSON object. */
export type JsonObject = Record<string, unknown>;

/** The libraries whose checkpoint layouts edgevit reads. */
export type CheckpointLibrary = "vit-pytorch" | "transformers" | "timm";

/** What a config.json says about its model. */
export interface CheckpointInfo {
  library: CheckpointLibrary;
  /**
   * The architecture as the library names it: vit-pytorch class (`"ViT"`,
   * `"ats_vit.ViT"`), HF class (`"ViTForImageClassification"`), timm model name
   * (`"deit_tiny_patch16_224"`).
   */
  architecture: string;
  /** The whole config.json. */
  config: JsonObject;
  /** HF `preprocessor_config.json`, when the folder has one. */
  preprocessorConfig?: JsonObject;
  /** Where it came from, for messages. */
  source: string;
}

/**
 * Parses config.json text.
 *
 * @throws {EdgeVitError} `invalid_config` when it is not a JSON object
 */
export function parseConfigJson(text: string, source = "config.json"): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new EdgeVitError(
      "invalid_config",
      `${source} is not valid JSON (${(error as Error).message})`,
    );
  }
  if (!isObject(value)) throw new EdgeVitError("invalid_config", `${source} is not a JSON object`);
  return value;
}

/** Whether a value is a plain JSON object. */
export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Tells which library wrote a config.
 *
 * - vit-pytorch manifest: `{"library": "vit-pytorch", "architecture": ..., "kwargs": {...}}`
 * - Hugging Face: `model_type` and `architectures: [class]`
 * - timm: `architecture` (a model name) with optional `model_args` / `pretrained_cfg`
 *
 * @throws {EdgeVitError} `invalid_config` when none fits
 *
 * @example
 * ```ts
 * import { describeCheckpoint } from "./config.ts";
 * const info = describeCheckpoint({ architecture: "deit_tiny_patch16_224", num_classes: 1000 });
 * console.log(info.library, info.architecture); // "timm" "deit_tiny_patch16_224"
 * ```
 */
export function describeCheckpoint(config: JsonObject, source = "config.json"): CheckpointInfo {
  if (config.library !== undefined) {
    if (config.library !== "vit-pytorch") {
      throw new EdgeVitError(
        "unsupported",
        `${source}: library ${
          JSON.stringify(config.library)
        } is not supported (vit-pytorch, Hugging Face and timm layouts are)`,
      );
    }
    const architecture = config.architecture;
    if (typeof architecture !== "string" || architecture === "") {
      throw new EdgeVitError(
        "invalid_config",
        `${source}: a vit-pytorch manifest needs an "architecture" string`,
      );
    }
    if (config.kwargs !== undefined && !isObject(config.kwargs)) {
      throw new EdgeVitError("invalid_config", `${source}: "kwargs" must be an object`);
    }
    return { library: "vit-pytorch", architecture, config, source };
  }
  if (config.model_type !== undefined || config.architectures !== undefined) {
    const list = config.architectures;
    if (
      !Array.isArray(list) || list.length === 0 || !list.every((name) => typeof name === "string")
    ) {
      throw new EdgeVitError(
        "invalid_config",
        `${source}: a Hugging Face config needs "architectures": ["<class name>"]`,
      );
    }
    return { library: "transformers", architecture: list[0] as string, config, source };
  }
  if (typeof config.architecture === "string") {
    return { library: "timm", architecture: config.architecture, config, source };
  }
  throw new EdgeVitError(
    "invalid_config",
    `${source}: cannot tell the checkpoint layout (expected a vit-pytorch manifest with "library", a Hugging Face config with "architectures", or a timm config with "architecture")`,
  );
}

/** Typed, validated access to one JSON object's fields. */
export class ConfigReader {
  constructor(readonly object: JsonObject, readonly where: string) {}

  #fail(key: string, expected: string): never {
    throw new EdgeVitError(
      "invalid_config",
      `${this.where}: "${key}" must be ${expected}, got ${JSON.stringify(this.object[key])}`,
    );
  }

  /** Whether the field is present (and not null). */
  has(key: string): boolean {
    return this.object[key] !== undefined && this.object[key] !== null;
  }

  /** A positive integer; `fallback` when absent (absent without fallback is an error). */
  int(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.#fail(key, "a positive integer");
    }
    const value = this.object[key];
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
      this.#fail(key, "a positive integer");
    }
    return value as number;
  }

  /** A non-negative integer (0 allowed). */
  count(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.#fail(key, "a non-negative integer");
    }
    const value = this.object[key];
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
      this.#fail(key, "a non-negative integer");
    }
    return value as number;
  }

  /** A finite number. */
  number(key: string, fallback?: number): number {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.#fail(key, "a number");
    }
    const value = this.object[key];
    if (typeof value !== "number" || !Number.isFinite(value)) this.#fail(key, "a number");
    return value as number;
  }

  /** A boolean. */
  bool(key: string, fallback?: boolean): boolean {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.#fail(key, "true or false");
    }
    const value = this.object[key];
    if (typeof value !== "boolean") this.#fail(key, "true or false");
    return value as boolean;
  }

  /** A string. */
  string(key: string, fallback?: string): string {
    if (!this.has(key)) {
      if (fallback !== undefined) return fallback;
      this.#fail(key, "a string");
    }
    const value = this.object[key];
    if (typeof value !== "string") this.#fail(key, "a string");
    return value as string;
  }

  /** One of the given strings. */
  oneOf<T extends string>(key: string, choices: readonly T[], fallback?: T): T {
    const value = this.string(key, fallback);
    if (!choices.includes(value as T)) this.#fail(key, `one of ${choices.join(", ")}`);
    return value as T;
  }

  /** An integer or an `[a, b]` pair of positive integers (`pair()` of vit-pytorch). */
  pair(key: string, fallback?: number | [number, number]): [number, number] {
    if (!this.has(key)) {
      if (fallback !== undefined) {
        return typeof fallback === "number" ? [fallback, fallback] : fallback;
      }
      this.#fail(key, "a positive integer or a pair of them");
    }
    const value = this.object[key];
    if (typeof value === "number" && Number.isSafeInteger(value) && value > 0) {
      return [value, value];
    }
    if (
      Array.isArray(value) && value.length === 2 &&
      value.every((v) => typeof v === "number" && Number.isSafeInteger(v) && v > 0)
    ) {
      return [value[0] as number, value[1] as number];
    }
    return this.#fail(key, "a positive integer or a pair of them");
  }

  /** A list of numbers of a given length. */
  numbers(key: string, length?: number): number[] | undefined {
    if (!this.has(key)) return undefined;
    const value = this.object[key];
    if (
      !Array.isArray(value) || (length !== undefined && value.length !== length) ||
      !value.every((v) => typeof v === "number" && Number.isFinite(v))
    ) {
      this.#fail(key, length === undefined ? "a list of numbers" : `a list of ${length} numbers`);
    }
    return value as number[];
  }

  /** A nested object, or undefined when absent. */
  obj(key: string): JsonObject | undefined {
    if (!this.has(key)) return undefined;
    const value = this.object[key];
    if (!isObject(value)) this.#fail(key, "an object");
    return value as JsonObject;
  }

  /** A reader over a nested object (an empty one when absent). */
  child(key: string): ConfigReader {
    return new ConfigReader(this.obj(key) ?? {}, `${this.where}.${key}`);
  }

  /** Fails on keys the loader does not understand and that would change the model. */
  rejectUnknown(key: string, accepted: (value: unknown) => boolean, why: string): void {
    if (this.has(key) && !accepted(this.object[key])) {
      throw new EdgeVitError(
        "unsupported",
        `${this.where}: "${key}" = ${JSON.stringify(this.object[key])} is not supported (${why})`,
      );
    }
  }
}

/**
 * Labels from a list of strings or an `id2label`-style `{"0": "cat"}` map.
 *
 * @throws {EdgeVitError} `invalid_config` when malformed or not covering 0…n-1
 */
export function readLabels(value: unknown, where: string): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) {
    if (!value.every((label) => typeof label === "string")) {
      throw new EdgeVitError("invalid_config", `${where}: labels must be strings`);
    }
    return value as string[];
  }
  if (isObject(value)) {
    const entries = Object.entries(value);
    const labels = new Array<string>(entries.length);
    for (const [key, label] of entries) {
      const index = Number(key);
      if (
        !Number.isSafeInteger(index) || index < 0 || index >= entries.length ||
        typeof label !== "string" || labels[index] !== undefined
      ) {
        throw new EdgeVitError(
          "invalid_config",
          `${where}: labels must map each index 0…${entries.length - 1} to a string`,
        );
      }
      labels[index] = label;
    }
    return labels;
  }
  throw new EdgeVitError("invalid_config", `${where}: labels must be a list or an index map`);
}
