/**
 * Where a model's files come from: a folder on disk, a `file:` or `http(s):` URL of
 * that folder, or bytes and objects handed over directly (edge runtimes without a file
 * system). A model folder holds `config.json` and either `model.safetensors` or
 * `model.safetensors.index.json` with its shards; Hugging Face folders may add
 * `preprocessor_config.json`.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import {
  type CheckpointInfo,
  describeCheckpoint,
  isObject,
  type JsonObject,
  parseConfigJson,
} from "./config.ts";
import { parseSafetensors, type SafetensorsEntry } from "./safetensors.ts";
import { WeightStore } from "./weights.ts";

/** A model handed over as data instead of a location. */
export interface ModelBundle {
  /** config.json as an object, JSON text or UTF-8 bytes. */
  config: JsonObject | string | Uint8Array;
  /**
   * The safetensors bytes: one file, a list of shards, or shards by file name (then
   * `index` may map tensors to them as `model.safetensors.index.json` does).
   */
  weights: Uint8Array | readonly Uint8Array[] | Readonly<Record<string, Uint8Array>>;
  /** model.safetensors.index.json, as an object or text. */
  index?: JsonObject | string;
  /** Hugging Face preprocessor_config.json. */
  preprocessorConfig?: JsonObject | string;
  /** Class names, overriding the config's. */
  labels?: readonly string[];
}

/** Anything `loadModel` accepts. */
export type ModelSource = string | URL | ModelBundle;

/** How to fetch remote folders. */
export interface SourceOptions {
  /** Replaces the global `fetch` (custom auth, caching, tests). */
  fetch?: typeof fetch;
  /** Sent with every HTTP request (e.g. `Authorization`). */
  headers?: HeadersInit;
}

/** A checkpoint read from its source, not yet built. */
export interface LoadedCheckpoint {
  checkpoint: CheckpointInfo;
  weights: WeightStore;
  /** Class names given beside the config (bundle `labels`), if any. */
  labels?: readonly string[];
  /** Total bytes of the safetensors files. */
  weightBytes: number;
}

/** File access for one folder-like source. */
interface FolderReader {
  /** Human-readable location for messages. */
  readonly location: string;
  /** The file's bytes, or null when it does not exist. */
  read(name: string): Promise<Uint8Array | null>;
}

/**
 * Reads a checkpoint from a folder path, URL or bundle.
 *
 * @throws {EdgeVitError} `invalid_config`, `invalid_checkpoint`, `unsupported`, or
 * `invalid_argument` for a source of the wrong kind
 *
 * @example
 * ```ts
 * import { readCheckpoint } from "./source.ts";
 * const { checkpoint } = await readCheckpoint("../shared/fixtures/parity/hf-vit");
 * console.log(checkpoint.library, checkpoint.architecture); // "transformers" "ViTForImageClassification"
 * ```
 */
export async function readCheckpoint(
  source: ModelSource,
  options: SourceOptions = {},
): Promise<LoadedCheckpoint> {
  if (typeof source === "string" || source instanceof URL) {
    return await readFolder(folderReader(source, options));
  }
  if (isObject(source as unknown)) return readBundle(source as ModelBundle);
  throw new EdgeVitError(
    "invalid_argument",
    "a model source must be a folder path, a URL, or {config, weights}",
  );
}

function folderReader(source: string | URL, options: SourceOptions): FolderReader {
  let url: URL | null = null;
  if (source instanceof URL) url = source;
  else if (/^(https?|file):/i.test(source)) {
    try {
      url = new URL(source);
    } catch {
      throw new EdgeVitError("invalid_argument", `"${source}" is not a valid URL`);
    }
  }
  if (url && (url.protocol === "http:" || url.protocol === "https:")) {
    return httpFolder(url, options);
  }
  let path = url ? decodeURIComponent(url.pathname) : source as string;
  // A path to the config.json itself names its folder.
  if (/(^|[\\/])config\.json$/.test(path)) path = path.replace(/[\\/]?config\.json$/, "") || ".";
  return fileFolder(path);
}

function fileFolder(path: string): FolderReader {
  const base = path.replace(/[\\/]+$/, "") || "/";
  return {
    location: base,
    async read(name) {
      try {
        return await Deno.readFile(`${base}/${name}`);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return null;
        if (
          error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
        ) {
          throw new EdgeVitError(
            "invalid_argument",
            `cannot read ${base}/${name}: ${(error as Error).message}`,
          );
        }
        throw new EdgeVitError(
          "invalid_checkpoint",
          `cannot read ${base}/${name}: ${(error as Error).message}`,
        );
      }
    },
  };
}

function httpFolder(url: URL, options: SourceOptions): FolderReader {
  const base = url.href.endsWith("/") ? url.href : `${url.href}/`;
  const fetcher = options.fetch ?? fetch;
  return {
    location: base,
    async read(name) {
      let response: Response;
      try {
        response = await fetcher(new URL(name, base), { headers: options.headers });
      } catch (error) {
        throw new EdgeVitError(
          "invalid_checkpoint",
          `cannot fetch ${base}${name}: ${(error as Error).message}`,
        );
      }
      if (response.status === 404) {
        await response.body?.cancel();
        return null;
      }
      if (!response.ok) {
        await response.body?.cancel();
        throw new EdgeVitError(
          "invalid_checkpoint",
          `fetching ${base}${name} answered HTTP ${response.status}`,
        );
      }
      return new Uint8Array(await response.arrayBuffer());
    },
  };
}

async function readFolder(folder: FolderReader): Promise<LoadedCheckpoint> {
  const where = folder.location;
  const configBytes = await folder.read("config.json");
  if (!configBytes) {
    throw new EdgeVitError("invalid_config", `${where}: no config.json (is this a model folder?)`);
  }
  const configSource = `${where}/config.json`;
  const config = parseConfigJson(decodeText(configBytes, configSource), configSource);
  const checkpoint = describeCheckpoint(config, configSource);
  const preprocessorBytes = await folder.read("preprocessor_config.json");
  if (preprocessorBytes) {
    const name = `${where}/preprocessor_config.json`;
    checkpoint.preprocessorConfig = parseConfigJson(decodeText(preprocessorBytes, name), name);
  }
  const single = await folder.read("model.safetensors");
  if (single) {
    const file = parseSafetensors(single, `${where}/model.safetensors`);
    return {
      checkpoint,
      weights: WeightStore.fromSafetensors(file.tensors.values(), where),
      weightBytes: single.byteLength,
    };
  }
  const indexBytes = await folder.read("model.safetensors.index.json");
  if (!indexBytes) {
    throw new EdgeVitError(
      "invalid_checkpoint",
      `${where}: neither model.safetensors nor model.safetensors.index.json was found`,
    );
  }
  const indexName = `${where}/model.safetensors.index.json`;
  const weightMap = readWeightMap(
    parseConfigJson(decodeText(indexBytes, indexName), indexName),
    indexName,
  );
  const shards = new Map<string, Uint8Array>();
  for (const file of new Set(weightMap.values())) {
    const bytes = await folder.read(file);
    if (!bytes) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${indexName} names shard ${file}, which is missing`,
      );
    }
    shards.set(file, bytes);
  }
  return { checkpoint, ...mergeShards(shards, weightMap, where) };
}

function readBundle(bundle: ModelBundle): LoadedCheckpoint {
  const where = "model bundle";
  if (bundle.config === undefined || bundle.weights === undefined) {
    throw new EdgeVitError("invalid_argument", `${where}: both "config" and "weights" are needed`);
  }
  const config = typeof bundle.config === "string"
    ? parseConfigJson(bundle.config, `${where} config`)
    : bundle.config instanceof Uint8Array
    ? parseConfigJson(decodeText(bundle.config, `${where} config`), `${where} config`)
    : bundle.config;
  if (!isObject(config)) {
    throw new EdgeVitError("invalid_config", `${where}: config is not an object`);
  }
  const checkpoint = describeCheckpoint(config, `${where} config`);
  if (bundle.preprocessorConfig !== undefined) {
    checkpoint.preprocessorConfig = typeof bundle.preprocessorConfig === "string"
      ? parseConfigJson(bundle.preprocessorConfig, `${where} preprocessor config`)
      : bundle.preprocessorConfig;
  }
  const shards = new Map<string, Uint8Array>();
  const weights = bundle.weights;
  if (weights instanceof Uint8Array) shards.set("model.safetensors", weights);
  else if (Array.isArray(weights)) {
    weights.forEach((bytes, i) => shards.set(`shard ${i}`, bytes));
  } else if (isObject(weights as unknown)) {
    for (const [name, bytes] of Object.entries(weights)) shards.set(name, bytes);
  }
  if (shards.size === 0 || [...shards.values()].some((bytes) => !(bytes instanceof Uint8Array))) {
    throw new EdgeVitError(
      "invalid_argument",
      `${where}: weights must be a Uint8Array, a list of them, or a map of file name to Uint8Array`,
    );
  }
  let weightMap: Map<string, string> | null = null;
  if (bundle.index !== undefined) {
    const index = typeof bundle.index === "string"
      ? parseConfigJson(bundle.index, `${where} index`)
      : bundle.index;
    weightMap = readWeightMap(index, `${where} index`);
  }
  const labels = bundle.labels;
  if (
    labels !== undefined && (!Array.isArray(labels) || !labels.every((l) => typeof l === "string"))
  ) {
    throw new EdgeVitError("invalid_argument", `${where}: labels must be a list of strings`);
  }
  return { checkpoint, ...mergeShards(shards, weightMap, where), labels };
}

function decodeText(bytes: Uint8Array, name: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new EdgeVitError("invalid_config", `${name} is not UTF-8 text`);
  }
}

/**
 * Reads `weight_map` of a model.safetensors.index.json. Shard names must be plain file
 * names: an index must not reach outside its folder.
 */
function readWeightMap(index: JsonObject, name: string): Map<string, string> {
  const map = index.weight_map;
  if (!isObject(map)) {
    throw new EdgeVitError("invalid_checkpoint", `${name}: "weight_map" must be an object`);
  }
  const result = new Map<string, string>();
  for (const [tensor, file] of Object.entries(map)) {
    if (typeof file !== "string" || !/^[A-Za-z0-9._-]+$/.test(file) || file.startsWith(".")) {
      throw new EdgeVitError(
        "invalid_checkpoint",
        `${name}: tensor "${tensor}" maps to ${JSON.stringify(file)}, not a plain file name`,
      );
    }
    result.set(tensor, file);
  }
  if (result.size === 0) {
    throw new EdgeVitError("invalid_checkpoint", `${name}: "weight_map" is empty`);
  }
  return result;
}

/**
 * Parses every shard and joins their tensors; with an index, each tensor must sit in
 * the shard the index names, and every tensor of a shard must be listed.
 */
function mergeShards(
  shards: ReadonlyMap<string, Uint8Array>,
  weightMap: ReadonlyMap<string, string> | null,
  where: string,
): { weights: WeightStore; weightBytes: number } {
  const entries = new Map<string, SafetensorsEntry>();
  const home = new Map<string, string>();
  let weightBytes = 0;
  for (const [file, bytes] of shards) {
    weightBytes += bytes.byteLength;
    const parsed = parseSafetensors(bytes, shards.size > 1 ? `${where}/${file}` : where);
    for (const [name, entry] of parsed.tensors) {
      const previous = home.get(name);
      if (previous !== undefined) {
        throw new EdgeVitError(
          "invalid_checkpoint",
          `${where}: tensor "${name}" is in both ${previous} and ${file}`,
        );
      }
      if (weightMap && weightMap.get(name) !== file) {
        throw new EdgeVitError(
          "invalid_checkpoint",
          `${where}: tensor "${name}" is in ${file} but the index ${
            weightMap.has(name) ? `puts it in ${weightMap.get(name)}` : "does not list it"
          }`,
        );
      }
      home.set(name, file);
      entries.set(name, entry);
    }
  }
  if (weightMap) {
    for (const [name, file] of weightMap) {
      if (!entries.has(name)) {
        throw new EdgeVitError(
          "invalid_checkpoint",
          `${where}: the index puts tensor "${name}" in ${file}, which does not hold it`,
        );
      }
    }
  }
  return { weights: WeightStore.fromSafetensors(entries.values(), where), weightBytes };
}
