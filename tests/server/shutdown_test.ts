import assert from "node:assert/strict";
import { png, TEST_BACKEND, VIT_FIXTURE } from "./_helpers.ts";
import { spawnServer } from "./_process.ts";

const encoder = new TextEncoder();

/** Reads a whole HTTP/1.1 response from a connection the server closes or completes. */
async function readResponse(conn: Deno.Conn): Promise<{ status: number; body: string }> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  let text = "";
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
    text = new TextDecoder().decode(
      chunks.reduce((all, c) => new Uint8Array([...all, ...c]), new Uint8Array()),
    );
    const headerEnd = text.indexOf("\r\n\r\n");
    const length = text.match(/content-length: (\d+)/i);
    if (headerEnd >= 0 && length && text.length >= headerEnd + 4 + Number(length[1])) break;
  }
  const status = Number(text.match(/^HTTP\/1\.1 (\d{3})/)?.[1]);
  return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

async function connectionRefused(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

Deno.test("SIGTERM refuses new work, finishes the request in flight, closes the port and exits 0", async () => {
  const server = await spawnServer([
    "--port",
    "0",
    "--model",
    VIT_FIXTURE,
    "--backend",
    TEST_BACKEND,
  ]);
  const image = await png(32, 32, 5);
  // A request whose body arrives in two parts, the second only after the signal.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  await conn.write(encoder.encode(
    `POST /v1/classify?topK=3 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\n` +
      `content-length: ${image.length}\r\nconnection: close\r\n\r\n`,
  ));
  await conn.write(image.subarray(0, 20));
  await new Promise((resolve) => setTimeout(resolve, 200));

  server.child.kill("SIGTERM");
  // Draining shows on /readyz first (the signal may take a moment on a busy machine).
  for (let i = 0; i < 200; i++) {
    const readiness = await fetch(`${server.base}/readyz`);
    await readiness.body?.cancel();
    if (readiness.status === 503) break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  // New work is refused while the request in flight is still being served.
  const late = await fetch(`${server.base}/v1/classify`, {
    method: "POST",
    headers: { "content-type": "image/png" },
    body: image,
  });
  assert.equal(late.status, 503);
  assert.equal((await late.json()).error.code, "shutting_down");
  const readiness = await fetch(`${server.base}/readyz`);
  assert.equal(readiness.status, 503);
  await readiness.body?.cancel();

  await conn.write(image.subarray(20));
  const response = await readResponse(conn);
  conn.close();
  assert.equal(response.status, 200, response.body);
  const body = JSON.parse(response.body);
  assert.equal(body.results.length, 1);
  assert.equal(body.results[0].top.length, 3);

  // Once the last request is answered the listener closes and the process exits.

  const status = await server.status;
  assert.equal(status.code, 0);
  assert.ok(await connectionRefused(server.port), "nothing listens after exit");
  assert.match(server.output(), /SIGTERM/);
  assert.match(server.output(), /stopped/);
});

Deno.test("SIGINT on an idle server exits 0 at once", async () => {
  const server = await spawnServer([
    "--port",
    "0",
    "--model",
    VIT_FIXTURE,
    "--backend",
    TEST_BACKEND,
    "--no-warmup",
  ]);
  const started = performance.now();
  server.child.kill("SIGINT");
  const status = await server.status;
  assert.equal(status.code, 0);
  assert.ok(performance.now() - started < 5000, "an idle server stops without waiting");
  assert.match(server.output(), /stopped/);
});

Deno.test("bad flags make serve exit 2 with the usage text", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      "src/server/main.ts",
      "--port",
      "x",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 2);
  const stderr = new TextDecoder().decode(output.stderr);
  assert.match(stderr, /--port must be a whole number/);
  assert.match(stderr, /Usage: deno task serve/);
});

Deno.test("a model folder that cannot be loaded makes serve exit 1 with the reason", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      "src/server/main.ts",
      "--port",
      "0",
      "--model",
      "tests/server/no-such-model",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 1);
  assert.match(new TextDecoder().decode(output.stderr), /could not load the model: .*config\.json/);
});

Deno.test("deno serve runs src/server/serve.ts configured from the environment", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "serve",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "src/server/serve.ts",
    ],
    env: { EDGEVIT_MODEL: VIT_FIXTURE, EDGEVIT_BACKEND: TEST_BACKEND, EDGEVIT_API_KEY: "k" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    let text = "";
    const decoder = new TextDecoder();
    const reader = child.stderr.getReader();
    const stdout = child.stdout.getReader();
    let port = 0;
    const deadline = Date.now() + 20_000;
    while (!port && Date.now() < deadline) {
      const chunk = await Promise.race([reader.read(), stdout.read()]);
      if (chunk.done) break;
      text += decoder.decode(chunk.value);
      port = Number(text.match(/Listening on http:\/\/127\.0\.0\.1:(\d+)\//)?.[1] ?? 0);
    }
    assert.ok(port > 0, `deno serve did not listen:\n${text}`);
    const base = `http://127.0.0.1:${port}`;
    while ((await (await fetch(`${base}/readyz`)).text()).includes("not_ready")) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const unauthorized = await fetch(`${base}/v1/models`);
    assert.equal(unauthorized.status, 401, "EDGEVIT_API_KEY applies");
    await unauthorized.body?.cancel();
    const response = await fetch(`${base}/v1/classify?topK=2`, {
      method: "POST",
      headers: { "content-type": "image/png", authorization: "Bearer k" },
      body: await png(32, 32, 9),
    });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.model, "vitpytorch-vit-cls");
    assert.equal(body.results[0].top.length, 2);
    reader.releaseLock();
    stdout.releaseLock();
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await child.stderr.cancel().catch(() => {});
  }
});
