"""PyTorch reference figures for `deno task eval`, for the two cases where
models/train/eval_torch.py (as of this writing) computes something slightly different
from what the engine serves. It reuses eval_torch.evaluate and changes only:

--resize pil (default): resizes are done by Pillow on uint8 images, which is what
  edgevit's preprocessing reproduces bit for bit (a user's H x W image file is uint8 and
  Pillow rounds each resampling pass to uint8). eval_torch.py --size resizes float
  tensors (torch bilinear with antialias: Pillow's filter without the rounding), so its
  accuracy at a resized input can differ from the engine's by a few tenths of a point.
  At the dataset's own 28x28 nothing is resized and both ways are the same.
--batch 1: one image per forward pass. vitlib's batched ATS pads the kept sets of a batch
  to a common width and then samples every image whose *padded* width exceeds a layer's
  budget, so an image that already fits the budget can lose tokens depending on the other
  images of its batch. shared/specs/ats-sampling.md (and the engine) sample an image
  only when its own token count exceeds the budget, which is what one image per batch
  gives in PyTorch.

Usage (from the repo root):
  /usr/bin/python3 src/eval/torch_reference.py models/navit-fmnist --size 56 [--limit N]
  /usr/bin/python3 src/eval/torch_reference.py models/ats-fmnist --batch 1 [--budgets 49,40,24,1]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "models", "train"))
import eval_torch  # noqa: E402


def pil_resize(x, h, w):
    """x [n, 1, H, W] holding uint8 values / 255 -> Image.resize((w, h), BILINEAR) of each
    image as PIL "L", back to [n, 1, h, w] / 255; identity when the size matches."""
    if x.shape[-2:] == (h, w):
        return x
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    out = np.stack([
        np.asarray(Image.fromarray(im[0], "L").resize((w, h), Image.BILINEAR)) for im in u8
    ])
    return torch.from_numpy(out).float().div(255).unsqueeze(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--resize", choices=["pil", "float"], default="pil")
    ap.add_argument("--budgets", default=None, help="ATS budgets per layer, comma separated")
    args = ap.parse_args()
    if args.resize == "pil":
        eval_torch.resize = pil_resize
    budgets = [int(v) for v in args.budgets.split(",")] if args.budgets else None
    result = eval_torch.evaluate(args.folder, limit=args.limit, size=args.size,
                                 budgets=budgets, batch=args.batch)
    result["resize"] = "PIL uint8 bilinear" if args.resize == "pil" else "torch float"
    result["batch"] = args.batch
    print(json.dumps(result))


if __name__ == "__main__":
    main()
