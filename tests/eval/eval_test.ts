import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { loadModel } from "../../src/model.ts";
import { evaluateModel } from "../../src/eval/evaluate.ts";
import { DEBIAN_FASHION_MNIST_DIR, loadFashionMnist } from "../../src/eval/fashion_mnist.ts";
import { parseEvalArgs } from "../../src/eval/main.ts";

// A trained model committed under models/ (models/train/train.py); the dataset comes from
// Debian's dataset-fashion-mnist, which CI installs. Neither is optional: a missing one
// fails the test with a message saying what to do.
const MODEL = "models/vit-fmnist";
const NAVIT = "models/navit-fmnist";
const ATS = "models/ats-fmnist";

async function requireModel(dir: string): Promise<string> {
  try {
    await Deno.stat(`${dir}/config.json`);
  } catch {
    assert.fail(`${dir}/config.json is missing: train it with models/train/train.py`);
  }
  return dir;
}

async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-env", "src/eval/main.ts", ...args],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_NO_PACKAGE_JSON: "1" },
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("eval flags parse, with --flag value and --flag=value alike", () => {
  const args = parseEvalArgs([
    "--model",
    "models/x",
    "--limit=200",
    "--json",
    "--precision",
    "int8",
    "--backend=reference",
    "--size",
    "14x21",
    "--batch",
    "1",
    "--token-budget",
    "16",
  ]);
  assert.deepEqual(args, {
    model: "models/x",
    limit: 200,
    json: true,
    precision: "int8",
    backend: "reference",
    size: { height: 14, width: 21 },
    batch: 1,
    data: null,
    tokenBudget: 16,
    help: false,
  });
  assert.deepEqual(parseEvalArgs(["--model", "m", "--size", "56"]).size, { height: 56, width: 56 });
  assert.equal(parseEvalArgs(["--help"]).help, true);
  assert.deepEqual(parseEvalArgs(["--model", "m", "--token-budget", "49,40,24,1"]).tokenBudget, [
    49,
    40,
    24,
    1,
  ]);
});

Deno.test("bad eval flags are rejected with the flag named", () => {
  const cases: [string[], RegExp][] = [
    [[], /--model <dir> is required/],
    [["--model"], /--model needs a value/],
    [["--model", "m", "--limit", "0"], /--limit must be a positive integer/],
    [["--model", "m", "--limit", "1.5"], /--limit must be a positive integer/],
    [["--model", "m", "--precision", "f16"], /--precision must be f32 or int8/],
    [["--model", "m", "--backend", "cuda"], /--backend must be one of auto, wasm/],
    [["--model", "m", "--size", "14x"], /--size must be HxW/],
    [["--model", "m", "--size", "0x14"], /--size must be HxW/],
    [["--model", "m", "--json=yes"], /--json takes no value/],
    [["--model", "m", "--token-budget", "8,,4"], /--token-budget must be a positive integer/],
    [["--model", "m", "--top", "3"], /unknown argument "--top"/],
  ];
  for (const [argv, pattern] of cases) {
    assert.throws(() => parseEvalArgs(argv), (error: unknown) => {
      assert.ok(error instanceof EdgeVitError);
      assert.equal(error.code, "invalid_argument");
      assert.match(error.message, pattern);
      return true;
    });
  }
});

Deno.test("deno task eval --limit 200 --json prints one JSON object with a sane accuracy", async () => {
  const model = await requireModel(MODEL);
  const { code, stdout, stderr } = await runCli(["--model", model, "--limit", "200", "--json"]);
  assert.equal(code, 0, stderr);
  const lines = stdout.trim().split("\n");
  assert.equal(lines.length, 1, `one line of JSON expected, got:\n${stdout}`);
  const report = JSON.parse(lines[0]);
  assert.equal(report.model, "vit-fmnist");
  assert.equal(report.images, 200);
  assert.equal(report.correct, Math.round(report.accuracy * 200));
  // Chance is 10%; the trained ViT is near 90% on the test split.
  assert.ok(report.accuracy > 0.8, `accuracy ${report.accuracy} is below the 0.8 floor`);
  assert.ok(report.accuracy <= 1);
  assert.ok(report.imagesPerSecond > 0 && Number.isFinite(report.imagesPerSecond));
  // A 28×28 ViT with 4×4 patches carries 49 patch tokens and the CLS token through every layer.
  assert.equal(report.tokensPerImage, 50);
  assert.equal(report.precision, "f32");
  assert.equal(typeof report.backend, "string");
  assert.equal(report.inputSize, "28x28");
});

Deno.test("eval prints readable lines without --json, and fails clearly without the dataset", async () => {
  const model = await requireModel(MODEL);
  const text = await runCli(["--model", model, "--limit", "20"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^vit-fmnist \(ViT\): accuracy \d+\.\d\d% \(\d+\/20\)/);
  assert.match(text.stdout, /images\/s .* tokens\/image/);

  const empty = await Deno.makeTempDir({ prefix: "edgevit-nodata-" });
  try {
    const missing = await runCli(["--model", model, "--data", empty]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /apt-get install dataset-fashion-mnist/);
    const usage = await runCli(["--model", model, "--batch", "x"]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--batch must be a positive integer[\s\S]*Usage: deno task eval/);
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("predictions do not depend on the batch size, and --size resizes before the model's own preprocessing", async () => {
  const split = await loadFashionMnist("test", { dir: DEBIAN_FASHION_MNIST_DIR });
  const model = await loadModel(await requireModel(MODEL), { backend: "wasm" });
  try {
    const batched = await evaluateModel(model, split, { limit: 40, batch: 16 });
    const single = await evaluateModel(model, split, { limit: 40, batch: 1, warmupBatches: 0 });
    assert.deepEqual(single.predictions, batched.predictions);
    assert.equal(batched.images, 40);
    assert.equal(batched.modelInputSize, "28x28");

    const small = await evaluateModel(model, split, { limit: 40, size: { height: 14, width: 14 } });
    assert.equal(small.inputSize, "14x14");
    assert.equal(small.modelInputSize, "28x28", "a fixed-size model resizes back to 28×28");
    // 28→14→28 blurs the garments: some of the 40 answers change (ViT loses ~10 points).
    assert.notDeepEqual(small.predictions, batched.predictions, "--size had no effect");
    const same = await evaluateModel(model, split, { limit: 40, size: { height: 28, width: 28 } });
    assert.deepEqual(same.predictions, batched.predictions, "28×28 is the dataset's own size");
  } finally {
    model.close();
  }
});

Deno.test("NaViT runs each image at its own size: 16 patch tokens at 28×28, 4 at 14×14", async () => {
  const split = await loadFashionMnist("test", { dir: DEBIAN_FASHION_MNIST_DIR });
  const model = await loadModel(await requireModel(NAVIT), { backend: "wasm" });
  try {
    const native = await evaluateModel(model, split, { limit: 50 });
    assert.equal(native.modelInputSize, "28x28");
    assert.equal(native.tokensPerImage, 16);
    assert.ok(native.accuracy > 0.7, `accuracy ${native.accuracy} is below the 0.7 floor`);
    const small = await evaluateModel(model, split, { limit: 50, size: { height: 14, width: 14 } });
    assert.equal(small.modelInputSize, "14x14");
    assert.equal(small.tokensPerImage, 4);
  } finally {
    model.close();
  }
});

Deno.test("ATS through the CLI keeps the ViT's answers with its own budgets and prunes with --token-budget", async () => {
  const model = await requireModel(ATS);
  const plain = await runCli(["--model", await requireModel(MODEL), "--limit", "100", "--json"]);
  const ats = await runCli(["--model", model, "--limit", "100", "--json"]);
  const pruned = await runCli([
    "--model",
    model,
    "--limit",
    "100",
    "--json",
    "--token-budget",
    "8",
  ]);
  for (const run of [plain, ats, pruned]) assert.equal(run.code, 0, run.stderr);
  const [p, a, t] = [plain, ats, pruned].map((run) => JSON.parse(run.stdout));
  assert.equal(a.architecture, "ats_vit.ViT");
  // ats-fmnist is vit-fmnist's weights; its budgets prune only in the last layer, whose
  // dropped tokens no later layer reads, so the answers are the ViT's.
  assert.equal(a.correct, p.correct);
  assert.equal(t.tokenBudget, 8);
  assert.ok(t.tokensPerImage < a.tokensPerImage, `${t.tokensPerImage} vs ${a.tokensPerImage}`);
});
