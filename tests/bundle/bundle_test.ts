/**
 * The edge bundle end to end: `buildBundle` (what `deno task bundle` runs) writes one
 * module, which then runs as `deno run --allow-net` and as `deno serve` in child
 * processes with no other permission and no config file, and classifies real photos
 * over HTTP exactly as the library does on the same weights.
 */

import assert from "node:assert/strict";
import { buildBundle, type BuildReport, SIZE_BUDGET_BYTES } from "../../src/bundle/build.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { writeQuantizedCheckpoint } from "../../src/loaders/quantize_cli.ts";
import { loadModel } from "../../src/model.ts";

const IMAGES = new URL("../fixtures/images/", import.meta.url);
const FIXTURE_MODEL = new URL(
  "../../../shared/fixtures/parity/vitpytorch-vit-cls/",
  import.meta.url,
);

type Bytes = Uint8Array<ArrayBuffer>;

interface Top {
  label: string;
  index: number;
  score: number;
}

interface ClassifyBody {
  results: { top: Top[]; tokens: number }[];
  model: string;
  backend: string;
  precision: string;
  timings: { queueMs: number; preprocessMs: number; inferenceMs: number };
}

/** One build shared by the tests, in a folder of its own (no deno.json around it). */
let built: Promise<{ dir: string; report: BuildReport }> | null = null;
function defaultBuild() {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "edgevit-bundle-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const report = await buildBundle({ out: `${dir}/edgevit.mjs` });
    return { dir, report };
  })();
  return built;
}

async function readImage(name: string): Promise<Bytes> {
  return await Deno.readFile(new URL(name, IMAGES)) as Bytes;
}

/** A child Deno process serving a bundle, and what it printed. */
interface BundleProcess {
  base: string;
  child: Deno.ChildProcess;
  stdout(): string;
  stderr(): string;
  stop(): Promise<Deno.CommandStatus>;
}

/**
 * Runs `deno <args>` in `cwd` with only the given environment and waits for the bundle's
 * "listening on" line.
 */
async function spawnBundle(
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
): Promise<BundleProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", DENO_NO_PACKAGE_JSON: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let err = "";
  const listening = Promise.withResolvers<string>();
  const decoder = () => new TextDecoder();
  const pumpOut = (async () => {
    const text = decoder();
    for await (const chunk of child.stdout) {
      out += text.decode(chunk, { stream: true });
      const match = out.match(/edgevit listening on (http:\/\/127\.0\.0\.1:\d+)\//);
      if (match) listening.resolve(match[1]);
    }
    listening.reject(new Error(`the bundle exited before listening:\n${out}\n${err}`));
  })();
  const pumpErr = (async () => {
    const text = decoder();
    for await (const chunk of child.stderr) err += text.decode(chunk, { stream: true });
  })();
  const status = child.status.then(async (status) => {
    await Promise.all([pumpOut, pumpErr]);
    return status;
  });
  const timer = setTimeout(() => listening.reject(new Error("the bundle did not start")), 60_000);
  let base: string;
  try {
    base = await listening.promise;
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await status;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return {
    base,
    child,
    stdout: () => out,
    stderr: () => err,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      return await status;
    },
  };
}

async function classifyOver(
  base: string,
  body: BodyInit,
  contentType: string,
  topK: number,
): Promise<ClassifyBody> {
  const response = await fetch(`${base}/v1/classify?topK=${topK}`, {
    method: "POST",
    headers: { "content-type": contentType },
    body,
    signal: AbortSignal.timeout(60_000),
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  return JSON.parse(text);
}

/** The library's own answer for these images on the same weights and backend. */
async function libraryAnswer(
  report: BuildReport,
  images: Bytes[],
  topK: number,
  precision: "f32" | "int8" = "f32",
): Promise<Top[][]> {
  const model = await loadModel(report.modelSource, { backend: "wasm", precision });
  try {
    return await model.classify(images, { topK });
  } finally {
    model.close();
  }
}

function assertSameTop(actual: Top[], expected: Top[], labels: readonly string[]): void {
  assert.equal(actual.length, expected.length);
  for (const [i, top] of actual.entries()) {
    assert.equal(top.index, expected[i].index);
    assert.equal(top.label, labels[top.index]);
    assert.ok(
      Math.abs(top.score - expected[i].score) < 1e-5,
      `${top.score} vs ${expected[i].score}`,
    );
    if (i > 0) assert.ok(top.score <= actual[i - 1].score, "classes come best first");
  }
}

Deno.test("deno task bundle writes one self-contained module under the size budget", async () => {
  const { dir, report } = await defaultBuild();
  assert.equal(report.out, `${dir}/edgevit.mjs`);
  assert.equal((await Deno.stat(report.out)).size, report.bytes);
  assert.ok(report.bytes < SIZE_BUDGET_BYTES, `${report.bytes} bytes`);
  // Only built-ins of Deno itself (node:timers and the like) are imported at run time.
  assert.deepEqual(report.externalImports.filter((path) => !path.startsWith("node:")), []);
  assert.ok(report.modelBytes > 0, "the model's weights are embedded");
  // base64 makes the embedded bytes 4/3 as large, never smaller.
  assert.ok(report.assetBytesInOutput >= (report.modelBytes + report.wasmBytes) * 4 / 3);
  // The default bundle carries the model as int8: a quarter of the linear weights' bytes.
  assert.equal(report.precision, "int8");
  const float = await buildBundle({ precision: "f32", out: `${dir}/edgevit-f32.mjs` });
  assert.equal(float.precision, "f32");
  assert.equal(float.modelBytes, report.sourceWeightBytes);
  assert.ok(
    report.modelBytes < float.modelBytes / 2,
    `${report.modelBytes} vs ${float.modelBytes}`,
  );
  assert.ok(report.bytes < float.bytes);
  const code = await Deno.readTextFile(report.out);
  assert.ok(!/from\s*["']npm:/.test(code), "no npm: imports are left");
  assert.ok(!code.includes("ort-wasm"), "onnxruntime's wasm is not in the bundle");
});

Deno.test("deno run --allow-net serves the bundle and classifies photos like the library", async () => {
  const { dir, report } = await defaultBuild();
  const server = await spawnBundle(
    ["run", "--allow-net", report.out, "--host", "127.0.0.1", "--port", "0"],
    dir,
  );
  let status: Deno.CommandStatus;
  try {
    const jpeg = await readImage("chelsea.jpg");
    const png = await readImage("coffee_alpha.png");
    const webp = await readImage("astronaut.webp");
    const raw = await classifyOver(server.base, jpeg, "image/jpeg", 3);
    const json = await classifyOver(
      server.base,
      JSON.stringify({ images: [png.toBase64(), webp.toBase64()] }),
      "application/json",
      3,
    );
    const models = await (await fetch(`${server.base}/v1/models`)).json();
    const labels: string[] = models.models[0].labels;
    assert.equal(models.models[0].name, report.modelName);

    assert.equal(raw.model, report.modelName);
    assert.equal(raw.backend, "wasm");
    assert.equal(raw.precision, report.precision);
    assert.equal(raw.results.length, 1);
    assert.ok(raw.results[0].tokens >= 1);
    assert.equal(json.results.length, 2);
    const expected = await libraryAnswer(report, [jpeg, png, webp], 3, report.precision);
    assertSameTop(raw.results[0].top, expected[0], labels);
    assertSameTop(json.results[0].top, expected[1], labels);
    assertSameTop(json.results[1].top, expected[2], labels);

    const ready = await fetch(`${server.base}/readyz`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
  } finally {
    status = await server.stop();
  }
  assert.equal(status.code, 0, server.stderr());
  // Without --allow-env / --allow-read the bundle must not even have tried.
  assert.doesNotMatch(server.stderr(), /NotCapable|PermissionDenied|Requires (env|read) access/);
  assert.match(server.stdout(), /edgevit ready/);
});

Deno.test("deno serve runs the bundle's default export on the address it is given", async () => {
  const { dir, report } = await defaultBuild();
  const server = await spawnBundle(
    ["serve", "--allow-net", "--host", "127.0.0.1", "--port", "0", report.out],
    dir,
  );
  let status: Deno.CommandStatus;
  try {
    const jpeg = await readImage("chelsea.jpg");
    const answer = await classifyOver(server.base, jpeg, "image/jpeg", 2);
    assert.equal(answer.model, report.modelName);
    const [expected] = await libraryAnswer(report, [jpeg], 2, report.precision);
    const labels = (await (await fetch(`${server.base}/v1/models`)).json()).models[0].labels;
    assertSameTop(answer.results[0].top, expected, labels);
    // deno serve listens for it: the module must not have started a second server.
    assert.equal(server.stdout().match(/listening on/g)?.length, 1, server.stdout());
    // A real PNG cut after its header: the header is fine, the pixels are missing.
    const truncated = (await readImage("coffee_alpha.png")).slice(0, 40);
    const bad = await fetch(`${server.base}/v1/classify`, {
      method: "POST",
      headers: { "content-type": "image/png" },
      body: truncated,
    });
    assert.equal(bad.status, 422);
    assert.equal((await bad.json()).error.code, "invalid_image");
  } finally {
    status = await server.stop();
  }
  assert.equal(status.code, 0, server.stderr());
  assert.doesNotMatch(server.stderr(), /NotCapable|PermissionDenied|AddrInUse/);
});

Deno.test("with env access the bundle takes its settings from EDGEVIT_* variables", async () => {
  const { dir, report } = await defaultBuild();
  const server = await spawnBundle(
    ["run", "--allow-net", "--allow-env", report.out, "--port", "0"],
    dir,
    // HOST is a machine name on many platforms: only EDGEVIT_HOST is an address to bind.
    { EDGEVIT_API_KEY: "edge-key", EDGEVIT_HOST: "127.0.0.1", HOST: "no-such-host.invalid" },
  );
  try {
    const anonymous = await fetch(`${server.base}/v1/models`);
    assert.equal(anonymous.status, 401);
    await anonymous.body?.cancel();
    const keyed = await fetch(`${server.base}/v1/models`, { headers: { "x-api-key": "edge-key" } });
    assert.equal(keyed.status, 200);
    assert.equal((await keyed.json()).models[0].name, report.modelName);
  } finally {
    await server.stop();
  }
});

Deno.test("the bundle exports createHandler and default.fetch for custom routing", async () => {
  const { report } = await defaultBuild();
  const bundle = await import(new URL(`file://${report.out}`).href);
  assert.equal(typeof bundle.default.fetch, "function");
  const handler = bundle.createHandler({ maxBatch: 2 });
  try {
    await handler.ready;
    const jpeg = await readImage("chelsea.jpg");
    const response = await handler(
      new Request("http://edge.local/v1/classify?topK=2", {
        method: "POST",
        headers: { "content-type": "image/jpeg" },
        body: jpeg,
      }),
    );
    const answer: ClassifyBody = await response.json();
    assert.equal(response.status, 200);
    assert.equal(answer.precision, report.precision);
    const [expected] = await libraryAnswer(report, [jpeg], 2, report.precision);
    assert.deepEqual(answer.results[0].top.map((t) => t.index), expected.map((t) => t.index));
    const missing = await handler(new Request("http://edge.local/nowhere"));
    assert.equal(missing.status, 404);
    await missing.body?.cancel();
  } finally {
    await handler.close();
  }
});

Deno.test("a bundle built with --model-url fetches the weights when it starts", async () => {
  // A loopback file server stands in for the bucket the weights would live in.
  const files = new Map<string, Bytes>();
  for (const name of ["config.json", "model.safetensors"]) {
    files.set(name, await Deno.readFile(new URL(name, FIXTURE_MODEL)) as Bytes);
  }
  const requested: string[] = [];
  const host = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const name = new URL(request.url).pathname.split("/").pop()!;
    requested.push(name);
    const body = files.get(name);
    return body ? new Response(body) : new Response("not found", { status: 404 });
  });
  const dir = await Deno.makeTempDir({ prefix: "edgevit-bundle-url-" });
  try {
    const url = `http://127.0.0.1:${host.addr.port}/models/vit/`;
    const report = await buildBundle({ modelUrl: url, out: `${dir}/edgevit.mjs`, name: "remote" });
    assert.equal(report.modelBytes, 0);
    const { report: embedded } = await defaultBuild();
    assert.ok(report.bytes < embedded.bytes - embedded.modelBytes, "no weights were embedded");

    const server = await spawnBundle(
      ["run", "--allow-net", report.out, "--host", "127.0.0.1", "--port", "0"],
      dir,
    );
    try {
      const jpeg = await readImage("chelsea.jpg");
      const answer = await classifyOver(server.base, jpeg, "image/jpeg", 1);
      assert.equal(answer.model, "remote");
      assert.equal(answer.precision, report.precision);
      const model = await loadModel(FIXTURE_MODEL, {
        backend: "wasm",
        precision: report.precision,
      });
      try {
        const [expected] = await model.classify(jpeg, { topK: 1 });
        assert.equal(answer.results[0].top[0].index, expected.index);
      } finally {
        model.close();
      }
      assert.ok(requested.includes("model.safetensors"), requested.join(", "));
    } finally {
      await server.stop();
    }
  } finally {
    await host.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task bundle refuses a folder that holds no model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-bundle-empty-" });
  try {
    await assert.rejects(
      buildBundle({ model: dir, out: `${dir}/out.mjs` }),
      (error: unknown) => error instanceof EdgeVitError && /config\.json/.test(error.message),
    );
    await assert.rejects(
      buildBundle({ model: dir, modelUrl: "http://127.0.0.1:1/", out: `${dir}/out.mjs` }),
      (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_argument",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an int8 checkpoint folder is embedded as it is, and only at int8", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-bundle-int8-" });
  try {
    const saved = await writeQuantizedCheckpoint(
      decodeURIComponent(FIXTURE_MODEL.pathname),
      `${dir}/vit-int8`,
    );
    const report = await buildBundle({ model: `${dir}/vit-int8`, out: `${dir}/edgevit.mjs` });
    assert.equal(report.precision, "int8");
    assert.equal(report.quantizedAtBuild, false);
    assert.equal(report.modelName, "vit-int8");
    assert.equal(report.modelBytes, saved.weights.byteLength);
    await assert.rejects(
      buildBundle({ model: `${dir}/vit-int8`, precision: "f32", out: `${dir}/f32.mjs` }),
      (error: unknown) => error instanceof EdgeVitError && /int8 only/.test(error.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
