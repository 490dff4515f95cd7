/**
 * `deno task bundle`: builds `dist/edgevit.mjs`, one ES module for edge runtimes with
 * the handler, the wasm kernels, the image decoders and a model embedded, using esbuild
 * (the npm package pinned in package.json).
 *
 * ```sh
 * deno task bundle                                  # the default model (models/patchmerger-fmnist)
 * deno task bundle --model path/to/folder           # embed another model folder
 * deno task bundle --model-url https://host/model/  # embed no weights: fetch them at start
 * deno task bundle --precision f32 --out dist/x.mjs --no-minify  # float weights, readable
 * ```
 *
 * esbuild knows nothing of Deno's resolution, so a plugin asks Deno: `deno info --json`
 * gives, for every module of the graph, what each import specifier resolved to (import
 * map entries, `npm:` specifiers) and the local folder of every npm package in Deno's
 * cache. The generated `src/bundle/assets.ts` replacement embeds the `.wasm` files and
 * the model as base64; onnxruntime is replaced by a stub that refuses ONNX models.
 *
 * @module
 */

import { createRequire } from "node:module";
import { EdgeVitError } from "../errors.ts";
import { BACKEND_CHOICES } from "../backends/select.ts";
import { isObject } from "../loaders/config.ts";
import { quantizeCheckpoint } from "../loaders/quantize_cli.ts";
import { readCheckpoint } from "../loaders/source.ts";
import { DEFAULT_MODEL } from "../server/handler.ts";

/** The bundle size budget (Supabase Edge Functions' limit). */
export const SIZE_BUDGET_BYTES = 20 * 1024 * 1024;

/** Options of {@link buildBundle}. */
export interface BuildOptions {
  /** Model folder to embed (default: `models/<DEFAULT_MODEL>`, else a parity fixture). */
  model?: string;
  /** Embed no weights: load this `http(s)` URL of a model folder at start instead. */
  modelUrl?: string;
  /** Name clients use for the built-in model (default: the folder's name). */
  name?: string;
  /**
   * "int8" (default): embed an int8 checkpoint, the folder's own when it is one (or the
   * default model's `-int8` sibling), else quantized here with `deno task quantize`'s
   * quantizer. "f32": embed the float weights as they are.
   */
  precision?: "f32" | "int8";
  /** Backend the bundle uses unless told otherwise at run time (default "wasm"). */
  backend?: string;
  /** Output file (default `dist/edgevit.mjs`). */
  out?: string;
  /** Minify (default true). */
  minify?: boolean;
  /** Fail when the bundle is larger (default {@link SIZE_BUDGET_BYTES}). */
  maxBytes?: number;
}

/** What {@link buildBundle} produced. */
export interface BuildReport {
  out: string;
  bytes: number;
  /** Served name of the built-in model. */
  modelName: string;
  /** Folder embedded, or the URL loaded at start. */
  modelSource: string;
  /** True when the folder is the fallback fixture because the default model is missing. */
  fallbackModel: boolean;
  precision: "f32" | "int8";
  /** Default backend of the bundle. */
  backend: string;
  /** Bytes of the embedded model files (0 with a model URL). */
  modelBytes: number;
  /** True when the int8 weights were quantized by this build from a float folder. */
  quantizedAtBuild: boolean;
  /** Bytes of the source folder's weights (before quantization). */
  sourceWeightBytes: number;
  /** Bytes of the embedded wasm files. */
  wasmBytes: number;
  /** Bytes in the output that came from the generated assets module (base64 and all). */
  assetBytesInOutput: number;
  /** Bytes in the output from code (everything but the assets module). */
  codeBytesInOutput: number;
  /** Modules the output still imports at run time: only `node:` built-ins. */
  externalImports: string[];
}

const ROOT = new URL("../../", import.meta.url);
const ASSETS_MODULE = fromFileUrl(new URL("./assets.ts", import.meta.url));
const ORT_LOADER = fromFileUrl(new URL("../backends/ort/ort_loader.ts", import.meta.url));
const ENTRY = fromFileUrl(new URL("./entry.ts", import.meta.url));
/** Used when the trained default model is not in the checkout yet. */
const FALLBACK_MODEL = "../shared/fixtures/parity/vitpytorch-vit-cls";

const DECODER_FILES = {
  jpeg: ["@jsquash/jpeg", "codec/dec/mozjpeg_dec.wasm"],
  webp: ["@jsquash/webp", "codec/dec/webp_dec.wasm"],
} as const;

function fromFileUrl(url: URL): string {
  return decodeURIComponent(url.pathname);
}

function rootPath(relative: string): string {
  return fromFileUrl(new URL(relative, ROOT));
}

function fail(message: string): never {
  throw new EdgeVitError("invalid_argument", message);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------
// Deno's view of the module graph.

interface DenoInfoModule {
  specifier: string;
  dependencies?: { specifier: string; code?: { specifier: string } }[];
}

interface DenoInfo {
  modules: DenoInfoModule[];
  redirects: Record<string, string>;
  npmPackages: Record<
    string,
    { name: string; version: string; dependencies: string[]; localPath?: string }
  >;
}

/** How Deno resolves every import of the graph under `entry`, and where npm packages lie. */
class DenoGraph {
  readonly #resolved = new Map<string, Map<string, string>>();
  readonly #packages: DenoInfo["npmPackages"];

  constructor(info: DenoInfo) {
    this.#packages = info.npmPackages ?? {};
    for (const module of info.modules) {
      const map = new Map<string, string>();
      for (const dependency of module.dependencies ?? []) {
        if (dependency.code?.specifier) map.set(dependency.specifier, dependency.code.specifier);
      }
      this.#resolved.set(module.specifier, map);
    }
  }

  static async load(entry: string): Promise<DenoGraph> {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: rootPath("."),
      env: { DENO_NO_PACKAGE_JSON: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!output.success) {
      throw new EdgeVitError(
        "backend_failure",
        `deno info failed: ${new TextDecoder().decode(output.stderr)}`,
      );
    }
    return new DenoGraph(JSON.parse(new TextDecoder().decode(output.stdout)));
  }

  /** What `specifier` imported from the local file `importer` resolves to, per Deno. */
  resolve(importer: string, specifier: string): string | undefined {
    const from = `file://${importer.split("/").map(encodeURIComponent).join("/")}`;
    return this.#resolved.get(from)?.get(specifier);
  }

  /** The local folder of `name@version` in Deno's npm cache. */
  packageDir(id: string): string {
    const entry = this.#packages[id];
    if (!entry?.localPath) {
      throw new EdgeVitError(
        "backend_failure",
        `npm package ${id} is not in Deno's cache (run \`deno cache src/bundle/entry.ts\`)`,
      );
    }
    return entry.localPath;
  }

  /** The package (`name@version`) whose folder holds `path`, if any. */
  packageOf(path: string): string | undefined {
    for (const [id, entry] of Object.entries(this.#packages)) {
      if (entry.localPath && path.startsWith(`${entry.localPath}/`)) return id;
    }
    return undefined;
  }

  /** `name@version` of the dependency `name` of package `id`. */
  dependencyOf(id: string, name: string): string | undefined {
    return this.#packages[id]?.dependencies.find((dep) =>
      dep.slice(0, dep.lastIndexOf("@")) === name
    );
  }

  /** The installed version of npm package `name` (the first one found). */
  packageId(name: string): string | undefined {
    return Object.keys(this.#packages).find((id) => id.slice(0, id.lastIndexOf("@")) === name);
  }
}

/** Splits `npm:/@scope/name@1.2.3/sub/path.js` into package id and subpath. */
function parseNpmSpecifier(specifier: string): { id: string; subpath: string } {
  const body = specifier.replace(/^npm:\/?/, "");
  const match = body.match(/^((?:@[^/]+\/)?[^@/]+)@([^/]+)(\/.*)?$/);
  if (!match) fail(`cannot read npm specifier ${specifier}`);
  return { id: `${match[1]}@${match[2]}`, subpath: match[3]?.slice(1) ?? "" };
}

/** The file a package's root import names (exports ".", module, main). */
async function packageEntry(dir: string): Promise<string> {
  const manifest = JSON.parse(await Deno.readTextFile(`${dir}/package.json`));
  const pick = (value: unknown): string | undefined => {
    if (typeof value === "string") return value;
    if (value && typeof value === "object") {
      const record = value as Record<string, unknown>;
      for (const key of [".", "deno", "import", "module", "default"]) {
        const found = record[key] !== undefined ? pick(record[key]) : undefined;
        if (found) return found;
      }
    }
    return undefined;
  };
  const main = pick(manifest.exports) ?? manifest.module ?? manifest.main ?? "index.js";
  return `${dir}/${main.replace(/^\.\//, "")}`;
}

// ---------------------------------------------------------------------------------------
// The embedded assets.

interface ModelFiles {
  config: string;
  preprocessorConfig?: string;
  index?: string;
  /** File name → bytes. */
  weights: Map<string, Uint8Array>;
}

async function readModelFolder(dir: string): Promise<ModelFiles> {
  const read = async (name: string) =>
    await exists(`${dir}/${name}`) ? await Deno.readFile(`${dir}/${name}`) : null;
  const text = async (name: string) => {
    const bytes = await read(name);
    return bytes ? new TextDecoder().decode(bytes) : undefined;
  };
  const config = await text("config.json");
  if (config === undefined) fail(`${dir}: no config.json (is this a model folder?)`);
  const files: ModelFiles = {
    config,
    preprocessorConfig: await text("preprocessor_config.json"),
    weights: new Map(),
  };
  const single = await read("model.safetensors");
  if (single) {
    files.weights.set("model.safetensors", single);
    return files;
  }
  files.index = await text("model.safetensors.index.json");
  if (files.index === undefined) {
    fail(`${dir}: neither model.safetensors nor model.safetensors.index.json was found`);
  }
  const map = JSON.parse(files.index).weight_map as Record<string, string>;
  for (const shard of new Set(Object.values(map))) {
    const bytes = await read(shard);
    if (!bytes) fail(`${dir}: the index names shard ${shard}, which is missing`);
    files.weights.set(shard, bytes);
  }
  return files;
}

/** Whether a config.json (text) carries the int8 checkpoint marker. */
function isQuantizedConfig(config: string): boolean {
  try {
    const parsed = JSON.parse(config);
    return isObject(parsed) && parsed.quantization !== undefined;
  } catch {
    return false;
  }
}

async function isQuantizedFolder(dir: string): Promise<boolean> {
  if (!await exists(`${dir}/config.json`)) return false;
  return isQuantizedConfig(await Deno.readTextFile(`${dir}/config.json`));
}

function base64(bytes: Uint8Array): string {
  return (bytes as Uint8Array<ArrayBuffer>).toBase64();
}

/** Source of the module that replaces `src/bundle/assets.ts` in the bundle. */
function assetsModule(
  modelName: string,
  model: ModelFiles | string,
  precision: string,
  backend: string,
  wasm: Record<string, Uint8Array>,
): { source: string; embeddedBytes: number } {
  let embeddedBytes = 0;
  const blob = (bytes: Uint8Array) => {
    embeddedBytes += bytes.byteLength;
    return `bytes(${JSON.stringify(base64(bytes))})`;
  };
  const wasmFields = Object.entries(wasm).map(([key, bytes]) => `    ${key}: ${blob(bytes)},`);
  let modelExpression: string;
  if (typeof model === "string") {
    modelExpression = JSON.stringify(model);
  } else {
    const weights = [...model.weights.entries()].map(([name, bytes]) =>
      `      ${JSON.stringify(name)}: ${blob(bytes)},`
    );
    embeddedBytes += model.config.length;
    const optional = [
      model.preprocessorConfig !== undefined
        ? `    preprocessorConfig: ${JSON.stringify(model.preprocessorConfig)},`
        : "",
      model.index !== undefined ? `    index: ${JSON.stringify(model.index)},` : "",
    ].filter(Boolean);
    modelExpression = [
      "{",
      `    config: ${JSON.stringify(model.config)},`,
      ...optional,
      model.weights.size === 1 && model.index === undefined
        ? `    weights: ${blob([...model.weights.values()][0])},`
        : `    weights: {\n${weights.join("\n")}\n    },`,
      "  }",
    ].join("\n");
  }
  const source = `// Generated by src/bundle/build.ts: the embedded assets of this bundle.
function bytes(text) {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}
export function bundleAssets() {
  return {
  modelName: ${JSON.stringify(modelName)},
  // Decoded on each use, so the bytes can be freed once the backend holds the weights.
  get model() {
    return ${modelExpression};
  },
  precision: ${JSON.stringify(precision)},
  backend: ${JSON.stringify(backend)},
  wasm: {
${wasmFields.join("\n")}
  },
  embeddedBytes: EMBEDDED_BYTES,
  };
}
`;
  return { source: source.replace("EMBEDDED_BYTES", String(embeddedBytes)), embeddedBytes };
}

const ORT_STUB = (errorsPath: string) => `
import { EdgeVitError } from ${JSON.stringify(errorsPath)};
export async function loadOnnxAsModel() {
  throw new EdgeVitError("unsupported", "ONNX models need onnxruntime, which the edge bundle leaves out; use a safetensors model folder");
}
`;

// ---------------------------------------------------------------------------------------
// esbuild, loaded from node_modules (package.json pins it).

interface EsbuildPluginBuild {
  onResolve(
    options: { filter: RegExp; namespace?: string },
    callback: (
      args: EsbuildResolveArgs,
    ) => Promise<EsbuildResolveResult | undefined> | EsbuildResolveResult | undefined,
  ): void;
  onLoad(
    options: { filter: RegExp; namespace?: string },
    callback: (
      args: { path: string; namespace: string },
    ) => { contents: string; loader: string; resolveDir?: string },
  ): void;
}

interface EsbuildResolveArgs {
  path: string;
  importer: string;
  namespace: string;
  resolveDir: string;
  kind: string;
}

interface EsbuildResolveResult {
  path?: string;
  namespace?: string;
  external?: boolean;
}

interface Esbuild {
  version: string;
  build(options: Record<string, unknown>): Promise<{
    errors: unknown[];
    warnings: { text: string }[];
    metafile: {
      inputs: Record<string, { bytes: number }>;
      outputs: Record<string, {
        bytes: number;
        inputs: Record<string, { bytesInOutput: number }>;
        imports: { path: string; kind: string; external?: boolean }[];
      }>;
    };
  }>;
  stop(): Promise<void> | void;
}

function loadEsbuild(): Esbuild {
  const require = createRequire(new URL("./build.ts", ROOT).href);
  try {
    return require("esbuild") as Esbuild;
  } catch (error) {
    throw new EdgeVitError(
      "unsupported",
      `esbuild is not installed: run \`npm install\` at the repository root (${
        (error as Error).message
      })`,
    );
  }
}

function edgevitPlugin(graph: DenoGraph, assetsSource: string) {
  return {
    name: "edgevit-deno",
    setup(build: EsbuildPluginBuild) {
      build.onResolve({ filter: /.*/ }, async (args) => {
        if (/^onnxruntime-(web|node)(\/|$)/.test(args.path)) {
          return { path: args.path, namespace: "edgevit-ort" };
        }
        // Node built-ins are part of Deno and of the edge runtimes built on it.
        if (args.path.startsWith("node:")) return { path: args.path, external: true };
        if (args.namespace !== "file" || args.kind === "entry-point") return undefined;
        const pkg = graph.packageOf(args.importer);
        if (pkg) {
          // Inside an npm package: relative files resolve as usual, bare names are its deps.
          if (args.path.startsWith(".") || args.path.startsWith("/")) return undefined;
          const name = args.path.match(/^((?:@[^/]+\/)?[^/]+)/)![1];
          const dependency = graph.dependencyOf(pkg, name) ?? graph.packageId(name);
          if (!dependency) fail(`${pkg} imports ${args.path}, which Deno did not install`);
          const subpath = args.path.slice(name.length).replace(/^\//, "");
          const dir = graph.packageDir(dependency);
          return { path: subpath ? `${dir}/${subpath}` : await packageEntry(dir) };
        }
        const resolved = graph.resolve(args.importer, args.path);
        let path: string;
        if (resolved?.startsWith("npm:")) {
          const { id, subpath } = parseNpmSpecifier(resolved);
          const dir = graph.packageDir(id);
          path = subpath ? `${dir}/${subpath}` : await packageEntry(dir);
        } else if (resolved?.startsWith("file:")) {
          path = fromFileUrl(new URL(resolved));
        } else if (args.path.startsWith(".")) {
          path = fromFileUrl(new URL(args.path, `file://${args.importer}`));
        } else {
          fail(`${args.importer} imports ${args.path}, which Deno's graph does not resolve`);
        }
        if (path === ASSETS_MODULE) return { path, namespace: "edgevit-assets" };
        if (path === ORT_LOADER) return { path, namespace: "edgevit-ort-loader" };
        return { path };
      });
      build.onLoad({ filter: /.*/, namespace: "edgevit-assets" }, () => ({
        contents: assetsSource,
        loader: "js",
      }));
      build.onLoad({ filter: /.*/, namespace: "edgevit-ort-loader" }, () => ({
        contents: ORT_STUB(rootPath("src/errors.ts")),
        loader: "ts",
        resolveDir: rootPath("src/backends/ort"),
      }));
      build.onLoad({ filter: /.*/, namespace: "edgevit-ort" }, (args) => ({
        contents: `throw new Error(${
          JSON.stringify(`${args.path} is not part of the edgevit edge bundle`)
        });`,
        loader: "js",
      }));
    },
  };
}

/**
 * Builds the edge bundle and reports its size and contents.
 *
 * @throws {EdgeVitError} `invalid_argument` for a bad model folder or a bundle over the
 *   size budget, `unsupported` when esbuild is not installed
 *
 * @example
 * ```ts ignore
 * import { buildBundle } from "./build.ts";
 * const report = await buildBundle({ out: "dist/edgevit.mjs" });
 * console.log(report.bytes < 20 * 1024 * 1024); // true
 * ```
 */
export async function buildBundle(options: BuildOptions = {}): Promise<BuildReport> {
  let precision = options.precision ?? "int8";
  if (precision !== "f32" && precision !== "int8") fail(`--precision must be f32 or int8`);
  if (options.model && options.modelUrl) fail("give --model or --model-url, not both");
  const backend = options.backend ?? "wasm";
  if (!(BACKEND_CHOICES as readonly string[]).includes(backend)) {
    fail(`--backend must be one of ${BACKEND_CHOICES.join(", ")}`);
  }

  let modelSource: string;
  let fallbackModel = false;
  let model: ModelFiles | string;
  let modelBytes = 0;
  let sourceWeightBytes = 0;
  let quantizedAtBuild = false;
  let defaultName: string | undefined;
  if (options.modelUrl) {
    if (!/^https?:\/\//i.test(options.modelUrl)) fail(`--model-url must be an http(s) URL`);
    modelSource = options.modelUrl;
    model = options.modelUrl;
  } else {
    let dir = options.model;
    if (!dir) {
      dir = rootPath(`models/${DEFAULT_MODEL}`);
      defaultName = DEFAULT_MODEL;
      const int8Sibling = rootPath(`models/${DEFAULT_MODEL}-int8`);
      if (precision === "int8" && await isQuantizedFolder(int8Sibling)) dir = int8Sibling;
      else if (!await exists(`${dir}/config.json`)) {
        dir = rootPath(FALLBACK_MODEL);
        fallbackModel = true;
        defaultName = undefined;
      }
    }
    dir = dir.replace(/[\\/]+$/, "");
    modelSource = dir;
    // Fail at build time, not at the first request, for a folder that does not load.
    await readCheckpoint(dir);
    let files = await readModelFolder(dir);
    for (const bytes of files.weights.values()) sourceWeightBytes += bytes.byteLength;
    if (isQuantizedConfig(files.config)) {
      if (options.precision === "f32") fail(`${dir} is an int8 checkpoint: it runs at int8 only`);
      precision = "int8";
    } else if (precision === "int8") {
      const quantized = await quantizeCheckpoint(dir);
      files = {
        config: JSON.stringify(quantized.config),
        preprocessorConfig: quantized.preprocessorConfig
          ? JSON.stringify(quantized.preprocessorConfig)
          : undefined,
        weights: new Map([["model.safetensors", quantized.weights]]),
      };
      quantizedAtBuild = true;
    }
    model = files;
    for (const bytes of files.weights.values()) modelBytes += bytes.byteLength;
  }
  const modelName = options.name ?? defaultName ??
    (modelSource.replace(/[\\/]+$/, "").split(/[\\/]/).pop() || "model");

  const graph = await DenoGraph.load(ENTRY);
  const wasm: Record<string, Uint8Array> = {
    kernelsRelaxed: await Deno.readFile(rootPath("wasm/edgevit_kernels_relaxed.wasm")),
    kernelsPlain: await Deno.readFile(rootPath("wasm/edgevit_kernels_simd.wasm")),
  };
  for (const [key, [name, file]] of Object.entries(DECODER_FILES)) {
    const id = graph.packageId(name) ?? fail(`${name} is not in the module graph`);
    wasm[key] = await Deno.readFile(`${graph.packageDir(id)}/${file}`);
  }
  const wasmBytes = Object.values(wasm).reduce((sum, bytes) => sum + bytes.byteLength, 0);
  const { source } = assetsModule(modelName, model, precision, backend, wasm);

  const out = options.out ?? rootPath("dist/edgevit.mjs");
  await Deno.mkdir(out.replace(/[\\/][^\\/]*$/, "") || ".", { recursive: true });
  const esbuild = loadEsbuild();
  let result;
  try {
    result = await esbuild.build({
      entryPoints: [ENTRY],
      outfile: out,
      bundle: true,
      format: "esm",
      platform: "neutral",
      target: "esnext",
      minify: options.minify ?? true,
      // Error classes are told apart by name in logs and JSON.
      keepNames: true,
      metafile: true,
      logLevel: "silent",
      legalComments: "eof",
      banner: {
        js:
          `// edgevit edge bundle (esbuild ${esbuild.version}); model: ${modelName} (${precision}). ` +
          "Run: deno run --allow-net edgevit.mjs, or deno serve edgevit.mjs.",
      },
      plugins: [edgevitPlugin(graph, source)],
    });
  } finally {
    await esbuild.stop();
  }
  for (const input of Object.keys(result.metafile.inputs)) {
    if (input.includes("onnxruntime") && !input.startsWith("edgevit-ort:")) {
      fail(`onnxruntime leaked into the bundle through ${input}`);
    }
  }
  const [output] = Object.values(result.metafile.outputs);
  let assetBytesInOutput = 0;
  for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
    if (input.startsWith("edgevit-assets:")) assetBytesInOutput += bytesInOutput;
  }
  const bytes = (await Deno.stat(out)).size;
  const report: BuildReport = {
    out,
    bytes,
    modelName,
    modelSource,
    fallbackModel,
    precision,
    backend,
    modelBytes,
    quantizedAtBuild,
    sourceWeightBytes,
    wasmBytes,
    assetBytesInOutput,
    codeBytesInOutput: bytes - assetBytesInOutput,
    externalImports: output.imports.filter((entry) => entry.external).map((entry) => entry.path),
  };
  const budget = options.maxBytes ?? SIZE_BUDGET_BYTES;
  if (bytes > budget) {
    fail(`${out} is ${mb(bytes)}, over the budget of ${mb(budget)}`);
  }
  return report;
}

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
}

/** The task's summary lines. */
export function describeReport(report: BuildReport, budget = SIZE_BUDGET_BYTES): string {
  const lines = [
    `${report.out}: ${report.bytes} bytes (${mb(report.bytes)}), budget ${mb(budget)}: ${
      report.bytes <= budget ? "OK" : "OVER"
    }`,
    `  model ${report.modelName} (${report.precision}, ${report.backend} backend) from ${report.modelSource}: ${
      report.modelBytes > 0 ? `${mb(report.modelBytes)} of weights embedded` : "fetched at start"
    }${
      report.quantizedAtBuild
        ? ` (quantized to int8 by this build from ${mb(report.sourceWeightBytes)} of float32)`
        : ""
    }`,
    `  wasm (kernels + JPEG/PNG/WebP decoders): ${
      mb(report.wasmBytes)
    }; embedded assets in the output (base64): ${mb(report.assetBytesInOutput)}; code: ${
      mb(report.codeBytesInOutput)
    }`,
  ];
  if (report.fallbackModel) {
    lines.push(
      `  note: models/${DEFAULT_MODEL} is missing, so the parity fixture ${FALLBACK_MODEL} was embedded`,
    );
  }
  return lines.join("\n");
}

function parseArgs(args: readonly string[]): BuildOptions & { help?: boolean } {
  const options: BuildOptions & { help?: boolean } = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(0, eq) : arg;
    const value = () => {
      if (eq >= 0) return arg.slice(eq + 1);
      if (i + 1 >= args.length) fail(`${name} needs a value`);
      return args[++i];
    };
    switch (name) {
      case "--help":
      case "-h":
        options.help = true;
        break;
      case "--model":
        options.model = value();
        break;
      case "--model-url":
        options.modelUrl = value();
        break;
      case "--name":
        options.name = value();
        break;
      case "--precision":
        options.precision = value() as "f32" | "int8";
        break;
      case "--backend":
        options.backend = value();
        break;
      case "--out":
        options.out = value();
        break;
      case "--no-minify":
        options.minify = false;
        break;
      case "--max-mb": {
        const megabytes = Number(value());
        if (!(megabytes > 0)) fail("--max-mb must be a positive number");
        options.maxBytes = Math.floor(megabytes * 1024 * 1024);
        break;
      }
      default:
        fail(`unknown flag ${arg} (see --help)`);
    }
  }
  return options;
}

const USAGE = `Usage: deno task bundle [flags]
  --model DIR        model folder to embed (default models/${DEFAULT_MODEL})
  --model-url URL    embed no weights; load this http(s) model folder URL at start
  --name NAME        name clients pass as "model" (default: the folder's name)
  --precision P      int8 (default: embed an int8 checkpoint, quantizing a float folder
                     here) or f32 (embed the float weights as they are)
  --backend B        default backend at run time: wasm (default), auto, webgpu, reference
  --out FILE         output (default dist/edgevit.mjs)
  --no-minify        readable output
  --max-mb N         size budget in MB (default 20)`;

if (import.meta.main) {
  try {
    const options = parseArgs(Deno.args);
    if (options.help) {
      console.log(USAGE);
      Deno.exit(0);
    }
    const start = performance.now();
    const report = await buildBundle(options);
    console.log(describeReport(report, options.maxBytes));
    console.log(`  built in ${Math.round(performance.now() - start)} ms`);
  } catch (error) {
    if (!(error instanceof EdgeVitError)) throw error;
    console.error(`bundle: ${error.message}`);
    Deno.exit(1);
  }
}
