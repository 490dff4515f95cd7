#!/usr/bin/python3
"""Exports vit-pytorch models in edgevit's layout ({config.json, model.safetensors}) to
ONNX with Debian's PyTorch, so the same weights run in edgevit and in onnxruntime.

Usage (run with /usr/bin/python3, which has Debian's torch and onnx):

    # one folder -> FOLDER/model.onnx (or --out PATH)
    /usr/bin/python3 models/export/export_onnx.py models/vit-fmnist
    # a parity-fixture folder, checking torch's logits against expected.safetensors first
    /usr/bin/python3 models/export/export_onnx.py ../shared/fixtures/parity/vitpytorch-vit-cls \
        --out-dir tests/fixtures/onnx/vitpytorch-vit-cls --check
    # every folder under models/ that holds a vit-pytorch config.json + model.safetensors
    /usr/bin/python3 models/export/export_onnx.py --defaults
    # a random-weight model of a given shape, written as config.json + model.safetensors
    # + model.onnx into --out-dir (what bench/compare.ts does for deit-tiny-shape)
    /usr/bin/python3 models/export/export_onnx.py --random '{"architecture": "ViT", "kwargs": {...}}' \
        --seed 1 --out-dir .tmp/bench/deit-tiny-shape

The graph takes `pixel_values` [batch, channels, height, width] (float32, already
normalized; batch is symbolic) and returns `logits` [batch, num_classes].
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np
import onnx
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vitexport  # noqa: E402

MIN_OPSET = 13


def export(model, config, onnx_path, opset):
    kwargs = config["kwargs"]
    height, width = vitexport.pair(kwargs["image_size"])
    channels = int(kwargs.get("channels", 3))
    # Batch 2 for tracing so no size-1 axis gets folded into a constant by accident.
    dummy = torch.zeros(2, channels, height, width)
    os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            onnx_path,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    graph = onnx.load(onnx_path)
    onnx.checker.check_model(graph)
    # The config travels inside the file too, so a bare .onnx still says what it is.
    entry = graph.metadata_props.add()
    entry.key, entry.value = "edgevit.config", json.dumps(config, separators=(",", ":"))
    onnx.save(graph, onnx_path)
    return onnx_path


def check_fixture(model, folder):
    """Compares torch's logits with a parity fixture's expected.safetensors."""
    with open(f"{folder}/case.json") as f:
        case = json.load(f)
    inputs = vitexport.read_safetensors(f"{folder}/inputs.safetensors")[case["input"]]
    expected = vitexport.read_safetensors(f"{folder}/expected.safetensors")[case["output"]]
    with torch.no_grad():
        got = model(torch.from_numpy(inputs)).numpy()
    diff = float(np.abs(got - expected).max())
    print(f"{folder}: torch vs expected max abs diff {diff:.3g} (atol {case['atol']})")
    if diff > case["atol"]:
        raise SystemExit(f"{folder}: module does not reproduce the fixture's logits")


def export_folder(folder, out_path, opset, check):
    model, config = vitexport.load_folder(folder)
    if check:
        check_fixture(model, folder)
    export(model, config, out_path, opset)
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes)")


def default_folders(root):
    found = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        config = os.path.join(folder, "config.json")
        if not (os.path.isfile(config) and os.path.isfile(os.path.join(folder, "model.safetensors"))):
            continue
        with open(config) as f:
            try:
                parsed = json.load(f)
            except ValueError:
                continue
        if parsed.get("library") == "vit-pytorch" and parsed.get("architecture") in ("ViT", "SimpleViT"):
            found.append(folder)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="model folder with config.json + model.safetensors")
    parser.add_argument("--out", help="output .onnx path (default FOLDER/model.onnx)")
    parser.add_argument("--out-dir", help="write model.onnx (and config.json) into this folder")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..17 (default 17)")
    parser.add_argument("--check", action="store_true",
                        help="compare torch's logits with the folder's expected.safetensors first")
    parser.add_argument("--defaults", action="store_true",
                        help="export every vit-pytorch model folder under models/")
    parser.add_argument("--random", help="JSON {architecture, kwargs}: build random weights instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random weights")
    args = parser.parse_args()
    if args.opset < MIN_OPSET or args.opset > 17:
        parser.error(f"--opset must be between {MIN_OPSET} and 17 (torch 1.13's maximum)")
    torch.set_num_threads(1)

    if args.random:
        if not args.out_dir:
            parser.error("--random needs --out-dir")
        spec = json.loads(args.random)
        config = {"library": "vit-pytorch", "architecture": spec["architecture"], "kwargs": spec["kwargs"]}
        torch.manual_seed(args.seed)
        model = vitexport.randomize(vitexport.VitPytorchModel(config["architecture"], config["kwargs"]), args.seed)
        os.makedirs(args.out_dir, exist_ok=True)
        vitexport.write_safetensors(f"{args.out_dir}/model.safetensors", vitexport.state_arrays(model))
        with open(f"{args.out_dir}/config.json", "w") as f:
            json.dump(config, f, indent=2)
        export(model, config, f"{args.out_dir}/model.onnx", args.opset)
        print(f"wrote {args.out_dir}/{{config.json,model.safetensors,model.onnx}}")
        return

    if args.defaults:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        folders = default_folders(os.path.normpath(root))
        if not folders:
            print("no vit-pytorch model folders under models/ yet")
        for folder in folders:
            export_folder(folder, f"{folder}/model.onnx", args.opset, False)
        return

    if not args.folder:
        parser.error("give a model folder, --defaults or --random")
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        shutil.copyfile(f"{args.folder}/config.json", f"{args.out_dir}/config.json")
        out_path = f"{args.out_dir}/model.onnx"
    else:
        out_path = args.out or f"{args.folder}/model.onnx"
    export_folder(args.folder, out_path, args.opset, args.check)


if __name__ == "__main__":
    main()
