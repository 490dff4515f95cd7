import assert from "node:assert/strict";
import { EdgeVitError } from "../../src/errors.ts";
import {
  DEBIAN_FASHION_MNIST_DIR,
  FASHION_MNIST_LABELS,
  loadFashionMnist,
  maybeGunzip,
  parseIdx,
} from "../../src/eval/fashion_mnist.ts";

/** An idx file of unsigned bytes with the given dimensions. */
function idx(dims: number[], values: ArrayLike<number>, type = 0x08): Uint8Array {
  const header = new Uint8Array(4 + 4 * dims.length);
  header.set([0, 0, type, dims.length]);
  const view = new DataView(header.buffer);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  const out = new Uint8Array(header.length + values.length);
  out.set(header);
  out.set(Uint8Array.from(values), header.length);
  return out;
}

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function rejectsWith(code: string, pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof EdgeVitError, `expected an EdgeVitError, got ${error}`);
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    return true;
  };
}

/** A temporary folder with a 3-image, 2×4 split in idx files (gzipped when asked). */
async function writeSplit(
  options: { gz?: boolean; labels?: number[]; images?: Uint8Array } = {},
): Promise<{ dir: string; pixels: number[] }> {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-idx-" });
  const pixels = Array.from({ length: 3 * 2 * 4 }, (_, i) => (i * 37) % 256);
  const images = options.images ?? idx([3, 2, 4], pixels);
  const labels = idx([options.labels?.length ?? 3], options.labels ?? [9, 0, 4]);
  const suffix = options.gz ? ".gz" : "";
  const encode = options.gz ? gzip : (b: Uint8Array) => Promise.resolve(b);
  await Deno.writeFile(`${dir}/t10k-images-idx3-ubyte${suffix}`, await encode(images));
  await Deno.writeFile(`${dir}/t10k-labels-idx1-ubyte${suffix}`, await encode(labels));
  return { dir, pixels };
}

Deno.test("parseIdx reads dimensions big-endian and values row-major", () => {
  const values = Array.from({ length: 2 * 3 * 5 }, (_, i) => 255 - i);
  const { dims, data } = parseIdx(idx([2, 3, 5], values));
  assert.deepEqual(dims, [2, 3, 5]);
  assert.deepEqual([...data], values);
  const big = parseIdx(idx([300], new Uint8Array(300).fill(7)));
  assert.deepEqual(big.dims, [300]);
});

Deno.test("parseIdx rejects malformed headers and lengths with the file named", () => {
  const good = idx([2, 2], [1, 2, 3, 4]);
  const cases: [Uint8Array, string, RegExp][] = [
    [new Uint8Array([0, 0, 8]), "invalid_argument", /too short for an idx header/],
    [Uint8Array.of(1, ...good.subarray(1)), "invalid_argument", /not an idx file/],
    [idx([2, 2], [1, 2, 3, 4], 0x0d), "unsupported", /float32 are not supported/],
    [idx([2, 2], [1, 2, 3, 4], 0x42), "invalid_argument", /unknown idx value type 0x42/],
    [new Uint8Array([0, 0, 8, 0]), "invalid_argument", /0 dimensions/],
    [new Uint8Array([0, 0, 8, 3, 0, 0, 0, 1]), "invalid_argument", /truncated idx header/],
    [good.subarray(0, good.length - 1), "invalid_argument", /need 4 bytes.*has 3 \(truncated\)/],
    [Uint8Array.of(...good, 0), "invalid_argument", /has 5 \(trailing bytes\)/],
  ];
  for (const [bytes, code, pattern] of cases) {
    assert.throws(() => parseIdx(bytes, "x.idx"), rejectsWith(code, pattern));
    assert.throws(() => parseIdx(bytes, "x.idx"), /^EdgeVitError: x\.idx: /);
  }
});

Deno.test("maybeGunzip inflates gzip, passes other bytes through, and rejects corrupt gzip", async () => {
  const plain = idx([4], [1, 2, 3, 4]);
  assert.deepEqual(await maybeGunzip(await gzip(plain)), plain);
  assert.equal(await maybeGunzip(plain), plain);
  const broken = await gzip(plain);
  broken.fill(0xff, 10);
  await assert.rejects(
    maybeGunzip(broken, "a.gz"),
    rejectsWith("invalid_argument", /a\.gz: corrupt/),
  );
  const truncated = (await gzip(idx([1000], new Uint8Array(1000)))).subarray(0, 12);
  await assert.rejects(maybeGunzip(truncated, "b.gz"), rejectsWith("invalid_argument", /b\.gz/));
});

Deno.test("loadFashionMnist reads a split from gzipped and from plain idx files alike", async () => {
  for (const gz of [true, false]) {
    const { dir, pixels } = await writeSplit({ gz });
    try {
      const split = await loadFashionMnist("test", { dir });
      assert.equal(split.count, 3);
      assert.equal(split.height, 2);
      assert.equal(split.width, 4);
      assert.deepEqual([...split.images], pixels);
      assert.deepEqual([...split.labels], [9, 0, 4]);
      assert.ok(split.source.endsWith(gz ? ".gz" : "ubyte"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("loadFashionMnist rejects labels that disagree with the images", async () => {
  const bad = [
    { labels: [1, 2], pattern: /has 2 labels but .* has 3 images/ },
    { labels: [1, 10, 2], pattern: /label 10 at index 1 is not a class \(0–9\)/ },
    { images: idx([6, 4], new Uint8Array(24)), pattern: /must be \[count, height, width\]/ },
    { images: idx([0, 28, 28], []), labels: [], pattern: /holds no images/ },
  ];
  for (const { pattern, ...options } of bad) {
    const { dir } = await writeSplit(options);
    try {
      await assert.rejects(
        loadFashionMnist("test", { dir }),
        rejectsWith("invalid_argument", pattern),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("a missing dataset folder fails with how to install it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "edgevit-idx-" });
  try {
    await assert.rejects(
      loadFashionMnist("test", { dir }),
      rejectsWith("invalid_argument", /not installed.*apt-get install dataset-fashion-mnist/),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the installed test split is 10,000 28×28 images, 1,000 of each class", async () => {
  // Fails (does not skip) when Debian's dataset-fashion-mnist is not installed: CI installs it.
  const split = await loadFashionMnist("test", { dir: DEBIAN_FASHION_MNIST_DIR });
  assert.equal(split.count, 10_000);
  assert.equal(split.height, 28);
  assert.equal(split.width, 28);
  assert.equal(split.images.length, 10_000 * 28 * 28);
  const perClass = new Array(FASHION_MNIST_LABELS.length).fill(0);
  for (const label of split.labels) perClass[label]++;
  assert.deepEqual(perClass, new Array(10).fill(1000));
  let min = 255, max = 0;
  for (const v of split.images) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  assert.deepEqual([min, max], [0, 255]);
});
