/**
 * Architecture registry: which code builds a model from a checkpoint, keyed by the
 * library that wrote it and the architecture name it gives (see
 * {@link CheckpointInfo}). `loadModel` looks the checkpoint up here; tests run every
 * parity fixture whose architecture is registered.
 *
 * To add an architecture, append an {@link ArchitectureEntry} to {@link ARCHITECTURES}:
 *
 * ```ts
 * import type { ArchitectureEntry } from "./registry.ts";
 * import { vitFromVitPytorch } from "../loaders/vit_pytorch.ts";
 * import { VitModel } from "./vit.ts";
 * const entry: ArchitectureEntry = {
 *   library: "vit-pytorch",
 *   name: "MyViT",
 *   build: ({ checkpoint, weights, backend, precision }) => {
 *     const { config, weights: vit } = vitFromVitPytorch(checkpoint.config, weights);
 *     return VitModel.create(backend, config, vit, { precision });
 *   },
 * };
 * console.log(entry.name); // "MyViT"
 * ```
 *
 * `build` takes the tensors it needs from `weights` (a {@link WeightStore} that checks
 * shapes) and returns a {@link VisionArchitecture}; `loadModel` then checks that no
 * tensor was left over.
 *
 * @module
 */

import type { Backend, Precision } from "../backends/backend.ts";
import { EdgeVitError } from "../errors.ts";
import { type CheckpointInfo, type CheckpointLibrary, ConfigReader } from "../loaders/config.ts";
import { isTimmVitName, vitFromTimm } from "../loaders/timm.ts";
import { TRANSFORMERS_VIT_CLASSES, vitFromTransformers } from "../loaders/transformers.ts";
import { vitFromVitPytorch } from "../loaders/vit_pytorch.ts";
import type { WeightStore } from "../loaders/weights.ts";
import { type AtsSettings, buildAtsVit, withAts } from "./ats_vit.ts";
import { NaViT } from "./navit.ts";
import { buildPatchMergerVit } from "./patch_merger.ts";
import { simpleVitFromVitPytorch } from "./simple_vit.ts";
import type { VisionArchitecture } from "./types.ts";
import { VitModel } from "./vit.ts";

/** Everything a builder gets. */
export interface BuildContext {
  checkpoint: CheckpointInfo;
  /** The checkpoint's tensors; take them by name (shapes are checked). */
  weights: WeightStore;
  backend: Backend;
  precision: Precision;
  /**
   * Switches Adaptive Token Sampling on for a ViT-family model with a CLS token
   * (vit-pytorch `ViT`, Hugging Face, timm); applied by {@link buildArchitecture}.
   */
  ats?: AtsSettings;
}

/** One buildable architecture. */
export interface ArchitectureEntry {
  library: CheckpointLibrary;
  /** The name as the checkpoint writes it, or a pattern for a family of names (timm). */
  name: string | RegExp | ((architecture: string) => boolean);
  /** How to name a pattern entry in error messages (e.g. the timm name families). */
  description?: string;
  /** Builds the model on the backend. */
  build(context: BuildContext): VisionArchitecture | Promise<VisionArchitecture>;
}

/** The registered architectures; append entries here. */
export const ARCHITECTURES: ArchitectureEntry[] = [
  {
    library: "vit-pytorch",
    name: "ViT",
    build: ({ checkpoint, weights, backend, precision }) => {
      const { config, weights: vit } = vitFromVitPytorch(
        checkpoint.config,
        weights,
        checkpoint.source,
      );
      return VitModel.create(backend, config, vit, { precision, source: checkpoint.source });
    },
  },
  {
    library: "vit-pytorch",
    name: "SimpleViT",
    build: ({ checkpoint, weights, backend, precision }) => {
      const { config, weights: vit } = simpleVitFromVitPytorch(
        checkpoint.config,
        weights,
        checkpoint.source,
      );
      return VitModel.create(backend, config, vit, { precision, source: checkpoint.source });
    },
  },
  {
    library: "vit-pytorch",
    name: "NaViT",
    build: ({ checkpoint, weights, backend, precision }) =>
      NaViT.build(backend, vitPytorchKwargs(checkpoint), weights, {
        precision,
        source: checkpoint.source,
      }),
  },
  {
    library: "vit-pytorch",
    name: "ats_vit.ViT",
    build: ({ checkpoint, weights, backend, precision }) =>
      buildAtsVit(backend, vitPytorchKwargs(checkpoint), weights, {
        precision,
        source: checkpoint.source,
      }),
  },
  {
    library: "vit-pytorch",
    name: "vit_with_patch_merger.ViT",
    build: ({ checkpoint, weights, backend, precision }) =>
      buildPatchMergerVit(backend, vitPytorchKwargs(checkpoint), weights, {
        precision,
        source: checkpoint.source,
      }),
  },
  ...TRANSFORMERS_VIT_CLASSES.map((name): ArchitectureEntry => ({
    library: "transformers",
    name,
    build: ({ checkpoint, weights, backend, precision }) => {
      const { config, weights: vit } = vitFromTransformers(
        checkpoint.config,
        weights,
        checkpoint.source,
      );
      return VitModel.create(backend, config, vit, { precision, source: checkpoint.source });
    },
  })),
  {
    library: "timm",
    name: isTimmVitName,
    description: "vit_*, deit_*, deit3_* names such as vit_base_patch16_224",
    build: ({ checkpoint, weights, backend, precision }) => {
      const { config, weights: vit } = vitFromTimm(checkpoint.config, weights, checkpoint.source);
      return VitModel.create(backend, config, vit, { precision, source: checkpoint.source });
    },
  },
];

/** A vit-pytorch manifest's `kwargs` object (validated by the builders' readers). */
function vitPytorchKwargs(checkpoint: CheckpointInfo): Record<string, unknown> {
  return new ConfigReader(checkpoint.config, checkpoint.source).obj("kwargs") ?? {};
}

/**
 * Builds an entry's model and applies the build options that work across architectures
 * (`ats`: ATS on any ViT with a CLS token, see `ats_vit.ts`'s `withAts`).
 *
 * @throws {EdgeVitError} `unsupported` when `ats` is asked of a model that cannot prune
 *
 * @example
 * ```ts
 * import { buildArchitecture, findArchitecture } from "./registry.ts";
 * console.log(typeof buildArchitecture, findArchitecture("vit-pytorch", "ViT") !== undefined);
 * ```
 */
export async function buildArchitecture(
  entry: ArchitectureEntry,
  context: BuildContext,
): Promise<VisionArchitecture> {
  const architecture = await entry.build(context);
  if (!context.ats) return architecture;
  try {
    return withAts(architecture, context.ats);
  } catch (error) {
    architecture.dispose();
    throw error;
  }
}

function matches(entry: ArchitectureEntry, library: string, architecture: string): boolean {
  if (entry.library !== library) return false;
  if (typeof entry.name === "string") return entry.name === architecture;
  if (entry.name instanceof RegExp) return entry.name.test(architecture);
  return entry.name(architecture);
}

/**
 * The entry that builds `architecture` of `library`, or undefined.
 *
 * @example
 * ```ts
 * import { findArchitecture } from "./registry.ts";
 * console.log(findArchitecture("timm", "deit_small_patch16_224") !== undefined); // true
 * ```
 */
export function findArchitecture(
  library: CheckpointLibrary | string,
  architecture: string,
): ArchitectureEntry | undefined {
  return ARCHITECTURES.find((entry) => matches(entry, library, architecture));
}

/**
 * Like {@link findArchitecture} but throws a clear error for unknown names.
 *
 * @throws {EdgeVitError} `unsupported`
 */
export function requireArchitecture(checkpoint: CheckpointInfo): ArchitectureEntry {
  const entry = findArchitecture(checkpoint.library, checkpoint.architecture);
  if (!entry) {
    const known = ARCHITECTURES.filter((e) => e.library === checkpoint.library)
      .map((e) => typeof e.name === "string" ? e.name : e.description ?? String(e.name))
      .join(", ");
    throw new EdgeVitError(
      "unsupported",
      `${checkpoint.source}: ${checkpoint.library} architecture "${checkpoint.architecture}" is not supported${
        known ? ` (known: ${known})` : ""
      }`,
    );
  }
  return entry;
}
