/**
 * The int8 quantizer and its command line: reads a float checkpoint, stores every linear
 * weight as symmetric int8 with one scale per output channel and everything else as
 * float32, in the format `src/loaders/quantized.ts` describes.
 *
 * ```sh
 * deno task quantize --model models/vit-fmnist --out models/vit-fmnist-int8
 * ```
 *
 * @module
 */

import type {
  AttentionOptions,
  AttentionResult,
  Backend,
  LinearSource,
  LinearWeights,
  QuantizedLinearSource,
  Tensor,
} from "../backends/backend.ts";
import { quantizePerChannel } from "../backends/reference/reference_backend.ts";
import { EdgeVitError } from "../errors.ts";
import { buildArchitecture, requireArchitecture } from "../models/registry.ts";
import type { JsonObject } from "./config.ts";
import { INT8_QUANTIZATION, isQuantizedCheckpoint } from "./quantized.ts";
import { type SafetensorsInput, serializeSafetensors } from "./safetensors.ts";
import { type ModelSource, readCheckpoint, type SourceOptions } from "./source.ts";
import { SCALE_SUFFIX } from "./weights.ts";

/** What {@link quantizeCheckpoint} produces: a whole int8 model folder's contents. */
export interface QuantizedCheckpoint {
  /** config.json: the source's, plus the `quantization` marker. */
  config: JsonObject;
  /** model.safetensors: int8 linear weights with scales, everything else float32. */
  weights: Uint8Array;
  /** The source's preprocessor_config.json, if it had one. */
  preprocessorConfig?: JsonObject;
  /** Names of the weights stored as int8. */
  quantized: string[];
  /** Bytes of the source's safetensors files. */
  sourceBytes: number;
}

/**
 * Quantizes a float checkpoint: reads it with the loader of its architecture (which says
 * which tensors are linear weights), and re-encodes those as int8 with per-output-channel
 * scales. The result loads through `loadModel` without the float weights.
 *
 * @param source anything `loadModel` reads (folder, URL, bundle)
 * @throws {EdgeVitError} `invalid_argument` for an already quantized checkpoint, and the
 *   loader's errors for one that does not load
 *
 * @example
 * ```ts
 * import { quantizeCheckpoint } from "./quantize_cli.ts";
 * import { loadModel } from "../model.ts";
 * const q = await quantizeCheckpoint("../shared/fixtures/parity/timm-vit");
 * const model = await loadModel({ config: q.config, weights: q.weights }, { backend: "reference" });
 * console.log(model.precision, q.quantized.length); // "int8" 10
 * model.close();
 * ```
 */
export async function quantizeCheckpoint(
  source: ModelSource,
  options: SourceOptions = {},
): Promise<QuantizedCheckpoint> {
  const loaded = await readCheckpoint(source, options);
  const { checkpoint, weights } = loaded;
  if (isQuantizedCheckpoint(checkpoint.config, weights, checkpoint.source)) {
    throw new EdgeVitError("invalid_argument", `${checkpoint.source}: already quantized`);
  }
  // Building the model on a backend that keeps nothing records which tensors its loader
  // takes as linear weights, and proves that the checkpoint loads at all.
  const entry = requireArchitecture(checkpoint);
  const architecture = await buildArchitecture(entry, {
    checkpoint,
    weights,
    backend: new ShapeOnlyBackend(),
    precision: "f32",
  });
  architecture.dispose();
  weights.assertAllUsed();
  const linear = new Set(weights.linearWeightNames());
  const tensors: Record<string, SafetensorsInput> = {};
  for (const name of weights.names()) {
    if (!linear.has(name)) {
      const tensor = weights.get(name);
      tensors[name] = { dtype: "F32", shape: tensor.shape, data: tensor.data };
      continue;
    }
    // [out, ...]: a linear [out, in] or a conv patch embedding [out, c, ph, pw]; either
    // way one scale per output channel, over everything that feeds it.
    const matrix = weights.linearWeight(name);
    const rows = matrix.shape[0];
    const q = quantizePerChannel({
      weight: matrix.data as Float32Array,
      bias: null,
      outFeatures: rows,
      inFeatures: rows > 0 ? matrix.data.length / rows : 0,
    });
    tensors[name] = { dtype: "I8", shape: matrix.shape, data: q.weight };
    tensors[name + SCALE_SUFFIX] = { dtype: "F32", shape: [rows], data: q.scales };
  }
  return {
    config: { ...checkpoint.config, quantization: { ...INT8_QUANTIZATION } },
    weights: serializeSafetensors(tensors, { quantization: INT8_QUANTIZATION.method }),
    preprocessorConfig: checkpoint.preprocessorConfig,
    quantized: [...linear],
    sourceBytes: loaded.weightBytes,
  };
}

/**
 * Quantizes the checkpoint in `modelDir` into the folder `outDir` (config.json,
 * model.safetensors, and preprocessor_config.json when the source has one).
 *
 * @example
 * ```ts
 * import { writeQuantizedCheckpoint } from "./quantize_cli.ts";
 * const out = await Deno.makeTempDir();
 * const q = await writeQuantizedCheckpoint("../shared/fixtures/parity/hf-vit", out);
 * console.log(q.weights.byteLength < q.sourceBytes / 3); // true
 * ```
 */
export async function writeQuantizedCheckpoint(
  modelDir: string,
  outDir: string,
  options: SourceOptions = {},
): Promise<QuantizedCheckpoint> {
  const result = await quantizeCheckpoint(modelDir, options);
  await Deno.mkdir(outDir, { recursive: true });
  const json = (value: JsonObject) => JSON.stringify(value, null, 2) + "\n";
  await Deno.writeTextFile(`${outDir}/config.json`, json(result.config));
  await Deno.writeFile(`${outDir}/model.safetensors`, result.weights);
  if (result.preprocessorConfig) {
    await Deno.writeTextFile(`${outDir}/preprocessor_config.json`, json(result.preprocessorConfig));
  }
  return result;
}

// ─── A backend that only holds shapes ───────────────────────────────────────────────

class ShapeTensor implements Tensor {
  readonly backend = "shape-only";
  constructor(readonly shape: readonly number[]) {}
}

/**
 * Takes weights and keeps nothing but their shapes: building a model on it runs the
 * loader (names, shapes, rewrites) without copying weights anywhere. It cannot compute.
 */
class ShapeOnlyBackend implements Backend {
  readonly name = "shape-only";
  supportsOp(): boolean {
    return true;
  }
  upload(_data: Float32Array, shape: readonly number[]): Tensor {
    return new ShapeTensor([...shape]);
  }
  read(): Promise<Float32Array> {
    return Promise.reject(this.#cannot());
  }
  release(): void {}
  prepareLinear(source: LinearSource): LinearWeights {
    return this.#linear(source);
  }
  prepareQuantizedLinear(source: QuantizedLinearSource): LinearWeights {
    return this.#linear(source);
  }
  releaseLinear(): void {}
  linear(): Tensor {
    throw this.#cannot();
  }
  layerNorm(): Tensor {
    throw this.#cannot();
  }
  rmsNorm(): Tensor {
    throw this.#cannot();
  }
  gelu(): Tensor {
    throw this.#cannot();
  }
  add(): Tensor {
    throw this.#cannot();
  }
  softmax(): Tensor {
    throw this.#cannot();
  }
  attention(_q: Tensor, _k: Tensor, _v: Tensor, _options: AttentionOptions): AttentionResult {
    throw this.#cannot();
  }
  gatherRows(): Tensor {
    throw this.#cannot();
  }
  concatRows(): Tensor {
    throw this.#cannot();
  }
  segmentMean(): Tensor {
    throw this.#cannot();
  }
  headNorms(): Tensor {
    throw this.#cannot();
  }
  dispose(): void {}
  #linear(source: LinearSource | QuantizedLinearSource): LinearWeights {
    return {
      inFeatures: source.inFeatures,
      outFeatures: source.outFeatures,
      precision: source.weight instanceof Int8Array ? "int8" : "f32",
      backend: this.name,
    };
  }
  #cannot(): Error {
    return new EdgeVitError("unsupported", "the shape-only backend cannot compute");
  }
}

// ─── Command line ───────────────────────────────────────────────────────────────────

/** Parsed `deno task quantize` flags. */
export interface QuantizeArgs {
  model: string;
  out: string;
  json: boolean;
  help: boolean;
}

/** The usage text. */
export function usage(): string {
  return `Usage: deno task quantize --model <dir> --out <dir> [--json]

Writes an int8 copy of a model folder: every linear weight as symmetric int8 with one
float32 scale per output channel, everything else float32, and a "quantization" marker
in config.json. loadModel runs such a folder at int8 without the float weights.

  --model <dir>   float checkpoint folder (config.json + model.safetensors or shards)
  --out <dir>     folder to write (created if missing; its files are replaced)
  --json          print one JSON object with the figures
  -h, --help      this text`;
}

/**
 * Parses `deno task quantize` flags (`--flag value` or `--flag=value`).
 *
 * @throws {EdgeVitError} `invalid_argument` for unknown or missing flags
 *
 * @example
 * ```ts
 * import { parseQuantizeArgs } from "./quantize_cli.ts";
 * console.log(parseQuantizeArgs(["--model", "a", "--out=b"]).out); // "b"
 * ```
 */
export function parseQuantizeArgs(argv: readonly string[]): QuantizeArgs {
  const args: QuantizeArgs = { model: "", out: "", json: false, help: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = (): string => {
      const next = inline ?? argv[++i];
      if (next === undefined || next === "") {
        throw new EdgeVitError("invalid_argument", `${flag} needs a value`);
      }
      return next;
    };
    switch (flag) {
      case "--model":
        args.model = value();
        break;
      case "--out":
        args.out = value();
        break;
      case "--json":
        args.json = true;
        break;
      case "-h":
      case "--help":
        args.help = true;
        break;
      default:
        throw new EdgeVitError("invalid_argument", `unknown option ${argv[i]}`);
    }
  }
  if (!args.help && (!args.model || !args.out)) {
    throw new EdgeVitError("invalid_argument", "both --model and --out are required");
  }
  if (!args.help && args.model.replace(/\/+$/, "") === args.out.replace(/\/+$/, "")) {
    throw new EdgeVitError("invalid_argument", "--out must differ from --model");
  }
  return args;
}

async function main(argv: readonly string[]): Promise<number> {
  let args: QuantizeArgs;
  try {
    args = parseQuantizeArgs(argv);
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${usage()}`);
    return 2;
  }
  if (args.help) {
    console.log(usage());
    return 0;
  }
  try {
    const result = await writeQuantizedCheckpoint(args.model, args.out);
    const figures = {
      model: args.model,
      out: args.out,
      quantizedTensors: result.quantized.length,
      sourceBytes: result.sourceBytes,
      int8Bytes: result.weights.byteLength,
      ratio: result.weights.byteLength / result.sourceBytes,
    };
    if (args.json) console.log(JSON.stringify(figures));
    else {
      const mb = (bytes: number) => `${(bytes / 1e6).toFixed(2)} MB`;
      console.log(
        `${args.out}: ${figures.quantizedTensors} linear weights int8; weights ${
          mb(figures.sourceBytes)
        } → ${mb(figures.int8Bytes)} (${figures.ratio.toFixed(3)}×)`,
      );
    }
    return 0;
  } catch (error) {
    if (error instanceof EdgeVitError) {
      console.error(`error (${error.code}): ${error.message}`);
      return 1;
    }
    throw error;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
