/**
 * Cold start of the edge bundle: from spawning the process to the first classification
 * answered over HTTP, the way an edge platform starts an isolate for a request.
 *
 *     deno run --allow-read --allow-write --allow-env --allow-run --allow-net=127.0.0.1 \
 *       bench/cold_start.ts [--runs 7] [--model DIR] [--precision int8|f32]
 *
 * Builds the bundle (as `deno task bundle` does) into a temporary folder, then for each way of starting it runs `--runs` fresh processes one after another
 * in a folder without deno.json. Per process it records: time to the "listening" line,
 * time to the first classify answer (the request is sent as soon as the port is open;
 * it waits for the model to load and warm up), and the peak resident memory (VmHWM).
 * The first run of a fresh bundle has no V8 code cache yet and is reported apart.
 *
 * Ways of starting: a do-nothing server (Deno's own start-up), `deno run --allow-net` (wasm backend, the bundle's default),
 * `deno serve`, `deno run ... --backend auto` (asks for a WebGPU adapter first), and,
 * for comparison, the unbundled server (`src/server/main.ts`, same model, wasm).
 *
 * @module
 */

import { buildBundle, type BuildReport } from "../src/bundle/build.ts";

interface Sample {
  listenMs: number;
  firstMs: number;
  /** CPU time (user + system, all threads) the process had used by its first answer. */
  cpuMs: number | null;
  peakRssMb: number | null;
}

interface Way {
  name: string;
  args: (bundle: string, report: BuildReport) => string[];
}

const ROOT = new URL("../", import.meta.url);
const IMAGE = new URL("tests/fixtures/images/chelsea.jpg", ROOT);

/** A server that answers without doing anything: what Deno itself costs to start. */
const BASELINE = `Deno.serve({
  hostname: "127.0.0.1",
  port: 0,
  onListen: ({ port }) => console.log("edgevit listening on http://127.0.0.1:" + port + "/"),
}, async (request) => {
  await request.arrayBuffer();
  return new Response("{}");
});
`;

const WAYS: Way[] = [
  {
    name: "baseline: deno run --allow-net hello.mjs (answers at once)",
    args: (bundle) => ["run", "--allow-net", bundle.replace(/[^/]*$/, "hello.mjs")],
  },
  {
    name: "deno run --allow-net edgevit.mjs",
    args: (bundle) => ["run", "--allow-net", bundle, "--host", "127.0.0.1", "--port", "0"],
  },
  {
    name: "deno serve --allow-net edgevit.mjs",
    args: (bundle) => ["serve", "--allow-net", "--host", "127.0.0.1", "--port", "0", bundle],
  },
  {
    name: "deno run --allow-net edgevit.mjs --backend auto",
    args: (
      bundle,
    ) => ["run", "--allow-net", bundle, "--host", "127.0.0.1", "--port", "0", "--backend", "auto"],
  },
  {
    name: "unbundled: deno run src/server/main.ts (same model, wasm)",
    args: (_bundle, report) => [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-env",
      "--config",
      decodeURIComponent(new URL("deno.json", ROOT).pathname),
      decodeURIComponent(new URL("src/server/main.ts", ROOT).pathname),
      "--host",
      "127.0.0.1",
      "--port",
      "0",
      "--backend",
      "wasm",
      "--model",
      report.modelSource,
    ],
  },
];

/** Clock ticks per second of /proc/<pid>/stat times. */
const CLOCK_TICKS = await (async () => {
  try {
    const output = await new Deno.Command("getconf", { args: ["CLK_TCK"] }).output();
    return Number(new TextDecoder().decode(output.stdout).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * CPU time so far and peak resident memory (VmHWM) of a process. Deno lets only
 * --allow-all read /proc, so `cat` reads it.
 */
async function processUsage(
  pid: number,
): Promise<{ cpuMs: number | null; peakRssMb: number | null }> {
  try {
    const output = await new Deno.Command("cat", {
      args: [`/proc/${pid}/stat`, `/proc/${pid}/status`],
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    // Fields after the ")" that closes the command name: utime and stime are the 12th and 13th.
    const fields = text.slice(text.indexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    const hwm = text.match(/VmHWM:\s+(\d+)\s+kB/);
    return {
      cpuMs: Number.isFinite(ticks) ? ticks * 1000 / CLOCK_TICKS : null,
      peakRssMb: hwm ? Number(hwm[1]) / 1024 : null,
    };
  } catch {
    return { cpuMs: null, peakRssMb: null };
  }
}

async function startOnce(args: string[], cwd: string, image: Uint8Array): Promise<Sample> {
  const start = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { DENO_NO_PACKAGE_JSON: "1", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  const decoder = new TextDecoder();
  let text = "";
  let base: string | undefined;
  try {
    while (!base) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`exited before listening: ${text}`);
      text += decoder.decode(value, { stream: true });
      base = text.match(/listening on (http:\/\/127\.0\.0\.1:\d+)\//)?.[1];
    }
    const listenMs = performance.now() - start;
    const response = await fetch(`${base}/v1/classify?topK=1`, {
      method: "POST",
      headers: { "content-type": "image/jpeg", connection: "close" },
      body: image as Uint8Array<ArrayBuffer>,
      signal: AbortSignal.timeout(60_000),
    });
    const body = await response.text();
    const firstMs = performance.now() - start;
    if (response.status !== 200) throw new Error(`classify answered ${response.status}: ${body}`);
    return { listenMs, firstMs, ...await processUsage(child.pid) };
  } finally {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    // Keep reading so the child never blocks on a full pipe while it shuts down.
    (async () => {
      try {
        while (!(await reader.read()).done) { /* drain */ }
      } catch { /* closed */ }
    })();
    await child.status;
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function parse(args: string[]): { runs: number; model?: string; precision?: "f32" | "int8" } {
  const options: { runs: number; model?: string; precision?: "f32" | "int8" } = { runs: 7 };
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--runs") options.runs = Math.max(2, Number(args[++i]));
    else if (args[i] === "--model") options.model = args[++i];
    else if (args[i] === "--precision") options.precision = args[++i] as "f32" | "int8";
    else throw new Error(`unknown flag ${args[i]}`);
  }
  return options;
}

if (import.meta.main) {
  const options = parse(Deno.args);
  const work = await Deno.makeTempDir({ prefix: "edgevit-cold-" });
  try {
    const out = `${work}/edgevit.mjs`;
    const report = await buildBundle({ out, model: options.model, precision: options.precision });
    const image = await Deno.readFile(IMAGE);
    await Deno.writeTextFile(`${work}/hello.mjs`, BASELINE);
    console.log(
      `bundle ${report.bytes} bytes (${
        (report.bytes / 1048576).toFixed(2)
      } MB), model ${report.modelName} (${report.precision}), ${options.runs} runs per way\n`,
    );
    console.log(
      "| start | first run: listening / first answer | others (median): listening / first answer | CPU time to first answer (median) | peak RSS |",
    );
    console.log("| --- | --- | --- | --- | --- |");
    for (const way of WAYS) {
      // A fresh copy, so the first run of each way really has no code cache.
      const copy = `${work}/${crypto.randomUUID()}.mjs`;
      await Deno.copyFile(out, copy);
      const samples: Sample[] = [];
      for (let run = 0; run < options.runs; run++) {
        samples.push(await startOnce(way.args(copy, report), work, image));
      }
      const [first, ...rest] = samples;
      const known = (values: (number | null)[]) => values.filter((v): v is number => v !== null);
      const rss = known(samples.map((s) => s.peakRssMb));
      const cpu = known(samples.map((s) => s.cpuMs));
      console.log(
        `| ${way.name} | ${first.listenMs.toFixed(0)} ms / ${first.firstMs.toFixed(0)} ms | ${
          median(rest.map((s) => s.listenMs)).toFixed(0)
        } ms / ${median(rest.map((s) => s.firstMs)).toFixed(0)} ms | ${
          cpu.length ? `${median(cpu).toFixed(0)} ms` : "—"
        } | ${rss.length ? `${median(rss).toFixed(0)} MB` : "—"} |`,
      );
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
