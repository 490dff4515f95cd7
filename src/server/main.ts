/**
 * `deno task serve`: parses flags and environment, loads the models, serves HTTP,
 * prints its address, and shuts down gracefully on SIGTERM/SIGINT (stops accepting,
 * finishes the requests in flight, exits 0).
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";
import { parseServerArgs, type ServerConfig, usage } from "./config.ts";
import { createHandler, defaultModelLocation } from "./handler.ts";

async function main(args: string[]): Promise<number> {
  let config: ServerConfig;
  try {
    const parsed = parseServerArgs(args, Deno.env.toObject());
    if (parsed.help) {
      console.log(usage());
      return 0;
    }
    config = parsed.config;
  } catch (error) {
    if (error instanceof EdgeVitError) {
      console.error(`edgevit: ${error.message}\n\n${usage()}`);
      return 2;
    }
    throw error;
  }

  const models = config.models.length > 0 ? config.models : [defaultModelLocation()];
  const handler = createHandler({ ...config, models });

  const listening = Promise.withResolvers<void>();
  const server = Deno.serve({
    hostname: config.host,
    port: config.port,
    onListen({ hostname, port }) {
      const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`edgevit listening on http://${shown}:${port}/`);
      listening.resolve();
    },
  }, handler);
  await listening.promise;

  let stopping = false;
  const stopped = Promise.withResolvers<number>();
  const stop = async (signal: string) => {
    if (stopping) {
      console.error(`edgevit: ${signal} again, exiting now`);
      Deno.exit(1);
    }
    stopping = true;
    console.log(`edgevit: ${signal}, finishing requests in flight`);
    // New work is refused (503 shutting_down, Connection: close) from here on. The
    // listener closes only after the requests in flight are answered, because Deno's
    // server shutdown aborts request bodies still being read.
    handler.drain();
    await handler.settled();
    await server.shutdown();
    await handler.close();
    console.log("edgevit: stopped");
    stopped.resolve(0);
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => void stop(signal));
  }

  try {
    await handler.ready;
    console.log(`edgevit ready: ${models.join(", ")}`);
  } catch (error) {
    if (stopping) return await stopped.promise;
    console.error(`edgevit: could not load the model: ${(error as Error).message}`);
    await server.shutdown();
    return 1;
  }
  return await stopped.promise;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
