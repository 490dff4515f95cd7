/**
 * `deno task eval --model <dir>`: accuracy of a model on the official Fashion-MNIST test
 * split (10,000 images from Debian's `dataset-fashion-mnist`), measured by edgevit itself
 * through `loadModel` and the model's own preprocessing. Prints accuracy, images/s and
 * mean tokens per image; `--json` prints one JSON object instead.
 *
 * ```sh
 * deno task eval --model models/vit-fmnist
 * deno task eval --model models/navit-fmnist --size 14x14 --json
 * ```
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { loadModel } from "../model.ts";
import type { Precision } from "../backends/backend.ts";
import { BACKEND_CHOICES, type BackendChoice } from "../backends/select.ts";
import { defaultFashionMnistDir, loadFashionMnist } from "./fashion_mnist.ts";
import { evaluateModel, type EvaluationResult } from "./evaluate.ts";

/** Parsed command line of `deno task eval`. */
export interface EvalArgs {
  model: string;
  limit: number | null;
  json: boolean;
  precision: Precision;
  backend: BackendChoice;
  size: { height: number; width: number } | null;
  batch: number;
  /** Dataset folder; null: `EDGEVIT_FASHION_MNIST` or Debian's folder. */
  data: string | null;
  /** ATS token budget: one for every layer, or one per layer (lowers the checkpoint's own). */
  tokenBudget: number | number[] | null;
  help: boolean;
}

/** The usage text. */
export function usage(): string {
  return `Usage: deno task eval --model <dir> [options]

Accuracy of an edgevit model on the Fashion-MNIST test split (10,000 images).

  --model <dir>          model folder (config.json + model.safetensors), required
  --limit <n>            first n test images only (default: all 10,000)
  --json                 print one JSON object
  --precision f32|int8   weights precision (default f32)
  --backend <name>       ${BACKEND_CHOICES.join(", ")} (default auto)
  --size <H>x<W>         resize the 28x28 images to H x W first (bilinear, Pillow-exact);
                         fixed-size models resize them back, NaViT runs at that size
  --batch <n>            images per forward pass (default 100; 1 measures latency)
  --token-budget <n>     ATS: keep at most n patch tokens per layer, or n1,n2,... per layer
  --data <dir>           folder with the idx files (default $EDGEVIT_FASHION_MNIST or
                         /usr/share/datasets/fashion-mnist, from dataset-fashion-mnist)
  -h, --help             this text`;
}

/**
 * Parses `deno task eval` flags (`--flag value` or `--flag=value`).
 *
 * @throws {EdgeVitError} `invalid_argument` naming the flag that is wrong
 *
 * @example
 * ```ts
 * import { parseEvalArgs } from "./main.ts";
 * const args = parseEvalArgs(["--model", "models/vit-fmnist", "--size=14x14", "--json"]);
 * console.log(args.size, args.json); // { height: 14, width: 14 } true
 * ```
 */
export function parseEvalArgs(argv: readonly string[]): EvalArgs {
  const args: EvalArgs = {
    model: "",
    limit: null,
    json: false,
    precision: "f32",
    backend: "auto",
    size: null,
    batch: 100,
    data: null,
    tokenBudget: null,
    help: false,
  };
  const flags = ["--json", "--help", "-h"];
  const options = [
    "--model",
    "--limit",
    "--precision",
    "--backend",
    "--size",
    "--batch",
    "--token-budget",
    "--data",
  ];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq > 0 ? arg.slice(0, eq) : arg;
    if (flags.includes(name)) {
      if (name !== arg) throw bad(`${name} takes no value`);
      if (name === "--json") args.json = true;
      else args.help = true;
      continue;
    }
    if (!options.includes(name)) throw bad(`unknown argument ${JSON.stringify(arg)}`);
    let value: string;
    if (name !== arg) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length) value = argv[++i];
    else throw bad(`${name} needs a value`);
    switch (name) {
      case "--model":
        if (!value) throw bad("--model needs a folder");
        args.model = value;
        break;
      case "--limit":
        args.limit = positiveInteger(value, name);
        break;
      case "--batch":
        args.batch = positiveInteger(value, name);
        break;
      case "--token-budget":
        args.tokenBudget = value.includes(",")
          ? value.split(",").map((v) => positiveInteger(v, name))
          : positiveInteger(value, name);
        break;
      case "--precision":
        if (value !== "f32" && value !== "int8") {
          throw bad(`--precision must be f32 or int8, got ${JSON.stringify(value)}`);
        }
        args.precision = value;
        break;
      case "--backend":
        if (!BACKEND_CHOICES.includes(value as BackendChoice)) {
          throw bad(
            `--backend must be one of ${BACKEND_CHOICES.join(", ")}, got ${JSON.stringify(value)}`,
          );
        }
        args.backend = value as BackendChoice;
        break;
      case "--size":
        args.size = parseSize(value);
        break;
      case "--data":
        if (!value) throw bad("--data needs a folder");
        args.data = value;
        break;
    }
  }
  if (!args.help && !args.model) throw bad("--model <dir> is required");
  return args;
}

function parseSize(value: string): { height: number; width: number } {
  const match = /^(\d+)(?:[xX](\d+))?$/.exec(value);
  const height = match ? Number(match[1]) : NaN;
  const width = match ? Number(match[2] ?? match[1]) : NaN;
  const ok = (v: number) => Number.isSafeInteger(v) && v >= 1 && v <= 4096;
  if (!ok(height) || !ok(width)) {
    throw bad(`--size must be HxW (or one side) with sides 1–4096, got ${JSON.stringify(value)}`);
  }
  return { height, width };
}

function positiveInteger(value: string, flag: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw bad(`${flag} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return n;
}

function bad(message: string): EdgeVitError {
  return new EdgeVitError("invalid_argument", message);
}

/** The JSON object `--json` prints. */
export interface EvalReport {
  model: string;
  architecture: string;
  accuracy: number;
  correct: number;
  images: number;
  imagesPerSecond: number;
  msPerImage: number;
  tokensPerImage: number;
  precision: Precision;
  backend: string;
  batch: number;
  inputSize: string;
  modelInputSize: string;
  seconds: number;
  tokenBudget: number | number[] | null;
}

/** Loads the model and the test split, evaluates, and returns the report. */
export async function runEval(args: EvalArgs): Promise<EvalReport> {
  const split = await loadFashionMnist("test", { dir: args.data ?? defaultFashionMnistDir() });
  const model = await loadModel(args.model, {
    backend: args.backend,
    precision: args.precision,
    log: (message) => console.error(message),
  });
  let result: EvaluationResult;
  try {
    result = await evaluateModel(model, split, {
      limit: args.limit ?? undefined,
      batch: args.batch,
      size: args.size,
      forward: args.tokenBudget ? { tokenBudget: args.tokenBudget } : undefined,
    });
  } finally {
    model.close();
  }
  return {
    model: args.model.replace(/\/+$/, "").split("/").pop() || args.model,
    architecture: model.config.architecture,
    accuracy: result.accuracy,
    correct: result.correct,
    images: result.images,
    imagesPerSecond: round(result.imagesPerSecond, 1),
    msPerImage: round(result.msPerImage, 3),
    tokensPerImage: round(result.tokensPerImage, 2),
    precision: model.precision,
    backend: model.backend,
    batch: result.batch,
    inputSize: result.inputSize,
    modelInputSize: result.modelInputSize,
    seconds: round(result.seconds, 2),
    tokenBudget: args.tokenBudget,
  };
}

/** The human-readable lines of a report. */
export function formatReport(r: EvalReport): string {
  return [
    `${r.model} (${r.architecture}): accuracy ${(100 * r.accuracy).toFixed(2)}% ` +
    `(${r.correct}/${r.images}) on the Fashion-MNIST test split, input ${r.inputSize}` +
    (r.modelInputSize && r.modelInputSize !== r.inputSize
      ? ` (model ran at ${r.modelInputSize})`
      : ""),
    `  ${r.imagesPerSecond.toFixed(1)} images/s (${r.msPerImage.toFixed(3)} ms/image, batch ` +
    `${r.batch}), ${r.tokensPerImage.toFixed(2)} tokens/image, ${r.backend} ${r.precision}` +
    (r.tokenBudget ? `, token budget ${r.tokenBudget}` : ""),
  ].join("\n");
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

async function main(argv: string[]): Promise<number> {
  let args: EvalArgs;
  try {
    args = parseEvalArgs(argv);
  } catch (error) {
    if (error instanceof EdgeVitError) {
      console.error(`edgevit eval: ${error.message}\n\n${usage()}`);
      return 2;
    }
    throw error;
  }
  if (args.help) {
    console.log(usage());
    return 0;
  }
  try {
    const report = await runEval(args);
    console.log(args.json ? JSON.stringify(report) : formatReport(report));
    return 0;
  } catch (error) {
    if (error instanceof EdgeVitError) {
      console.error(`edgevit eval: ${error.message}`);
      return 1;
    }
    throw error;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
