/**
 * How close the wasm kernels come to what this engine and core can issue: the peak rate of
 * the one SIMD instruction each GEMM is built on, and the GEMMs' own rate, measured in the
 * same process so host drift lands on both.
 *
 * The peaks come from tiny modules encoded here byte by byte: a loop of 12 independent
 * accumulator chains of one instruction (`f32x4.relaxed_madd`, `i32x4.relaxed_dot_i8x16_i7x16_add_s`,
 * or the plain-SIMD pairs the other build uses), with no memory traffic, so nothing but
 * issue width and latency limits them. A dependent chain of 1-cycle integer ops gives the
 * clock. The same loops with 4 to 12 chains show the latency a GEMM tile's accumulators
 * must cover. The GEMMs are the backend's `linear` on DeiT-Tiny's shapes (197 tokens), float32
 * and int8 (the int8 rate includes quantizing the activations and the float epilogue, as a
 * model pays them).
 *
 *     deno run --allow-read bench/peak.ts [--rounds 7]
 *
 * @module
 */

import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { relaxedSimdSupported } from "../wasm/kernels.ts";

const roundsAt = Deno.args.indexOf("--rounds");
const rounds = roundsAt >= 0 ? Number(Deno.args[roundsAt + 1]) : 7;

function leb128(value: number): number[] {
  const bytes = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value) byte |= 0x80;
    bytes.push(byte);
  } while (value);
  return bytes;
}

const simd = (opcode: number) => [0xfd, ...leb128(opcode)];
const OP = {
  f32x4Splat: simd(0x13),
  f32x4ExtractLane0: [...simd(0x1f), 0],
  f32x4Add: simd(0xe4),
  f32x4Mul: simd(0xe6),
  i32x4Add: simd(0xae),
  i32x4DotI16x8: simd(0xba),
  f32x4RelaxedMadd: simd(0x105),
  i32x4RelaxedDotI8x16I7x16Add: simd(0x113),
};
const LOCAL_GET = 0x20, LOCAL_SET = 0x21, LOCAL_TEE = 0x22;
const V128 = 0x7b, I32 = 0x7f, F32 = 0x7d;

/** A module exporting `run(n: i32) -> f32` with `body` and extra `locals` ([count, type]). */
function encodeModule(locals: [number, number][], body: number[]): Uint8Array<ArrayBuffer> {
  const section = (id: number, content: number[]) => [id, ...leb128(content.length), ...content];
  const code = [locals.length, ...locals.flatMap(([count, type]) => [count, type]), ...body, 0x0b];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [1, 0x60, 1, I32, 1, F32]), // type: (i32) -> f32
    ...section(3, [1, 0]), // one function of type 0
    ...section(7, [1, 3, ...new TextEncoder().encode("run"), 0x00, 0]), // export "run"
    ...section(10, [1, ...leb128(code.length), ...code]),
  ]);
}

/**
 * `n` loop trips of `chains` independent `acc = step(acc, x, y)` (`step` emits the code for
 * locals `acc`, `x`, `y`); returns lane 0 of Σ acc. Every instruction of a step must depend on
 * `acc`, or V8 computes it once outside the loop.
 */
function throughputModule(
  chains: number,
  step: (acc: number, x: number, y: number) => number[],
): Uint8Array<ArrayBuffer> {
  // Local 0 is n; 1..chains the accumulators; chains + 1 and chains + 2 the operands.
  const [x, y] = [chains + 1, chains + 2];
  const f32 = (value: number) => [0x43, ...new Uint8Array(new Float32Array([value]).buffer)];
  const body = [
    ...f32(1e-3),
    ...OP.f32x4Splat,
    LOCAL_SET,
    x,
    ...f32(0.5),
    ...OP.f32x4Splat,
    LOCAL_SET,
    y,
    0x03,
    0x40, // loop
  ];
  for (let acc = 1; acc <= chains; acc++) {
    body.push(...step(acc, x, y), LOCAL_SET, acc);
  }
  // n -= 1; continue while n != 0.
  body.push(LOCAL_GET, 0, 0x41, 1, 0x6b, LOCAL_TEE, 0, 0x0d, 0, 0x0b);
  body.push(LOCAL_GET, 1);
  for (let acc = 2; acc <= chains; acc++) body.push(LOCAL_GET, acc, ...OP.f32x4Add);
  body.push(...OP.f32x4ExtractLane0);
  return encodeModule([[chains + 2, V128]], body);
}

/** `n` trips of 100 dependent 1-cycle integer ops (add and xor alternate, so V8 cannot fold them). */
function clockModule(): Uint8Array<ArrayBuffer> {
  const body = [0x41, 3, LOCAL_SET, 2, 0x03, 0x40];
  for (let i = 0; i < 100; i++) {
    body.push(LOCAL_GET, 1, LOCAL_GET, 2, i % 2 ? 0x6a : 0x73, LOCAL_SET, 1);
  }
  body.push(LOCAL_GET, 0, 0x41, 1, 0x6b, LOCAL_TEE, 0, 0x0d, 0, 0x0b, LOCAL_GET, 1, 0xb2);
  return encodeModule([[2, I32]], body);
}

/** Best seconds per `run(trips)` over `rounds` calls, after a warm-up call. */
async function bestSeconds(bytes: Uint8Array<ArrayBuffer>, trips: number): Promise<number> {
  const instance = await WebAssembly.instantiate(await WebAssembly.compile(bytes));
  const run = instance.exports.run as (n: number) => number;
  run(1000);
  let best = Infinity;
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    run(trips);
    best = Math.min(best, performance.now() - start);
  }
  return best / 1000;
}

const TRIPS = 2_000_000;
const CHAINS = 12;
const ghz = (100 * TRIPS) / (await bestSeconds(clockModule(), TRIPS)) / 1e9;

interface Peak {
  name: string;
  /** The linears whose GEMM is built on this instruction. */
  precision: "f32" | "int8";
  /** Float or integer operations (a multiply-add counts 2) per trip of one chain. */
  opsPerStep: number;
  /** Instructions per trip of one chain. */
  instructions: number;
  step: (acc: number, x: number, y: number) => number[];
}
const relaxed = relaxedSimdSupported();
const get = (...locals: number[]) => locals.flatMap((local) => [LOCAL_GET, local]);
const RELAXED_PEAKS: Peak[] = [
  {
    name: "f32x4.relaxed_madd",
    precision: "f32",
    opsPerStep: 8,
    instructions: 1,
    step: (acc, x, y) => [...get(x, y, acc), ...OP.f32x4RelaxedMadd],
  },
  {
    name: "i32x4.relaxed_dot_i8x16_i7x16_add_s",
    precision: "int8",
    opsPerStep: 32,
    instructions: 1,
    step: (acc, x, y) => [...get(x, y, acc), ...OP.i32x4RelaxedDotI8x16I7x16Add],
  },
];
const PLAIN_PEAKS: Peak[] = [
  {
    name: "f32x4.mul + f32x4.add",
    precision: "f32",
    opsPerStep: 8,
    instructions: 2,
    step: (acc, x, y) => [...get(acc, x), ...OP.f32x4Mul, ...get(y), ...OP.f32x4Add],
  },
  {
    name: "i32x4.dot_i16x8_s + i32x4.add",
    precision: "int8",
    opsPerStep: 16,
    instructions: 2,
    step: (acc, x, y) => [...get(acc, x), ...OP.i32x4DotI16x8, ...get(y), ...OP.i32x4Add],
  },
];
const peaks = relaxed ? [...RELAXED_PEAKS, ...PLAIN_PEAKS] : PLAIN_PEAKS;

console.log(`clock (dependent integer ops): ${ghz.toFixed(2)} GHz; ${CHAINS} chains per loop\n`);
console.log("| instruction | G op/s | per cycle |");
console.log("| --- | ---: | ---: |");
const peakRate = new Map<Peak, number>();
for (const peak of peaks) {
  const seconds = await bestSeconds(throughputModule(CHAINS, peak.step), TRIPS);
  const rate = (CHAINS * TRIPS * peak.opsPerStep) / seconds / 1e9;
  peakRate.set(peak, rate);
  const perCycle = (CHAINS * TRIPS * peak.instructions) / seconds / 1e9 / ghz;
  console.log(`| ${peak.name} | ${rate.toFixed(1)} | ${perCycle.toFixed(2)} |`);
}

// Latency: with fewer independent chains than (latency × issue rate) in flight, a loop
// stalls on its own accumulators. A GEMM tile's accumulators are its chains, and V8 gives
// it 15 xmm registers to hold them, the operands and the splats.
const SWEEP = [4, 6, 8, 10, 12];
console.log(`\nper cycle against the number of independent chains:\n`);
console.log(`| instruction | ${SWEEP.join(" | ")} |`);
console.log(`| --- | ${SWEEP.map(() => "---:").join(" | ")} |`);
for (const peak of peaks.filter((peak) => peak.instructions === 1)) {
  const cells = [];
  for (const chains of SWEEP) {
    const seconds = await bestSeconds(throughputModule(chains, peak.step), TRIPS);
    cells.push(((chains * TRIPS) / seconds / 1e9 / ghz).toFixed(2));
  }
  console.log(`| ${peak.name} | ${cells.join(" | ")} |`);
}

const backend = await WasmBackend.create();
const SHAPES: [number, number, number][] = [
  [197, 192, 576],
  [197, 192, 192],
  [197, 192, 768],
  [197, 768, 192],
];
const kernelPeaks = backend.flavour === "relaxed" ? RELAXED_PEAKS : PLAIN_PEAKS;
console.log(`\n${backend.flavour} kernels, DeiT-Tiny linears (median of ${rounds} rounds):\n`);
console.log("| linear (m×k×n) | precision | G op/s | of the instruction's peak |");
console.log("| --- | --- | ---: | ---: |");
for (const [m, k, n] of SHAPES) {
  const x = backend.upload(Float32Array.from({ length: m * k }, (_, i) => Math.sin(i)), [m, k]);
  for (const precision of ["f32", "int8"] as const) {
    const weights = backend.prepareLinear({
      weight: Float32Array.from({ length: n * k }, (_, i) => Math.cos(i * 0.37) * 0.05),
      bias: new Float32Array(n),
      inFeatures: k,
      outFeatures: n,
    }, { precision });
    const times: number[] = [];
    for (let round = 0; round < rounds + 2; round++) {
      let calls = 0;
      const start = performance.now();
      while (performance.now() - start < 50) {
        backend.release(backend.linear(x, weights));
        calls++;
      }
      if (round >= 2) times.push((performance.now() - start) / 1000 / calls);
    }
    const seconds = times.sort((a, b) => a - b)[times.length >> 1];
    const rate = (2 * m * k * n) / seconds / 1e9;
    const share = rate / peakRate.get(kernelPeaks.find((peak) => peak.precision === precision)!)!;
    console.log(
      `| ${m}×${k}×${n} | ${precision} | ${rate.toFixed(1)} | ${(100 * share).toFixed(0)}% |`,
    );
    backend.releaseLinear(weights);
  }
  backend.release(x);
}
