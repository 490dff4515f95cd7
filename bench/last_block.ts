/**
 * The last encoder block over the rows the head reads only (CLS pooling) against the full
 * block, on the DeiT-Tiny shape (224², patch 16, dim 192, depth 12, heads 3, mlp 768,
 * 1000 classes, random weights), float32 and int8, on the wasm backend. Both models share
 * one backend and are run in alternating order within each round, so load on the shared
 * machine hits both alike: only the within-run ratios mean something.
 *
 *     deno run --allow-read --allow-env bench/last_block.ts [--rounds 15] [--batches 1,8] [--aa]
 *
 * `--aa`: an A/A control, both variants the full block, to see how far from 1 the ratio
 * strays by noise alone.
 *
 * Prints wall and process-CPU medians per variant, the median of the per-round ratios,
 * and the largest logit difference relative to the largest logit.
 *
 * @module
 */

import type { Precision } from "../src/backends/backend.ts";
import { WasmBackend } from "../src/backends/wasm/wasm_backend.ts";
import { randomVitWeights, seededRandom, standardVitConfig, VitModel } from "../src/models/vit.ts";

const config = standardVitConfig({
  imageSize: 224,
  patchSize: 16,
  dim: 192,
  depth: 12,
  heads: 3,
  mlpDim: 768,
  numClasses: 1000,
});

function option(flag: string, fallback: string): string {
  const i = Deno.args.indexOf(flag);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : fallback;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function timed(run: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  await run();
  const wall = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  return { wall, cpu: (cpu.user + cpu.system) / 1000 };
}

async function main(): Promise<void> {
  const rounds = Number(option("--rounds", "15"));
  const batches = option("--batches", "1").split(",").map(Number);
  const control = Deno.args.includes("--aa");
  const backend = await WasmBackend.create();
  const weights = randomVitWeights(config, 1);
  console.log(
    `DeiT-Tiny shape, wasm backend, ${rounds} interleaved rounds after one warm-up${
      control ? " (A/A control: both variants are the full block)" : ""
    }\n`,
  );
  console.log(
    "| precision | batch | full wall ms | last-rows wall ms | full CPU ms | last-rows CPU ms | CPU ratio (median of rounds) | max logit diff / max logit |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const precision of ["f32", "int8"] as Precision[]) {
    const fast = VitModel.create(backend, config, weights, {
      precision,
      fullLastBlock: control,
    });
    const full = VitModel.create(backend, config, weights, { precision, fullLastBlock: true });
    for (const batch of batches) {
      const random = seededRandom(batch);
      const pixels = Float32Array.from({ length: batch * 3 * 224 * 224 }, () => random() * 4 - 2);
      const shape = [batch, 3, 224, 224] as const;
      const a = await full.forward(pixels, shape); // warm-up, and the logits to compare
      const b = await fast.forward(pixels, shape);
      let diff = 0;
      let top = 0;
      for (let i = 0; i < a.logits.length; i++) {
        diff = Math.max(diff, Math.abs(a.logits[i] - b.logits[i]));
        top = Math.max(top, Math.abs(a.logits[i]));
      }
      const times = { full: [] as number[], fast: [] as number[] };
      const cpu = { full: [] as number[], fast: [] as number[] };
      const ratios: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? ["full", "fast"] as const : ["fast", "full"] as const;
        const got: Record<string, number> = {};
        for (const which of order) {
          const model = which === "full" ? full : fast;
          const t = await timed(() => model.forward(pixels, shape));
          times[which].push(t.wall / batch);
          cpu[which].push(t.cpu / batch);
          got[which] = t.cpu;
        }
        ratios.push(got.fast / got.full);
      }
      console.log(
        `| ${precision} | ${batch} | ${median(times.full).toFixed(1)} | ${
          median(times.fast).toFixed(1)
        } | ${median(cpu.full).toFixed(1)} | ${median(cpu.fast).toFixed(1)} | ${
          median(ratios).toFixed(3)
        } | ${(diff / top).toExponential(1)} |`,
      );
    }
    fast.dispose();
    full.dispose();
  }
  backend.dispose();
}

if (import.meta.main) await main();
