/**
 * Writes the markdown tables of models/README.md's "Accuracy measured by the engine"
 * section: for every trained model folder, the engine's test accuracy (f32 and int8),
 * throughput and latency next to PyTorch's accuracy on the same weights, and the scale
 * robustness of NaViT against the fixed-size ViT.
 *
 * ```sh
 * nice -n 19 deno run --allow-read --allow-env --allow-run src/eval/compare.ts \
 *   [--models vit-fmnist,ats-fmnist,...] [--sizes 14,21,28,42,56] [--limit N] [--root models]
 * ```
 *
 * PyTorch figures come from `models/train/eval_torch.py` and, where that script computes
 * something other than what the engine serves (resized inputs, batched ATS), from
 * `src/eval/torch_reference.py`; see that file for why.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { type EvalArgs, type EvalReport, runEval } from "./main.ts";

const PYTHON = "/usr/bin/python3";
const ALL = ["vit-fmnist", "ats-fmnist", "patchmerger-fmnist", "navit-fmnist"];

interface TorchResult {
  accuracy: number;
  correct: number;
  images: number;
}

async function torch(script: string, args: string[]): Promise<TorchResult> {
  const out = await new Deno.Command(PYTHON, {
    args: [script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (out.code !== 0) {
    throw new Error(`${script} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return JSON.parse(text.split("\n").pop()!);
}

/** Trainable parameters, as PyTorch counts them (buffers such as NaViT's fixed LayerNorm betas excluded). */
async function parameterCount(dir: string): Promise<number> {
  const code = "import sys; sys.path.insert(0, 'models/train'); import vitlib; " +
    "m, _ = vitlib.load_model_dir(sys.argv[1]); print(sum(p.numel() for p in m.parameters()))";
  const out = await new Deno.Command(PYTHON, { args: ["-c", code, dir], stdout: "piped" })
    .output();
  const count = Number(new TextDecoder().decode(out.stdout).trim());
  if (out.code !== 0 || !Number.isSafeInteger(count)) throw new Error(`cannot count ${dir}`);
  return count;
}

function engineArgs(model: string, extra: Partial<EvalArgs>): EvalArgs {
  return {
    model,
    limit: null,
    json: true,
    precision: "f32",
    backend: "wasm",
    size: null,
    batch: 100,
    data: null,
    tokenBudget: null,
    help: false,
    ...extra,
  };
}

const pct = (v: number) => (100 * v).toFixed(2);

async function main(argv: string[]): Promise<void> {
  const option = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const root = (option("--root") ?? "models").replace(/\/+$/, "");
  const names = option("--models")?.split(",") ?? ALL;
  const sizes = (option("--sizes") ?? "14,21,28,42,56").split(",").map(Number);
  const limit = option("--limit") ? Number(option("--limit")) : null;
  const limitArgs = limit ? ["--limit", String(limit)] : [];
  const latencyImages = Math.min(limit ?? 2000, 2000);

  const rows: string[] = [];
  const present: string[] = [];
  for (const name of names) {
    const dir = `${root}/${name}`;
    try {
      await Deno.stat(`${dir}/config.json`);
    } catch {
      console.error(`skipping ${name}: ${dir}/config.json does not exist`);
      continue;
    }
    present.push(name);
    const f32 = await runEval(engineArgs(dir, { limit }));
    const int8 = await runEval(engineArgs(dir, { limit, precision: "int8" }));
    const latency = await runEval(engineArgs(dir, { limit: latencyImages, batch: 1 }));
    const reference = await torch("models/train/eval_torch.py", [dir, "--json", ...limitArgs]);
    let note = "";
    if (f32.architecture === "ats_vit.ViT") {
      const single = await torch("src/eval/torch_reference.py", [
        dir,
        "--batch",
        "1",
        ...limitArgs,
      ]);
      note = ` (${pct(single.accuracy)}% one image per batch)`;
    }
    const params = await parameterCount(dir);
    const bytes = (await Deno.stat(`${dir}/model.safetensors`)).size;
    console.error(JSON.stringify({ name, f32, int8, latency, reference }));
    rows.push(
      `| \`${name}\` | ${params.toLocaleString("en-US")} | ${(bytes / 1e6).toFixed(2)} MB | ` +
        `${pct(reference.accuracy)}%${note} | ${pct(f32.accuracy)}% | ` +
        `${(100 * (f32.accuracy - reference.accuracy)).toFixed(2)} | ${pct(int8.accuracy)}% | ` +
        `${f32.imagesPerSecond.toFixed(0)} | ${latency.msPerImage.toFixed(2)} | ` +
        `${f32.tokensPerImage.toFixed(2)} |`,
    );
  }
  console.log(
    "| model | params | weights | PyTorch | engine f32 | Δ points | engine int8 | images/s " +
      "(batch 100) | ms/image (batch 1) | tokens/image |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const row of rows) console.log(row);

  const scaled = ["navit-fmnist", "vit-fmnist"].filter((n) => present.includes(n));
  if (scaled.length === 0) return;
  console.log();
  console.log(
    "| model | input | engine f32 | PyTorch (Pillow uint8 resize) | PyTorch (eval_torch.py, " +
      "float resize) | tokens/image |",
  );
  console.log("| --- | --- | ---: | ---: | ---: | ---: |");
  for (const name of scaled) {
    const dir = `${root}/${name}`;
    for (const size of sizes) {
      const report: EvalReport = await runEval(
        engineArgs(dir, { limit, size: { height: size, width: size } }),
      );
      const sizeArgs = ["--size", String(size), ...limitArgs];
      const pil = await torch("src/eval/torch_reference.py", [dir, ...sizeArgs]);
      const float = await torch("models/train/eval_torch.py", [dir, "--json", ...sizeArgs]);
      console.error(JSON.stringify({ name, size, report, pil, float }));
      console.log(
        `| \`${name}\` | ${size}×${size} | ${pct(report.accuracy)}% | ${pct(pil.accuracy)}% | ` +
          `${pct(float.accuracy)}% | ${report.tokensPerImage.toFixed(2)} |`,
      );
    }
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(error instanceof EdgeVitError ? `compare: ${error.message}` : error);
    Deno.exit(1);
  }
}
