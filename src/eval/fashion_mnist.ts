/**
 * Reads the Fashion-MNIST dataset from its idx files (the format of the original MNIST
 * distribution, as Debian's `dataset-fashion-mnist` installs it under
 * `/usr/share/datasets/fashion-mnist/`, gzipped). Every malformed file ends in an
 * {@link EdgeVitError} that names the file and says what is wrong with it.
 *
 * idx layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type the
 * dataset uses), a dimension count, one big-endian uint32 per dimension, then the values
 * row-major. Files that start with the gzip magic are inflated with DecompressionStream.
 *
 * @module
 */

import { EdgeVitError } from "../errors.ts";

/** Where Debian's `dataset-fashion-mnist` package puts the files. */
export const DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist";

/** Environment variable that points the reader at another folder with the same files. */
export const FASHION_MNIST_ENV = "EDGEVIT_FASHION_MNIST";

/** Class names of Fashion-MNIST, index = label. */
export const FASHION_MNIST_LABELS: readonly string[] = Object.freeze([
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
]);

/** A decoded idx array of unsigned bytes. */
export interface IdxArray {
  /** Dimensions, outermost first (`[10000, 28, 28]` for the test images). */
  dims: number[];
  /** Values, row-major; `data.length` is the product of `dims`. */
  data: Uint8Array;
}

/** One split of the dataset. */
export interface FashionMnistSplit {
  /** `[count, height, width]` grayscale uint8 (a light garment on a black background). */
  images: Uint8Array;
  /** `[count]` class indices 0–9. */
  labels: Uint8Array;
  count: number;
  height: number;
  width: number;
  /** The image file read, for messages. */
  source: string;
}

const IDX_TYPES: Record<number, string> = {
  0x08: "unsigned byte",
  0x09: "signed byte",
  0x0b: "int16",
  0x0c: "int32",
  0x0d: "float32",
  0x0e: "float64",
};

/**
 * Decodes an idx file's bytes (already inflated).
 *
 * @param bytes the whole file
 * @param source the file's name, for error messages
 * @throws {EdgeVitError} `invalid_argument` for a bad magic, header or length;
 *   `unsupported` for idx types other than unsigned byte
 *
 * @example
 * ```ts
 * import { parseIdx } from "./fashion_mnist.ts";
 * const file = new Uint8Array([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]);
 * const { dims, data } = parseIdx(file);
 * console.log(dims, data[5]); // [2, 3] 6
 * ```
 */
export function parseIdx(bytes: Uint8Array, source = "idx data"): IdxArray {
  if (bytes.length < 4) {
    throw new EdgeVitError(
      "invalid_argument",
      `${source}: ${bytes.length} bytes is too short for an idx header (4 bytes at least)`,
    );
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw new EdgeVitError(
      "invalid_argument",
      `${source}: not an idx file (the first two bytes must be 0, got ${bytes[0]}, ${bytes[1]})`,
    );
  }
  const type = bytes[2];
  if (type !== 0x08) {
    const name = IDX_TYPES[type];
    throw new EdgeVitError(
      name ? "unsupported" : "invalid_argument",
      name
        ? `${source}: idx values of type ${name} are not supported (Fashion-MNIST uses unsigned bytes)`
        : `${source}: unknown idx value type 0x${type.toString(16).padStart(2, "0")}`,
    );
  }
  const rank = bytes[3];
  if (rank === 0) {
    throw new EdgeVitError("invalid_argument", `${source}: idx header declares 0 dimensions`);
  }
  const headerLength = 4 + 4 * rank;
  if (bytes.length < headerLength) {
    throw new EdgeVitError(
      "invalid_argument",
      `${source}: truncated idx header (${rank} dimensions need ${headerLength} bytes, ` +
        `the file has ${bytes.length})`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims: number[] = [];
  let count = 1;
  for (let i = 0; i < rank; i++) {
    const dim = view.getUint32(4 + 4 * i, false);
    dims.push(dim);
    count *= dim;
  }
  const body = bytes.length - headerLength;
  if (body !== count) {
    throw new EdgeVitError(
      "invalid_argument",
      `${source}: idx dimensions [${dims.join(", ")}] need ${count} bytes of values, ` +
        `the file has ${body} (${body < count ? "truncated" : "trailing bytes"})`,
    );
  }
  return { dims, data: bytes.subarray(headerLength) };
}

/**
 * Inflates gzip bytes; other bytes are returned as they are.
 *
 * @throws {EdgeVitError} `invalid_argument` when the gzip stream is corrupt or truncated
 */
export async function maybeGunzip(bytes: Uint8Array, source = "data"): Promise<Uint8Array> {
  if (bytes.length < 2 || bytes[0] !== 0x1f || bytes[1] !== 0x8b) return bytes;
  try {
    const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
      .pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (error) {
    throw new EdgeVitError(
      "invalid_argument",
      `${source}: corrupt or truncated gzip data (${(error as Error).message})`,
      { cause: error },
    );
  }
}

/**
 * Reads and decodes one idx file, gzipped or not.
 *
 * @throws {EdgeVitError} `invalid_argument` when the file is missing or malformed
 */
export async function readIdxFile(path: string): Promise<IdxArray> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new EdgeVitError(
      "invalid_argument",
      `${path}: cannot be read (${(error as Error).message})`,
      { cause: error },
    );
  }
  return parseIdx(await maybeGunzip(bytes, path), path);
}

/** Options of {@link loadFashionMnist}. */
export interface LoadFashionMnistOptions {
  /**
   * Folder with `{t10k,train}-{images-idx3,labels-idx1}-ubyte[.gz]`. Default: the
   * `EDGEVIT_FASHION_MNIST` environment variable, else Debian's folder.
   */
  dir?: string;
}

/** The folder {@link loadFashionMnist} reads by default. */
export function defaultFashionMnistDir(): string {
  let fromEnv: string | undefined;
  try {
    fromEnv = Deno.env.get(FASHION_MNIST_ENV);
  } catch {
    // Without --allow-env the Debian folder is the only default.
  }
  return fromEnv || DEBIAN_FASHION_MNIST_DIR;
}

/**
 * Loads a split of Fashion-MNIST: `"test"` is the official 10,000-image test split
 * (`t10k-*`), `"train"` the 60,000 training images.
 *
 * @throws {EdgeVitError} `invalid_argument` when the files are missing (with how to
 *   install them) or malformed, or when images and labels disagree
 *
 * @example
 * ```ts ignore
 * import { loadFashionMnist } from "./fashion_mnist.ts";
 * const test = await loadFashionMnist("test");
 * console.log(test.count, test.height, test.width); // 10000 28 28
 * ```
 */
export async function loadFashionMnist(
  split: "test" | "train",
  options: LoadFashionMnistOptions = {},
): Promise<FashionMnistSplit> {
  if (split !== "test" && split !== "train") {
    throw new EdgeVitError("invalid_argument", `split must be "test" or "train", got ${split}`);
  }
  const dir = (options.dir ?? defaultFashionMnistDir()).replace(/\/+$/, "") || "/";
  const prefix = split === "test" ? "t10k" : "train";
  const imagesPath = await findFile(dir, `${prefix}-images-idx3-ubyte`);
  const labelsPath = await findFile(dir, `${prefix}-labels-idx1-ubyte`);
  const images = await readIdxFile(imagesPath);
  const labels = await readIdxFile(labelsPath);
  if (images.dims.length !== 3) {
    throw new EdgeVitError(
      "invalid_argument",
      `${imagesPath}: images must be [count, height, width], got [${images.dims.join(", ")}]`,
    );
  }
  if (labels.dims.length !== 1) {
    throw new EdgeVitError(
      "invalid_argument",
      `${labelsPath}: labels must be one dimension, got [${labels.dims.join(", ")}]`,
    );
  }
  const [count, height, width] = images.dims;
  if (count === 0 || height === 0 || width === 0) {
    throw new EdgeVitError("invalid_argument", `${imagesPath}: holds no images`);
  }
  if (labels.dims[0] !== count) {
    throw new EdgeVitError(
      "invalid_argument",
      `${labelsPath} has ${labels.dims[0]} labels but ${imagesPath} has ${count} images`,
    );
  }
  const classes = FASHION_MNIST_LABELS.length;
  const bad = labels.data.findIndex((label) => label >= classes);
  if (bad >= 0) {
    throw new EdgeVitError(
      "invalid_argument",
      `${labelsPath}: label ${labels.data[bad]} at index ${bad} is not a class (0–${classes - 1})`,
    );
  }
  return {
    images: images.data,
    labels: labels.data,
    count,
    height,
    width,
    source: imagesPath,
  };
}

async function findFile(dir: string, stem: string): Promise<string> {
  const candidates = [`${dir}/${stem}.gz`, `${dir}/${stem}`];
  for (const path of candidates) {
    try {
      if ((await Deno.stat(path)).isFile) return path;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw new EdgeVitError(
          "invalid_argument",
          `${path}: cannot be read (${(error as Error).message})`,
          { cause: error },
        );
      }
    }
  }
  throw new EdgeVitError(
    "invalid_argument",
    `Fashion-MNIST is not installed: neither ${candidates.join(" nor ")} exists. ` +
      `Install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), ` +
      `or point ${FASHION_MNIST_ENV} (or --data) at a folder with the idx files.`,
  );
}
