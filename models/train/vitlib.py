"""vit-pytorch-compatible modules, safetensors I/O and Fashion-MNIST loading.

The modules below are written for this project. Their state_dict names, shapes and
forward semantics match vit-pytorch at commit 69d24fe (the layout the edgevit loaders
read, see ../../../shared/fixtures/parity), so a checkpoint trained here loads through
the same path as a user's vit-pytorch model. check_fixtures.py proves the match.
"""

import gzip
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def pair(v):
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ---------------------------------------------------------------- shared blocks

class ToPatchesHWC(nn.Module):
    """[b, c, H, W] -> [b, (H/p1)(W/p2), p1*p2*c]: patch rows in raster order, pixel
    within a patch in raster order, channel innermost (vit-pytorch's ViT ordering)."""

    def __init__(self, p1, p2):
        super().__init__()
        self.p1, self.p2 = p1, p2

    def forward(self, img):
        b, c, hh, ww = img.shape
        h, w = hh // self.p1, ww // self.p2
        x = img.reshape(b, c, h, self.p1, w, self.p2)
        x = x.permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
        return x.reshape(b, h * w, self.p1 * self.p2 * c)


def patch_embedding(channels, ph, pw, dim):
    patch_dim = channels * ph * pw
    return nn.Sequential(
        ToPatchesHWC(ph, pw),
        nn.LayerNorm(patch_dim),
        nn.Linear(patch_dim, dim),
        nn.LayerNorm(dim),
    )


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


def split_heads(t, heads):
    b, n, hd = t.shape
    return t.reshape(b, n, heads, hd // heads).transpose(1, 2)  # [b, h, n, d]


def merge_heads(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention of vit.ViT / vit_with_patch_merger.ViT."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
            if project_out else nn.Identity()
        )

    def forward(self, x):
        x = self.norm(x)
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = self.dropout(self.attend(torch.matmul(q, k.transpose(-1, -2)) * self.scale))
        return self.to_out(merge_heads(torch.matmul(attn, v)))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([
                Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout),
                FeedForward(dim, mlp_dim, dropout=dropout),
            ])
            for _ in range(depth)
        ])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


# ---------------------------------------------------------------- vit.ViT

class ViT(nn.Module):
    """vit-pytorch `ViT`: cls_token [n_cls, dim], pos_embedding [n_cls + patches, dim]."""

    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim,
                 pool="cls", channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0):
        super().__init__()
        ih, iw = pair(image_size)
        ph, pw = pair(patch_size)
        assert ih % ph == 0 and iw % pw == 0
        assert pool in ("cls", "mean")
        n_cls = 1 if pool == "cls" else 0
        num_patches = (ih // ph) * (iw // pw)
        self.to_patch_embedding = patch_embedding(channels, ph, pw, dim)
        self.cls_token = nn.Parameter(torch.randn(n_cls, dim))
        self.pos_embedding = nn.Parameter(torch.randn(num_patches + n_cls, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.pool = pool
        self.to_latent = nn.Identity()
        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, img):
        x = self.to_patch_embedding(img)
        cls = self.cls_token.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        x = x + self.pos_embedding[: x.shape[1]]
        x = self.transformer(self.dropout(x))
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(self.to_latent(x))


# ---------------------------------------------------------------- ats_vit.ViT

def gather_rows(values, idx):
    """values [b, n, ...], idx [b, k] -> [b, k, ...]."""
    shape = idx.shape + values.shape[2:]
    full = idx.reshape(idx.shape + (1,) * (values.dim() - 2)).expand(shape)
    return values.gather(1, full)


def ats_select(attn, value, mask, budget, eps=1e-6):
    """Deterministic ATS (shared/specs/ats-sampling.md): inverse-transform sampling at
    the fixed points (i + 0.5) / K over the CLS significance scores.

    attn [b, h, n, n], value [b, h, n, d], mask [b, n] (True = real token).
    Returns kept token ids [b, 1 + k] (CLS first as 0, padding 0) and their mask.
    """
    b, _, n, _ = attn.shape
    with torch.no_grad():  # the choice of tokens is not differentiated
        scores = torch.einsum("bhn,bhn->bn", attn[:, :, 0, 1:], value[:, :, 1:, :].norm(dim=-1))
        scores = scores.masked_fill(~mask[:, 1:], 0.0)
        scores = scores / (scores.sum(dim=-1, keepdim=True) + eps)
        sorted_s, order = torch.sort(scores, dim=-1, stable=True)
        cdf = torch.cumsum(sorted_s, dim=-1).contiguous()
        points = (torch.arange(budget, dtype=attn.dtype, device=attn.device) + 0.5) / budget
        pos = torch.searchsorted(cdf, points.expand(b, budget).contiguous(), right=False)
        pos = pos.clamp(max=n - 2)
        picked = order.gather(1, pos) + 1  # token ids, 1-based (0 is CLS)
    kept = []
    for row in picked:
        kept.append(torch.unique(row, sorted=True))
    width = max(len(k) for k in kept)
    ids = torch.zeros(b, width + 1, dtype=torch.long, device=attn.device)
    for i, k in enumerate(kept):
        ids[i, 1: 1 + len(k)] = k
    new_mask = ids != 0
    new_mask[:, 0] = True
    return ids, new_mask


class ATSAttention(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0, output_num_tokens=None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.output_num_tokens = output_num_tokens
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x, mask):
        n = x.shape[1]
        x = self.norm(x)
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
        dots = dots.masked_fill(~pair_mask, -torch.finfo(dots.dtype).max)
        attn = self.dropout(self.attend(dots))
        ids = None
        if self.output_num_tokens is not None and (n - 1) > self.output_num_tokens:
            ids, mask = ats_select(attn, v, mask, self.output_num_tokens)
            h = attn.shape[1]
            rows = ids[:, None, :, None].expand(-1, h, -1, attn.shape[-1])
            attn = attn.gather(2, rows)
        out = merge_heads(torch.matmul(attn, v))
        return self.to_out(out), mask, ids


class ATSTransformer(nn.Module):
    def __init__(self, dim, depth, max_tokens_per_depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        assert len(max_tokens_per_depth) == depth
        assert sorted(max_tokens_per_depth, reverse=True) == list(max_tokens_per_depth)
        assert min(max_tokens_per_depth) > 0
        self.layers = nn.ModuleList([
            nn.ModuleList([
                ATSAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout,
                             output_num_tokens=k),
                FeedForward(dim, mlp_dim, dropout=dropout),
            ])
            for k in max_tokens_per_depth
        ])

    def forward(self, x, token_counts=None):
        b, n = x.shape[:2]
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        token_ids = torch.arange(n, device=x.device).expand(b, n)
        for attn, ff in self.layers:
            if token_counts is not None:
                # tokens entering this layer, CLS included, per image
                token_counts.append(mask.sum(dim=1))
            out, mask, ids = attn(x, mask)
            if ids is not None:
                x = gather_rows(x, ids)
                token_ids = token_ids.gather(1, ids)
            x = x + out
            x = ff(x) + x
        if token_counts is not None:
            token_counts.append(mask.sum(dim=1))  # tokens leaving the last layer
        return x, token_ids


class ATSViT(nn.Module):
    """vit-pytorch `ats_vit.ViT` (deterministic sampling rule). No final transformer
    norm: mlp_head is LayerNorm -> Linear."""

    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, max_tokens_per_depth,
                 heads, mlp_dim, channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0):
        super().__init__()
        ih, iw = pair(image_size)
        ph, pw = pair(patch_size)
        num_patches = (ih // ph) * (iw // pw)
        self.to_patch_embedding = patch_embedding(channels, ph, pw, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = ATSTransformer(dim, depth, max_tokens_per_depth, heads, dim_head,
                                          mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img, return_sampled_token_ids=False, token_counts=None):
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embedding[:, : n + 1]
        x, token_ids = self.transformer(self.dropout(x), token_counts)
        logits = self.mlp_head(x[:, 0])
        if return_sampled_token_ids:
            return logits, token_ids[:, 1:] - 1
        return logits


def vit_ats_forward(vit, img, budgets):
    """A cls-pooled vit.ViT run the way ats_vit.ViT would run its re-laid weights with
    max_tokens_per_depth=budgets (same numbers as ATSViT + vit_to_ats_state). Used to
    train the ViT so that its own CLS attention can prune tokens without a loss."""
    x = vit.to_patch_embedding(img)
    b = x.shape[0]
    x = torch.cat((vit.cls_token.unsqueeze(0).expand(b, -1, -1), x), dim=1)
    x = x + vit.pos_embedding[: x.shape[1]]
    mask = torch.ones(b, x.shape[1], dtype=torch.bool)
    for (attn, ff), k in zip(vit.transformer.layers, budgets):
        n = x.shape[1]
        xn = attn.norm(x)
        q, kk, v = (split_heads(t, attn.heads) for t in attn.to_qkv(xn).chunk(3, dim=-1))
        dots = torch.matmul(q, kk.transpose(-1, -2)) * attn.scale
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
        a = dots.masked_fill(~pair_mask, -torch.finfo(dots.dtype).max).softmax(dim=-1)
        if (n - 1) > k:
            ids, mask = ats_select(a, v, mask, k)
            a = a.gather(2, ids[:, None, :, None].expand(-1, a.shape[1], -1, a.shape[-1]))
            x = gather_rows(x, ids)
        x = x + attn.to_out(merge_heads(torch.matmul(a, v)))
        x = ff(x) + x
    return vit.mlp_head(vit.transformer.norm(x[:, 0]))


def vit_to_ats_state(vit_state):
    """Re-lay a cls-pooled vit.ViT state dict under ats_vit.ViT names: same numbers,
    the final transformer norm becomes mlp_head.0 (LayerNorm acts per token, so
    norm-then-take-CLS equals take-CLS-then-norm)."""
    out = {}
    for k, v in vit_state.items():
        if k == "cls_token":
            out[k] = v.reshape(1, 1, -1)
        elif k == "pos_embedding":
            out[k] = v.unsqueeze(0)
        elif k.startswith("transformer.norm."):
            out["mlp_head.0." + k.split(".")[-1]] = v
        elif k.startswith("mlp_head."):
            out["mlp_head.1." + k.split(".")[-1]] = v
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- vit_with_patch_merger.ViT

class PatchMerger(nn.Module):
    def __init__(self, dim, num_tokens_out):
        super().__init__()
        self.scale = dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_tokens_out, dim))

    def forward(self, x):
        x = self.norm(x)
        attn = (torch.matmul(self.queries, x.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        return torch.matmul(attn, x)


class MergerTransformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0,
                 patch_merge_layer=None, patch_merge_num_tokens=8):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([
                Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout),
                FeedForward(dim, mlp_dim, dropout=dropout),
            ])
            for _ in range(depth)
        ])
        layer = patch_merge_layer if patch_merge_layer is not None else depth // 2
        self.patch_merge_layer_index = layer - 1
        self.patch_merger = PatchMerger(dim, patch_merge_num_tokens)

    def forward(self, x):
        for i, (attn, ff) in enumerate(self.layers):
            x = attn(x) + x
            x = ff(x) + x
            if i == self.patch_merge_layer_index:
                x = self.patch_merger(x)
        return self.norm(x)


class MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class PatchMergerViT(nn.Module):
    """vit-pytorch `vit_with_patch_merger.ViT`: no CLS, mean pooling, merge to M tokens
    after layer `patch_merge_layer` (1-based)."""

    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim,
                 patch_merge_layer=None, patch_merge_num_tokens=8, channels=3, dim_head=64,
                 dropout=0.0, emb_dropout=0.0):
        super().__init__()
        ih, iw = pair(image_size)
        ph, pw = pair(patch_size)
        num_patches = (ih // ph) * (iw // pw)
        self.to_patch_embedding = patch_embedding(channels, ph, pw, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = MergerTransformer(dim, depth, heads, dim_head, mlp_dim, dropout,
                                             patch_merge_layer, patch_merge_num_tokens)
        self.mlp_head = nn.Sequential(MeanTokens(), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        x = x + self.pos_embedding[:, : x.shape[1]]
        return self.mlp_head(self.transformer(self.dropout(x)))


# ---------------------------------------------------------------- NaViT

class BiaslessLayerNorm(nn.Module):
    """LayerNorm with learned gamma and a fixed zero beta buffer (saved in state_dict)."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class HeadRMSNorm(nn.Module):
    """q/k norm: unit L2 per head vector, times sqrt(dim_head) and gamma [heads, 1, d]."""

    def __init__(self, heads, dim):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, 1, dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


def navit_feedforward(dim, hidden_dim, dropout=0.0):
    return nn.Sequential(
        BiaslessLayerNorm(dim),
        nn.Linear(dim, hidden_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, dim),
        nn.Dropout(dropout),
    )


class NaAttention(nn.Module):
    """NaViT attention: norm only on the query side input, q/k RMS norm, logits not
    scaled (the RMS norm already carries sqrt(d)), boolean mask True = may attend."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = BiaslessLayerNorm(dim)
        self.q_norm = HeadRMSNorm(heads, dim_head)
        self.k_norm = HeadRMSNorm(heads, dim_head)
        self.dropout_p = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x, context=None, attn_mask=None):
        x = self.norm(x)
        kv_in = x if context is None else context
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        q = self.q_norm(split_heads(self.to_q(x), self.heads))
        k = self.k_norm(split_heads(k, self.heads))
        v = split_heads(v, self.heads)
        dots = torch.matmul(q, k.transpose(-1, -2))
        if attn_mask is not None:
            # finite, so a query with no key (a missing image in a short group) gives a
            # harmless uniform row instead of NaN that would poison shared gradients
            dots = dots.masked_fill(~attn_mask, -torch.finfo(dots.dtype).max)
        attn = dots.softmax(dim=-1)
        if self.training and self.dropout_p > 0:
            attn = F.dropout(attn, self.dropout_p)
        return self.to_out(merge_heads(torch.matmul(attn, v)))


class NaTransformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([
                NaAttention(dim, heads=heads, dim_head=dim_head, dropout=dropout),
                navit_feedforward(dim, mlp_dim, dropout=dropout),
            ])
            for _ in range(depth)
        ])
        self.norm = BiaslessLayerNorm(dim)

    def forward(self, x, attn_mask=None):
        for attn, ff in self.layers:
            x = attn(x, attn_mask=attn_mask) + x
            x = ff(x) + x
        return self.norm(x)


class NaViT(nn.Module):
    """vit-pytorch `NaViT`: images of any size (multiples of patch_size, up to
    image_size) packed into sequences; factorized 2-D positions; attention pooling."""

    def __init__(self, *, image_size, patch_size, num_classes, dim, depth, heads, mlp_dim,
                 channels=3, dim_head=64, dropout=0.0, emb_dropout=0.0, token_dropout_prob=None):
        super().__init__()
        ih, iw = pair(image_size)
        assert ih % patch_size == 0 and iw % patch_size == 0
        assert token_dropout_prob is None, "token dropout is not used here"
        self.channels = channels
        self.patch_size = patch_size
        patch_dim = channels * patch_size * patch_size
        self.to_patch_embedding = nn.Sequential(
            BiaslessLayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            BiaslessLayerNorm(dim),
        )
        self.pos_embed_height = nn.Parameter(torch.randn(ih // patch_size, dim))
        self.pos_embed_width = nn.Parameter(torch.randn(iw // patch_size, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = NaTransformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.attn_pool_queries = nn.Parameter(torch.randn(dim))
        self.attn_pool = NaAttention(dim, heads=heads, dim_head=dim_head)
        self.to_latent = nn.Identity()
        self.mlp_head = nn.Sequential(
            BiaslessLayerNorm(dim),
            nn.Linear(dim, num_classes, bias=False),
        )

    def image_tokens(self, image):
        """[c, H, W] -> patches [(h w), (c p1 p2)] (channel outermost) and (row, col)."""
        c, hh, ww = image.shape
        p = self.patch_size
        assert c == self.channels and hh % p == 0 and ww % p == 0, (hh, ww)
        h, w = hh // p, ww // p
        seq = image.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, c * p * p)
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        return seq, rows, cols

    def forward(self, groups):
        """groups: list of lists of [c, H, W] images (one list per packed sequence), or a
        flat list (one sequence). Returns logits in image order."""
        if torch.is_tensor(groups[0]):
            groups = [groups]
        seqs, rows, cols, ids, counts = [], [], [], [], []
        for images in groups:
            parts = [self.image_tokens(im) for im in images]
            seqs.append(torch.cat([s for s, _, _ in parts]))
            rows.append(torch.cat([r for _, r, _ in parts]))
            cols.append(torch.cat([c for _, _, c in parts]))
            ids.append(torch.cat([torch.full((len(s),), i, dtype=torch.long)
                                  for i, (s, _, _) in enumerate(parts)]))
            counts.append(len(images))
        b = len(groups)
        lengths = torch.tensor([len(s) for s in seqs])
        n = int(lengths.max())
        key_valid = torch.arange(n)[None, :] < lengths[:, None]  # [b, n]

        def pad(ts, value=0):
            out = ts[0].new_full((b, n) + ts[0].shape[1:], value)
            for i, t in enumerate(ts):
                out[i, : len(t)] = t
            return out

        patches, prow, pcol, image_ids = pad(seqs), pad(rows), pad(cols), pad(ids)
        attn_mask = (image_ids[:, None, :, None] == image_ids[:, None, None, :]) \
            & key_valid[:, None, None, :]
        x = self.to_patch_embedding(patches)
        x = x + self.pos_embed_height[prow] + self.pos_embed_width[pcol]
        x = self.transformer(self.dropout(x), attn_mask=attn_mask)

        m = max(counts)
        queries = self.attn_pool_queries.expand(b, m, -1)
        pool_mask = (torch.arange(m)[:, None] == image_ids[:, None, :]) & key_valid[:, None, :]
        x = self.attn_pool(queries, context=x, attn_mask=pool_mask[:, None]) + queries
        is_image = torch.arange(m)[None, :] < torch.tensor(counts)[:, None]
        x = x.reshape(b * m, -1)[is_image.reshape(-1)]
        return self.mlp_head(self.to_latent(x))


ARCHITECTURES = {
    "ViT": ViT,
    "ats_vit.ViT": ATSViT,
    "vit_with_patch_merger.ViT": PatchMergerViT,
    "NaViT": NaViT,
}


def build(config):
    kwargs = dict(config["kwargs"])
    if "image_size" in kwargs and isinstance(kwargs["image_size"], list):
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return ARCHITECTURES[config["architecture"]](**kwargs)


# ---------------------------------------------------------------- safetensors

_DTYPES = {"F32": (np.float32, torch.float32), "I64": (np.int64, torch.int64)}


def save_safetensors(path, tensors, metadata=None):
    """Write the safetensors format: u64 LE header size, JSON header, raw LE data.
    Tensors are written in sorted name order; the header is padded with spaces to a
    multiple of 8 bytes so the data is aligned."""
    assert sys.byteorder == "little"
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype == torch.float32:
            code = "F32"
        elif t.dtype == torch.int64:
            code = "I64"
        else:
            raise ValueError(f"{name}: unsupported dtype {t.dtype}")
        raw = t.numpy().tobytes()  # x86: already little-endian
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dtype, _ = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=np.dtype(np_dtype).newbyteorder("<"))
        out[name] = torch.from_numpy(arr.astype(np_dtype).reshape(info["shape"]).copy())
    return out


def load_model_dir(path):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = build(config)
    state = load_safetensors(os.path.join(path, "model.safetensors"))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, config


# ---------------------------------------------------------------- Fashion-MNIST

def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split):
    """Returns uint8 images [n, 28, 28] and int64 labels [n] of 'train' or 't10k'."""
    images = read_idx(os.path.join(DATA_DIR, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DATA_DIR, f"{split}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def normalize(images_u8, mean, std):
    """uint8 [n, H, W] -> float32 [n, 1, H, W] with (x / 255 - mean) / std."""
    x = images_u8.to(torch.float32).div(255.0).unsqueeze(1)
    return (x - mean) / std
