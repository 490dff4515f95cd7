#!/usr/bin/python3
"""Write a vit-pytorch model or state dict as an edgevit model folder.

vit-pytorch (lucidrains/vit-pytorch) saves bare state dicts: the constructor arguments
that shape the model live only in the training script. edgevit reads a folder with

    config.json        {"library": "vit-pytorch", "architecture": "ViT", "kwargs": {...},
                        "labels": [...], "preprocess": {...}}
    model.safetensors  the state dict under vit-pytorch's own names

This script writes that folder, after checking the kwargs against the tensor shapes
(so a wrong `dim_head` or `depth` fails here, not at serving time).

Command line:

    python3 models/convert/vit_pytorch_to_edgevit.py checkpoint.pt out_dir \\
        --architecture ViT \\
        --kwargs '{"image_size": 224, "patch_size": 16, "num_classes": 10, "dim": 192,
                   "depth": 12, "heads": 3, "mlp_dim": 768, "dim_head": 64}' \\
        [--labels labels.txt] [--mean 0.5 0.5 0.5 --std 0.5 0.5 0.5] \\
        [--interpolation bilinear] [--dtype f32|f16|bf16]

`checkpoint.pt` may hold a state dict, a whole pickled module, or a dict with the
state dict under "state_dict", "model" or "model_state_dict"; a "module." prefix
(DataParallel) is removed.

From Python:

    from vit_pytorch_to_edgevit import save_for_edgevit
    save_for_edgevit(model, "out_dir", "ViT", kwargs, labels=[...])

Needs only PyTorch and NumPy (no safetensors package).
"""

import argparse
import json
import os
import re
import struct
import sys

import numpy as np
import torch

ARCHITECTURES = ("ViT", "SimpleViT", "NaViT", "ats_vit.ViT", "vit_with_patch_merger.ViT")
REQUIRED = ("image_size", "patch_size", "num_classes", "dim", "depth", "heads", "mlp_dim")
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


class ConversionError(ValueError):
    """The checkpoint and the kwargs do not describe the same model."""


# ------------------------------------------------------------------ safetensors writer


def _tensor_bytes(tensor, dtype):
    """Little-endian bytes of a float tensor in the requested safetensors dtype."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if dtype == "F32":
        return array.astype("<f4").tobytes()
    if dtype == "F16":
        return array.astype("<f2").tobytes()
    if dtype == "BF16":
        # round to nearest even on the upper 16 bits, as torch's bfloat16 cast does
        bits = array.astype("<f4").view("<u4").astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        nan = np.isnan(array)
        rounded[nan] = 0x7FC0
        return rounded.astype("<u2").tobytes()
    raise ConversionError(f"unknown dtype {dtype}")


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """Writes {name: torch.Tensor} as a safetensors file (header padded to 8 bytes)."""
    header = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        if not torch.is_floating_point(tensor):
            raise ConversionError(f"tensor {name} is {tensor.dtype}; only float tensors are written")
        blob = _tensor_bytes(tensor, dtype)
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


# ------------------------------------------------------------------ state dict handling


def state_dict_of(obj):
    """A flat {name: tensor} from a module, a state dict or a training checkpoint."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                return state_dict_of(inner)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConversionError("expected a state dict, a module, or a checkpoint dict holding one")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _pair(value, name):
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return tuple(value)
    raise ConversionError(f"kwargs {name} must be a positive int or [h, w], got {value!r}")


def check_kwargs(architecture, kwargs, state):
    """Raises ConversionError when kwargs and tensor shapes disagree."""
    if architecture not in ARCHITECTURES:
        raise ConversionError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    missing = [k for k in REQUIRED if k not in kwargs]
    if architecture == "ats_vit.ViT" and "max_tokens_per_depth" not in kwargs:
        missing.append("max_tokens_per_depth")
    if missing:
        raise ConversionError(f"kwargs lack {', '.join(missing)}")
    (ih, iw), (ph, pw) = _pair(kwargs["image_size"], "image_size"), _pair(kwargs["patch_size"], "patch_size")
    if ih % ph or iw % pw:
        raise ConversionError(f"image_size {ih}x{iw} is not divisible by patch_size {ph}x{pw}")
    dim, depth, mlp_dim = kwargs["dim"], kwargs["depth"], kwargs["mlp_dim"]
    channels = kwargs.get("channels", 3)
    inner = kwargs["heads"] * kwargs.get("dim_head", 64)
    patch_dim = channels * ph * pw

    def expect(name, shape):
        if name not in state:
            raise ConversionError(f"the state dict has no {name} (is this a vit-pytorch {architecture}?)")
        if tuple(state[name].shape) != tuple(shape):
            raise ConversionError(
                f"{name} has shape {list(state[name].shape)} but the kwargs imply {list(shape)}")

    layers = {int(m.group(1)) for k in state for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
    if layers != set(range(depth)):
        raise ConversionError(f"the state dict has {len(layers)} transformer layers, kwargs depth is {depth}")
    embed = [k for k in state if k.startswith("to_patch_embedding.") and k.endswith(".weight")
             and state[k].dim() == 2]
    if len(embed) != 1:
        raise ConversionError("the state dict has no single patch embedding Linear")
    expect(embed[0], (dim, patch_dim))
    if architecture == "NaViT":
        expect("transformer.layers.0.0.to_q.weight", (inner, dim))
        expect("transformer.layers.0.1.1.weight", (mlp_dim, dim))
    else:
        expect("transformer.layers.0.0.to_qkv.weight", (3 * inner, dim))
        expect("transformer.layers.0.1.net.1.weight", (mlp_dim, dim))
    heads = [k for k in state if re.match(r"(mlp_head|linear_head)(\.\d+)?\.weight$", k) and state[k].dim() == 2]
    if len(heads) != 1:
        raise ConversionError("the state dict has no single classification head")
    expect(heads[0], (kwargs["num_classes"], dim))


def check_with_library(architecture, kwargs, state):
    """When vit-pytorch is installed, proves the names by loading them into the real class."""
    try:
        import importlib
        module_name, _, class_name = ("vit." + architecture if "." not in architecture
                                      else architecture).rpartition(".")
        if architecture == "SimpleViT":
            module_name, class_name = "simple_vit", "SimpleViT"
        if architecture == "NaViT":
            module_name, class_name = "na_vit", "NaViT"
        module = importlib.import_module(f"vit_pytorch.{module_name}")
    except ImportError:
        return False
    args = dict(kwargs)
    for key in ("image_size", "patch_size"):
        if isinstance(args[key], list):
            args[key] = tuple(args[key])
    model = getattr(module, class_name)(**args)
    model.load_state_dict(state, strict=True)
    return True


# ------------------------------------------------------------------ the conversion


def save_for_edgevit(model_or_state, out_dir, architecture, kwargs, labels=None,
                     preprocess=None, dtype="F32"):
    """Writes out_dir/config.json and out_dir/model.safetensors.

    model_or_state: a vit-pytorch nn.Module, its state_dict(), or a checkpoint dict.
    kwargs: the constructor's keyword arguments (image_size may be an int or [h, w]).
    labels: class names, one per output; preprocess: the manifest's "preprocess" object
    (mean, std, interpolation, channels, crop_pct); dtype: "F32", "F16" or "BF16".
    Returns the manifest written.
    """
    dtype = DTYPES.get(str(dtype).lower(), dtype)
    if dtype not in DTYPES.values():
        raise ConversionError(f"dtype must be f32, f16 or bf16, got {dtype!r}")
    state = state_dict_of(model_or_state)
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    check_kwargs(architecture, kwargs, state)
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != kwargs["num_classes"]:
            raise ConversionError(f"{len(labels)} labels for num_classes {kwargs['num_classes']}")
    manifest = {"library": "vit-pytorch", "architecture": architecture, "kwargs": kwargs}
    if labels is not None:
        manifest["labels"] = labels
    if preprocess:
        manifest["preprocess"] = preprocess
    # vit-pytorch registers no persistent buffers in these models; anything non-float
    # (e.g. a step counter) is not part of the model
    floats = {k: v for k, v in state.items() if torch.is_floating_point(v)}
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), floats, dtype)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt/.pth file (state dict, module or checkpoint dict)")
    parser.add_argument("out_dir")
    parser.add_argument("--architecture", required=True, choices=ARCHITECTURES)
    parser.add_argument("--kwargs", required=True, help="constructor kwargs as JSON, or @file.json")
    parser.add_argument("--labels", help="a text file with one class name per line, or a JSON list")
    parser.add_argument("--mean", type=float, nargs="+")
    parser.add_argument("--std", type=float, nargs="+")
    parser.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"])
    parser.add_argument("--crop-pct", type=float, help="resize to size/crop_pct, then center crop")
    parser.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    parser.add_argument("--check", action="store_true",
                        help="also load the tensors into vit-pytorch's class (needs vit_pytorch)")
    args = parser.parse_args(argv)

    text = args.kwargs
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    kwargs = json.loads(text)
    labels = None
    if args.labels:
        with open(args.labels) as f:
            content = f.read()
        labels = json.loads(content) if content.lstrip().startswith("[") else \
            [line.strip() for line in content.splitlines() if line.strip()]
    preprocess = {k: v for k, v in {
        "mean": args.mean, "std": args.std, "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
    }.items() if v is not None}
    obj = torch.load(args.checkpoint, map_location="cpu")
    try:
        manifest = save_for_edgevit(obj, args.out_dir, args.architecture, kwargs, labels,
                                    preprocess or None, args.dtype)
        if args.check:
            if not check_with_library(args.architecture, kwargs, state_dict_of(obj)):
                print("note: vit_pytorch is not installed; only shapes were checked", file=sys.stderr)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tensors = len(state_dict_of(obj))
    print(f"wrote {args.out_dir}: {manifest['architecture']}, {tensors} tensors as {DTYPES[args.dtype]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
