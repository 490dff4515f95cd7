import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import { decodeImage } from "../../src/image/decode.ts";
import { decodePng } from "../../src/image/png.ts";
import { crc32, FIXTURES, sha256 } from "./_fixtures.ts";

// ---------------------------------------------------------------------------------------
// A test-side PNG writer: any colour type, bit depth, interlacing and filter per row, from
// known samples, so every layout can be checked against the samples it came from.

const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [
  0,
  1,
  1,
  2,
]];

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set([...type].map((c) => c.charCodeAt(0)), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

async function zlib(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes.slice()]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

interface Spec {
  width: number;
  height: number;
  colorType: number;
  depth: number;
  interlaced?: boolean;
  /** Samples, row-major `[height, width, channels]`, each below 2^depth. */
  samples: Uint16Array;
  palette?: Uint8Array;
  trns?: Uint8Array;
  random: () => number;
}

function packRow(values: number[], depth: number): Uint8Array {
  const out = new Uint8Array(Math.ceil((values.length * depth) / 8));
  values.forEach((v, i) => {
    if (depth === 16) {
      out[2 * i] = v >> 8;
      out[2 * i + 1] = v & 255;
    } else if (depth === 8) out[i] = v;
    else out[(i * depth) >> 3] |= v << (8 - depth - ((i * depth) & 7));
  });
  return out;
}

/** Filters one row with `type` (0–4) against the row above, as the specification defines. */
function filterRow(type: number, row: Uint8Array, up: Uint8Array, bpp: number): Uint8Array {
  const out = new Uint8Array(row.length);
  for (let i = 0; i < row.length; i++) {
    const a = i >= bpp ? row[i - bpp] : 0;
    const b = up[i];
    const c = i >= bpp ? up[i - bpp] : 0;
    const p = a + b - c;
    const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
    const paeth = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    const predictor = [0, a, b, Math.floor((a + b) / 2), paeth][type];
    out[i] = (row[i] - predictor) & 255;
  }
  return out;
}

async function writePng(spec: Spec): Promise<Uint8Array<ArrayBuffer>> {
  const { width, height, colorType, depth } = spec;
  const channels = CHANNELS[colorType];
  const bpp = Math.max(1, (channels * depth) >> 3);
  const raw: number[] = [];
  for (const [x0, y0, dx, dy] of spec.interlaced ? ADAM7 : [[0, 0, 1, 1]]) {
    const xs = [];
    for (let x = x0; x < width; x += dx) xs.push(x);
    let up: Uint8Array | null = null;
    for (let y = y0; y < height && xs.length; y += dy) {
      const values = xs.flatMap((x) =>
        Array.from({ length: channels }, (_, c) => spec.samples[(y * width + x) * channels + c])
      );
      const row = packRow(values, depth);
      const type = Math.floor(spec.random() * 5);
      raw.push(type, ...filterRow(type, row, up ?? new Uint8Array(row.length), bpp));
      up = row;
    }
  }
  const header = new Uint8Array(13);
  new DataView(header.buffer).setUint32(0, width);
  new DataView(header.buffer).setUint32(4, height);
  header.set([depth, colorType, 0, 0, spec.interlaced ? 1 : 0], 8);
  const compressed = await zlib(new Uint8Array(raw));
  const third = Math.floor(compressed.length / 3);
  return concat([
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("tEXt", new TextEncoder().encode("Comment\0skipped")),
    ...(spec.palette ? [chunk("PLTE", spec.palette)] : []),
    ...(spec.trns ? [chunk("tRNS", spec.trns)] : []),
    chunk("IDAT", compressed.subarray(0, third)),
    chunk("IDAT", compressed.subarray(third, 2 * third)),
    chunk("IDAT", compressed.subarray(2 * third)),
    chunk("IEND", new Uint8Array()),
  ]);
}

/** RGBA as the specification describes it, from the samples: the test's reference. */
function expectedRgba(spec: Spec): Uint8Array {
  const { width, height, colorType, depth } = spec;
  const channels = CHANNELS[colorType];
  const to8 = (v: number) => depth === 16 ? v >> 8 : Math.round((v * 255) / (2 ** depth - 1));
  const trnsValue = (i: number) => (spec.trns![2 * i] << 8) | spec.trns![2 * i + 1];
  const out = new Uint8Array(width * height * 4);
  for (let p = 0; p < width * height; p++) {
    const s = Array.from(spec.samples.subarray(p * channels, (p + 1) * channels));
    let rgba: number[];
    if (colorType === 3) {
      const entries = spec.palette!.length / 3;
      const [i] = s;
      rgba = i < entries ? [...spec.palette!.subarray(3 * i, 3 * i + 3)] : [i, i, i];
      rgba.push(spec.trns && i < spec.trns.length ? spec.trns[i] : 255);
    } else if (colorType === 0 || colorType === 2) {
      const rgb = colorType === 0 ? [s[0], s[0], s[0]] : s;
      const keyed = spec.trns !== undefined && s.every((v, c) => v === trnsValue(c));
      rgba = [...rgb.map(to8), keyed ? 0 : 255];
    } else if (colorType === 4) rgba = [s[0], s[0], s[0], s[1]].map(to8);
    else rgba = s.map(to8);
    out.set(rgba, p * 4);
  }
  return out;
}

function seeded(seed: number) {
  return () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
}

function randomSpec(
  colorType: number,
  depth: number,
  width: number,
  height: number,
  interlaced: boolean,
  random: () => number,
): Spec {
  const channels = CHANNELS[colorType];
  const top = colorType === 3 ? Math.min(2 ** depth, 40) : 2 ** depth;
  const samples = new Uint16Array(width * height * channels).map(() => Math.floor(random() * top));
  const spec: Spec = { width, height, colorType, depth, interlaced, samples, random };
  if (colorType === 3) {
    // 30 entries: with 40 indices in use, some fall past the palette.
    const entries = Math.min(2 ** depth, 30);
    spec.palette = new Uint8Array(entries * 3).map(() => Math.floor(random() * 256));
    spec.trns = new Uint8Array(Math.min(entries, 7)).map(() => Math.floor(random() * 256));
  } else if (colorType === 0 || colorType === 2) {
    // Key on the first pixel's value, so at least one pixel is transparent.
    spec.trns = new Uint8Array(2 * channels);
    for (let c = 0; c < channels; c++) {
      spec.trns[2 * c] = samples[c] >> 8;
      spec.trns[2 * c + 1] = samples[c] & 255;
    }
  }
  return spec;
}

const LAYOUTS: [number, number][] = [
  [0, 1],
  [0, 2],
  [0, 4],
  [0, 8],
  [0, 16],
  [2, 8],
  [2, 16],
  [3, 1],
  [3, 2],
  [3, 4],
  [3, 8],
  [4, 8],
  [4, 16],
  [6, 8],
  [6, 16],
];

Deno.test("decodePng() expands every colour type, bit depth and interlacing, with random row filters", async () => {
  const random = seeded(5);
  let cases = 0;
  for (const [colorType, depth] of LAYOUTS) {
    for (const [width, height] of [[1, 1], [7, 3], [33, 5], [13, 17], [3, 197]]) {
      for (const interlaced of [false, true]) {
        const spec = randomSpec(colorType, depth, width, height, interlaced, random);
        const image = await decodePng(await writePng(spec));
        const what =
          `type ${colorType}, ${depth} bit, ${width}×${height}, interlaced ${interlaced}`;
        assert.deepEqual([image.width, image.height, image.channels], [width, height, 4], what);
        assert.deepEqual(image.data, expectedRgba(spec), what);
        cases++;
      }
    }
  }
  assert.equal(cases, LAYOUTS.length * 10);
});

// deno-lint-ignore no-explicit-any
const PIL_CASES: any[] = JSON.parse(
  Deno.readTextFileSync(new URL("png/reference.json", FIXTURES)),
);

Deno.test("decodeImage() gives PIL's pixels for PNGs of every layout PIL reads the same way", async () => {
  assert.ok(PIL_CASES.length >= 30);
  for (const entry of PIL_CASES) {
    const bytes = Deno.readFileSync(new URL(`png/${entry.file}`, FIXTURES));
    const image = await decodeImage(bytes, { background: entry.background });
    assert.deepEqual([image.width, image.height], [entry.width, entry.height], entry.file);
    assert.equal(await sha256(image.data), entry.sha256, `${entry.file} on ${entry.background}`);
  }
});

// ---------------------------------------------------------------------------------------
// Malformed files: each a clear invalid_image, never a crash or a partial image.

async function rejects(bytes: Uint8Array, pattern: RegExp, what: string) {
  await assert.rejects(decodePng(bytes), (error: unknown) => {
    assert.ok(error instanceof EdgeVitError, `${what}: ${error}`);
    assert.equal(error.code, "invalid_image", what);
    assert.match(error.message, pattern, what);
    return true;
  });
}

/** Byte offsets of each chunk of a well-formed file. */
function chunks(bytes: Uint8Array): { type: string; at: number; length: number }[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = [];
  for (let at = 8; at < bytes.length;) {
    const length = view.getUint32(at);
    out.push({ type: String.fromCharCode(...bytes.subarray(at + 4, at + 8)), at, length });
    at += 12 + length;
  }
  return out;
}

async function sample(): Promise<Uint8Array<ArrayBuffer>> {
  return await writePng(randomSpec(2, 8, 33, 7, false, seeded(9)));
}

Deno.test("decodePng() rejects a file cut anywhere before the end of its image data", async () => {
  const bytes = await sample();
  const iend = chunks(bytes).find((c) => c.type === "IEND")!.at;
  for (let cut = 0; cut < iend; cut++) {
    await rejects(
      bytes.subarray(0, cut),
      /signature|truncated|no IHDR|no image data/,
      `cut at ${cut} of ${bytes.length}`,
    );
  }
  // Only the IEND chunk lost: the image is whole, as PIL and browsers also accept.
  for (let cut = iend; cut <= bytes.length; cut++) {
    const image = await decodePng(bytes.subarray(0, cut));
    assert.equal(image.width, 33);
  }
});

Deno.test("decodePng() rejects bad CRCs, headers, chunk order, filters and surplus data", async () => {
  const bytes = await sample();
  const list = chunks(bytes);
  const at = (type: string, n = 0) => list.filter((c) => c.type === type)[n];
  const patched = (offset: number, value: number) => {
    const out = bytes.slice();
    out[offset] = value;
    return out;
  };
  const ihdr = at("IHDR");
  const text = at("tEXt");
  await rejects(patched(0, 0x88), /signature/, "signature");
  await rejects(patched(text.at + 10, 0x41), /tEXt chunk .* CRC/, "ancillary CRC");
  await rejects(patched(at("IDAT", 1).at + 9, 0), /IDAT chunk .* CRC/, "IDAT CRC");

  const withChunk = (type: string, data: Uint8Array, before: { at: number }) =>
    concat([bytes.subarray(0, before.at), chunk(type, data), bytes.subarray(before.at)]);
  await rejects(
    withChunk("ABCD", new Uint8Array(3), at("IEND")),
    /unknown critical chunk ABCD/,
    "critical",
  );
  assert.equal((await decodePng(withChunk("abCD", new Uint8Array(3), at("IEND")))).width, 33);
  await rejects(
    withChunk("tIME", new Uint8Array(7), at("IDAT", 1)),
    /not consecutive/,
    "split IDAT",
  );
  await rejects(
    concat([bytes.subarray(0, 8), bytes.subarray(text.at)]),
    /does not start with an IHDR/,
    "no IHDR",
  );
  await rejects(
    concat([bytes.subarray(0, at("IDAT").at), at("IEND") && bytes.subarray(at("IEND").at)]),
    /no image data/,
    "no IDAT",
  );

  const header = (patch: (data: Uint8Array) => void) => {
    const data = bytes.slice(ihdr.at + 8, ihdr.at + 21);
    patch(data);
    return concat([bytes.subarray(0, ihdr.at), chunk("IHDR", data), bytes.subarray(ihdr.at + 25)]);
  };
  await rejects(header((d) => (d[8] = 3)), /bit depth 3 for colour type 2/, "depth");
  await rejects(header((d) => (d[9] = 5)), /colour type 5/, "colour type");
  await rejects(header((d) => (d[10] = 1)), /compression method 1/, "compression");
  await rejects(header((d) => (d[11] = 1)), /filter method 1/, "filter method");
  await rejects(header((d) => (d[12] = 2)), /interlace method 2/, "interlace");
  await rejects(header((d) => d.fill(0, 0, 4)), /invalid size 0×7/, "zero width");
  await rejects(header((d) => (d[9] = 3)), /indexed but has no palette/, "no palette");
  // Height 6 of 7: the image data holds one row more than the header promises.
  await rejects(header((d) => (d[7] = 6)), /more image data/, "surplus data");
  // Height 8: one row short.
  await rejects(header((d) => (d[7] = 8)), /truncated: its image data ends/, "short data");

  const image = async (raw: number[]) =>
    concat([
      bytes.subarray(0, at("tEXt").at),
      chunk("IDAT", await zlib(new Uint8Array(raw))),
      chunk("IEND", new Uint8Array()),
    ]);
  const rows = Array.from({ length: 7 }, (_, y) => [y === 3 ? 5 : 0, ...new Array(99).fill(y)]);
  await rejects(await image(rows.flat()), /row 3 has an unknown filter type 5/, "filter type");
  await rejects(
    concat([bytes.subarray(0, at("tEXt").at), chunk("IDAT", new Uint8Array(40).fill(0xab))]),
    /image data is corrupt/,
    "not zlib",
  );
});
