"""Prints the models/README.md table (markdown) from the committed folders: parameters,
file size, epochs and training time (from config.json), PyTorch test accuracy (run now
with eval_torch) and patch tokens per image averaged over layers.

Usage (from the repo root): nice -n 19 /usr/bin/python3 models/train/summarize.py
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import eval_torch  # noqa: E402
import vitlib  # noqa: E402

MODELS = os.path.dirname(HERE)
NAMES = ["vit-fmnist", "ats-fmnist", "patchmerger-fmnist", "navit-fmnist"]


def tokens_per_layer(config, result):
    k = config["kwargs"]
    if config["architecture"] == "ats_vit.ViT":
        return result["mean_patch_tokens_per_layer"]
    if config["architecture"] == "vit_with_patch_merger.ViT":
        n = result["patch_tokens_per_image"]
        m, layer, depth = k["patch_merge_num_tokens"], k["patch_merge_layer"], k["depth"]
        return (n * layer + m * (depth - layer)) / depth
    return result["patch_tokens_per_image"]


def main():
    rows = []
    for name in NAMES:
        folder = os.path.join(MODELS, name)
        if not os.path.isdir(folder):
            continue
        model, config = vitlib.load_model_dir(folder)
        params = sum(p.numel() for p in model.parameters())
        size = os.path.getsize(os.path.join(folder, "model.safetensors"))
        result = eval_torch.evaluate(folder)
        training = config.get("training", {})
        rows.append({
            "model": name,
            "architecture": config["architecture"],
            "params": params,
            "file_bytes": size,
            "epochs": training.get("epochs"),
            "train_minutes": round(training["wall_seconds"] / 60, 1) if training else None,
            "test_accuracy": result["accuracy"],
            "patch_tokens_per_layer": round(tokens_per_layer(config, result), 2),
        })
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| model | architecture | params | file | epochs | train time | test accuracy "
          "(PyTorch) | patch tokens per layer |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        epochs = r["epochs"] if r["epochs"] is not None else "(ViT's)"
        minutes = f"{r['train_minutes']} min" if r["train_minutes"] is not None else "0"
        print(f"| `{r['model']}` | `{r['architecture']}` | {r['params']:,} | "
              f"{r['file_bytes'] / 1e6:.2f} MB | {epochs} | {minutes} | "
              f"{100 * r['test_accuracy']:.2f}% | {r['patch_tokens_per_layer']:g} |")


if __name__ == "__main__":
    main()
