/**
 * models/convert/vit_pytorch_to_edgevit.py, end to end: a vit-pytorch state dict saved
 * with torch.save goes through the converter's command line, and the folder it writes
 * loads in edgevit and gives the parity fixture's PyTorch logits.
 */

import assert from "node:assert/strict";
import { parseSafetensors, toFloat32 } from "../src/loaders/safetensors.ts";
import { loadModel } from "../src/model.ts";

const PARITY = new URL("../../shared/fixtures/parity/", import.meta.url);
const CONVERTER = new URL("../models/convert/vit_pytorch_to_edgevit.py", import.meta.url).pathname;

/** Debian's python3 carries torch; a pyenv shim earlier on PATH may not. */
const PYTHON = (() => {
  try {
    Deno.statSync("/usr/bin/python3");
    return "/usr/bin/python3";
  } catch {
    return "python3";
  }
})();

function python(args: string[]): { code: number; stdout: string; stderr: string } {
  const out = new Deno.Command(PYTHON, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { PYTHONDONTWRITEBYTECODE: "1" }, // no __pycache__ beside the converter
  }).outputSync();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

function torchAvailable(): boolean {
  try {
    return python(["-c", "import torch, numpy"]).code === 0;
  } catch {
    return false;
  }
}

/** Saves a fixture's weights as a plain torch state dict (.pt), as a vit-pytorch user has it. */
const SAVE_STATE_DICT = `
import json, struct, sys
import numpy as np, torch
src, dst, wrap = sys.argv[1], sys.argv[2], sys.argv[3]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
state = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    a, b = info["data_offsets"]
    array = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"])
    state[name] = torch.from_numpy(array.copy())
if wrap == "checkpoint":
    state = {"epoch": 3, "model_state_dict": {"module." + k: v for k, v in state.items()}}
torch.save(state, dst)
`;

const HAS_TORCH = torchAvailable();
if (!HAS_TORCH) console.log("convert_test: python3 with torch is missing; converter tests ignored");

for (const name of ["vitpytorch-vit-cls"]) {
  Deno.test({
    name: `the converter turns a ${name} state dict into a folder edgevit runs exactly`,
    ignore: !HAS_TORCH,
    async fn() {
      const dir = await Deno.makeTempDir({ prefix: "edgevit-convert-" });
      try {
        const fixture = new URL(`${name}/`, PARITY);
        const manifest = JSON.parse(await Deno.readTextFile(new URL("config.json", fixture)));
        const wrap = name.endsWith("cls") ? "checkpoint" : "plain";
        const saved = python([
          "-c",
          SAVE_STATE_DICT,
          new URL("model.safetensors", fixture).pathname,
          `${dir}/weights.pt`,
          wrap,
        ]);
        assert.equal(saved.code, 0, saved.stderr);
        await Deno.writeTextFile(
          `${dir}/labels.txt`,
          Array.from({ length: 10 }, (_, i) => `thing ${i}`).join("\n"),
        );
        const converted = python([
          CONVERTER,
          `${dir}/weights.pt`,
          `${dir}/out`,
          "--architecture",
          manifest.architecture,
          "--kwargs",
          JSON.stringify(manifest.kwargs),
          "--labels",
          `${dir}/labels.txt`,
          "--mean",
          "0.5",
          "--std",
          "0.25",
        ]);
        assert.equal(converted.code, 0, converted.stderr);
        const inputs = parseSafetensors(
          await Deno.readFile(new URL("inputs.safetensors", fixture)),
        );
        const expected = toFloat32(
          parseSafetensors(await Deno.readFile(new URL("expected.safetensors", fixture))).tensors
            .get("logits")!,
        );
        const input = inputs.tensors.get("pixel_values")!;
        const model = await loadModel(`${dir}/out`, { backend: "reference" });
        try {
          assert.equal(model.labels[3], "thing 3");
          assert.equal(model.config.preprocess.kind, "fixed");
          if (model.config.preprocess.kind === "fixed") {
            assert.deepEqual(model.config.preprocess.config.std, [0.25, 0.25, 0.25]);
          }
          const logits = await model.forward(toFloat32(input), input.shape);
          let max = 0;
          for (let i = 0; i < logits.length; i++) {
            max = Math.max(max, Math.abs(logits[i] - expected[i]));
          }
          assert.ok(max < 1e-4, `max |Δ| ${max}`);
        } finally {
          model.close();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name:
    "the converter writes bfloat16 on request and refuses kwargs that disagree with the tensors",
  ignore: !HAS_TORCH,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "edgevit-convert-" });
    try {
      const fixture = new URL("vitpytorch-vit-mean/", PARITY);
      const manifest = JSON.parse(await Deno.readTextFile(new URL("config.json", fixture)));
      const saved = python([
        "-c",
        SAVE_STATE_DICT,
        new URL("model.safetensors", fixture).pathname,
        `${dir}/weights.pt`,
        "plain",
      ]);
      assert.equal(saved.code, 0, saved.stderr);
      const convert = (kwargs: unknown, extra: string[] = []) =>
        python([
          CONVERTER,
          `${dir}/weights.pt`,
          `${dir}/out`,
          "--architecture",
          "ViT",
          "--kwargs",
          JSON.stringify(kwargs),
          ...extra,
        ]);
      const bf16 = convert(manifest.kwargs, ["--dtype", "bf16"]);
      assert.equal(bf16.code, 0, bf16.stderr);
      const file = parseSafetensors(await Deno.readFile(`${dir}/out/model.safetensors`));
      assert.ok([...file.tensors.values()].every((entry) => entry.dtype === "BF16"));
      const model = await loadModel(`${dir}/out`, { backend: "reference" });
      assert.equal(model.numClasses, 10);
      model.close();
      const wrongDepth = convert({ ...manifest.kwargs, depth: 3 });
      assert.equal(wrongDepth.code, 2);
      assert.match(wrongDepth.stderr, /2 transformer layers, kwargs depth is 3/);
      const wrongHead = convert({ ...manifest.kwargs, dim_head: 32 });
      assert.equal(wrongHead.code, 2);
      assert.match(
        wrongHead.stderr,
        /to_qkv\.weight has shape \[192, 64\] but the kwargs imply \[384, 64\]/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
