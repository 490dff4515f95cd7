/**
 * Every op of the Backend interface, on every available backend, against the reference
 * backend, on odd shapes: 1, 7, 33 and 197 rows and column counts that are not multiples
 * of the kernels' vector widths.
 *
 * To run these checks on another backend, add one line to {@link BACKENDS}.
 */

import assert from "node:assert/strict";
import type { Activation, AttentionOptions, Backend, Tensor } from "../../src/backends/backend.ts";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { WasmBackend } from "../../src/backends/wasm/wasm_backend.ts";
import { relaxedSimdSupported } from "../../wasm/kernels.ts";

/** A backend under test; `create` throws with the reason when it cannot run here. */
interface BackendUnderTest {
  name: string;
  create(): Promise<Backend>;
}

/** The backends compared with the reference. One line each. */
export const BACKENDS: BackendUnderTest[] = [
  { name: "wasm-relaxed", create: () => WasmBackend.create({ flavour: "relaxed" }) },
  { name: "wasm-plain", create: () => WasmBackend.create({ flavour: "plain" }) },
];

const ROWS = [1, 7, 33, 197];
const reference = new ReferenceBackend();

/** Deterministic uniform values in [-scale, scale). */
function random(count: number, seed: number, scale = 1): Float32Array {
  let state = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = ((state >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}

/**
 * Asserts `actual ≈ expected` within `atol + rtol·|expected|` per element and releases
 * both tensors.
 */
async function assertMatches(
  backend: Backend,
  actual: Tensor,
  expected: Tensor,
  what: string,
  atol = 1e-5,
  rtol = 1e-5,
): Promise<void> {
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const got = await backend.read(actual);
  const want = await reference.read(expected);
  backend.release(actual);
  reference.release(expected);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const excess = Math.abs(got[i] - want[i]) - (atol + rtol * Math.abs(want[i]));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(got[i]))) {
      worst = i;
      worstExcess = excess;
    }
  }
  assert.ok(
    worst < 0,
    `${what}: element ${worst} is ${got[worst]}, reference ${want[worst]}`,
  );
}

/** The same data on both backends. */
function pair(backend: Backend, data: Float32Array, shape: number[]): [Tensor, Tensor] {
  return [backend.upload(data, shape), reference.upload(data, shape)];
}

/** Runs one attention case on the backend and the reference and compares both outputs. */
async function compareAttention(
  b: Backend,
  what: string,
  shapes: { queries: number; keys: number; cols: number; fused: boolean },
  options: AttentionOptions,
  seed: number,
): Promise<void> {
  const { queries, keys, cols, fused } = shapes;
  const [q, qr] = pair(b, random(queries * cols, seed, 2), [queries, cols]);
  const [k, kr] = fused ? [q, qr] : pair(b, random(keys * cols, seed + 1, 2), [keys, cols]);
  const [v, vr] = fused ? [q, qr] : pair(b, random(keys * cols, seed + 2), [keys, cols]);
  const got = b.attention(q, k, v, options);
  const want = reference.attention(qr, kr, vr, options);
  await assertMatches(b, got.output, want.output, `${what}: output`, 2e-5, 1e-4);
  assert.equal(got.clsAttention === undefined, want.clsAttention === undefined);
  if (got.clsAttention && want.clsAttention) {
    await assertMatches(b, got.clsAttention, want.clsAttention, `${what}: CLS`, 1e-6, 1e-4);
  }
  for (const t of new Set([q, k, v])) b.release(t);
}

for (const { name, create } of BACKENDS) {
  let shared: Promise<Backend> | null = null;
  const backend = () => shared ??= create();

  Deno.test(`${name}: linear equals x·Wᵀ + b, with and without bias and fused GELU`, async () => {
    const b = await backend();
    let seed = 1;
    for (const rows of ROWS) {
      for (const [inFeatures, outFeatures] of [[1, 1], [3, 5], [8, 13], [17, 64], [77, 33]]) {
        for (const withBias of [true, false]) {
          const weight = random(outFeatures * inFeatures, seed++);
          const bias = withBias ? random(outFeatures, seed++) : null;
          const source = { weight, bias, outFeatures, inFeatures };
          const w = b.prepareLinear(source);
          const wr = reference.prepareLinear(source);
          const [x, xr] = pair(b, random(rows * inFeatures, seed++), [rows, inFeatures]);
          for (const activation of ["none", "gelu"] as Activation[]) {
            await assertMatches(
              b,
              b.linear(x, w, activation),
              reference.linear(xr, wr, activation),
              `linear ${rows}×${inFeatures}→${outFeatures} bias=${withBias} ${activation}`,
            );
          }
          b.release(x);
          b.releaseLinear(w);
        }
      }
    }
  });

  Deno.test(`${name}: linear accumulates correctly across K blocks and M blocks (K = 1101, 2052; M = 601)`, async () => {
    const b = await backend();
    for (const [rows, inFeatures, outFeatures] of [[7, 1101, 9], [3, 2052, 6], [601, 40, 7]]) {
      const source = {
        weight: random(outFeatures * inFeatures, inFeatures),
        bias: random(outFeatures, 3),
        outFeatures,
        inFeatures,
      };
      const w = b.prepareLinear(source);
      const wr = reference.prepareLinear(source);
      const [x, xr] = pair(b, random(rows * inFeatures, 5), [rows, inFeatures]);
      for (const activation of ["none", "gelu"] as Activation[]) {
        await assertMatches(
          b,
          b.linear(x, w, activation),
          reference.linear(xr, wr, activation),
          `linear K=${inFeatures} ${activation}`,
          1e-4,
        );
      }
      b.release(x);
      b.releaseLinear(w);
    }
  });

  Deno.test(`${name}: int8 linear layers stay within quantization error of the reference`, async () => {
    // Backends may quantize activations too (the wasm one does, per row, to 7 bits), so
    // int8 results are held to the size of that rounding, not to float precision.
    const b = await backend();
    for (const [rows, inFeatures, outFeatures] of [[1, 5, 3], [33, 48, 20], [197, 77, 13]]) {
      const source = {
        weight: random(outFeatures * inFeatures, 11 + rows),
        bias: random(outFeatures, 12),
        outFeatures,
        inFeatures,
      };
      const w = b.prepareLinear(source, { precision: "int8" });
      assert.equal(w.precision, "int8");
      const wr = reference.prepareLinear(source, { precision: "int8" });
      const [x, xr] = pair(b, random(rows * inFeatures, 13 + rows), [rows, inFeatures]);
      for (const activation of ["none", "gelu"] as Activation[]) {
        const y = b.linear(x, w, activation);
        const got = await b.read(y);
        const want = await reference.read(reference.linear(xr, wr, activation));
        b.release(y);
        let dot = 0;
        let gotNorm = 0;
        let wantNorm = 0;
        let worst = 0;
        let peak = 0;
        for (let i = 0; i < want.length; i++) {
          dot += got[i] * want[i];
          gotNorm += got[i] ** 2;
          wantNorm += want[i] ** 2;
          worst = Math.max(worst, Math.abs(got[i] - want[i]));
          peak = Math.max(peak, Math.abs(want[i]));
        }
        const what = `int8 ${rows}×${inFeatures}→${outFeatures} ${activation}`;
        assert.ok(dot / Math.sqrt(gotNorm * wantNorm) >= 0.999, `${what}: cosine`);
        assert.ok(worst <= 0.05 * peak, `${what}: error ${worst} of peak ${peak}`);
      }
      b.release(x);
      b.releaseLinear(w);
    }
  });

  Deno.test(`${name}: NaN and infinity make the same outputs non-finite as in the reference`, async () => {
    const b = await backend();
    const [rows, cols] = [7, 13];
    const data = random(rows * cols, 99);
    data[1 * cols + 4] = NaN; // row 1
    data[3 * cols + 12] = Infinity; // row 3 (a column of the tail)
    data[5 * cols] = -Infinity; // row 5
    const [x, xr] = pair(b, data, [rows, cols]);
    const source = {
      weight: random(5 * cols, 98),
      bias: random(5, 97),
      outFeatures: 5,
      inFeatures: cols,
    };
    const checks: [string, Tensor, Tensor][] = [
      ["softmax", b.softmax(x), reference.softmax(xr)],
      [
        "linear",
        b.linear(x, b.prepareLinear(source)),
        reference.linear(xr, reference.prepareLinear(source)),
      ],
      [
        "int8 linear",
        b.linear(x, b.prepareLinear(source, { precision: "int8" })),
        reference.linear(xr, reference.prepareLinear(source, { precision: "int8" })),
      ],
    ];
    for (const [what, got, want] of checks) {
      const g = await b.read(got);
      const w = await reference.read(want);
      // Where the reference is not finite the backend must not be either (int8 may give NaN
      // where float arithmetic gives ±inf), and finite where the reference is.
      const finite = (values: Float32Array) => Array.from(values, Number.isFinite);
      assert.deepEqual(finite(g), finite(w), what);
    }
  });

  Deno.test(`${name}: layerNorm with and without beta`, async () => {
    const b = await backend();
    for (const rows of ROWS) {
      for (const cols of [1, 3, 5, 17, 64, 77, 192]) {
        const [x, xr] = pair(b, random(rows * cols, rows + cols, 3), [rows, cols]);
        const [g, gr] = pair(b, random(cols, cols + 1), [cols]);
        const [beta, betar] = pair(b, random(cols, cols + 2), [cols]);
        await assertMatches(
          b,
          b.layerNorm(x, g, beta, 1e-6),
          reference.layerNorm(xr, gr, betar, 1e-6),
          `layerNorm ${rows}×${cols}`,
          2e-5,
        );
        await assertMatches(
          b,
          b.layerNorm(x, g, null, 1e-5),
          reference.layerNorm(xr, gr, null, 1e-5),
          `layerNorm ${rows}×${cols} no beta`,
          2e-5,
        );
        for (const t of [x, g, beta]) b.release(t);
      }
    }
  });

  Deno.test(`${name}: rmsNorm over column groups`, async () => {
    const b = await backend();
    for (const rows of ROWS) {
      for (const [cols, group] of [[1, 1], [5, 5], [21, 7], [64, 16], [99, 33], [192, 64]]) {
        const [x, xr] = pair(b, random(rows * cols, rows * cols, 2), [rows, cols]);
        const [g, gr] = pair(b, random(cols, cols), [cols]);
        await assertMatches(
          b,
          b.rmsNorm(x, g, group, 1e-6),
          reference.rmsNorm(xr, gr, group, 1e-6),
          `rmsNorm ${rows}×${cols} groups of ${group}`,
          2e-5,
        );
        b.release(x);
        b.release(g);
      }
    }
  });

  Deno.test(`${name}: gelu, add and softmax element by element`, async () => {
    const b = await backend();
    for (const rows of ROWS) {
      for (const cols of [1, 3, 7, 33, 197]) {
        const [x, xr] = pair(b, random(rows * cols, rows + 7 * cols, 6), [rows, cols]);
        const [y, yr] = pair(b, random(rows * cols, rows + 9 * cols, 2), [rows, cols]);
        await assertMatches(b, b.gelu(x), reference.gelu(xr), `gelu ${rows}×${cols}`, 1e-6, 0);
        await assertMatches(b, b.add(x, y), reference.add(xr, yr), `add ${rows}×${cols}`, 0, 0);
        await assertMatches(
          b,
          b.softmax(x),
          reference.softmax(xr),
          `softmax ${rows}×${cols}`,
          1e-6,
          1e-5,
        );
        b.release(x);
        b.release(y);
      }
    }
  });

  Deno.test(`${name}: gatherRows, concatRows, segmentMean and headNorms`, async () => {
    const b = await backend();
    for (const rows of ROWS) {
      const cols = 13;
      const [x, xr] = pair(b, random(rows * cols, rows, 4), [rows, cols]);
      const picks = Int32Array.from({ length: rows + 3 }, (_, i) => (i * 7 + 3) % rows);
      await assertMatches(b, b.gatherRows(x, picks), reference.gatherRows(xr, picks), "gather");
      const empty = new Int32Array(0);
      await assertMatches(b, b.gatherRows(x, empty), reference.gatherRows(xr, empty), "gather 0");

      const [y, yr] = pair(b, random(5 * cols, rows + 1), [5, cols]);
      await assertMatches(
        b,
        b.concatRows([x, y, x]),
        reference.concatRows([xr, yr, xr]),
        "concatRows",
        0,
        0,
      );

      const cuts = [0, ...new Set([Math.floor(rows / 3), Math.floor(rows / 2)])]
        .filter((c) => c > 0 && c < rows);
      const offsets = Int32Array.from([0, ...cuts, rows]);
      await assertMatches(
        b,
        b.segmentMean(x, offsets),
        reference.segmentMean(xr, offsets),
        `segmentMean ${rows} rows in ${offsets.length - 1}`,
      );

      for (const [heads, headDim, offset] of [[1, 13, 0], [3, 3, 2], [2, 5, 1]]) {
        await assertMatches(
          b,
          b.headNorms(x, heads, headDim, offset),
          reference.headNorms(xr, heads, headDim, offset),
          `headNorms ${heads}×${headDim}+${offset}`,
        );
      }
      b.release(x);
      b.release(y);
    }
  });

  Deno.test(`${name}: attention on separate q, k, v with odd head sizes`, async () => {
    const b = await backend();
    for (const tokens of ROWS) {
      for (const [heads, headDim] of [[1, 1], [2, 5], [3, 8], [2, 13], [3, 64]]) {
        const cols = heads * headDim;
        await compareAttention(
          b,
          `attention T=${tokens} ${heads}×${headDim}`,
          { queries: tokens, keys: tokens, cols, fused: false },
          { heads, headDim, scale: headDim ** -0.5, returnClsAttention: tokens !== 33 },
          tokens * 31 + headDim,
        );
      }
    }
  });

  Deno.test(`${name}: attention reads q, k and v from one fused qkv tensor`, async () => {
    const b = await backend();
    for (const tokens of ROWS) {
      const [heads, headDim] = [3, 12];
      const width = heads * headDim;
      await compareAttention(
        b,
        `fused qkv T=${tokens}`,
        { queries: tokens, keys: tokens, cols: 3 * width + 1, fused: true },
        {
          heads,
          headDim,
          scale: 0.3,
          qOffset: 0,
          kOffset: width,
          vOffset: 2 * width + 1,
          returnClsAttention: true,
        },
        tokens,
      );
    }
  });

  Deno.test(`${name}: attention stays within segments of a packed batch`, async () => {
    const b = await backend();
    const lengths = [50, 97, 1, 49];
    const tokens = lengths.reduce((a, n) => a + n, 0); // 197
    const segments = new Int32Array(tokens);
    let row = 0;
    lengths.forEach((n, s) => segments.fill(s * 2 + 1, row, row += n));
    for (const [heads, headDim] of [[3, 64], [2, 7]]) {
      await compareAttention(
        b,
        `packed ${lengths} ${heads}×${headDim}`,
        { queries: tokens, keys: tokens, cols: heads * headDim, fused: false },
        {
          heads,
          headDim,
          scale: headDim ** -0.5,
          querySegments: segments,
          returnClsAttention: true,
        },
        heads * 100 + headDim,
      );
    }
    // The served small models' shape: images of 49 tokens (query blocks of 4 straddle
    // images), 4 heads of 16, q, k and v as column ranges of one fused tensor.
    const images = 5;
    await compareAttention(
      b,
      `${images} packed images of 49 tokens, 4×16, fused qkv`,
      { queries: images * 49, keys: images * 49, cols: 3 * 64, fused: true },
      {
        heads: 4,
        headDim: 16,
        scale: 0.25,
        kOffset: 64,
        vOffset: 128,
        querySegments: Int32Array.from({ length: images * 49 }, (_, i) => Math.floor(i / 49)),
        returnClsAttention: true,
      },
      4916,
    );
    // Queries and keys of different lengths; segment 4 has queries but no keys.
    const querySegments = Int32Array.from([0, 0, 0, 2, 2, 4, 4, 9]);
    const keySegments = Int32Array.from([0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 9, 9, 11]);
    await compareAttention(
      b,
      "queries ≠ keys, a segment without keys",
      { queries: 8, keys: 14, cols: 10, fused: false },
      {
        heads: 2,
        headDim: 5,
        scale: 0.4,
        querySegments,
        keySegments,
        returnClsAttention: true,
      },
      77,
    );
    // Only querySegments given with as many keys as queries: keys share them.
    await compareAttention(
      b,
      "keys default to the query segments",
      { queries: 33, keys: 33, cols: 6, fused: false },
      {
        heads: 1,
        headDim: 6,
        scale: 1,
        querySegments: Int32Array.from({ length: 33 }, (_, i) => i >> 3),
      },
      78,
    );
  });

  Deno.test(`${name}: a pruned packed batch of 1024 tokens matches the reference`, async () => {
    const b = await backend();
    const lengths = [300, 211, 1, 512];
    const segments = new Int32Array(1024);
    let row = 0;
    lengths.forEach((n, s) => segments.fill(s, row, row += n));
    await compareAttention(
      b,
      "1024 packed tokens",
      { queries: 1024, keys: 1024, cols: 64, fused: false },
      {
        heads: 2,
        headDim: 32,
        scale: 32 ** -0.5,
        querySegments: segments,
        returnClsAttention: true,
      },
      1024,
    );
  });
}

Deno.test("relaxed SIMD is available on this engine, so both wasm builds are compared", () => {
  // Deno's V8 accepts relaxed SIMD without flags; if a future engine does not, the
  // relaxed rows above fail with a clear "no relaxed SIMD" error rather than silently skip.
  assert.equal(relaxedSimdSupported(), true);
});
