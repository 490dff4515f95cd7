/**
 * Server settings from command-line flags and environment variables. Flags win over
 * the environment, which wins over the defaults. Every value is validated here, so a
 * typo fails at start with a message naming the flag instead of misbehaving later.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/**
 * Folder name of the model `deno task serve` loads when given none (under models/).
 * PatchMerger on Fashion-MNIST: within a point of the deeper plain ViT at a third of
 * its tokens per layer, the best accuracy for the latency (models/README.md).
 */
export const DEFAULT_MODEL = "patchmerger-fmnist";

/** Everything `deno task serve` can be told. */
export interface ServerConfig {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Model folders (or URLs); the first is the default model. Empty: the embedded default. */
  models: string[];
  backend: string;
  precision: string;
  /** Images per batch; 1 turns batching off. */
  maxBatch: number;
  maxWaitMs: number;
  /** Patch tokens per batch. */
  maxBatchTokens: number;
  /** Classify requests admitted at once (reading, decoding, queued or running), and images queued. */
  maxQueue: number;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <key>` or `x-api-key`. */
  apiKey: string | null;
  /** A classify request not answered within this many ms gets 504. */
  deadlineMs: number;
  maxBodyBytes: number;
  /** Most pixels (width × height) of one image, checked from its header before decoding. */
  maxPixels: number;
  /** Most images in one request. */
  maxImages: number;
  /** Default `topK` when a request gives none. */
  topK: number;
  /** Skip the warm-up batch (faster start, slower first request). */
  warmup: boolean;
}

/** Defaults, tuned for a small CPU edge box. */
export const DEFAULT_CONFIG: Readonly<ServerConfig> = {
  host: "127.0.0.1",
  port: 8000,
  models: [],
  backend: "auto",
  precision: "f32",
  maxBatch: 16,
  maxWaitMs: 2,
  maxBatchTokens: 16384,
  maxQueue: 256,
  apiKey: null,
  deadlineMs: 10_000,
  maxBodyBytes: 16 * 1024 * 1024,
  maxPixels: 40_000_000,
  maxImages: 32,
  topK: 5,
  warmup: true,
};

type Kind = "string" | "int" | "bool" | "list";

interface FlagSpec {
  key: keyof ServerConfig;
  kind: Kind;
  env: string[];
  help: string;
  min?: number;
}

const FLAGS: Record<string, FlagSpec> = {
  "host": { key: "host", kind: "string", env: ["EDGEVIT_HOST", "HOST"], help: "address to bind" },
  "port": {
    key: "port",
    kind: "int",
    env: ["PORT", "EDGEVIT_PORT"],
    min: 0,
    help: "port (0 = any free port)",
  },
  "model": {
    key: "models",
    kind: "list",
    env: ["EDGEVIT_MODEL"],
    help: `model folder or URL, repeatable (env: comma-separated); \`name=path\` names it ` +
      `[the embedded models/${DEFAULT_MODEL}]`,
  },
  "backend": {
    key: "backend",
    kind: "string",
    env: ["EDGEVIT_BACKEND"],
    help: "auto | wasm | reference | webgpu | ...",
  },
  "precision": {
    key: "precision",
    kind: "string",
    env: ["EDGEVIT_PRECISION"],
    help: "f32 | int8",
  },
  "max-batch": {
    key: "maxBatch",
    kind: "int",
    env: ["EDGEVIT_MAX_BATCH"],
    min: 1,
    help: "images per batch (1 = batching off)",
  },
  "max-wait-ms": {
    key: "maxWaitMs",
    kind: "int",
    env: ["EDGEVIT_MAX_WAIT_MS"],
    min: 0,
    help: "longest wait for a batch to fill",
  },
  "max-batch-tokens": {
    key: "maxBatchTokens",
    kind: "int",
    env: ["EDGEVIT_MAX_BATCH_TOKENS"],
    min: 1,
    help: "patch tokens per batch",
  },
  "max-queue": {
    key: "maxQueue",
    kind: "int",
    env: ["EDGEVIT_MAX_QUEUE"],
    min: 1,
    help: "requests admitted at once; more get 503",
  },
  "api-key": {
    key: "apiKey",
    kind: "string",
    env: ["EDGEVIT_API_KEY"],
    help: "require this key (Authorization: Bearer or x-api-key)",
  },
  "deadline-ms": {
    key: "deadlineMs",
    kind: "int",
    env: ["EDGEVIT_DEADLINE_MS"],
    min: 1,
    help: "answer 504 past this",
  },
  "max-body-bytes": {
    key: "maxBodyBytes",
    kind: "int",
    env: ["EDGEVIT_MAX_BODY_BYTES"],
    min: 1,
    help: "largest request body",
  },
  "max-pixels": {
    key: "maxPixels",
    kind: "int",
    env: ["EDGEVIT_MAX_PIXELS"],
    min: 1,
    help: "largest image (width × height), checked before decoding",
  },
  "max-images": {
    key: "maxImages",
    kind: "int",
    env: ["EDGEVIT_MAX_IMAGES"],
    min: 1,
    help: "most images per request",
  },
  "top-k": {
    key: "topK",
    kind: "int",
    env: ["EDGEVIT_TOP_K"],
    min: 1,
    help: "default number of classes returned",
  },
  "warmup": {
    key: "warmup",
    kind: "bool",
    env: ["EDGEVIT_WARMUP"],
    help: "run a warm-up batch before /readyz says ready (default on; --no-warmup)",
  },
};

/** The `--help` text. */
export function usage(): string {
  const lines = ["Usage: deno task serve [flags]", "", "Flags (environment variable):"];
  for (const [name, spec] of Object.entries(FLAGS)) {
    const value = spec.kind === "bool" ? "" : spec.kind === "int" ? " N" : " VALUE";
    const fallback = DEFAULT_CONFIG[spec.key];
    const shown = Array.isArray(fallback) ? "" : fallback === null ? "" : ` [${fallback}]`;
    lines.push(`  --${name}${value}`.padEnd(26) + `${spec.help}${shown} (${spec.env.join(", ")})`);
  }
  lines.push("  --help".padEnd(26) + "print this text");
  return lines.join("\n");
}

function invalid(message: string): never {
  throw new EdgeVitError("invalid_argument", message);
}

function convert(spec: FlagSpec, name: string, raw: string): string | number | boolean {
  switch (spec.kind) {
    case "string":
      return raw;
    case "list":
      return raw;
    case "bool": {
      const lowered = raw.toLowerCase();
      if (["1", "true", "yes", "on"].includes(lowered)) return true;
      if (["0", "false", "no", "off"].includes(lowered)) return false;
      return invalid(`${name} must be true or false, got "${raw}"`);
    }
    case "int": {
      if (!/^\d+$/.test(raw.trim())) invalid(`${name} must be a whole number, got "${raw}"`);
      const value = Number(raw);
      if (!Number.isSafeInteger(value)) invalid(`${name} is too large: ${raw}`);
      if (spec.min !== undefined && value < spec.min) invalid(`${name} must be ≥ ${spec.min}`);
      if (spec.key === "port" && value > 65535) invalid(`${name} must be ≤ 65535`);
      return value;
    }
  }
}

/** What {@link parseServerArgs} returns. */
export interface ParsedArgs {
  config: ServerConfig;
  help: boolean;
}

/**
 * Parses flags (`--name value`, `--name=value`, `--no-warmup`) over environment variables.
 *
 * @throws {EdgeVitError} `invalid_argument` naming the flag or variable at fault
 *
 * @example
 * ```ts
 * import { parseServerArgs } from "./config.ts";
 * const { config } = parseServerArgs(["--port", "0", "--model", "models/vit-fmnist"], { PORT: "9000" });
 * console.log(config.port, config.models); // 0 ["models/vit-fmnist"]
 * ```
 */
export function parseServerArgs(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>> = {},
): ParsedArgs {
  const config: ServerConfig = { ...DEFAULT_CONFIG, models: [] };
  const set = (spec: FlagSpec, name: string, raw: string, fromEnv: boolean) => {
    const value = convert(spec, name, raw);
    if (spec.kind === "list") {
      const items = (fromEnv ? raw.split(",") : [raw]).map((item) => item.trim()).filter(Boolean);
      if (items.length === 0) invalid(`${name} must not be empty`);
      (config.models as string[]).push(...items);
    } else {
      (config as unknown as Record<string, unknown>)[spec.key] = value;
    }
  };

  for (const spec of Object.values(FLAGS)) {
    const variable = spec.env.find((name) => env[name] !== undefined && env[name] !== "");
    if (variable) set(spec, variable, env[variable]!, true);
  }

  let help = false;
  let flagModels = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") {
      help = true;
      continue;
    }
    if (!arg.startsWith("--")) invalid(`unexpected argument "${arg}" (flags start with --)`);
    const eq = arg.indexOf("=");
    let name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    let raw: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    if (raw === undefined && name.startsWith("no-") && FLAGS[name.slice(3)]?.kind === "bool") {
      name = name.slice(3);
      raw = "false";
    }
    const spec = FLAGS[name];
    if (!spec) invalid(`unknown flag --${name} (see --help)`);
    if (raw === undefined) {
      if (spec.kind === "bool") raw = "true";
      else {
        if (i + 1 >= args.length) invalid(`--${name} needs a value`);
        raw = args[++i];
      }
    }
    if (spec.kind === "list" && !flagModels) {
      // Flags replace the environment's list rather than adding to it.
      config.models = [];
      flagModels = true;
    }
    set(spec, `--${name}`, raw, false);
  }
  if (!["f32", "int8"].includes(config.precision)) {
    invalid(`precision must be f32 or int8, got "${config.precision}"`);
  }
  if (config.apiKey === "") config.apiKey = null;
  return { config, help };
}

/** A model argument split into its served name and location (`name=path` or a bare path). */
export function splitModelArg(arg: string): { name: string; location: string } {
  const eq = arg.indexOf("=");
  // A URL may contain "=" in its query; only a plain name before "=" counts as a name.
  if (eq > 0 && /^[A-Za-z0-9._-]+$/.test(arg.slice(0, eq))) {
    return { name: arg.slice(0, eq), location: arg.slice(eq + 1) };
  }
  let path = arg;
  if (/^(https?|file):\/\//i.test(arg)) {
    try {
      path = new URL(arg).pathname;
    } catch {
      // Not a valid URL after all: name it by its text.
    }
  }
  const trimmed = path.replace(/[\\/]+$/, "");
  const base = trimmed.split(/[\\/]/).pop() ?? trimmed;
  return { name: base || "model", location: arg };
}
