/**
 * Compute pipelines, created once per (kernel, specialization) and reused: after the
 * first forward pass of a model no pipeline is ever created again, which the tests
 * check through {@link PipelineCache.created}.
 *
 * @example
 * ```ts
 * import { PipelineCache } from "./pipeline_cache.ts";
 * const adapter = await navigator.gpu.requestAdapter();
 * if (adapter) {
 *   const cache = new PipelineCache(await adapter.requestDevice());
 *   cache.get("add_f32");
 *   cache.get("add_f32");
 *   console.log(cache.created); // 1
 * }
 * ```
 *
 * @module
 */

import { type ShaderName, SHADERS } from "./shaders.generated.ts";

/**
 * Rewrites `const NAME: u32 = <n>u;` lines of a kernel, for sizes that WGSL needs as
 * compile-time constants (private array lengths). Throws if a constant is missing, so a
 * renamed constant cannot silently keep its default.
 */
export function specializeShader(
  code: string,
  constants: Readonly<Record<string, number>>,
): string {
  let out = code;
  for (const [name, value] of Object.entries(constants)) {
    if (!Number.isInteger(value) || value < 1) throw new Error(`bad ${name} = ${value}`);
    const pattern = new RegExp(`^const ${name}: u32 = \\d+u;`, "m");
    if (!pattern.test(out)) throw new Error(`shader has no constant ${name} to specialize`);
    out = out.replace(pattern, `const ${name}: u32 = ${value}u;`);
  }
  return out;
}

/** The cache; see the module documentation. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  /** Pipelines created so far (each cache miss). */
  created = 0;

  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /** The pipeline of kernel `name` with its `const` sizes set to `constants`. */
  get(name: ShaderName, constants: Readonly<Record<string, number>> = {}): GPUComputePipeline {
    const key = `${name}(${Object.entries(constants).map(([k, v]) => `${k}=${v}`).join(",")})`;
    let pipeline = this.#pipelines.get(key);
    if (!pipeline) {
      const code = specializeShader(SHADERS[name], constants);
      const module = this.#device.createShaderModule({ label: key, code });
      pipeline = this.#device.createComputePipeline({
        label: key,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
      this.#pipelines.set(key, pipeline);
      this.created++;
    }
    return pipeline;
  }
}
