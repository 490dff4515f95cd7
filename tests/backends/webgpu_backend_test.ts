/**
 * The WebGPU backend against the reference backend, op by op, on odd shapes. CI has no
 * GPU: these tests ask explicitly for the fallback adapter (Mesa's llvmpipe through
 * Vulkan), and fail — never skip — when no adapter exists at all.
 */

import assert from "node:assert/strict";
import { type Backend, ShapeError, type Tensor } from "../../src/backends/backend.ts";
import { geluScalar, ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { keyRanges, WebGpuBackend } from "../../src/backends/webgpu/webgpu_backend.ts";
import { GENERATED_FILE, renderShaderModule } from "../../src/backends/webgpu/generate_shaders.ts";
import { EdgeVitError } from "../../src/errors.ts";

const ATOL = 1e-4;
const ROWS = [1, 7, 33, 197];

/** A backend on the software adapter; fails with what to install when there is none. */
async function createTestBackend(): Promise<WebGpuBackend> {
  if (!("gpu" in navigator)) {
    throw new Error(
      'WebGPU tests need navigator.gpu: run deno test with --unstable-webgpu (deno.json "unstable": ["webgpu"])',
    );
  }
  try {
    return await WebGpuBackend.create({ allowFallbackAdapter: true, timeoutMs: 20_000 });
  } catch (error) {
    throw new Error(
      "WebGPU tests found no WebGPU adapter. Without a GPU they use Mesa's llvmpipe Vulkan " +
        "driver: install the apt packages mesa-vulkan-drivers and libvulkan1. Cause: " +
        (error instanceof Error ? error.message : String(error)),
      { cause: error },
    );
  }
}

/** Deterministic uniform values in [-scale, scale). */
function random(count: number, seed: number, scale = 1): Float32Array {
  let state = seed >>> 0 || 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = ((state >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}

/** Uploads the same data to both backends. */
function both(
  gpu: Backend,
  ref: Backend,
  data: Float32Array,
  shape: number[],
): [Tensor, Tensor] {
  return [gpu.upload(data, shape), ref.upload(data, shape)];
}

async function assertClose(
  gpu: Backend,
  ref: Backend,
  actual: Tensor,
  expected: Tensor,
  what: string,
  atol = ATOL,
): Promise<void> {
  assert.deepEqual(actual.shape, expected.shape, `${what}: shape`);
  const a = await gpu.read(actual);
  const e = await ref.read(expected);
  assert.equal(a.length, e.length, `${what}: length`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const diff = Math.abs(a[i] - e[i]);
    if (!(diff <= worst)) {
      worst = diff;
      at = i;
    }
  }
  assert.ok(
    worst <= atol,
    `${what}: max |webgpu - reference| = ${worst} at ${at} (${a[at]} vs ${e[at]}), atol ${atol}`,
  );
  gpu.release(actual);
}

/** erf to ~1e-15 (Taylor series near 0, continued fraction in the tails), for exact GELU. */
function erf64(x: number): number {
  const z = Math.abs(x);
  let result: number;
  if (z < 3) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 200 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= -z * z / n;
      sum += term / (2 * n + 1);
    }
    result = sum * 2 / Math.sqrt(Math.PI);
  } else {
    // erfc(z) = exp(-z²)/√π · 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...))))
    let fraction = 0;
    for (let n = 60; n >= 1; n--) fraction = (n / 2) / (z + fraction);
    result = 1 - Math.exp(-z * z) / Math.sqrt(Math.PI) / (z + fraction);
  }
  return x < 0 ? -result : result;
}

Deno.test("the WebGPU backend matches the reference backend on every op", async (t) => {
  const gpu = await createTestBackend();
  const ref = new ReferenceBackend();
  try {
    await t.step("linear (f32, with and without bias and fused GELU) on odd shapes", async () => {
      let seed = 1;
      for (const rows of ROWS) {
        for (const [inFeatures, outFeatures] of [[45, 37], [3, 1], [19, 70]]) {
          for (const withBias of [true, false]) {
            const source = {
              weight: random(outFeatures * inFeatures, seed++, 0.5),
              bias: withBias ? random(outFeatures, seed++) : null,
              inFeatures,
              outFeatures,
            };
            const [gx, rx] = both(gpu, ref, random(rows * inFeatures, seed++), [rows, inFeatures]);
            const gw = gpu.prepareLinear(source);
            const rw = ref.prepareLinear(source);
            for (const activation of ["none", "gelu"] as const) {
              await assertClose(
                gpu,
                ref,
                gpu.linear(gx, gw, activation),
                ref.linear(rx, rw, activation),
                `linear ${rows}×${inFeatures}→${outFeatures} bias=${withBias} ${activation}`,
              );
            }
            gpu.release(gx);
            gpu.releaseLinear(gw);
          }
        }
      }
    });

    await t.step(
      "linear with int8 weights matches the reference's dequantized weights",
      async () => {
        let seed = 100;
        for (const rows of ROWS) {
          for (const [inFeatures, outFeatures] of [[45, 37], [7, 66], [130, 3]]) {
            const source = {
              weight: random(outFeatures * inFeatures, seed++, 0.5),
              bias: random(outFeatures, seed++),
              inFeatures,
              outFeatures,
            };
            const [gx, rx] = both(gpu, ref, random(rows * inFeatures, seed++), [rows, inFeatures]);
            const gw = gpu.prepareLinear(source, { precision: "int8" });
            const rw = ref.prepareLinear(source, { precision: "int8" });
            assert.equal(gw.precision, "int8");
            await assertClose(
              gpu,
              ref,
              gpu.linear(gx, gw, "gelu"),
              ref.linear(rx, rw, "gelu"),
              `int8 linear ${rows}×${inFeatures}→${outFeatures}`,
            );
            // Pre-quantized weights covering the whole int8 range, negative values included.
            const weight = new Int8Array(outFeatures * inFeatures);
            for (let i = 0; i < weight.length; i++) weight[i] = ((i * 37 + seed) % 255) - 127;
            const quantized = {
              weight,
              scales: random(outFeatures, seed++, 0.01).map(Math.abs),
              bias: null,
              inFeatures,
              outFeatures,
            };
            const gq = gpu.prepareQuantizedLinear(quantized);
            await assertClose(
              gpu,
              ref,
              gpu.linear(gx, gq),
              ref.linear(rx, ref.prepareQuantizedLinear(quantized)),
              `pre-quantized linear ${rows}×${inFeatures}→${outFeatures}`,
            );
            gpu.release(gx);
            gpu.releaseLinear(gw);
            gpu.releaseLinear(gq);
          }
        }
      },
    );

    await t.step("layerNorm (with and without beta) and rmsNorm over column groups", async () => {
      let seed = 200;
      for (const rows of ROWS) {
        for (const cols of [1, 45, 193]) {
          const data = random(rows * cols, seed++, 3).map((v, i) => v + (i % cols === 0 ? 5 : 0));
          const [gx, rx] = both(gpu, ref, data, [rows, cols]);
          const [gg, rg] = both(gpu, ref, random(cols, seed++), [cols]);
          const [gb, rb] = both(gpu, ref, random(cols, seed++), [cols]);
          await assertClose(
            gpu,
            ref,
            gpu.layerNorm(gx, gg, gb, 1e-5),
            ref.layerNorm(rx, rg, rb, 1e-5),
            `layerNorm ${rows}×${cols}`,
          );
          await assertClose(
            gpu,
            ref,
            gpu.layerNorm(gx, gg, null, 1e-6),
            ref.layerNorm(rx, rg, null, 1e-6),
            `layerNorm without beta ${rows}×${cols}`,
          );
          await assertClose(
            gpu,
            ref,
            gpu.rmsNorm(gx, gg, cols, 1e-6),
            ref.rmsNorm(rx, rg, cols, 1e-6),
            `rmsNorm ${rows}×${cols}`,
          );
          for (const t of [gx, gg, gb]) gpu.release(t);
        }
        const [gx, rx] = both(gpu, ref, random(rows * 35, seed++, 2), [rows, 35]);
        const [gg, rg] = both(gpu, ref, random(35, seed++), [35]);
        await assertClose(
          gpu,
          ref,
          gpu.rmsNorm(gx, gg, 5, 1e-5),
          ref.rmsNorm(rx, rg, 5, 1e-5),
          `rmsNorm of 7 groups of 5 columns, ${rows} rows`,
        );
        gpu.release(gx);
        gpu.release(gg);
      }
    });

    await t.step("gelu is within 1e-6 of the exact erf GELU", async () => {
      const count = 12001;
      const xs = new Float32Array(count).map((_, i) => -6 + (12 * i) / (count - 1));
      const gx = gpu.upload(xs, [count]);
      const ys = await gpu.read(gpu.gelu(gx));
      let worst = 0;
      for (let i = 0; i < count; i++) {
        const exact = 0.5 * xs[i] * (1 + erf64(xs[i] / Math.SQRT2));
        worst = Math.max(worst, Math.abs(ys[i] - exact));
      }
      assert.ok(worst <= 1e-6, `max |gelu - exact| = ${worst}`);
      // The reference's own GELU agrees with the same exact function.
      assert.ok(Math.abs(geluScalar(1.5) - 0.5 * 1.5 * (1 + erf64(1.5 / Math.SQRT2))) < 1e-6);
      gpu.release(gx);
    });

    await t.step("gelu, add and softmax on odd shapes", async () => {
      let seed = 300;
      for (const rows of ROWS) {
        for (const cols of [1, 13, 197]) {
          const [gx, rx] = both(gpu, ref, random(rows * cols, seed++, 4), [rows, cols]);
          const [gy, ry] = both(gpu, ref, random(rows * cols, seed++, 4), [rows, cols]);
          await assertClose(gpu, ref, gpu.gelu(gx), ref.gelu(rx), `gelu ${rows}×${cols}`);
          await assertClose(gpu, ref, gpu.add(gx, gy), ref.add(rx, ry), `add ${rows}×${cols}`);
          await assertClose(gpu, ref, gpu.softmax(gx), ref.softmax(rx), `softmax ${rows}×${cols}`);
          gpu.release(gx);
          gpu.release(gy);
        }
      }
    });

    await t.step("attention without segments on 1, 7, 33 and 197 rows", async () => {
      let seed = 400;
      for (const rows of ROWS) {
        for (const [heads, headDim] of [[3, 5], [2, 16]]) {
          const width = heads * headDim;
          const [gq, rq] = both(gpu, ref, random(rows * width, seed++, 2), [rows, width]);
          const [gk, rk] = both(gpu, ref, random(rows * width, seed++, 2), [rows, width]);
          const [gv, rv] = both(gpu, ref, random(rows * width, seed++, 2), [rows, width]);
          const options = { heads, headDim, scale: headDim ** -0.5, returnClsAttention: true };
          const g = gpu.attention(gq, gk, gv, options);
          const r = ref.attention(rq, rk, rv, options);
          await assertClose(
            gpu,
            ref,
            g.output,
            r.output,
            `attention ${rows} rows ${heads}×${headDim}`,
          );
          await assertClose(
            gpu,
            ref,
            g.clsAttention!,
            r.clsAttention!,
            `CLS attention ${rows} rows ${heads}×${headDim}`,
          );
          for (const t of [gq, gk, gv]) gpu.release(t);
        }
      }
    });

    await t.step(
      "attention on a packed batch with segments, a fused qkv and CLS output",
      async () => {
        // Four images of 1, 7, 33 and 97 tokens (138 rows), heads of 64 like DeiT.
        const lengths = [1, 7, 33, 97];
        const rows = lengths.reduce((a, b) => a + b, 0);
        const segments = new Int32Array(lengths.flatMap((n, s) => Array(n).fill(s)));
        const heads = 3;
        const headDim = 64;
        const width = heads * headDim;
        const [gqkv, rqkv] = both(gpu, ref, random(rows * 3 * width, 500, 2), [rows, 3 * width]);
        const options = {
          heads,
          headDim,
          scale: headDim ** -0.5,
          qOffset: 0,
          kOffset: width,
          vOffset: 2 * width,
          querySegments: segments,
          returnClsAttention: true,
        };
        const g = gpu.attention(gqkv, gqkv, gqkv, options);
        const r = ref.attention(rqkv, rqkv, rqkv, options);
        await assertClose(gpu, ref, g.output, r.output, "packed attention output");
        await assertClose(gpu, ref, g.clsAttention!, r.clsAttention!, "packed CLS attention");
        gpu.release(gqkv);
      },
    );

    await t.step("attention with different query and key segments (pooled queries)", async () => {
      // 3 query rows per image against 9, 1 and 40 keys; image 3 has queries but no keys,
      // image 4 (id 5) has keys but no queries.
      const querySegments = new Int32Array([0, 0, 0, 1, 1, 1, 3, 3, 3]);
      const keySegments = new Int32Array([
        ...Array(9).fill(0),
        1,
        ...Array(40).fill(3),
        ...Array(4).fill(5),
      ]);
      const heads = 2;
      const headDim = 7;
      const width = heads * headDim;
      const [gq, rq] = both(gpu, ref, random(9 * width, 600, 2), [9, width]);
      const [gk, rk] = both(gpu, ref, random(54 * width, 601, 2), [54, width]);
      const [gv, rv] = both(gpu, ref, random(54 * width, 602, 2), [54, width]);
      const options = {
        heads,
        headDim,
        scale: 0.3,
        querySegments,
        keySegments,
        returnClsAttention: true,
      };
      const g = gpu.attention(gq, gk, gv, options);
      const r = ref.attention(rq, rk, rv, options);
      await assertClose(gpu, ref, g.output, r.output, "cross attention output");
      await assertClose(gpu, ref, g.clsAttention!, r.clsAttention!, "cross attention CLS");
      const empty = gpu.attention(gq, gk, gv, {
        ...options,
        querySegments: new Int32Array([2, 2, 2, 2, 2, 2, 2, 2, 2]),
      });
      const zeros = await gpu.read(empty.output);
      assert.ok(zeros.every((value) => value === 0), "queries without keys attend to nothing");
      for (const t of [gq, gk, gv]) gpu.release(t);
    });

    await t.step("keyRanges gives each query its segment's key range", () => {
      const ranges = keyRanges(new Int32Array([0, 0, 2, 3, 3]), new Int32Array([0, 1, 1, 3, 3, 3]));
      assert.deepEqual([...ranges], [0, 1, 0, 1, 3, 3, 3, 6, 3, 6]);
    });

    await t.step("gatherRows, concatRows, segmentMean and headNorms on odd shapes", async () => {
      let seed = 700;
      for (const rows of ROWS) {
        const cols = 27;
        const [gx, rx] = both(gpu, ref, random(rows * cols, seed++, 3), [rows, cols]);
        const picks = new Int32Array([rows - 1, 0, Math.floor(rows / 2), rows - 1]);
        await assertClose(
          gpu,
          ref,
          gpu.gatherRows(gx, picks),
          ref.gatherRows(rx, picks),
          `gatherRows of ${rows}`,
        );
        const [gy, ry] = both(gpu, ref, random(5 * cols, seed++), [5, cols]);
        await assertClose(
          gpu,
          ref,
          gpu.concatRows([gx, gy, gx]),
          ref.concatRows([rx, ry, rx]),
          `concatRows of ${rows}+5+${rows}`,
        );
        const cut = Math.ceil(rows / 3);
        const offsets = rows === 1 ? new Int32Array([0, 1]) : new Int32Array([0, cut, rows]);
        await assertClose(
          gpu,
          ref,
          gpu.segmentMean(gx, offsets),
          ref.segmentMean(rx, offsets),
          `segmentMean of ${rows}`,
        );
        await assertClose(
          gpu,
          ref,
          gpu.headNorms(gx, 4, 5, 3),
          ref.headNorms(rx, 4, 5, 3),
          `headNorms of ${rows}`,
        );
        gpu.release(gx);
        gpu.release(gy);
      }
    });

    await t.step("bad inputs throw clear errors instead of reaching the GPU", () => {
      const x = gpu.upload(new Float32Array(6), [2, 3]);
      const y = gpu.upload(new Float32Array(6), [3, 2]);
      assert.throws(() => gpu.upload(new Float32Array(5), [2, 3]), ShapeError);
      assert.throws(() => gpu.add(x, y), /add of \[2,3\] and \[3,2\]/);
      assert.throws(() => gpu.gatherRows(x, new Int32Array([2])), /gatherRows row 2 of 2/);
      assert.throws(() => gpu.add(x, ref.upload(new Float32Array(6), [2, 3])), /reference tensor/);
      assert.throws(
        () =>
          gpu.attention(x, x, x, {
            heads: 1,
            headDim: 3,
            scale: 1,
            querySegments: new Int32Array([1, 0]),
          }),
        /nondecreasing/,
      );
      assert.throws(() => gpu.segmentMean(x, new Int32Array([0, 0, 2])), /segment 0 is empty/);
      gpu.release(x);
      assert.throws(() => gpu.gelu(x), /released tensor/);
      gpu.release(y);
    });
  } finally {
    gpu.dispose();
  }
});

Deno.test("the WebGPU backend creates no pipelines after warm-up and leaks no buffers", async () => {
  const gpu = await createTestBackend();
  try {
    const dim = 24;
    const rows = 13;
    const qkv = gpu.prepareLinear({
      weight: random(3 * dim * dim, 1, 0.2),
      bias: random(3 * dim, 2),
      inFeatures: dim,
      outFeatures: 3 * dim,
    });
    const mlp = gpu.prepareLinear(
      { weight: random(dim * dim, 3, 0.2), bias: null, inFeatures: dim, outFeatures: dim },
      { precision: "int8" },
    );
    const gamma = gpu.upload(random(dim, 4), [dim]);
    const segments = new Int32Array(rows).map((_, i) => (i < 6 ? 0 : 1));
    // A small transformer-like block: every op family the models use, releasing as it goes.
    const block = (x: Tensor): Tensor => {
      const normed = gpu.layerNorm(x, gamma, gamma, 1e-6);
      const projected = gpu.linear(normed, qkv);
      const { output, clsAttention } = gpu.attention(projected, projected, projected, {
        heads: 2,
        headDim: 12,
        scale: 0.3,
        kOffset: dim,
        vOffset: 2 * dim,
        querySegments: segments,
        returnClsAttention: true,
      });
      const hidden = gpu.linear(output, mlp, "gelu");
      const scaled = gpu.rmsNorm(hidden, gamma, 12, 1e-6);
      const residual = gpu.add(x, scaled);
      const extra = [
        gpu.softmax(residual),
        gpu.gelu(residual),
        gpu.headNorms(projected, 2, 12, 2 * dim),
        gpu.segmentMean(residual, new Int32Array([0, 6, rows])),
        gpu.concatRows([residual, residual]),
        gpu.gatherRows(residual, new Int32Array([0, 6])),
        clsAttention!,
        normed,
        projected,
        output,
        hidden,
        scaled,
      ];
      for (const t of extra) gpu.release(t);
      return residual;
    };
    const input = random(rows * dim, 5);
    const forward = async () => {
      let x = gpu.upload(input, [rows, dim]);
      for (let layer = 0; layer < 4; layer++) {
        const next = block(x);
        gpu.release(x);
        x = next;
      }
      const out = await gpu.read(x);
      gpu.release(x);
      return out;
    };

    const first = await forward();
    const warm = gpu.stats();
    assert.ok(
      warm.pipelinesCreated >= 10,
      `every kernel was built once (${warm.pipelinesCreated})`,
    );
    const iterations = 60; // 60 forwards × 4 blocks × 12 ops = 2880 op calls
    for (let i = 0; i < iterations; i++) {
      const again = await forward();
      assert.deepEqual(again, first, "the same input gives the same output");
    }
    const after = gpu.stats();
    assert.equal(
      after.pipelinesCreated,
      warm.pipelinesCreated,
      "no pipeline created after warm-up",
    );
    assert.equal(after.tensorsInUse, 1, "only gamma is still held");
    assert.ok(
      after.liveBuffers <= warm.liveBuffers,
      `live buffers stay flat: ${warm.liveBuffers} after warm-up, ${after.liveBuffers} after`,
    );
    // 11 kernels per block (concatRows is a buffer copy).
    assert.equal(after.dispatches - warm.dispatches, iterations * 4 * 11, "the work really ran");

    gpu.release(gamma);
    gpu.releaseLinear(qkv);
    gpu.releaseLinear(mlp);
    await gpu.sync();
    const released = gpu.stats();
    assert.equal(released.tensorsInUse, 0);
    assert.equal(released.weightBuffers, 0, "releaseLinear frees weight, scale and bias buffers");
  } finally {
    gpu.dispose();
  }
});

Deno.test("WebGPU device errors become backend_failure errors", async (t) => {
  await t.step(
    "a validation error is reported by the next sync and poisons later ops",
    async () => {
      const gpu = await createTestBackend();
      try {
        const x = gpu.upload(new Float32Array([1, 2, 3]), [1, 3]);
        // Provoke a real device validation error inside the backend's error scope.
        gpu.device.createBuffer({ size: 16, usage: 0x0001 | 0x0080 }); // MAP_READ | STORAGE
        await assert.rejects(
          gpu.sync(),
          (error: unknown) =>
            error instanceof EdgeVitError && error.code === "backend_failure" &&
            /validation/.test(error.message),
        );
        assert.throws(() => gpu.gelu(x), (error: unknown) => error instanceof EdgeVitError);
      } finally {
        gpu.dispose();
      }
    },
  );

  await t.step("a lost device fails reads and ops with a clear message", async () => {
    const gpu = await createTestBackend();
    try {
      const x = gpu.upload(new Float32Array([1, 2, 3]), [1, 3]);
      gpu.device.destroy();
      await gpu.device.lost;
      await assert.rejects(
        gpu.read(x),
        (error: unknown) =>
          error instanceof EdgeVitError && error.code === "backend_failure" &&
          /device lost/.test(error.message),
      );
      assert.throws(() => gpu.gelu(x), /device lost/);
    } finally {
      gpu.dispose();
    }
  });

  await t.step("a tensor larger than the device can bind is refused up front", async () => {
    const gpu = await createTestBackend();
    try {
      const x = gpu.upload(new Float32Array(4), [1, 4]);
      const rows = Math.ceil(gpu.device.limits.maxStorageBufferBindingSize / 16) + 1;
      assert.throws(
        () => gpu.gatherRows(x, new Int32Array(rows)),
        (error: unknown) =>
          error instanceof EdgeVitError && error.code === "backend_failure" &&
          /smaller batches/.test(error.message),
      );
    } finally {
      gpu.dispose();
    }
  });

  await t.step("a read in flight when the backend is disposed rejects cleanly", async () => {
    const gpu = await createTestBackend();
    const x = gpu.upload(new Float32Array(1000).fill(2), [10, 100]);
    const pending = gpu.read(gpu.softmax(x));
    gpu.dispose();
    await assert.rejects(
      pending,
      (error: unknown) => error instanceof EdgeVitError && error.code === "backend_failure",
    );
  });

  await t.step("a disposed backend refuses work", async () => {
    const gpu = await createTestBackend();
    const x = gpu.upload(new Float32Array(3), [1, 3]);
    gpu.dispose();
    assert.throws(() => gpu.gelu(x), /disposed/);
  });
});

Deno.test("the embedded shaders match kernels/wgsl (run `deno task build:wgsl` if not)", async () => {
  const expected = await renderShaderModule();
  const actual = await Deno.readTextFile(GENERATED_FILE);
  assert.ok(
    actual === expected,
    "src/backends/webgpu/shaders.generated.ts is stale: run `deno task build:wgsl`",
  );
});
