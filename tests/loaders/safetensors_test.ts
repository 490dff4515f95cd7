import assert from "node:assert/strict";
import { EdgeVitError, type ErrorCode } from "../../src/errors.ts";
import {
  halfToFloat,
  MAX_HEADER_BYTES,
  parseSafetensors,
  serializeSafetensors,
  toFloat32,
  toInt32,
} from "../../src/loaders/safetensors.ts";

/** A file with a hand-written header (no validation on the way in). */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function rejects(bytes: Uint8Array, code: ErrorCode, pattern: RegExp): void {
  assert.throws(
    () => parseSafetensors(bytes, "test.safetensors"),
    (error: unknown) =>
      error instanceof EdgeVitError && error.code === code && pattern.test(error.message) &&
      error.message.startsWith("test.safetensors"),
  );
}

Deno.test("a file shorter than the 8-byte header length is rejected", () => {
  rejects(new Uint8Array(5), "invalid_checkpoint", /too short/);
  rejects(new Uint8Array(0), "invalid_checkpoint", /too short/);
});

Deno.test("a header length beyond the end of the file is rejected as truncated", () => {
  const file = rawFile(
    { a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } },
    new Uint8Array(4),
  );
  rejects(file.subarray(0, 20), "invalid_checkpoint", /header claims/);
});

Deno.test("an oversized header length is rejected before anything is allocated", () => {
  const bytes = new Uint8Array(16);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(MAX_HEADER_BYTES) + 1n, true);
  rejects(bytes, "invalid_checkpoint", /too large/);
  new DataView(bytes.buffer).setBigUint64(0, 0xffffffffffffffffn, true);
  rejects(bytes, "invalid_checkpoint", /too large/);
});

Deno.test("a header that is not a JSON object is rejected", () => {
  rejects(rawFile("{not json"), "invalid_checkpoint", /not valid JSON/);
  rejects(rawFile("[1, 2]"), "invalid_checkpoint", /not a JSON object/);
  rejects(rawFile({ a: 3 }), "invalid_checkpoint", /no description/);
});

Deno.test("offsets outside the data are rejected", () => {
  const data = new Uint8Array(8);
  rejects(
    rawFile({ a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, data),
    "invalid_checkpoint",
    /outside the 8 data bytes/,
  );
  rejects(
    rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [8, 4] } }, data),
    "invalid_checkpoint",
    /outside/,
  );
  rejects(
    rawFile({ a: { dtype: "F32", shape: [1], data_offsets: [-4, 0] } }, data),
    "invalid_checkpoint",
    /invalid data_offsets/,
  );
});

Deno.test("overlapping tensors are rejected", () => {
  rejects(
    rawFile({
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    }, new Uint8Array(12)),
    "invalid_checkpoint",
    /"a" and "b" overlap/,
  );
});

Deno.test("a byte range that does not match dtype and shape is rejected", () => {
  rejects(
    rawFile({ a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
    "invalid_checkpoint",
    /needs 12/,
  );
  rejects(
    rawFile({ a: { dtype: "F32", shape: [2, -1], data_offsets: [0, 8] } }, new Uint8Array(8)),
    "invalid_checkpoint",
    /invalid shape/,
  );
});

Deno.test("an unknown dtype is reported as unsupported, naming it", () => {
  rejects(
    rawFile({ a: { dtype: "F8_E4M3", shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4)),
    "unsupported",
    /F8_E4M3/,
  );
});

Deno.test("F16 and BF16 tensors convert exactly to float32", () => {
  const values = [0, -0, 1, -2.5, 65504, 2 ** -24, Infinity, -Infinity];
  // binary16 encodings of the values above
  const half = new Uint16Array([0x0000, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0xfc00]);
  // bfloat16 is the top half of a float32: values with 8 significant bits survive
  const bfValues = [0, -0, 1, -2.5, 65280, 2 ** -130, 3.3895313892515355e38, -Infinity];
  const f32 = new Float32Array(bfValues);
  const bf16 = new Uint16Array(new Uint32Array(f32.buffer).map((bits) => bits >>> 16));
  const file = parseSafetensors(serializeSafetensors({
    h: { dtype: "F16", shape: [8], data: half },
    b: { dtype: "BF16", shape: [8], data: bf16 },
  }));
  assert.deepEqual(Array.from(toFloat32(file.tensors.get("h")!)), values);
  assert.deepEqual(Array.from(toFloat32(file.tensors.get("b")!)), bfValues);
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
});

Deno.test("serialized files round-trip with aligned data and metadata", () => {
  const bytes = serializeSafetensors(
    {
      w: { dtype: "F32", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
      i: { dtype: "I64", shape: [2], data: new BigInt64Array([5n, -7n]) },
      e: { dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
    },
    { format: "pt" },
  );
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLength % 8, 0);
  const file = parseSafetensors(bytes);
  assert.deepEqual(file.metadata, { format: "pt" });
  assert.deepEqual(Array.from(toFloat32(file.tensors.get("w")!)), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Array.from(toInt32(file.tensors.get("i")!)), [5, -7]);
  assert.equal(toFloat32(file.tensors.get("e")!).length, 0);
  assert.throws(
    () => serializeSafetensors({ w: { dtype: "F32", shape: [3], data: new Float32Array(2) } }),
    EdgeVitError,
  );
});

Deno.test("integer tensors are refused where floats are needed, and vice versa", () => {
  const file = parseSafetensors(serializeSafetensors({
    i: { dtype: "I32", shape: [1], data: new Int32Array([3]) },
    f: { dtype: "F32", shape: [1], data: new Float32Array([3]) },
  }));
  assert.throws(
    () => toFloat32(file.tensors.get("i")!),
    (e: unknown) => e instanceof EdgeVitError && e.code === "unsupported",
  );
  assert.throws(
    () => toInt32(file.tensors.get("f")!),
    (e: unknown) => e instanceof EdgeVitError && e.code === "unsupported",
  );
});
