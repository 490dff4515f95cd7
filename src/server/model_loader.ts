/**
 * Loads a model folder for serving. INTERIM: builds the architecture through the
 * registry on the reference backend with a simple preprocessing, until the engine's
 * `loadModel` lands; then this file becomes a thin adapter over it.
 *
 * @module
 */

import { ReferenceBackend } from "../backends/reference/reference_backend.ts";
import { EdgeVitError } from "../errors.ts";
import { decodeImage, initDecoders } from "../image/decode.ts";
import { resize } from "../image/resize.ts";
import { describeCheckpoint, parseConfigJson } from "../loaders/config.ts";
import { parseSafetensors } from "../loaders/safetensors.ts";
import { WeightStore } from "../loaders/weights.ts";
import { navitTargetSize } from "../models/navit.ts";
import { requireArchitecture } from "../models/registry.ts";
import type { ServedModel } from "./engine.ts";
import { servedModelFromArchitecture } from "./served_model.ts";

/** Options of {@link loadServedModel}. */
export interface LoadServedModelOptions {
  name: string;
  backend?: string;
  precision?: string;
}

/** Loads `location` (a model folder) and wraps it for the server. */
export async function loadServedModel(
  location: string,
  options: LoadServedModelOptions,
): Promise<ServedModel> {
  const base = location.replace(/\/+$/, "");
  const config = parseConfigJson(await Deno.readTextFile(`${base}/config.json`), base);
  const checkpoint = describeCheckpoint(config, `${base}/config.json`);
  const entry = requireArchitecture(checkpoint);
  const file = parseSafetensors(await Deno.readFile(`${base}/model.safetensors`), base);
  const weights = WeightStore.fromSafetensors(file.tensors.values(), base);
  const backend = new ReferenceBackend();
  const precision = options.precision === "int8" ? "int8" : "f32";
  const architecture = await entry.build({ checkpoint, weights, backend, precision });
  weights.assertAllUsed();

  const pre = (config.preprocess ?? {}) as Record<string, unknown>;
  const channels = architecture.channels as 1 | 3;
  const mean = (pre.mean as number[] | undefined) ?? new Array(channels).fill(0.5);
  const std = (pre.std as number[] | undefined) ?? new Array(channels).fill(0.5);
  const labels = config.labels as string[] | undefined;
  const kwargs = (config.kwargs ?? {}) as Record<string, unknown>;
  const imageSize = kwargs.image_size;
  const maxSide = Array.isArray(imageSize) ? imageSize as number[] : [
    Number(imageSize ?? 224),
    Number(imageSize ?? 224),
  ];

  return servedModelFromArchitecture({
    name: options.name,
    architecture,
    labels,
    describe: () => ({ library: checkpoint.library, architecture: checkpoint.architecture }),
    warmup: () => initDecoders(),
    async preprocess(bytes) {
      const decoded = await decodeImage(bytes, { channels });
      const target = architecture.inputSize ??
        navitTargetSize(decoded.height, decoded.width, {
          patchSize: architecture.patchSize,
          maxHeight: maxSide[0],
          maxWidth: maxSide[1],
        });
      const sized = resize(decoded, target.width, target.height, "bilinear");
      const plane = target.height * target.width;
      const data = new Float32Array(channels * plane); // [c, h, w]
      for (let c = 0; c < channels; c++) {
        for (let i = 0; i < plane; i++) {
          data[c * plane + i] = (sized.data[i * channels + c] / 255 - mean[c]) / std[c];
        }
      }
      if (data.some((v) => !Number.isFinite(v))) {
        throw new EdgeVitError("invalid_config", `${base}: preprocessing std must not be 0`);
      }
      return { data, height: target.height, width: target.width };
    },
  });
}
