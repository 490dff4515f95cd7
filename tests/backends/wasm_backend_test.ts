/**
 * The wasm backend and its binding beyond op-by-op agreement (tests/backends/ops_test.ts):
 * build selection, loading from bytes, memory that returns to baseline over thousands of
 * ops, math accuracy against float64, and clear errors for bad inputs.
 */

import assert from "node:assert/strict";
import { ShapeError } from "../../src/backends/backend.ts";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { INT8_ATTENTION_MIN_HEAD_DIM, WasmBackend } from "../../src/backends/wasm/wasm_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { segmentsFromLengths } from "../../src/models/vit.ts";
import {
  attentionInt8Reference,
  gemmInt8Reference,
  quantizeRowsU7,
} from "../../src/backends/wasm/int8.ts";
import { KERNEL_FILES, Kernels, relaxedSimdSupported } from "../../wasm/kernels.ts";

/** erf in float64 to ~1e-15: Taylor series near 0, continued fraction for erfc beyond. */
function erf64(x: number): number {
  const z = Math.abs(x);
  let result: number;
  if (z < 2.5) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 200; n++) {
      term *= -z * z / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    result = sum * 2 / Math.sqrt(Math.PI);
  } else {
    // erfc(z) = exp(-z²)/√π · 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...)))), evaluated backwards.
    let fraction = z;
    for (let n = 200; n >= 1; n--) fraction = z + (n / 2) / fraction;
    result = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / fraction;
  }
  return x < 0 ? -result : result;
}

function gelu64(x: number): number {
  return 0.5 * x * (1 + erf64(x / Math.SQRT2));
}

Deno.test("the float64 erf used as ground truth agrees with known values", () => {
  assert.ok(Math.abs(erf64(0.5) - 0.5204998778130465) < 1e-15);
  assert.ok(Math.abs(erf64(1) - 0.8427007929497149) < 1e-15);
  assert.ok(Math.abs(erf64(-2) + 0.9953222650189527) < 1e-15);
  assert.ok(Math.abs(erf64(3) - 0.9999779095030014) < 1e-15);
});

/** Deterministic values in [-scale, scale), with a few exact zeros and outliers. */
function values(count: number, seed: number, scale = 1): Float32Array {
  let state = (seed * 2654435761) >>> 0 || 1;
  return Float32Array.from({ length: count }, (_, i) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    const v = ((state >>> 0) / 2 ** 32 * 2 - 1) * scale;
    return i % 17 === 3 ? 0 : i % 29 === 7 ? v * 9 : v;
  });
}

Deno.test("activation quantization to 7 bits is bit-exact with the TypeScript reference", async () => {
  for (const flavour of ["relaxed", "plain"] as const) {
    const kernels = await Kernels.load({ flavour });
    for (const [m, k] of [[1, 1], [3, 5], [7, 16], [33, 77], [5, 192]]) {
      const x = values(m * k, m * 100 + k, 3);
      // Rows of all zeros, all positive and all negative values take special paths.
      x.fill(0, 0, k);
      if (m > 2) x.subarray(k, 2 * k).forEach((v, i, row) => (row[i] = Math.abs(v) + 0.5));
      if (m > 2) x.subarray(2 * k, 3 * k).forEach((v, i, row) => (row[i] = -Math.abs(v)));
      if (m > 4) x[4 * k + (k >> 1)] = NaN; // a non-finite row: NaN scale, all q = 0
      if (m > 3) {
        // Range [0, 127] gives scale 1: x.5 values are ties, rounded half to even.
        x.subarray(3 * k, 4 * k).forEach((_, i, row) => (row[i] = i === 0 ? 127 : (i % 9) + 0.5));
      }
      const k16 = Math.ceil(k / 16) * 16;
      const input = kernels.alloc(x.length * 4);
      const out = kernels.alloc(m * k16);
      const scales = kernels.alloc(m * 4);
      const zeros = kernels.alloc(m * 4);
      kernels.f32(input, x.length).set(x);
      kernels.exports.quantize_rows_u7(input, m, k, out, scales, zeros);
      const want = quantizeRowsU7(x, m, k);
      const bytes = kernels.u8(out, m * k16);
      const got = Uint8Array.from(
        { length: m * k },
        (_, i) => bytes[Math.floor(i / k) * k16 + i % k],
      );
      assert.deepEqual(got, want.values, `${flavour} ${m}×${k} values`);
      assert.deepEqual(kernels.f32(scales, m).slice(), want.scales, `${flavour} ${m}×${k} scales`);
      assert.deepEqual(kernels.i32(zeros, m).slice(), want.zeros, `${flavour} ${m}×${k} zeros`);
      for (const v of want.values) assert.ok(v <= 127);
      for (const ptr of [input, out, scales, zeros]) kernels.free(ptr);
    }
  }
});

Deno.test("the int8 GEMM is bit-exact with the TypeScript reference in both builds", async () => {
  for (const flavour of ["relaxed", "plain"] as const) {
    const backend = await WasmBackend.create({ flavour });
    for (
      const [m, k, n] of [[1, 1, 1], [7, 5, 3], [33, 16, 8], [2, 33, 9], [197, 77, 13], [
        6,
        768,
        20,
      ]]
    ) {
      for (const withBias of [true, false]) {
        const weight = Int8Array.from(values(n * k, n + k, 127), (v) => Math.round(v) | 0)
          .map((v) => Math.max(-127, Math.min(127, v)));
        const scales = values(n, k, 0.02).map((s) => Math.abs(s) + 1e-3);
        const bias = withBias ? values(n, n + 1) : null;
        const x = values(m * k, m * 7 + k, 2);
        const w = backend.prepareQuantizedLinear({
          weight,
          scales,
          bias,
          outFeatures: n,
          inFeatures: k,
        });
        const input = backend.upload(x, [m, k]);
        const y = backend.linear(input, w);
        const got = await backend.read(y);
        const want = gemmInt8Reference(x, m, k, weight, scales, bias);
        assert.deepEqual(got, want, `${flavour} ${m}×${k}×${n} bias=${withBias}`);
        backend.release(y);
        backend.release(input);
        backend.releaseLinear(w);
      }
    }
  }
});

Deno.test("the relaxed build is picked where the engine validates relaxed SIMD", async () => {
  const backend = await WasmBackend.create();
  assert.equal(backend.flavour, relaxedSimdSupported() ? "relaxed" : "plain");
  const plain = await WasmBackend.create({ flavour: "plain" });
  assert.equal(plain.flavour, "plain");
});

Deno.test("kernels load from bytes passed in, as edge runtimes without files do", async () => {
  const bytes = await Deno.readFile(new URL(`../../wasm/${KERNEL_FILES.plain}`, import.meta.url));
  const backend = await WasmBackend.create({ flavour: "plain", wasmBytes: bytes });
  const x = backend.upload(new Float32Array([1, -2, 3]), [1, 3]);
  assert.deepEqual([...await backend.read(backend.add(x, x))], [2, -4, 6]);
});

Deno.test("broken module bytes are refused with a backend_failure EdgeVitError", async () => {
  await assert.rejects(
    WasmBackend.create({ wasmBytes: new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 99]) }),
    (error: unknown) => error instanceof EdgeVitError && error.code === "backend_failure",
  );
});

Deno.test("GELU matches the exact erf form to 1e-6 over [-12, 12] in both builds", async () => {
  for (const flavour of ["relaxed", "plain"] as const) {
    const backend = await WasmBackend.create({ flavour });
    const count = 240_001;
    const xs = Float32Array.from({ length: count }, (_, i) => -12 + i * 1e-4);
    const y = await backend.read(backend.gelu(backend.upload(xs, [1, count])));
    let worst = 0;
    let at = 0;
    for (let i = 0; i < count; i++) {
      const error = Math.abs(y[i] - gelu64(xs[i]));
      if (error > worst) [worst, at] = [error, xs[i]];
    }
    assert.ok(worst <= 1e-6, `${flavour}: GELU error ${worst} at x = ${at}`);
    // Far tails: exactly x and exactly 0 (PyTorch gives the same).
    const tails = await backend.read(
      backend.gelu(backend.upload(new Float32Array([30, 1e4, -30, -1e4]), [1, 4])),
    );
    assert.deepEqual([...tails], [30, 1e4, -0, -0]);
  }
});

Deno.test("both vector exps have relative error below 2.5e-7 (-87…88 and -87…0)", async () => {
  const kernels = await Kernels.load();
  const count = 175_001;
  const x = kernels.alloc(count * 4);
  for (const [name, from, to] of [["exp_f32", -87, 88], ["exp_nonpos_f32", -87, 0]] as const) {
    const step = (to - from) / (count - 1);
    const xs = kernels.f32(x, count);
    for (let i = 0; i < count; i++) xs[i] = from + i * step;
    kernels.exports[name](x, count, x);
    const ys = kernels.f32(x, count);
    let worst = 0;
    for (let i = 0; i < count; i++) {
      const exact = Math.exp(Math.fround(from + i * step));
      worst = Math.max(worst, Math.abs(ys[i] - exact) / exact);
    }
    assert.ok(worst < 2.5e-7, `${name} relative error ${worst}`);
  }
  const special = kernels.f32(x, 4);
  special.set([-Infinity, -100, NaN, 0]);
  kernels.exports.exp_nonpos_f32(x, 4, x);
  assert.deepEqual([...kernels.f32(x, 4)], [0, 0, NaN, 1]);
  kernels.free(x);
});

Deno.test("thousands of ops return wasm memory to its baseline and never grow it", async () => {
  const backend = await WasmBackend.create();
  const [tokens, dim, heads] = [50, 48, 3];
  const w = backend.prepareLinear({
    weight: new Float32Array(3 * dim * dim).fill(0.01),
    bias: new Float32Array(3 * dim).fill(0.1),
    outFeatures: 3 * dim,
    inFeatures: dim,
  });
  const gamma = backend.upload(new Float32Array(dim).fill(1), [dim]);
  const segments = Int32Array.from({ length: tokens }, (_, i) => i < 20 ? 0 : 1);
  const input = Float32Array.from({ length: tokens * dim }, (_, i) => Math.sin(i));
  const step = () => {
    const x = backend.upload(input, [tokens, dim]);
    const normed = backend.layerNorm(x, gamma, null, 1e-6);
    const qkv = backend.linear(normed, w, "gelu");
    const { output, clsAttention } = backend.attention(qkv, qkv, qkv, {
      heads,
      headDim: dim / heads,
      scale: 0.25,
      kOffset: dim,
      vOffset: 2 * dim,
      querySegments: segments,
      returnClsAttention: true,
    });
    const kept = backend.gatherRows(output, Int32Array.from([0, 5, 20, 49]));
    const pooled = backend.segmentMean(output, Int32Array.from([0, 20, tokens]));
    const joined = backend.concatRows([kept, pooled]);
    const norms = backend.headNorms(qkv, heads, dim / heads, 2 * dim);
    for (const t of [x, normed, qkv, output, clsAttention!, kept, pooled, joined, norms]) {
      backend.release(t);
    }
  };
  step();
  const baseline = backend.bytesInUse;
  const memory = backend.kernels.memoryBytes;
  for (let i = 0; i < 3000; i++) step();
  assert.equal(backend.bytesInUse, baseline);
  assert.equal(backend.kernels.memoryBytes, memory);
  backend.releaseLinear(w);
  backend.release(gamma);
  backend.kernels.releaseScratch();
  assert.equal(backend.bytesInUse, 0);
});

Deno.test("the allocator coalesces freed blocks and reuses them before growing", async () => {
  const kernels = await Kernels.load({ flavour: "plain" });
  const blocks = Array.from({ length: 8 }, () => kernels.alloc(100_000));
  const memory = kernels.memoryBytes;
  // Free in an interleaved order so coalescing must merge on both sides.
  for (const i of [1, 3, 5, 7, 0, 2, 4, 6]) kernels.free(blocks[i]);
  assert.equal(kernels.bytesInUse, 0);
  const big = kernels.alloc(700_000);
  assert.equal(big, blocks[0], "the merged space is reused from its start");
  assert.equal(kernels.memoryBytes, memory);
  kernels.free(big);
  assert.throws(() => kernels.free(big), EdgeVitError);
});

Deno.test("memory grows for a tensor larger than the initial memory", async () => {
  const backend = await WasmBackend.create();
  const before = backend.kernels.memoryBytes;
  const data = Float32Array.from({ length: 1_000_000 }, (_, i) => i);
  const x = backend.upload(data, [1000, 1000]);
  assert.ok(backend.kernels.memoryBytes > before);
  const y = backend.add(x, x);
  const out = await backend.read(y);
  assert.equal(out[999_999], 2 * 999_999);
});

Deno.test("bad inputs are refused with clear errors, never a trap", async () => {
  const backend = await WasmBackend.create();
  const other = await WasmBackend.create();
  const reference = new ReferenceBackend();
  const x = backend.upload(new Float32Array(6), [2, 3]);
  assert.throws(() => backend.upload(new Float32Array(5), [2, 3]), ShapeError);
  assert.throws(() => backend.gelu(reference.upload(new Float32Array(1), [1, 1])), ShapeError);
  assert.throws(() => backend.gelu(other.upload(new Float32Array(1), [1, 1])), ShapeError);
  assert.throws(() => backend.add(x, backend.upload(new Float32Array(6), [3, 2])), ShapeError);
  assert.throws(() => backend.softmax(backend.upload(new Float32Array(6), [6])), /2-D/);
  assert.throws(() => backend.rmsNorm(x, backend.upload(new Float32Array(3), [3]), 2, 1e-6), {
    name: "ShapeError",
  });
  assert.throws(() => backend.layerNorm(x, backend.upload(new Float32Array(2), [2]), null, 1e-6));
  assert.throws(() => backend.gatherRows(x, Int32Array.from([2])), /row 2 of 2/);
  assert.throws(() => backend.segmentMean(x, Int32Array.from([0, 1])), /offsets/);
  assert.throws(() => backend.segmentMean(x, Int32Array.from([0, 0, 2])), /empty/);
  assert.throws(() => backend.headNorms(x, 2, 2, 0), /out of range/);
  assert.throws(() => backend.concatRows([]), ShapeError);
  assert.throws(
    () => backend.attention(x, x, x, { heads: 1, headDim: 3, scale: 1, kOffset: 1 }),
    /out of range/,
  );
  assert.throws(
    () =>
      backend.attention(x, x, x, {
        heads: 1,
        headDim: 3,
        scale: 1,
        querySegments: Int32Array.from([1, 0]),
      }),
    /nondecreasing/,
  );
  assert.throws(() =>
    backend.prepareLinear({
      weight: new Float32Array(5),
      bias: null,
      outFeatures: 2,
      inFeatures: 3,
    })
  );
  const w = backend.prepareLinear({
    weight: new Float32Array(6),
    bias: null,
    outFeatures: 3,
    inFeatures: 2,
  });
  assert.throws(() => backend.linear(x, w), /expects 2 input columns/);
  assert.throws(
    () =>
      backend.prepareLinear(
        { weight: new Float32Array(6), bias: null, outFeatures: 3, inFeatures: 2 },
        { precision: "f16" as "f32" },
      ),
    (error: unknown) => error instanceof EdgeVitError && error.code === "unsupported",
  );
  assert.throws(() =>
    backend.linear(
      x,
      reference.prepareLinear({
        weight: new Float32Array(9),
        bias: null,
        outFeatures: 3,
        inFeatures: 3,
      }),
    ), ShapeError);
  backend.release(x);
  assert.throws(() => backend.gelu(x), /released/);
  backend.release(x); // releasing twice is harmless
  backend.dispose();
  assert.throws(
    () => backend.upload(new Float32Array(1), [1]),
    (error: unknown) => error instanceof EdgeVitError && error.code === "backend_failure",
  );
});

/** Columns `offset … offset + width` of a `[rows, cols]` matrix. */
function columns(x: Float32Array, rows: number, cols: number, offset: number, width: number) {
  const out = new Float32Array(rows * width);
  for (let i = 0; i < rows; i++) {
    out.set(x.subarray(i * cols + offset, i * cols + offset + width), i * width);
  }
  return out;
}

Deno.test("the int8 attention is bit-exact with the TypeScript reference in both builds", async () => {
  // [query segment lengths, key segment lengths, heads, head dim]; fused qkv when they match.
  const cases: [number[], number[], number, number][] = [
    [[1], [1], 1, 48],
    [[7], [7], 2, 48],
    [[33], [33], 1, 64],
    [[197], [197], 3, 64],
    [[1, 49, 13], [1, 49, 13], 2, 51],
    [[4, 4, 4], [33, 1, 197], 1, 80], // pooling-style: few queries per segment, many keys
    [[2, 3], [5, 0], 2, 49], // the second segment has no keys: zeros
  ];
  for (const flavour of ["relaxed", "plain"] as const) {
    const backend = await WasmBackend.create({ flavour });
    for (const [queryLengths, keyLengths, heads, headDim] of cases) {
      const querySegments = segmentsFromLengths(queryLengths).ids;
      const keySegments = segmentsFromLengths(keyLengths).ids;
      const queries = querySegments.length;
      const keys = keySegments.length;
      const width = heads * headDim;
      const fused = queries === keys;
      const label = `${flavour} q ${queryLengths} k ${keyLengths} ${heads}×${headDim}`;
      const qkv = values(keys * 3 * width, queries + keys + headDim, 2);
      const q = fused ? columns(qkv, keys, 3 * width, 0, width) : values(queries * width, heads, 2);
      const k = columns(qkv, keys, 3 * width, width, width);
      const v = columns(qkv, keys, 3 * width, 2 * width, width);
      const qkvTensor = backend.upload(qkv, [keys, 3 * width]);
      const qTensor = fused ? qkvTensor : backend.upload(q, [queries, width]);
      const result = backend.attention(qTensor, qkvTensor, qkvTensor, {
        heads,
        headDim,
        scale: headDim ** -0.5,
        qOffset: 0,
        kOffset: width,
        vOffset: 2 * width,
        querySegments,
        keySegments,
        returnClsAttention: true,
        precision: "int8",
      });
      const want = attentionInt8Reference({
        q,
        k,
        v,
        queries,
        keys,
        heads,
        headDim,
        scale: headDim ** -0.5,
        querySegments,
        keySegments,
      });
      assert.deepEqual(await backend.read(result.output), want.output, `${label} output`);
      assert.deepEqual(await backend.read(result.clsAttention!), want.clsAttention, `${label} cls`);
      // Close to float32 attention: probabilities and q at 7 bits, k and v at 8.
      const reference = new ReferenceBackend();
      const float = reference.attention(
        reference.upload(q, [queries, width]),
        reference.upload(k, [keys, width]),
        reference.upload(v, [keys, width]),
        { heads, headDim, scale: headDim ** -0.5, querySegments, keySegments },
      );
      const exact = (float.output as unknown as { data: Float32Array }).data;
      const vMax = v.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      const worst = want.output.reduce((m, x, i) => Math.max(m, Math.abs(x - exact[i])), 0);
      // Inputs with ×9 outliers and logits up to ~±20: the worst case measured is 0.096.
      assert.ok(worst <= 0.12 * vMax, `${label}: ${worst} from float32 (|v| ≤ ${vMax})`);
      for (const tensor of new Set([qkvTensor, qTensor, result.output, result.clsAttention!])) {
        backend.release(tensor);
      }
    }
  }
});

Deno.test("int8 attention: NaN in k or v poisons its segment, in q only its row", async () => {
  const backend = await WasmBackend.create({ flavour: "relaxed" });
  const [tokens, heads, headDim] = [10, 1, 48];
  const segments = segmentsFromLengths([5, 5]).ids;
  for (const [tensorName, row] of [["q", 2], ["k", 3], ["v", 7]] as const) {
    const data = {
      q: values(tokens * headDim, 1),
      k: values(tokens * headDim, 2),
      v: values(tokens * headDim, 3),
    };
    data[tensorName][row * headDim + 5] = NaN;
    const out = await backend.read(
      backend.attention(
        backend.upload(data.q, [tokens, headDim]),
        backend.upload(data.k, [tokens, headDim]),
        backend.upload(data.v, [tokens, headDim]),
        { heads, headDim, scale: 0.2, querySegments: segments, precision: "int8" },
      ).output,
    );
    const nanRows = [...Array(tokens).keys()].filter((i) =>
      out.subarray(i * headDim, (i + 1) * headDim).some(Number.isNaN)
    );
    const allNan = [...Array(tokens).keys()].filter((i) =>
      out.subarray(i * headDim, (i + 1) * headDim).every(Number.isNaN)
    );
    const expected = tensorName === "q" ? [row] : row < 5 ? [0, 1, 2, 3, 4] : [5, 6, 7, 8, 9];
    assert.deepEqual(nanRows, expected, `NaN in ${tensorName} row ${row}`);
    assert.deepEqual(allNan, expected, `NaN in ${tensorName} row ${row}: whole rows`);
  }
});

Deno.test("int8 attention stays float32 below head dim 48, where it would not be faster", async () => {
  const backend = await WasmBackend.create({});
  const [tokens, heads, headDim] = [33, 2, INT8_ATTENTION_MIN_HEAD_DIM - 1];
  const width = heads * headDim;
  const qkv = backend.upload(values(tokens * 3 * width, 5, 2), [tokens, 3 * width]);
  const run = (precision: "f32" | "int8") =>
    backend.read(
      backend.attention(qkv, qkv, qkv, {
        heads,
        headDim,
        scale: 0.125,
        kOffset: width,
        vOffset: 2 * width,
        precision,
      }).output,
    );
  assert.deepEqual(await run("int8"), await run("f32"));
});
