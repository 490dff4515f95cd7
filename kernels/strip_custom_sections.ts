/**
 * Removes every custom section (names, producers, target features) from a wasm module,
 * leaving the code byte-for-byte as the linker wrote it. binaryen's wasm-opt on this
 * machine predates the final relaxed-SIMD opcodes and cannot parse the relaxed build,
 * and custom sections only carry toolchain metadata that the engine ignores.
 *
 * Usage: `deno run --allow-read --allow-write kernels/strip_custom_sections.ts in.wasm out.wasm`
 *
 * @module
 */

/** Returns `bytes` without its custom sections (id 0). */
export function stripCustomSections(bytes: Uint8Array): Uint8Array {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73) {
    throw new Error("not a wasm module");
  }
  const kept: Uint8Array[] = [bytes.subarray(0, 8)];
  let i = 8;
  while (i < bytes.length) {
    const start = i;
    const id = bytes[i++];
    let size = 0;
    let shift = 0;
    for (;;) {
      const byte = bytes[i++];
      size += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if (byte < 0x80) break;
    }
    const end = i + size;
    if (end > bytes.length) throw new Error("truncated wasm section");
    if (id !== 0) kept.push(bytes.subarray(start, end));
    i = end;
  }
  const out = new Uint8Array(kept.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of kept) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

if (import.meta.main) {
  const [input, output] = Deno.args;
  Deno.writeFileSync(output, stripCustomSections(Deno.readFileSync(input)));
}
