"""PyTorch test accuracy of a model folder (models/<name>/) on the official Fashion-MNIST
test split (10,000 images), the reference figure that `deno task eval` must match to
within 0.1 points.

Usage (from the repo root):
  /usr/bin/python3 models/train/eval_torch.py models/vit-fmnist [--limit N] [--json]
  /usr/bin/python3 models/train/eval_torch.py models/ats-fmnist --budgets 40,32,24,16,12,8
  /usr/bin/python3 models/train/eval_torch.py models/navit-fmnist --size 14 [--size 56]
  /usr/bin/python3 models/train/eval_torch.py models/vit-fmnist --size 14   # 28->14->28

Images are read from the dataset's idx files, scaled to [0, 1], optionally resized
(Pillow-style antialiased bilinear) to --size x --size, then normalized with the
folder's preprocess mean/std. Fixed-size models (ViT, ATS, PatchMerger) get images
resized back to their own image_size, the way the engine's preprocessing does it;
NaViT takes them at their size. ATS uses the deterministic sampling rule of
shared/specs/ats-sampling.md; the mean number of tokens entering each layer is printed.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vitlib  # noqa: E402


def resize(x, h, w):
    """x [n, 1, H, W] in [0, 1] -> [n, 1, h, w], Pillow-style bilinear (half-pixel
    centres, filter stretched when shrinking), as edgevit's preprocessing resizes;
    identity when the size already matches."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def pack(sizes, max_len):
    """First-fit-decreasing groups of indices whose token counts sum to <= max_len."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    groups, loads = [], []
    for i in order:
        for g, load in enumerate(loads):
            if load + sizes[i] <= max_len:
                groups[g].append(i)
                loads[g] += sizes[i]
                break
        else:
            groups.append([i])
            loads.append(sizes[i])
    return groups


def navit_size(h, w, patch, max_h, max_w):
    """The size NaViT gets for an h x w input, the rule of edgevit's nativeSize
    (src/image/preprocess.ts): shrink (aspect kept, never enlarge) to fit image_size,
    then each side to the nearest multiple of the patch size (half up), at least one
    patch. Sides that are already multiples of the patch size and fit stay as they are."""
    scale = min(1.0, max_h / h, max_w / w)
    rows = min(max_h // patch, max(1, math.floor(h * scale / patch + 0.5)))
    cols = min(max_w // patch, max(1, math.floor(w * scale / patch + 0.5)))
    return rows * patch, cols * patch


@torch.no_grad()
def evaluate(folder, limit=None, size=None, budgets=None, batch=500, threads=1, split="test",
             model_config=None):
    """Accuracy of the model in `folder` (or of an already built (model, config) pair) on
    the test split, or with split="train-tail" on training images 50,000..59,999 (used
    to choose ATS budgets without looking at the test split)."""
    torch.set_num_threads(threads)
    model, config = model_config if model_config else vitlib.load_model_dir(folder)
    arch = config["architecture"]
    kwargs = config["kwargs"]
    if budgets is not None:
        assert arch == "ats_vit.ViT", "--budgets is for ats_vit.ViT models"
        assert len(budgets) == len(model.transformer.layers), "one budget per layer"
        for (attn, _), k in zip(model.transformer.layers, budgets):
            attn.output_num_tokens = k
    pre = config["preprocess"]
    mean, std = float(pre["mean"][0]), float(pre["std"][0])
    if split == "test":
        images, labels = vitlib.load_split("t10k")
    elif split == "train-tail":
        images, labels = vitlib.load_split("train")
        images, labels = images[50000:], labels[50000:]
    else:
        raise ValueError(f"unknown split {split}")
    if limit:
        images, labels = images[:limit], labels[:limit]

    correct, n = 0, 0
    token_sums = None
    tokens_per_image = 0.0
    t0 = time.time()
    for i in range(0, len(labels), batch):
        x = images[i: i + batch].float().div(255).unsqueeze(1)  # [b, 1, 28, 28]
        y = labels[i: i + batch]
        if size:
            x = resize(x, size, size)
        if arch == "NaViT":
            p = kwargs["patch_size"]
            h, w = navit_size(x.shape[-2], x.shape[-1], p, *vitlib.pair(kwargs["image_size"]))
            x = (resize(x, h, w) - mean) / std
            imgs = list(x)
            sizes = [(h // p) * (w // p)] * len(imgs)
            groups = pack(sizes, 128)
            out = model([[imgs[j] for j in g] for g in groups])
            order = torch.tensor([j for g in groups for j in g])
            logits = torch.empty_like(out)
            logits[order] = out
            tokens_per_image += (h // p) * (w // p) * len(imgs)
        else:
            ih, iw = vitlib.pair(kwargs["image_size"])
            x = (resize(x, ih, iw) - mean) / std
            if arch == "ats_vit.ViT":
                counts = []
                logits = model(x, token_counts=counts)
                # patch tokens (CLS excluded) entering each layer
                per_layer = torch.stack([c - 1 for c in counts]).sum(dim=1).double()
                token_sums = per_layer if token_sums is None else token_sums + per_layer
            else:
                logits = model(x)
            ph, pw = vitlib.pair(kwargs["patch_size"])
            tokens_per_image += (ih // ph) * (iw // pw) * len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        n += len(y)
    result = {
        "model": os.path.basename(os.path.normpath(folder)) if folder else config.get("name"),
        "split": split,
        "architecture": arch,
        "accuracy": correct / n,
        "correct": correct,
        "images": n,
        "input_size": size or 28,
        "patch_tokens_per_image": tokens_per_image / n,
        "seconds": round(time.time() - t0, 1),
    }
    if token_sums is not None:
        means = (token_sums / n).tolist()  # depth + 1 entries: into layer 0 .. out of last
        result["budgets"] = [attn.output_num_tokens for attn, _ in model.transformer.layers]
        result["mean_patch_tokens_entering_layer"] = [round(v, 2) for v in means[:-1]]
        result["mean_patch_tokens_kept_by_layer"] = [round(v, 2) for v in means[1:]]
        # a layer attends over the tokens entering it and runs its MLP on those it keeps
        result["mean_patch_tokens_per_layer"] = round(sum(means[:-1]) / (len(means) - 1), 2)
        result["mean_patch_tokens_kept_per_layer"] = round(sum(means[1:]) / (len(means) - 1), 2)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--size", type=int, default=None,
                    help="resize the 28x28 test images to SIZE x SIZE first")
    ap.add_argument("--budgets", default=None,
                    help="ATS max_tokens_per_depth override, comma separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="test", choices=["test", "train-tail"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    budgets = [int(v) for v in args.budgets.split(",")] if args.budgets else None
    r = evaluate(args.folder, args.limit, args.size, budgets, threads=args.threads,
                 split=args.split)
    if args.json:
        print(json.dumps(r))
        return
    line = (f"{r['model']}: accuracy {100 * r['accuracy']:.2f}% ({r['correct']}/{r['images']}) "
            f"input {r['input_size']}x{r['input_size']}, "
            f"{r['patch_tokens_per_image']:.1f} patch tokens/image")
    if "mean_patch_tokens_per_layer" in r:
        line += (f", budgets {r['budgets']}, mean patch tokens entering each layer "
                 f"{r['mean_patch_tokens_entering_layer']} (mean {r['mean_patch_tokens_per_layer']}), "
                 f"kept by each layer {r['mean_patch_tokens_kept_by_layer']} "
                 f"(mean {r['mean_patch_tokens_kept_per_layer']})")
    print(line)


if __name__ == "__main__":
    main()
