"""vit-pytorch-compatible ViT / SimpleViT modules written for ONNX export, plus a small
safetensors reader/writer (Debian ships no `safetensors` package).

The modules here are this project's own. Their parameter names, shapes and forward
semantics follow vit-pytorch at commit 69d24fe (the layout of
../../../shared/fixtures/parity/vitpytorch-*), so `load_state_dict(strict=True)` on a
folder written in our layout proves the names match, and `export_onnx.py --check`
proves the logits match. Every reshape keeps the batch axis symbolic (-1) so the
exported graph takes any batch size.
"""

import json
import math
import struct

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------- safetensors I/O

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
}


def read_safetensors(path):
    """Returns {name: np.ndarray}. BF16 is widened to float32 by bit shifting."""
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        chunk = raw[base + start:base + end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(chunk, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def write_safetensors(path, tensors):
    """Writes {name: np.ndarray} (float32 / int64) as little-endian safetensors."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": names[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keeps the data 8-byte aligned for readers that map it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------- modules


def pair(value):
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


class Patchify(nn.Module):
    """`b c (h p1) (w p2) -> b (h w) (p1 p2 c)`: vit-pytorch's patch order, channel last."""

    def __init__(self, channels, image_size, patch_size):
        super().__init__()
        self.c = channels
        self.ph, self.pw = patch_size
        self.gh, self.gw = image_size[0] // self.ph, image_size[1] // self.pw

    def forward(self, img):
        x = img.reshape(-1, self.c, self.gh, self.ph, self.gw, self.pw)
        x = x.permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, self.gh * self.gw, self.ph * self.pw * self.c)


class SelfAttention(nn.Module):
    """Pre-norm MHSA; `to_out` is a Sequential(Linear, Dropout) in ViT, a bare Linear
    without bias in SimpleViT, and absent when one head spans the whole width."""

    def __init__(self, dim, heads, dim_head, simple):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        if simple:
            self.to_out = nn.Linear(inner, dim, bias=False)
        elif heads == 1 and dim_head == dim:
            self.to_out = nn.Identity()
        else:
            self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x):
        tokens = x.shape[1]
        qkv = self.to_qkv(self.norm(x))  # [b, n, 3·h·d]
        qkv = qkv.reshape(-1, tokens, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each [b, h, n, d]
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(weights, v).permute(0, 2, 1, 3)  # [b, n, h, d]
        return self.to_out(out.reshape(-1, tokens, self.heads * self.dim_head))


class MLP(nn.Module):
    def __init__(self, dim, hidden, simple):
        super().__init__()
        # Index layout matters: ViT's net is LN, Linear, GELU, Dropout, Linear, Dropout
        # (linears at 1 and 4); SimpleViT's drops the dropouts (linears at 1 and 3).
        if simple:
            layers = [nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)]
        else:
            layers = [
                nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                nn.Linear(hidden, dim), nn.Dropout(0.0),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Encoder(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, simple):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([
                SelfAttention(dim, heads, dim_head, simple),
                MLP(dim, mlp_dim, simple),
            ])
            for _ in range(depth)
        ])

    def forward(self, x):
        for attn, mlp in self.layers:
            x = attn(x) + x
            x = mlp(x) + x
        return self.norm(x)


def sincos_2d(gh, gw, dim, temperature=10000.0):
    """SimpleViT's fixed positions: [x.sin, x.cos, y.sin, y.cos] per token, raster order."""
    if dim % 4:
        raise ValueError("SimpleViT needs dim divisible by 4")
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter) / (quarter - 1))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class VitPytorchModel(nn.Module):
    """vit-pytorch `ViT` (architecture="ViT") or `SimpleViT` (architecture="SimpleViT")."""

    def __init__(self, architecture, kwargs):
        super().__init__()
        if architecture not in ("ViT", "SimpleViT"):
            raise ValueError(f"unsupported vit-pytorch architecture {architecture!r}")
        self.simple = architecture == "SimpleViT"
        image = pair(kwargs["image_size"])
        patch = pair(kwargs["patch_size"])
        if image[0] % patch[0] or image[1] % patch[1]:
            raise ValueError(f"image_size {image} is not a multiple of patch_size {patch}")
        channels = int(kwargs.get("channels", 3))
        dim, depth, heads = int(kwargs["dim"]), int(kwargs["depth"]), int(kwargs["heads"])
        dim_head, mlp_dim = int(kwargs.get("dim_head", 64)), int(kwargs["mlp_dim"])
        num_classes = int(kwargs["num_classes"])
        gh, gw = image[0] // patch[0], image[1] // patch[1]
        patch_dim = channels * patch[0] * patch[1]
        self.channels, self.image_size = channels, image
        self.to_patch_embedding = nn.Sequential(
            Patchify(channels, image, patch),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        if self.simple:
            self.register_buffer("pos_embedding", sincos_2d(gh, gw, dim), persistent=False)
            self.pool = "mean"
            self.transformer = Encoder(dim, depth, heads, dim_head, mlp_dim, True)
            self.linear_head = nn.Linear(dim, num_classes)
        else:
            self.pool = kwargs.get("pool", "cls")
            if self.pool not in ("cls", "mean"):
                raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
            n_cls = 1 if self.pool == "cls" else 0
            self.cls_token = nn.Parameter(torch.randn(n_cls, dim))
            self.pos_embedding = nn.Parameter(torch.randn(gh * gw + n_cls, dim))
            self.transformer = Encoder(dim, depth, heads, dim_head, mlp_dim, False)
            self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, img):
        x = self.to_patch_embedding(img)  # [b, patches, dim]
        if self.simple:
            x = self.transformer(x + self.pos_embedding)
            return self.linear_head(x.mean(dim=1))
        if self.pool == "cls":
            cls = self.cls_token.unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat((cls, x), dim=1)
        x = self.transformer(x + self.pos_embedding)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


def read_config(folder):
    with open(f"{folder}/config.json") as f:
        config = json.load(f)
    if config.get("library") != "vit-pytorch":
        raise ValueError(f"{folder}/config.json: library must be 'vit-pytorch'")
    return config


def load_folder(folder):
    """Builds the model of a {config.json, model.safetensors} folder with its weights."""
    config = read_config(folder)
    model = VitPytorchModel(config["architecture"], config["kwargs"])
    tensors = read_safetensors(f"{folder}/model.safetensors")
    state = {name: torch.from_numpy(array.astype(np.float32)) for name, array in tensors.items()}
    # Accept vit-pytorch's older [1, n, dim] parameter shapes as well as [n, dim].
    for name in ("cls_token", "pos_embedding"):
        if name in state and state[name].dim() == 3:
            state[name] = state[name][0]
    model.load_state_dict(state, strict=True)
    return model.eval(), config


def randomize(model, seed):
    """Non-trivial random weights: every norm scale near 1, every bias non-zero, so no
    parameter can be silently ignored by a runtime and still match."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 1:  # LayerNorm scale
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif param.dim() == 2 and name not in ("cls_token", "pos_embedding"):
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    return model.eval()


def state_arrays(model):
    return {name: t.detach().cpu().numpy().astype(np.float32) for name, t in model.state_dict().items()}
