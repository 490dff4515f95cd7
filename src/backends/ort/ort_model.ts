/**
 * ONNX image classifiers through onnxruntime-web, behind the same `forward` /
 * `classify` surface as edgevit's own models. The wasm execution provider runs
 * everywhere Deno does; the WebGPU provider (a separate build of onnxruntime-web, which
 * wants the model as bytes) is used when a GPU adapter is present or when asked for.
 *
 * onnxruntime-web is imported lazily, so programs that never load an ONNX model never
 * pay for its ~10 MB of wasm.
 *
 * @module
 */

import { EdgeVitError } from "../../errors.ts";

/** Which onnxruntime-web execution provider runs the graph. */
export type OrtDevice = "auto" | "wasm" | "webgpu";

/** Options of {@link loadOnnxModel}. */
export interface OnnxModelOptions {
  /**
   * Execution provider. `"auto"` (default) takes WebGPU when a hardware adapter is
   * present (a software fallback adapter is slower than wasm, so it is not taken
   * unless `"webgpu"` is asked for explicitly), else wasm.
   */
  device?: OrtDevice;
  /**
   * Threads of the wasm provider. onnxruntime-web fixes this once per process, when its
   * wasm is first instantiated: asking for a different count afterwards throws.
   * Default: onnxruntime-web's own default.
   */
  threads?: number;
  /**
   * The model's config (any layout edgevit reads: vit-pytorch, Hugging Face, timm).
   * Overrides a config.json found beside the .onnx; used for labels, the input size
   * when the graph leaves it symbolic, and preprocessing.
   */
  config?: Record<string, unknown>;
  /** Class names, overriding the config's. */
  labels?: readonly string[];
  /** `fetch` used for http(s) sources (tests and edge runtimes may inject one). */
  fetch?: typeof fetch;
}

/** An ONNX model handed over as data (runtimes without a file system). */
export interface OnnxBundle {
  /** The .onnx bytes. */
  onnx: Uint8Array | ArrayBuffer;
  /** config.json, as an object or JSON text (labels, preprocessing, input size). */
  config?: Record<string, unknown> | string;
  /** Hugging Face preprocessor_config.json, as an object or JSON text. */
  preprocessorConfig?: Record<string, unknown> | string;
  /** Class names, overriding the config's. */
  labels?: readonly string[];
}

/**
 * Where an ONNX model comes from: a path or URL (of a .onnx file, or of a folder
 * holding `model.onnx`), the bytes, or an {@link OnnxBundle}.
 */
export type OnnxSource = string | URL | Uint8Array | ArrayBuffer | OnnxBundle;

/** An ONNX model's files, read. */
export interface OnnxFiles {
  /** The .onnx bytes. */
  bytes: Uint8Array;
  /** config.json beside the model (or in the bundle), or null. */
  config: Record<string, unknown> | null;
  /** preprocessor_config.json beside the model (or in the bundle), or null. */
  preprocessorConfig: Record<string, unknown> | null;
  /** Labels the bundle names, if any. */
  labels?: readonly string[];
  /** The model's location, for messages. */
  name: string;
}

/**
 * Whether a source names an ONNX model by itself: a path or URL ending in `.onnx`, raw
 * bytes, or a bundle with an `onnx` field. (A folder holding `model.onnx` needs
 * `backend: "ort"`.)
 *
 * @example
 * ```ts
 * import { isOnnxSource } from "./ort_model.ts";
 * console.log(isOnnxSource("models/vit.onnx"), isOnnxSource("models/vit-fmnist")); // true false
 * ```
 */
export function isOnnxSource(source: unknown): boolean {
  if (source instanceof Uint8Array || source instanceof ArrayBuffer) return true;
  if (source instanceof URL) return /\.onnx$/i.test(source.pathname);
  if (typeof source === "string") return /\.onnx\/*$/i.test(source.split(/[?#]/)[0]);
  return typeof source === "object" && source !== null && "onnx" in source;
}

/**
 * Whether `loadModel` should hand a source to onnxruntime: when `backend` is `"ort"`,
 * or when the source is an ONNX model and no other backend was named.
 *
 * @throws {EdgeVitError} `unsupported` for an ONNX source with another named backend
 *
 * @example
 * ```ts
 * import { wantsOrt } from "./ort_model.ts";
 * console.log(wantsOrt("m.onnx", undefined), wantsOrt("models/vit-fmnist", "wasm")); // true false
 * ```
 */
export function wantsOrt(source: unknown, backend: unknown): boolean {
  if (backend === "ort") return true;
  if (!isOnnxSource(source)) return false;
  if (backend === undefined || backend === "auto") return true;
  const name = typeof backend === "string" ? backend : (backend as { name?: string })?.name;
  throw new EdgeVitError(
    "unsupported",
    `ONNX models run on backend "ort" (onnxruntime), not ${JSON.stringify(name)}`,
  );
}

// Just the parts of onnxruntime-web's API used here, so type-checking does not depend on
// which of its two builds (plain or /webgpu) was loaded.
interface OrtValueMetadata {
  name: string;
  isTensor: boolean;
  type?: string;
  shape?: readonly (number | string)[];
}
interface OrtTensor {
  readonly dims: readonly number[];
  readonly type: string;
  readonly data: unknown;
}
interface OrtSession {
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly inputMetadata?: readonly OrtValueMetadata[];
  readonly outputMetadata?: readonly OrtValueMetadata[];
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}
interface OrtModule {
  env: { wasm: { numThreads?: number }; logLevel?: string };
  Tensor: new (type: "float32", data: Float32Array, dims: readonly number[]) => OrtTensor;
  InferenceSession: {
    create(model: Uint8Array | string, options: Record<string, unknown>): Promise<OrtSession>;
  };
}

let wasmModule: Promise<OrtModule> | null = null;
let webgpuModule: Promise<OrtModule> | null = null;
/** Thread count onnxruntime-web's wasm was instantiated with, once a session exists. */
let fixedThreads: number | null = null;

function ortModule(device: "wasm" | "webgpu"): Promise<OrtModule> {
  // The two builds are separate module instances with separate wasm; each is loaded
  // once and shared by every session on that provider.
  if (device === "webgpu") {
    webgpuModule ??= import("onnxruntime-web/webgpu") as unknown as Promise<OrtModule>;
    return webgpuModule;
  }
  wasmModule ??= import("onnxruntime-web") as unknown as Promise<OrtModule>;
  return wasmModule;
}

async function hasGpuAdapter(allowFallback: boolean): Promise<boolean> {
  const gpu = (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (!gpu) return false;
  try {
    const adapter = await gpu.requestAdapter();
    if (!adapter) return false;
    const fallback = (adapter as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      adapter.info?.isFallbackAdapter ?? false;
    return allowFallback || !fallback;
  } catch {
    return false;
  }
}

function isUrlString(source: string): boolean {
  return /^(https?|file):\/\//i.test(source);
}

async function readSource(
  location: string,
  fetchImpl: typeof fetch,
): Promise<Uint8Array | null> {
  try {
    if (isUrlString(location) && !location.startsWith("file:")) {
      const response = await fetchImpl(location);
      if (!response.ok) {
        await response.body?.cancel();
        return null;
      }
      return new Uint8Array(await response.arrayBuffer());
    }
    return await Deno.readFile(location.startsWith("file:") ? new URL(location) : location);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.IsADirectory) {
      return null;
    }
    throw new EdgeVitError("invalid_argument", `cannot read ${location}: ${error}`, {
      cause: error,
    });
  }
}

function joinLocation(base: string, name: string): string {
  return base.endsWith("/") ? base + name : `${base}/${name}`;
}

function parentLocation(location: string): string {
  const cut = location.lastIndexOf("/");
  return cut < 0 ? "." : location.slice(0, cut) || "/";
}

function parseJsonObject(
  value: Record<string, unknown> | string | Uint8Array,
  where: string,
): Record<string, unknown> {
  if (typeof value === "object" && !(value instanceof Uint8Array)) {
    if (value === null || Array.isArray(value)) {
      throw new EdgeVitError("invalid_config", `${where} is not a JSON object`);
    }
    return value;
  }
  const text = typeof value === "string" ? value : new TextDecoder().decode(value);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new EdgeVitError(
      "invalid_config",
      `${where} is not valid JSON (${(error as Error).message})`,
      {
        cause: error,
      },
    );
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new EdgeVitError("invalid_config", `${where} is not a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Reads an ONNX model's bytes and the config.json / preprocessor_config.json beside it.
 *
 * @throws {EdgeVitError} `invalid_argument` when there is no model at the location,
 *   `invalid_config` for a config that is not a JSON object
 *
 * @example
 * ```ts
 * import { readOnnxSource } from "./ort_model.ts";
 * const files = await readOnnxSource("tests/fixtures/onnx/vitpytorch-vit-cls");
 * console.log(files.config?.architecture); // "ViT"
 * ```
 */
export async function readOnnxSource(
  source: OnnxSource,
  fetchImpl: typeof fetch = fetch,
): Promise<OnnxFiles> {
  if (source instanceof Uint8Array) {
    return { bytes: source, config: null, preprocessorConfig: null, name: "<onnx bytes>" };
  }
  if (source instanceof ArrayBuffer) {
    return {
      bytes: new Uint8Array(source),
      config: null,
      preprocessorConfig: null,
      name: "<onnx bytes>",
    };
  }
  if (source !== null && typeof source === "object" && !(source instanceof URL)) {
    const bundle = source as OnnxBundle;
    if (!(bundle.onnx instanceof Uint8Array || bundle.onnx instanceof ArrayBuffer)) {
      throw new EdgeVitError("invalid_argument", "an ONNX bundle needs `onnx` bytes");
    }
    return {
      bytes: bundle.onnx instanceof Uint8Array ? bundle.onnx : new Uint8Array(bundle.onnx),
      config: bundle.config === undefined ? null : parseJsonObject(bundle.config, "config"),
      preprocessorConfig: bundle.preprocessorConfig === undefined
        ? null
        : parseJsonObject(bundle.preprocessorConfig, "preprocessorConfig"),
      labels: bundle.labels,
      name: "<onnx bundle>",
    };
  }
  const location = source instanceof URL ? source.href : source;
  if (typeof location !== "string" || location.length === 0) {
    throw new EdgeVitError("invalid_argument", "an ONNX model source must be a path, URL or bytes");
  }
  const trimmed = location.replace(/\/+$/, "");
  let onnxLocation: string;
  let folder: string;
  if (/\.onnx$/i.test(trimmed)) {
    onnxLocation = trimmed;
    folder = parentLocation(trimmed);
  } else {
    onnxLocation = joinLocation(trimmed, "model.onnx");
    folder = trimmed;
  }
  const bytes = await readSource(onnxLocation, fetchImpl);
  if (!bytes) {
    throw new EdgeVitError("invalid_argument", `no ONNX model at ${onnxLocation}`);
  }
  const sibling = async (file: string) => {
    const where = joinLocation(folder, file);
    const found = await readSource(where, fetchImpl);
    return found ? parseJsonObject(found, where) : null;
  };
  const config = await sibling("config.json");
  // Only Hugging Face folders carry a separate preprocessor config.
  const preprocessorConfig = config && (config.model_type !== undefined || config.architectures)
    ? await sibling("preprocessor_config.json")
    : null;
  return { bytes, config, preprocessorConfig, name: onnxLocation };
}

function asPair(value: unknown): [number, number] | null {
  if (typeof value === "number" && value > 0) return [value, value];
  if (Array.isArray(value) && value.length === 2 && value.every((v) => typeof v === "number")) {
    return [value[0], value[1]];
  }
  if (value && typeof value === "object") {
    const size = value as Record<string, unknown>;
    if (typeof size.height === "number" && typeof size.width === "number") {
      return [size.height, size.width];
    }
  }
  return null;
}

/** The input size and class count a config states, in whichever layout it uses. */
function configShape(config: Record<string, unknown> | null): {
  size: [number, number] | null;
  channels: number | null;
  numClasses: number | null;
  labels: string[] | null;
} {
  if (!config) return { size: null, channels: null, numClasses: null, labels: null };
  const kwargs = (config.kwargs ?? config.model_args ?? {}) as Record<string, unknown>;
  const pretrained = (config.pretrained_cfg ?? {}) as Record<string, unknown>;
  const inputSize = pretrained.input_size as unknown;
  let size = asPair(kwargs.image_size) ?? asPair(kwargs.img_size) ?? asPair(config.image_size);
  let channels = typeof kwargs.channels === "number"
    ? kwargs.channels
    : typeof config.num_channels === "number"
    ? config.num_channels
    : null;
  if (!size && Array.isArray(inputSize) && inputSize.length === 3) {
    size = [inputSize[1], inputSize[2]];
    channels ??= inputSize[0];
  }
  let labels: string[] | null = null;
  if (Array.isArray(config.labels)) labels = config.labels.map(String);
  else if (Array.isArray(config.label_names)) labels = config.label_names.map(String);
  else if (config.id2label && typeof config.id2label === "object") {
    const map = config.id2label as Record<string, unknown>;
    const keys = Object.keys(map).map(Number).filter(Number.isInteger).sort((a, b) => a - b);
    if (keys.length > 0 && keys.every((key, i) => key === i)) {
      labels = keys.map((key) => String(map[String(key)]));
    }
  }
  const stated = kwargs.num_classes ?? config.num_classes;
  const numClasses = typeof stated === "number" ? stated : labels?.length ?? null;
  return { size, channels, numClasses, labels };
}

/**
 * An ONNX image classifier running in onnxruntime-web. Create one with
 * {@link loadOnnxModel}.
 */
export class OnnxModel {
  /** Logits per image. */
  readonly numClasses: number;
  /** Class names, `labels[i]` for logit `i` (`class_<i>` when the config has none). */
  readonly labels: readonly string[];
  /** The config found beside the model or given in options (`{}` when neither). */
  readonly config: Readonly<Record<string, unknown>>;
  /** Always "ort": the engine behind this model. */
  readonly backend = "ort";
  /** The execution provider actually used. */
  readonly device: "wasm" | "webgpu";
  /** Numeric precision of the graph's input and output. */
  readonly precision = "f32";
  /** Channels the graph expects. */
  readonly channels: number;
  /** Input size the graph fixes or the config states; null when any size is accepted. */
  readonly inputSize: { height: number; width: number } | null;

  #ort: OrtModule;
  #session: OrtSession | null;
  #inputName: string;
  #outputName: string;
  #queue: Promise<unknown> = Promise.resolve();

  /** @internal use {@link loadOnnxModel}. */
  constructor(init: {
    ort: OrtModule;
    session: OrtSession;
    device: "wasm" | "webgpu";
    inputName: string;
    outputName: string;
    numClasses: number;
    labels: readonly string[];
    config: Record<string, unknown>;
    channels: number;
    inputSize: { height: number; width: number } | null;
  }) {
    this.#ort = init.ort;
    this.#session = init.session;
    this.device = init.device;
    this.#inputName = init.inputName;
    this.#outputName = init.outputName;
    this.numClasses = init.numClasses;
    this.labels = init.labels;
    this.config = init.config;
    this.channels = init.channels;
    this.inputSize = init.inputSize;
  }

  /**
   * Runs the graph on normalized pixels.
   *
   * @param pixels `[n, channels, height, width]` row-major float32, already normalized
   * @param shape `[n, channels, height, width]`
   * @returns logits, `[n, numClasses]` row-major
   * @throws {EdgeVitError} `invalid_argument` when the shape does not fit the pixels or
   *   the model, `backend_failure` when onnxruntime fails
   *
   * @example
   * ```ts
   * import { loadOnnxModel } from "./ort_model.ts";
   * const model = await loadOnnxModel("tests/fixtures/onnx/vitpytorch-vit-cls");
   * const logits = await model.forward(new Float32Array(3 * 32 * 32), [1, 3, 32, 32]);
   * console.log(logits.length); // 10
   * model.close();
   * ```
   */
  forward(
    pixels: Float32Array,
    shape: readonly [number, number, number, number],
  ): Promise<Float32Array> {
    const session = this.#session;
    if (!session) throw new EdgeVitError("invalid_argument", "this ONNX model was closed");
    if (!(pixels instanceof Float32Array)) {
      throw new EdgeVitError("invalid_argument", "pixels must be a Float32Array");
    }
    if (
      !Array.isArray(shape) || shape.length !== 4 ||
      !shape.every((d) => Number.isInteger(d) && d > 0)
    ) {
      throw new EdgeVitError(
        "invalid_argument",
        `shape must be four positive integers [n, channels, height, width], got ${
          JSON.stringify(shape)
        }`,
      );
    }
    const [n, c, h, w] = shape;
    if (n * c * h * w !== pixels.length) {
      throw new EdgeVitError(
        "invalid_argument",
        `shape [${shape.join(", ")}] holds ${n * c * h * w} values but pixels has ${pixels.length}`,
      );
    }
    if (c !== this.channels) {
      throw new EdgeVitError(
        "invalid_argument",
        `the model takes ${this.channels} channels, got ${c}`,
      );
    }
    if (this.inputSize && (h !== this.inputSize.height || w !== this.inputSize.width)) {
      throw new EdgeVitError(
        "invalid_argument",
        `the model takes ${this.inputSize.height}×${this.inputSize.width} images, got ${h}×${w}`,
      );
    }
    const input = new this.#ort.Tensor("float32", pixels, shape);
    // One run at a time per session: the WebGPU provider does not take overlapping runs.
    const result = this.#queue.then(async () => {
      let outputs: Record<string, OrtTensor>;
      try {
        outputs = await session.run({ [this.#inputName]: input });
      } catch (error) {
        throw new EdgeVitError("backend_failure", `onnxruntime run failed: ${error}`, {
          cause: error,
        });
      }
      const output = outputs[this.#outputName];
      const data = output.data;
      if (!(data instanceof Float32Array) || data.length !== n * this.numClasses) {
        throw new EdgeVitError(
          "backend_failure",
          `onnxruntime returned ${output.type} [${
            output.dims.join(", ")
          }], expected float32 [${n}, ${this.numClasses}]`,
        );
      }
      // The tensor may view wasm memory that the next run reuses.
      return data.slice();
    });
    this.#queue = result.catch(() => {});
    return result;
  }

  /**
   * Frees the onnxruntime session. Further calls throw.
   *
   * @example
   * ```ts
   * import { loadOnnxModel } from "./ort_model.ts";
   * const model = await loadOnnxModel("tests/fixtures/onnx/vitpytorch-vit-cls");
   * model.close();
   * ```
   */
  close(): void {
    const session = this.#session;
    this.#session = null;
    if (session) {
      this.#queue = this.#queue.then(() => session.release()).catch(() => {});
    }
  }
}

function staticDims(metadata: OrtValueMetadata | undefined): (number | null)[] | null {
  if (!metadata?.shape) return null;
  return metadata.shape.map((d) => (typeof d === "number" && d > 0 ? d : null));
}

/**
 * Loads an ONNX image classifier into onnxruntime-web.
 *
 * The graph must take one float32 `[n, channels, height, width]` input (normalized
 * pixels) and give `[n, classes]` logits as its first output (or as an output named
 * `logits`). A config.json beside the .onnx (or `options.config`) supplies labels and
 * preprocessing, in any layout edgevit reads.
 *
 * @param source a .onnx path or URL, a folder (path or URL) holding `model.onnx`, or the bytes
 * @throws {EdgeVitError} `invalid_checkpoint` when onnxruntime cannot parse the model,
 *   `unsupported` for graphs that are not single-input float32 image classifiers,
 *   `invalid_argument` for a missing file or an impossible option
 *
 * @example
 * ```ts
 * import { loadOnnxModel } from "./ort_model.ts";
 * const model = await loadOnnxModel("tests/fixtures/onnx/vitpytorch-vit-cls", { device: "wasm" });
 * console.log(model.numClasses, model.inputSize); // 10 { height: 32, width: 32 }
 * model.close();
 * ```
 */
export async function loadOnnxModel(
  source: OnnxSource,
  options: OnnxModelOptions = {},
): Promise<OnnxModel> {
  const files = await readOnnxSource(source, options.fetch ?? fetch);
  return await createOnnxModel(files, options);
}

/**
 * Builds an {@link OnnxModel} from files already read (see {@link readOnnxSource}).
 *
 * @throws {EdgeVitError} as {@link loadOnnxModel}
 *
 * @example
 * ```ts
 * import { createOnnxModel, readOnnxSource } from "./ort_model.ts";
 * const files = await readOnnxSource("tests/fixtures/onnx/vitpytorch-vit-cls");
 * const model = await createOnnxModel(files, { device: "wasm" });
 * console.log(model.numClasses); // 10
 * model.close();
 * ```
 */
export async function createOnnxModel(
  files: OnnxFiles,
  options: OnnxModelOptions = {},
): Promise<OnnxModel> {
  const { bytes, name } = files;
  const config = options.config ?? files.config ?? {};
  options = { ...options, labels: options.labels ?? files.labels };
  const requested = options.device ?? "auto";
  if (!["auto", "wasm", "webgpu"].includes(requested)) {
    throw new EdgeVitError(
      "invalid_argument",
      `device must be "auto", "wasm" or "webgpu", got ${JSON.stringify(requested)}`,
    );
  }
  let device: "wasm" | "webgpu";
  if (requested === "webgpu") {
    if (!(await hasGpuAdapter(true))) {
      throw new EdgeVitError(
        "unsupported",
        "the WebGPU provider was asked for but no GPU adapter is available",
      );
    }
    device = "webgpu";
  } else if (requested === "auto") {
    device = (await hasGpuAdapter(false)) ? "webgpu" : "wasm";
  } else {
    device = "wasm";
  }

  const ort = await ortModule(device);
  ort.env.logLevel = "error";
  if (device === "wasm" && options.threads !== undefined) {
    if (!Number.isInteger(options.threads) || options.threads < 1) {
      throw new EdgeVitError(
        "invalid_argument",
        `threads must be a positive integer, got ${options.threads}`,
      );
    }
    if (fixedThreads !== null && fixedThreads !== options.threads) {
      throw new EdgeVitError(
        "unsupported",
        `onnxruntime-web already runs with ${fixedThreads} thread(s) in this process; ` +
          `it cannot switch to ${options.threads} (load such models in another worker or process)`,
      );
    }
    ort.env.wasm.numThreads = options.threads;
  }

  let session: OrtSession;
  try {
    // Bytes, not a path, for both providers: the WebGPU build cannot read files itself.
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: [device],
      graphOptimizationLevel: "all",
      logSeverityLevel: 3,
    });
  } catch (error) {
    throw new EdgeVitError("invalid_checkpoint", `${name}: onnxruntime cannot load it: ${error}`, {
      cause: error,
    });
  }
  if (device === "wasm") fixedThreads ??= ort.env.wasm.numThreads ?? 0;

  try {
    return await describeSession(ort, session, device, config, options, name);
  } catch (error) {
    await session.release().catch(() => {});
    throw error;
  }
}

async function describeSession(
  ort: OrtModule,
  session: OrtSession,
  device: "wasm" | "webgpu",
  config: Record<string, unknown>,
  options: OnnxModelOptions,
  name: string,
): Promise<OnnxModel> {
  if (session.inputNames.length !== 1) {
    throw new EdgeVitError(
      "unsupported",
      `${name}: an image classifier takes one input, this graph takes ${session.inputNames.length} (${
        session.inputNames.join(", ")
      })`,
    );
  }
  const inputName = session.inputNames[0];
  const outputName = session.outputNames.includes("logits") ? "logits" : session.outputNames[0];
  const inputMeta = session.inputMetadata?.find((m) => m.name === inputName);
  const outputMeta = session.outputMetadata?.find((m) => m.name === outputName);
  if (inputMeta?.type && inputMeta.type !== "float32") {
    throw new EdgeVitError(
      "unsupported",
      `${name}: input ${inputName} is ${inputMeta.type}, only float32 is supported`,
    );
  }
  const inputDims = staticDims(inputMeta);
  if (inputDims && inputDims.length !== 4) {
    throw new EdgeVitError(
      "unsupported",
      `${name}: input ${inputName} has ${inputDims.length} axes, an image classifier takes [n, c, h, w]`,
    );
  }
  const stated = configShape(config);
  const channels = inputDims?.[1] ?? stated.channels ?? 3;
  const height = inputDims?.[2] ?? stated.size?.[0] ?? null;
  const width = inputDims?.[3] ?? stated.size?.[1] ?? null;
  const inputSize = height !== null && width !== null ? { height, width } : null;

  let numClasses = staticDims(outputMeta)?.at(-1) ?? stated.numClasses ?? null;
  if (numClasses === null) {
    if (!inputSize) {
      throw new EdgeVitError(
        "invalid_config",
        `${name}: neither the graph nor a config states the class count or the input size`,
      );
    }
    // Neither the graph nor a config says: one zero image tells.
    const probe = new ort.Tensor("float32", new Float32Array(channels * height! * width!), [
      1,
      channels,
      height!,
      width!,
    ]);
    const outputs = await session.run({ [inputName]: probe });
    numClasses = outputs[outputName].dims.at(-1) ?? 0;
  }
  if (!(numClasses > 0)) {
    throw new EdgeVitError("unsupported", `${name}: output ${outputName} has no class axis`);
  }
  const labels = options.labels ?? stated.labels ??
    Array.from({ length: numClasses }, (_, i) => `class_${i}`);
  if (labels.length !== numClasses) {
    throw new EdgeVitError(
      "invalid_config",
      `${name}: ${labels.length} labels for ${numClasses} classes`,
    );
  }
  return new OnnxModel({
    ort,
    session,
    device,
    inputName,
    outputName,
    numClasses,
    labels: [...labels],
    config,
    channels,
    inputSize,
  });
}
