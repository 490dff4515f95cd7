/**
 * safetensors reader: 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the raw little-endian data.
 * Every field is validated before any data is touched, so a truncated or hostile file
 * fails with a clear {@link EdgeVitError} instead of reading out of bounds.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/** dtypes this reader understands. */
export type SafetensorsDtype =
  | "F32"
  | "F16"
  | "BF16"
  | "F64"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

const BYTES_PER_ELEMENT: Record<SafetensorsDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** The largest JSON header accepted (the format's own reference reader uses 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/** One tensor's entry: where its bytes are, without copying them yet. */
export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** The tensor's raw little-endian bytes (a view into the file). */
  readonly bytes: Uint8Array;
}

/** A parsed safetensors file. */
export interface SafetensorsFile {
  readonly tensors: ReadonlyMap<string, SafetensorsEntry>;
  readonly metadata: Readonly<Record<string, string>>;
}

/**
 * Parses a safetensors file held in memory.
 *
 * @param bytes the whole file
 * @param source a name for error messages (file path or URL)
 * @returns the tensor entries (views into `bytes`) and the `__metadata__` map
 * @throws {EdgeVitError} `invalid_checkpoint` for a malformed file, `unsupported` for an unknown dtype
 *
 * @example
 * ```ts
 * import { parseSafetensors, toFloat32 } from "./safetensors.ts";
 * const bytes = await Deno.readFile("../shared/fixtures/parity/vitpytorch-vit-cls/model.safetensors");
 * const file = parseSafetensors(bytes, "model.safetensors");
 * const cls = toFloat32(file.tensors.get("cls_token")!);
 * console.log(cls.length); // 64
 * ```
 */
export function parseSafetensors(bytes: Uint8Array, source = "safetensors"): SafetensorsFile {
  const fail = (message: string): never => {
    throw new EdgeVitError("invalid_checkpoint", `${source}: ${message}`);
  };
  if (bytes.byteLength < 8) fail(`file is ${bytes.byteLength} bytes, too short for a header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLength} is too large`);
  const dataStart = 8 + Number(headerLength);
  if (dataStart > bytes.byteLength) {
    fail(`header claims ${headerLength} bytes but the file has ${bytes.byteLength - 8} after it`);
  }
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart)),
    );
  } catch (error) {
    fail(`header is not valid JSON (${(error as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const dataLength = bytes.byteLength - dataStart;
  const tensors = new Map<string, SafetensorsEntry>();
  let metadata: Record<string, string> = {};
  const ranges: [number, number, string][] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = raw as Record<string, string>;
      continue;
    }
    const entry = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== "object" || entry === null) fail(`tensor "${name}" has no description`);
    const dtype = entry.dtype;
    if (typeof dtype !== "string") fail(`tensor "${name}" has no dtype`);
    if (!(dtype as string in BYTES_PER_ELEMENT)) {
      throw new EdgeVitError(
        "unsupported",
        `${source}: tensor "${name}" has unsupported dtype ${dtype}`,
      );
    }
    const shape = entry.shape;
    if (
      !Array.isArray(shape) ||
      !shape.every((dim) => Number.isSafeInteger(dim) && (dim as number) >= 0)
    ) {
      fail(`tensor "${name}" has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offsets = entry.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((offset) => Number.isSafeInteger(offset) && (offset as number) >= 0)
    ) {
      fail(`tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataLength) {
      fail(`tensor "${name}" data [${begin}, ${end}) is outside the ${dataLength} data bytes`);
    }
    const elements = (shape as number[]).reduce((product, dim) => product * dim, 1);
    const expected = elements * BYTES_PER_ELEMENT[dtype as SafetensorsDtype];
    if (end - begin !== expected) {
      fail(
        `tensor "${name}" has ${end - begin} bytes but ${dtype}[${shape}] needs ${expected}`,
      );
    }
    ranges.push([begin, end, name]);
    tensors.set(name, {
      name,
      dtype: dtype as SafetensorsDtype,
      shape: shape as number[],
      bytes: bytes.subarray(dataStart + begin, dataStart + end),
    });
  }
  // Sorted by start, a tensor overlaps an earlier one exactly when it starts before the
  // furthest end seen so far (empty tensors occupy no bytes and overlap nothing).
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let furthestEnd = 0;
  let furthestName = "";
  for (const [begin, end, name] of ranges) {
    if (end === begin) continue;
    if (begin < furthestEnd) fail(`tensors "${furthestName}" and "${name}" overlap`);
    furthestEnd = end;
    furthestName = name;
  }
  return { tensors, metadata };
}

/** Element count of an entry. */
export function elementCount(entry: SafetensorsEntry): number {
  return entry.shape.reduce((product, dim) => product * dim, 1);
}

/**
 * Converts a floating-point entry (F32, F16, BF16, F64) to a fresh Float32Array.
 *
 * @throws {EdgeVitError} `unsupported` for integer dtypes
 */
export function toFloat32(entry: SafetensorsEntry): Float32Array {
  const count = elementCount(entry);
  const view = new DataView(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
  const out = new Float32Array(count);
  switch (entry.dtype) {
    case "F32":
      // One memcpy on little-endian hosts (all that run wasm); DataView otherwise.
      if (LITTLE_ENDIAN) {
        new Uint8Array(out.buffer).set(entry.bytes);
        return out;
      }
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      return out;
    case "F64":
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(i * 8, true);
      return out;
    case "F16": {
      const table = halfTable();
      for (let i = 0; i < count; i++) out[i] = table[view.getUint16(i * 2, true)];
      return out;
    }
    case "BF16": {
      const widened = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) widened[i] = view.getUint16(i * 2, true) << 16;
      return out;
    }
    default:
      throw new EdgeVitError(
        "unsupported",
        `tensor "${entry.name}" is ${entry.dtype}; a floating-point dtype is needed`,
      );
  }
}

/**
 * Like {@link toFloat32}, but an aligned F32 entry on a little-endian host is returned
 * as a view into the file instead of a copy: loading a checkpoint then needs no second
 * copy of its weights. The view must be treated as read-only (it aliases the file).
 */
export function viewFloat32(entry: SafetensorsEntry): Float32Array {
  if (entry.dtype === "F32" && LITTLE_ENDIAN && entry.bytes.byteOffset % 4 === 0) {
    return new Float32Array(entry.bytes.buffer, entry.bytes.byteOffset, elementCount(entry));
  }
  return toFloat32(entry);
}

/** Converts an integer entry (I64, I32, I16, I8, U8, BOOL) to an Int32Array (I64 must fit). */
export function toInt32(entry: SafetensorsEntry): Int32Array {
  const count = elementCount(entry);
  const view = new DataView(entry.bytes.buffer, entry.bytes.byteOffset, entry.bytes.byteLength);
  const out = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    switch (entry.dtype) {
      case "I64": {
        const value = view.getBigInt64(i * 8, true);
        if (value > 2147483647n || value < -2147483648n) {
          throw new EdgeVitError(
            "unsupported",
            `tensor "${entry.name}" value ${value} exceeds int32`,
          );
        }
        out[i] = Number(value);
        break;
      }
      case "I32":
        out[i] = view.getInt32(i * 4, true);
        break;
      case "I16":
        out[i] = view.getInt16(i * 2, true);
        break;
      case "I8":
        out[i] = view.getInt8(i);
        break;
      case "U8":
      case "BOOL":
        out[i] = view.getUint8(i);
        break;
      default:
        throw new EdgeVitError(
          "unsupported",
          `tensor "${entry.name}" is ${entry.dtype}; an integer dtype is needed`,
        );
    }
  }
  return out;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let HALF_TABLE: Float32Array | null = null;

/** All 65,536 half-precision values as float32: a lookup beats decoding per element. */
function halfTable(): Float32Array {
  if (!HALF_TABLE) {
    HALF_TABLE = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) HALF_TABLE[h] = halfToFloat(h);
  }
  return HALF_TABLE;
}

/** Decodes one IEEE 754 binary16 value. */
export function halfToFloat(half: number): number {
  const sign = half & 0x8000 ? -1 : 1;
  const exponent = (half >> 10) & 0x1f;
  const fraction = half & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** A tensor to write with {@link serializeSafetensors}. */
export interface SafetensorsInput {
  dtype: SafetensorsDtype;
  shape: readonly number[];
  /** Little-endian element data (a typed array of the dtype's width, or raw bytes). */
  data: ArrayBufferView;
}

/**
 * Writes tensors as a safetensors file: the header padded with spaces to a multiple of
 * 8 bytes (so every tensor stays aligned), then the data in the given order.
 *
 * @throws {EdgeVitError} `invalid_argument` when a tensor's bytes do not fit its shape
 *
 * @example
 * ```ts
 * import { parseSafetensors, serializeSafetensors, toFloat32 } from "./safetensors.ts";
 * const bytes = serializeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * console.log(toFloat32(parseSafetensors(bytes).tensors.get("w")!)); // Float32Array [1, 2]
 * ```
 */
export function serializeSafetensors(
  tensors: Readonly<Record<string, SafetensorsInput>>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, tensor] of Object.entries(tensors)) {
    const bytes = new Uint8Array(
      tensor.data.buffer,
      tensor.data.byteOffset,
      tensor.data.byteLength,
    );
    const expected = tensor.shape.reduce((product, dim) => product * dim, 1) *
      BYTES_PER_ELEMENT[tensor.dtype];
    if (bytes.byteLength !== expected) {
      throw new EdgeVitError(
        "invalid_argument",
        `tensor "${name}" has ${bytes.byteLength} bytes but ${tensor.dtype}[${tensor.shape}] needs ${expected}`,
      );
    }
    header[name] = {
      dtype: tensor.dtype,
      shape: [...tensor.shape],
      data_offsets: [offset, offset + bytes.byteLength],
    };
    parts.push(bytes);
    offset += bytes.byteLength;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) {
    const spaced = new Uint8Array(padded).fill(0x20);
    spaced.set(json);
    json = spaced;
  }
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let at = 8 + json.byteLength;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}
