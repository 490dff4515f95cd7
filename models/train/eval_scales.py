"""Scale robustness: the 10,000 test images resized to S x S (Pillow-style bilinear),
then fed to NaViT at that size and to the fixed-size ViT resized back to 28 x 28 (what
its preprocessing does with any input). Writes models/train/curves/scale-robustness.json.

Usage (from the repo root): nice -n 19 /usr/bin/python3 models/train/eval_scales.py
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import eval_torch  # noqa: E402

MODELS = os.path.dirname(HERE)
SIZES = [14, 21, 28, 42, 56]


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    rows = []
    for name in ("navit-fmnist", "vit-fmnist"):
        for size in SIZES:
            r = eval_torch.evaluate(os.path.join(MODELS, name), limit=limit, size=size)
            rows.append({"model": name, "input": f"{size}x{size}", "accuracy": r["accuracy"],
                         "patch_tokens_per_image": r["patch_tokens_per_image"]})
            print(json.dumps(rows[-1]), flush=True)
    out = {
        "how": "test split resized from 28x28 to SxS (torch bilinear, antialias=True); NaViT "
               "runs at SxS, ViT's preprocessing resizes SxS back to 28x28",
        "rows": rows,
    }
    if not limit:
        with open(os.path.join(HERE, "curves", "scale-robustness.json"), "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
