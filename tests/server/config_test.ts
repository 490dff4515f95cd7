import assert from "node:assert/strict";
import { DEFAULT_CONFIG, parseServerArgs, splitModelArg, usage } from "../../src/server/config.ts";
import { EdgeVitError } from "../../src/errors.ts";

Deno.test("no flags and no environment give the defaults", () => {
  const { config, help } = parseServerArgs([], {});
  assert.equal(help, false);
  assert.deepEqual(config, { ...DEFAULT_CONFIG, models: [] });
});

Deno.test("flags take both --name value and --name=value forms and --model repeats", () => {
  const { config } = parseServerArgs([
    "--port=0",
    "--host",
    "0.0.0.0",
    "--model",
    "models/a",
    "--model=b=models/b",
    "--max-batch",
    "32",
    "--max-wait-ms=0",
    "--backend",
    "wasm",
    "--precision",
    "int8",
    "--api-key",
    "s3cret",
    "--deadline-ms",
    "2500",
    "--max-body-bytes",
    "1000",
    "--max-pixels",
    "4096",
    "--max-queue",
    "7",
    "--no-warmup",
  ], {});
  assert.equal(config.port, 0);
  assert.equal(config.host, "0.0.0.0");
  assert.deepEqual(config.models, ["models/a", "b=models/b"]);
  assert.equal(config.maxBatch, 32);
  assert.equal(config.maxWaitMs, 0);
  assert.equal(config.backend, "wasm");
  assert.equal(config.precision, "int8");
  assert.equal(config.apiKey, "s3cret");
  assert.equal(config.deadlineMs, 2500);
  assert.equal(config.maxBodyBytes, 1000);
  assert.equal(config.maxPixels, 4096);
  assert.equal(config.maxQueue, 7);
  assert.equal(config.warmup, false);
});

Deno.test("environment variables apply and flags override them", () => {
  const env = {
    PORT: "9001",
    EDGEVIT_API_KEY: "from-env",
    EDGEVIT_MODEL: "models/a, models/b",
    EDGEVIT_MAX_BATCH: "4",
  };
  const fromEnv = parseServerArgs([], env).config;
  assert.equal(fromEnv.port, 9001);
  assert.equal(fromEnv.apiKey, "from-env");
  assert.deepEqual(fromEnv.models, ["models/a", "models/b"]);
  assert.equal(fromEnv.maxBatch, 4);
  const overridden = parseServerArgs(["--port", "0", "--model", "models/c"], env).config;
  assert.equal(overridden.port, 0);
  assert.deepEqual(overridden.models, ["models/c"]);
});

Deno.test("bad flag values are refused with a message naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--port", "http"], /--port must be a whole number/],
    [["--port", "70000"], /--port must be ≤ 65535/],
    [["--max-batch", "0"], /--max-batch must be ≥ 1/],
    [["--max-wait-ms", "-3"], /--max-wait-ms must be a whole number/],
    [["--precision", "f16"], /precision must be f32 or int8/],
    [["--frobnicate"], /unknown flag --frobnicate/],
    [["--model"], /--model needs a value/],
    [["stray"], /unexpected argument "stray"/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseServerArgs(args, {}), (error: unknown) => {
      assert.ok(error instanceof EdgeVitError);
      assert.equal(error.code, "invalid_argument");
      assert.match(error.message, message);
      return true;
    });
  }
  assert.throws(() => parseServerArgs([], { PORT: "x" }), /PORT must be a whole number/);
});

Deno.test("--help is reported and the usage text lists every flag with its variable", () => {
  assert.equal(parseServerArgs(["--help"], {}).help, true);
  const text = usage();
  for (const flag of ["--port", "--model", "--max-batch", "--api-key", "--max-pixels"]) {
    assert.ok(text.includes(flag), `usage lacks ${flag}`);
  }
  assert.ok(text.includes("EDGEVIT_API_KEY"));
});

Deno.test("a model argument is named by name=path or by its folder name", () => {
  assert.deepEqual(splitModelArg("fast=models/vit-fmnist"), {
    name: "fast",
    location: "models/vit-fmnist",
  });
  assert.deepEqual(splitModelArg("models/vit-fmnist/"), {
    name: "vit-fmnist",
    location: "models/vit-fmnist/",
  });
  assert.deepEqual(splitModelArg("https://example.test/m?a=b"), {
    name: "m",
    location: "https://example.test/m?a=b",
  });
});
