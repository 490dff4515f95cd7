/** Runs `src/server/main.ts` as a child process, the way `deno task serve` does. */

const MAIN = new URL("../../src/server/main.ts", import.meta.url).pathname;

/** A running server process. */
export interface ServerProcess {
  child: Deno.ChildProcess;
  base: string;
  port: number;
  /** Everything it printed to stdout so far. */
  output(): string;
  /** Resolves with the exit status once it exits. */
  status: Promise<Deno.CommandStatus>;
}

/**
 * Starts the server with `args` and waits until it prints its address and /readyz says ready.
 */
export async function spawnServer(
  args: string[],
  options: { timeoutMs?: number; denoFlags?: string[] } = {},
): Promise<ServerProcess> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      ...(options.denoFlags ?? []),
      MAIN,
      ...args,
    ],
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  let text = "";
  const listening = Promise.withResolvers<number>();
  const pump = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      text += decoder.decode(chunk, { stream: true });
      const match = text.match(/listening on http:\/\/127\.0\.0\.1:(\d+)\//);
      if (match) listening.resolve(Number(match[1]));
    }
    listening.reject(new Error(`server exited before listening:\n${text}`));
  })();
  const status = child.status.then(async (status) => {
    await pump;
    return status;
  });
  const timer = setTimeout(() => listening.reject(new Error("server did not start")), timeoutMs);
  let port: number;
  try {
    port = await listening.promise;
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await status;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const response = await fetch(`${base}/readyz`);
    await response.body?.cancel();
    if (response.status === 200) break;
    if (Date.now() > deadline) throw new Error("server never became ready");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { child, base, port, output: () => text, status };
}
