/**
 * Interleaved timing for ratio figures on a shared, noisy machine: each round runs every
 * variant once, in a rotating order, so a load spike hits all of them alike; the report
 * is the median per variant and its ratio to the first (the baseline).
 *
 * @module
 */

/** One timed variant. */
export interface Variant {
  name: string;
  run: () => Promise<unknown>;
}

/**
 * Runs `rounds` interleaved rounds after one warm-up call of each variant and prints a
 * Markdown table: median ms, min ms, and speed relative to the first variant.
 */
export async function interleavedMedians(variants: Variant[], rounds: number): Promise<void> {
  for (const variant of variants) await variant.run();
  const times = variants.map(() => [] as number[]);
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < variants.length; k++) {
      const index = (round + k) % variants.length;
      const start = performance.now();
      await variants[index].run();
      times[index].push(performance.now() - start);
    }
  }
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  };
  const medians = times.map(median);
  console.log(`\n${rounds} interleaved rounds\n`);
  console.log("| variant | median ms | min ms | speed vs first |");
  console.log("| --- | ---: | ---: | ---: |");
  variants.forEach((variant, i) => {
    console.log(
      `| ${variant.name} | ${medians[i].toFixed(1)} | ${Math.min(...times[i]).toFixed(1)} | ${
        (medians[0] / medians[i]).toFixed(2)
      }× |`,
    );
  });
}
