"""Proves that vitlib's modules are vit-pytorch-compatible: loads every vit-pytorch
parity fixture (shared/fixtures/parity/vitpytorch-*) with strict state_dict names and
compares the logits (and ATS kept token ids) with the reference.

Run from the repo root: /usr/bin/python3 models/train/check_fixtures.py
Exit status 1 if any case is off.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vitlib  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
                    "fixtures", "parity")
SUPPORTED = {"ViT", "ats_vit.ViT", "vit_with_patch_merger.ViT", "NaViT"}


def main():
    torch.set_num_threads(1)
    failed = 0
    for case in sorted(os.listdir(ROOT)):
        folder = os.path.join(ROOT, case)
        cfg_path = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg_path):
            continue
        with open(cfg_path) as f:
            config = json.load(f)
        if config.get("library") != "vit-pytorch" or config["architecture"] not in SUPPORTED:
            continue
        with open(os.path.join(folder, "case.json")) as f:
            spec = json.load(f)
        model = vitlib.build(config)
        model.load_state_dict(vitlib.load_safetensors(os.path.join(folder, "model.safetensors")),
                              strict=True)
        model.eval()
        inputs = vitlib.load_safetensors(os.path.join(folder, "inputs.safetensors"))
        expected = vitlib.load_safetensors(os.path.join(folder, "expected.safetensors"))
        extra = ""
        with torch.no_grad():
            if spec["call"] == "forwardPacked":
                images = [inputs[name] for name in spec["images"]]
                groups = [[images[i] for i in g] for g in spec["groups"]]
                order = [i for g in spec["groups"] for i in g]
                packed = model(groups)
                logits = torch.empty_like(packed)
                logits[order] = packed
                single = torch.cat([model([[im]]) for im in images])
                extra = f" one-by-one diff {(single - logits).abs().max().item():.2e}"
            elif config["architecture"] == "ats_vit.ViT":
                logits, ids = model(inputs[spec["input"]], return_sampled_token_ids=True)
                want = expected["token_ids"]
                ok_ids = ids.shape == want.shape and torch.equal(ids, want)
                extra = f" token_ids {'match' if ok_ids else 'DIFFER'}"
                failed += 0 if ok_ids else 1
            else:
                logits = model(inputs[spec["input"]])
        diff = (logits - expected[spec["output"]]).abs().max().item()
        ok = diff <= spec["atol"]
        failed += 0 if ok else 1
        print(f"{case:28s} max|diff| {diff:.2e} (atol {spec['atol']}){extra} "
              f"{'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
