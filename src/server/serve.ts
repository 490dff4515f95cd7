/**
 * Entry point for `deno serve`: the handler as the module's default `fetch`, configured
 * from the environment only (`EDGEVIT_MODEL`, `EDGEVIT_BACKEND`, `EDGEVIT_API_KEY`, ...;
 * see `deno task serve --help` for the variables). `deno serve` owns the address and the
 * worker count, and shuts the server down itself.
 *
 * @example
 * ```sh
 * EDGEVIT_MODEL=models/vit-fmnist deno serve --allow-net --allow-read --allow-env \
 *   --host 127.0.0.1 --port 8000 src/server/serve.ts
 * ```
 *
 * @module
 */

import { parseServerArgs } from "./config.ts";
import { createHandler } from "./handler.ts";

const { config } = parseServerArgs([], Deno.env.toObject());
const handler = createHandler({
  ...config,
  models: config.models.length > 0 ? config.models : undefined,
});

export default { fetch: handler } satisfies Deno.ServeDefaultExport;
