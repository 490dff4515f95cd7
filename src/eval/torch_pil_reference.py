"""PyTorch reference for `deno task eval --size HxW`, with the resizes done by Pillow on
uint8 images, which is what edgevit's preprocessing reproduces bit for bit (a user's
H x W image file is uint8; Pillow rounds each resampling pass to uint8).

models/train/eval_torch.py --size resizes float tensors instead (torch bilinear with
antialias, Pillow's filter without the rounding), so its accuracy at a resized input can
differ from the engine's by a few tenths of a point. At the dataset's own 28x28 no resize
happens and eval_torch.py is the reference. This script reuses eval_torch.evaluate and
swaps only its resize function.

Usage (from the repo root):
  /usr/bin/python3 src/eval/torch_pil_reference.py models/navit-fmnist --size 56 [--limit N]
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
    args = ap.parse_args()
    eval_torch.resize = pil_resize
    result = eval_torch.evaluate(args.folder, limit=args.limit, size=args.size)
    result["resize"] = "PIL uint8 bilinear"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
