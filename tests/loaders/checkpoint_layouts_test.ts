/**
 * timm and Hugging Face layouts beyond the parity fixtures: names that imply dims,
 * distilled DeiT heads, layer scale, patch-only positions, pooling variants. Checkpoints
 * are built in memory with random tensors under each library's own names.
 */

import assert from "node:assert/strict";
import { ReferenceBackend } from "../../src/backends/reference/reference_backend.ts";
import { EdgeVitError } from "../../src/errors.ts";
import { parseTimmName, vitFromTimm } from "../../src/loaders/timm.ts";
import { vitFromTransformers } from "../../src/loaders/transformers.ts";
import type { HostTensor } from "../../src/loaders/weights.ts";
import { WeightStore } from "../../src/loaders/weights.ts";
import { seededRandom, VitModel } from "../../src/models/vit.ts";

type Tensors = Record<string, HostTensor>;

function randomTensor(shape: number[], random: () => number, around = 0): HostTensor {
  const size = shape.reduce((a, b) => a * b, 1);
  return {
    shape,
    data: Float32Array.from({ length: size }, () => around + (random() - 0.5) * 0.5),
  };
}

interface Dims {
  dim: number;
  depth: number;
  mlp: number;
  classes: number;
  channels: number;
  patch: number;
  patches: number;
}

/** timm VisionTransformer / VisionTransformerDistilled tensors. */
function timmTensors(d: Dims, options: {
  prefix: number;
  positionRows: number;
  distilled?: boolean;
  layerScale?: boolean;
  fcNorm?: boolean;
  seed?: number;
}): Tensors {
  const random = seededRandom(options.seed ?? 1);
  const t: Tensors = {
    "patch_embed.proj.weight": randomTensor([d.dim, d.channels, d.patch, d.patch], random),
    "patch_embed.proj.bias": randomTensor([d.dim], random),
    pos_embed: randomTensor([1, options.positionRows, d.dim], random),
    [options.fcNorm ? "fc_norm.weight" : "norm.weight"]: randomTensor([d.dim], random, 1),
    [options.fcNorm ? "fc_norm.bias" : "norm.bias"]: randomTensor([d.dim], random),
    "head.weight": randomTensor([d.classes, d.dim], random),
    "head.bias": randomTensor([d.classes], random),
  };
  if (options.prefix > 0) t.cls_token = randomTensor([1, 1, d.dim], random);
  if (options.distilled) {
    t.dist_token = randomTensor([1, 1, d.dim], random);
    t["head_dist.weight"] = randomTensor([d.classes, d.dim], random);
    t["head_dist.bias"] = randomTensor([d.classes], random);
  }
  for (let i = 0; i < d.depth; i++) {
    const b = `blocks.${i}`;
    t[`${b}.norm1.weight`] = randomTensor([d.dim], random, 1);
    t[`${b}.norm1.bias`] = randomTensor([d.dim], random);
    t[`${b}.attn.qkv.weight`] = randomTensor([3 * d.dim, d.dim], random);
    t[`${b}.attn.qkv.bias`] = randomTensor([3 * d.dim], random);
    t[`${b}.attn.proj.weight`] = randomTensor([d.dim, d.dim], random);
    t[`${b}.attn.proj.bias`] = randomTensor([d.dim], random);
    t[`${b}.norm2.weight`] = randomTensor([d.dim], random, 1);
    t[`${b}.norm2.bias`] = randomTensor([d.dim], random);
    t[`${b}.mlp.fc1.weight`] = randomTensor([d.mlp, d.dim], random);
    t[`${b}.mlp.fc1.bias`] = randomTensor([d.mlp], random);
    t[`${b}.mlp.fc2.weight`] = randomTensor([d.dim, d.mlp], random);
    t[`${b}.mlp.fc2.bias`] = randomTensor([d.dim], random);
    if (options.layerScale) {
      t[`${b}.ls1.gamma`] = randomTensor([d.dim], random, 1);
      t[`${b}.ls2.gamma`] = randomTensor([d.dim], random, 1);
    }
  }
  return t;
}

const SMALL: Dims = { dim: 16, depth: 2, mlp: 32, classes: 4, channels: 3, patch: 4, patches: 4 };
const SMALL_ARGS = {
  img_size: 8,
  patch_size: 4,
  embed_dim: 16,
  depth: 2,
  num_heads: 2,
  mlp_ratio: 2,
};

async function logitsOf(
  built: ReturnType<typeof vitFromTimm>,
  pixels: Float32Array,
  size = 8,
): Promise<Float32Array> {
  const model = VitModel.create(new ReferenceBackend(), built.config, built.weights);
  const { logits } = await model.forward(pixels, [2, 3, size, size]);
  model.dispose();
  return logits;
}

const PIXELS = Float32Array.from({ length: 2 * 3 * 8 * 8 }, (_, i) => Math.sin(i * 0.37));

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

Deno.test("timm model names give family, width, distillation, patch and image size", () => {
  assert.deepEqual(parseTimmName("deit_tiny_distilled_patch16_224.fb_in1k"), {
    family: "deit",
    width: "tiny",
    distilled: true,
    patch: 16,
    imageSize: 224,
  });
  assert.deepEqual(parseTimmName("vit_base_patch32_384"), {
    family: "vit",
    width: "base",
    distilled: false,
    patch: 32,
    imageSize: 384,
  });
  assert.equal(parseTimmName("deit3_small_patch16_224")?.family, "deit3");
  for (
    const name of ["vit_base_patch16_clip_224", "vit_gigantic_patch14_224", "resnet50", "vit_base"]
  ) {
    assert.equal(parseTimmName(name), null, name);
  }
});

Deno.test("dims a timm name implies are used when model_args leaves them out", () => {
  // deit_tiny_distilled_patch16_224: dim 192, depth 12, heads 3, mlp 768, 196 patches
  const d: Dims = {
    dim: 192,
    depth: 12,
    mlp: 768,
    classes: 3,
    channels: 3,
    patch: 16,
    patches: 196,
  };
  const tensors = timmTensors(d, { prefix: 2, positionRows: 198, distilled: true });
  const { config } = vitFromTimm(
    { architecture: "deit_tiny_distilled_patch16_224", num_classes: 3 },
    WeightStore.fromHost(tensors),
  );
  assert.equal(config.dim, 192);
  assert.equal(config.depth, 12);
  assert.equal(config.heads, 3);
  assert.equal(config.headDim, 64);
  assert.equal(config.mlpDim, 768);
  assert.equal(config.imageHeight, 224);
  assert.equal(config.patchHeight, 16);
  assert.equal(config.head, "distilled");
  assert.equal(config.layerNormEps, 1e-6);
});

Deno.test("a timm layer scale equals the same weights with the scale folded in", async () => {
  const scaled = timmTensors(SMALL, { prefix: 1, positionRows: 5, layerScale: true, seed: 3 });
  const plain: Tensors = {};
  for (const [name, tensor] of Object.entries(scaled)) {
    if (name.endsWith(".gamma")) continue;
    const gamma = name.match(/^blocks\.(\d+)\.(attn\.proj|mlp\.fc2)\.(weight|bias)$/);
    if (!gamma) {
      plain[name] = tensor;
      continue;
    }
    const scale =
      scaled[`blocks.${gamma[1]}.${gamma[2] === "attn.proj" ? "ls1" : "ls2"}.gamma`].data;
    const columns = tensor.shape.length === 2 ? tensor.shape[1] : 1;
    plain[name] = {
      shape: tensor.shape,
      data: tensor.data.map((value, i) => value * scale[Math.floor(i / columns)]),
    };
  }
  const config = { architecture: "vit_small_patch16_224", num_classes: 4, model_args: SMALL_ARGS };
  const withScale = vitFromTimm(
    { ...config, model_args: { ...SMALL_ARGS, init_values: 1e-5 } },
    WeightStore.fromHost(scaled),
  );
  const folded = vitFromTimm(config, WeightStore.fromHost(plain));
  assert.ok(maxAbsDiff(await logitsOf(withScale, PIXELS), await logitsOf(folded, PIXELS)) < 1e-5);
});

Deno.test("timm positions for patches only (no_embed_class) leave the class token unmoved", async () => {
  const patchOnly = timmTensors(SMALL, { prefix: 1, positionRows: 4, seed: 5 });
  const withClass = { ...patchOnly };
  const rows = new Float32Array(5 * 16);
  rows.set(patchOnly.pos_embed.data, 16); // the class token's row stays zero
  withClass.pos_embed = { shape: [1, 5, 16], data: rows };
  const config = { architecture: "vit_small_patch16_224", num_classes: 4, model_args: SMALL_ARGS };
  const a = vitFromTimm(
    { ...config, model_args: { ...SMALL_ARGS, no_embed_class: true } },
    WeightStore.fromHost(patchOnly),
  );
  const b = vitFromTimm(config, WeightStore.fromHost(withClass));
  assert.ok(maxAbsDiff(await logitsOf(a, PIXELS), await logitsOf(b, PIXELS)) < 1e-6);
});

Deno.test("timm avg pooling uses fc_norm on the pooled patches, and class_token=False works", async () => {
  const tensors = timmTensors(SMALL, { prefix: 1, positionRows: 5, fcNorm: true, seed: 7 });
  const built = vitFromTimm(
    {
      architecture: "vit_small_patch16_224",
      num_classes: 4,
      model_args: { ...SMALL_ARGS, global_pool: "avg" },
    },
    WeightStore.fromHost(tensors),
  );
  assert.equal(built.config.pool, "mean");
  assert.equal(built.config.finalNorm, "pooled");
  assert.equal((await logitsOf(built, PIXELS)).length, 8);
  const noClass = timmTensors(SMALL, { prefix: 0, positionRows: 4, fcNorm: true, seed: 7 });
  const noClassBuilt = vitFromTimm(
    {
      architecture: "vit_small_patch16_224",
      num_classes: 4,
      model_args: { ...SMALL_ARGS, class_token: false, global_pool: "avg" },
    },
    WeightStore.fromHost(noClass),
  );
  assert.equal(noClassBuilt.config.classToken, false);
  assert.equal((await logitsOf(noClassBuilt, PIXELS)).length, 8);
});

Deno.test("timm configs the loader cannot run are refused with the reason", () => {
  const tensors = timmTensors(SMALL, { prefix: 1, positionRows: 5 });
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ architecture: "vit_base_patch16_clip_224" }, /not supported/],
    [
      { architecture: "vit_small_patch16_224", model_args: { ...SMALL_ARGS, qk_norm: true } },
      /qk_norm/,
    ],
    [
      { architecture: "vit_small_patch16_224", model_args: { ...SMALL_ARGS, global_pool: "map" } },
      /map/,
    ],
    [
      { architecture: "vit_small_patch16_224", model_args: { ...SMALL_ARGS, reg_tokens: 4 } },
      /reg_tokens/,
    ],
  ];
  for (const [config, pattern] of cases) {
    assert.throws(
      () => vitFromTimm({ num_classes: 4, ...config }, WeightStore.fromHost(tensors)),
      (error: unknown) =>
        error instanceof EdgeVitError && error.code === "unsupported" &&
        pattern.test(error.message),
      JSON.stringify(config),
    );
  }
});

/** HF DeiT tensors (query/key/value separate, `deit.` prefix). */
function hfDeitTensors(d: Dims, teacher: boolean, seed: number): Tensors {
  const random = seededRandom(seed);
  const p = "deit";
  const t: Tensors = {
    [`${p}.embeddings.cls_token`]: randomTensor([1, 1, d.dim], random),
    [`${p}.embeddings.distillation_token`]: randomTensor([1, 1, d.dim], random),
    [`${p}.embeddings.position_embeddings`]: randomTensor([1, d.patches + 2, d.dim], random),
    [`${p}.embeddings.patch_embeddings.projection.weight`]: randomTensor(
      [d.dim, d.channels, d.patch, d.patch],
      random,
    ),
    [`${p}.embeddings.patch_embeddings.projection.bias`]: randomTensor([d.dim], random),
    [`${p}.layernorm.weight`]: randomTensor([d.dim], random, 1),
    [`${p}.layernorm.bias`]: randomTensor([d.dim], random),
  };
  const heads = teacher ? ["cls_classifier", "distillation_classifier"] : ["classifier"];
  for (const head of heads) {
    t[`${head}.weight`] = randomTensor([d.classes, d.dim], random);
    t[`${head}.bias`] = randomTensor([d.classes], random);
  }
  for (let i = 0; i < d.depth; i++) {
    const l = `${p}.encoder.layer.${i}`;
    for (const name of ["query", "key", "value"]) {
      t[`${l}.attention.attention.${name}.weight`] = randomTensor([d.dim, d.dim], random);
      t[`${l}.attention.attention.${name}.bias`] = randomTensor([d.dim], random);
    }
    t[`${l}.attention.output.dense.weight`] = randomTensor([d.dim, d.dim], random);
    t[`${l}.attention.output.dense.bias`] = randomTensor([d.dim], random);
    t[`${l}.layernorm_before.weight`] = randomTensor([d.dim], random, 1);
    t[`${l}.layernorm_before.bias`] = randomTensor([d.dim], random);
    t[`${l}.layernorm_after.weight`] = randomTensor([d.dim], random, 1);
    t[`${l}.layernorm_after.bias`] = randomTensor([d.dim], random);
    t[`${l}.intermediate.dense.weight`] = randomTensor([d.mlp, d.dim], random);
    t[`${l}.intermediate.dense.bias`] = randomTensor([d.mlp], random);
    t[`${l}.output.dense.weight`] = randomTensor([d.dim, d.mlp], random);
    t[`${l}.output.dense.bias`] = randomTensor([d.dim], random);
  }
  return t;
}

const HF_CONFIG = {
  model_type: "deit",
  hidden_size: 16,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  intermediate_size: 32,
  image_size: 8,
  patch_size: 4,
  layer_norm_eps: 1e-12,
  id2label: { "0": "a", "1": "b", "2": "c", "3": "d" },
};

Deno.test("HF DeiT with teacher averages the CLS head and the distillation head", async () => {
  const teacher = hfDeitTensors(SMALL, true, 11);
  const config = { ...HF_CONFIG, architectures: ["DeiTForImageClassificationWithTeacher"] };
  const both = await logitsOf(vitFromTransformers(config, WeightStore.fromHost(teacher)), PIXELS);
  // The same weights read by DeiTForImageClassification with either head.
  const single = { ...HF_CONFIG, architectures: ["DeiTForImageClassification"] };
  const withHead = (head: string, swapTokens: boolean): Tensors => {
    const t = { ...teacher };
    delete t["cls_classifier.weight"];
    delete t["cls_classifier.bias"];
    delete t["distillation_classifier.weight"];
    delete t["distillation_classifier.bias"];
    t["classifier.weight"] = teacher[`${head}.weight`];
    t["classifier.bias"] = teacher[`${head}.bias`];
    if (swapTokens) {
      // attention ignores token order: swapping the two prefix tokens (and their
      // positions) puts the distillation token where the classifier reads
      t["deit.embeddings.cls_token"] = teacher["deit.embeddings.distillation_token"];
      t["deit.embeddings.distillation_token"] = teacher["deit.embeddings.cls_token"];
      const positions = new Float32Array(teacher["deit.embeddings.position_embeddings"].data);
      positions.set(teacher["deit.embeddings.position_embeddings"].data.subarray(16, 32), 0);
      positions.set(teacher["deit.embeddings.position_embeddings"].data.subarray(0, 16), 16);
      t["deit.embeddings.position_embeddings"] = { shape: [1, 6, 16], data: positions };
    }
    return t;
  };
  const cls = await logitsOf(
    vitFromTransformers(single, WeightStore.fromHost(withHead("cls_classifier", false))),
    PIXELS,
  );
  const dist = await logitsOf(
    vitFromTransformers(single, WeightStore.fromHost(withHead("distillation_classifier", true))),
    PIXELS,
  );
  const average = cls.map((value, i) => (value + dist[i]) / 2);
  assert.ok(maxAbsDiff(both, average) < 1e-5);
  assert.ok(maxAbsDiff(cls, dist) > 1e-3);
});

Deno.test("HF configs with another activation or class are refused", () => {
  const tensors = WeightStore.fromHost(hfDeitTensors(SMALL, false, 1));
  assert.throws(
    () =>
      vitFromTransformers(
        { ...HF_CONFIG, architectures: ["DeiTForImageClassification"], hidden_act: "gelu_new" },
        tensors,
      ),
    (error: unknown) => error instanceof EdgeVitError && /gelu_new/.test(error.message),
  );
  assert.throws(
    () => vitFromTransformers({ ...HF_CONFIG, architectures: ["DeiTModel"] }, tensors),
    (error: unknown) => error instanceof EdgeVitError && error.code === "unsupported",
  );
  assert.throws(
    () =>
      vitFromTransformers(
        { ...HF_CONFIG, architectures: ["DeiTForImageClassification"], hidden_size: 15 },
        tensors,
      ),
    (error: unknown) => error instanceof EdgeVitError && error.code === "invalid_config",
  );
});
