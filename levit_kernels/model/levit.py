"""The LeViT model (Graham et al., ICCV 2021), written to read like the paper.

    image -> 4 x (3x3 stride-2 conv + BN, Hardswish between)     the convolutional stem
          -> stage 1: [attention block, MLP block] x depth       14x14 tokens for 224 px
          -> shrinking attention (queries subsampled 2x) + MLP
          -> stage 2 ... -> stage 3
          -> average over tokens -> BN + Linear (classifier and distillation heads)

Every linear or conv is followed by BatchNorm, every activation is Hardswish, and position
enters as a learned per-head bias added to the attention logits, looked up from a table
indexed by the absolute (dy, dx) offset between query and key.

Parameter names follow timm's LeViT, so its state dicts load unchanged. This file knows no
kernels: `LeViT(..., fused=True)` builds FusedLeViT (fused.py), a subclass whose eval-mode
forward runs levit_kernels' fused ops on the same parameters.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .config import ImageSize, LeViTConfig, check_count, get_config, to_2tuple


def check_images(x, img_size: Tuple[int, int]) -> None:
    """The bias tables are built for one token grid: other image sizes are an error, not a crash."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"images: expected a (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(f"images: expected spatial size {tuple(img_size)} (the model's img_size), "
                         f"got {tuple(x.shape[-2:])}; build the model with img_size={tuple(x.shape[-2:])} "
                         f"and load the checkpoint into it to resize the attention biases")


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling the survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class ConvNorm(nn.Module):
    """Conv2d (no bias) followed by BatchNorm2d."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 2,
                 padding: int = 1):
        super().__init__()
        self.linear = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x):
        return self.bn(self.linear(x))


class LinearNorm(nn.Module):
    """Linear (no bias) followed by BatchNorm1d over the channels of every token."""

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class NormLinear(nn.Module):
    """BatchNorm1d followed by Linear: the classifier heads."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return self.linear(self.bn(x))


class Stem16(nn.Sequential):
    """Four 3x3 stride-2 convolutions: 3 -> C/8 -> C/4 -> C/2 -> C channels, 16x smaller."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(OrderedDict([
            ("conv1", ConvNorm(in_chs, out_chs // 8)), ("act1", nn.Hardswish()),
            ("conv2", ConvNorm(out_chs // 8, out_chs // 4)), ("act2", nn.Hardswish()),
            ("conv3", ConvNorm(out_chs // 4, out_chs // 2)), ("act3", nn.Hardswish()),
            ("conv4", ConvNorm(out_chs // 2, out_chs)),
        ]))


class Subsample(nn.Module):
    """Keep every `stride`-th token in both directions of the (rows, cols) grid."""

    def __init__(self, stride: int, resolution: Tuple[int, int]):
        super().__init__()
        self.stride = stride
        self.resolution = resolution

    def forward(self, x):
        batch, _, channels = x.shape
        x = x.view(batch, self.resolution[0], self.resolution[1], channels)
        x = x[:, ::self.stride, ::self.stride]
        # Sizes spelled out, never -1, here and below: -1 is ambiguous for a batch of 0.
        return x.reshape(batch, x.shape[1] * x.shape[2], channels)


def bias_offsets(q_res: Tuple[int, int], k_res: Tuple[int, int], stride: int,
                 device=None) -> torch.Tensor:
    """(Nq, Nk) index into a per-head table of Nk entries: the |dy|, |dx| offset of each pair.

    Query i sits at grid point stride*(row, col) of the key grid; the table is laid out like the
    key grid, so offset (dy, dx) is entry dy * k_cols + dx.
    """
    def grid(rows, cols, step):
        r, c = torch.meshgrid(torch.arange(0, rows * step, step, device=device),
                              torch.arange(0, cols * step, step, device=device), indexing="ij")
        return torch.stack([r.flatten(), c.flatten()])       # (2, rows*cols)

    q_pos, k_pos = grid(*q_res, stride), grid(*k_res, 1)
    rel = (q_pos[:, :, None] - k_pos[:, None, :]).abs()
    return rel[0] * k_res[1] + rel[1]


def split_heads(t: torch.Tensor, heads: int, parts: Dict[str, int]) -> Tuple[torch.Tensor, ...]:
    """(B, N, heads · slot) projection -> one (B, heads, N, size) view per part of `parts`.

    `parts` is the per-head slot layout of an attention projection, in channel order
    ({"q": Dk, "k": Dk, "v": Dv} for self-attention): the one place that layout is written.
    """
    batch, n, width = t.shape
    pieces = t.view(batch, n, heads, width // heads).split(list(parts.values()), dim=3)
    return tuple(p.permute(0, 2, 1, 3) for p in pieces)


def slot_offsets(parts: Dict[str, int]) -> Dict[str, int]:
    """Where each part of a head's slot starts: {"q": 0, "k": Dk, "v": 2·Dk} for [q | k | v]."""
    return dict(zip(parts, itertools.accumulate(parts.values(), initial=0)))


class AttentionBias(nn.Module):
    """Learned per-head bias `attention_biases` (H, Nk) gathered to (H, Nq, Nk) by offset.

    The offsets `attention_bias_idxs` follow from the grids alone, so (as in timm) they are a
    non-persistent buffer, absent from state dicts. Nothing but this module writes them, so
    they are rebuilt whenever their contents cannot be trusted: after every `_apply` (`.to()`
    moves them, but `to_empty()` leaves them uninitialised, and a meta-device model has no
    values at all) and after a state dict is loaded into the module (`load_state_dict(...,
    assign=True)` into a meta-device model leaves them on meta).
    """

    def _init_bias(self, heads: int, q_res: Tuple[int, int], k_res: Tuple[int, int], stride: int):
        self.query_resolution, self.bias_stride = q_res, stride
        self.key_resolution = k_res     # the table is laid out like this (rows, cols) grid
        self.attention_biases = nn.Parameter(torch.zeros(heads, k_res[0] * k_res[1]))
        self.register_buffer("attention_bias_idxs", bias_offsets(q_res, k_res, stride),
                             persistent=False)

    def reset_bias_idxs(self) -> None:
        """Recompute `attention_bias_idxs` on the device of `attention_biases`."""
        self.attention_bias_idxs = bias_offsets(self.query_resolution, self.key_resolution,
                                                self.bias_stride, self.attention_biases.device)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.reset_bias_idxs()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.reset_bias_idxs()

    def gathered_bias(self) -> torch.Tensor:
        return self.attention_biases[:, self.attention_bias_idxs]


class Attention(AttentionBias):
    """Multi-head self-attention with positional bias; q, k, v from one projection."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float,
                 resolution: Tuple[int, int]):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        # Per head the projection holds [q | k | v] (timm's and the original release's layout).
        self.head_parts = {"q": key_dim, "k": key_dim, "v": self.val_dim}
        self.qkv = LinearNorm(dim, num_heads * sum(self.head_parts.values()))
        self.proj = nn.Sequential(OrderedDict([
            ("act", nn.Hardswish()),
            ("ln", LinearNorm(num_heads * self.val_dim, dim, bn_weight_init=0.0)),
        ]))
        self._init_bias(num_heads, resolution, resolution, 1)

    def forward(self, x):
        batch, n, _ = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads, self.head_parts)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.gathered_bias()
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, n, self.num_heads * self.val_dim))


class AttentionDownsample(AttentionBias):
    """Shrinking attention: queries from the subsampled grid, keys/values from the full one."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int,
                 attn_ratio: float, stride: int, resolution: Tuple[int, int]):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        q_res = tuple((r - 1) // stride + 1 for r in resolution)
        # Per head the kv projection holds [k | v]; q has a projection of its own.
        self.head_parts = {"k": key_dim, "v": self.val_dim}
        self.kv = LinearNorm(in_dim, num_heads * sum(self.head_parts.values()))
        self.q = nn.Sequential(OrderedDict([
            ("down", Subsample(stride, resolution)),
            ("ln", LinearNorm(in_dim, num_heads * key_dim)),
        ]))
        self.proj = nn.Sequential(OrderedDict([
            ("act", nn.Hardswish()),
            ("ln", LinearNorm(num_heads * self.val_dim, out_dim)),
        ]))
        self._init_bias(num_heads, q_res, resolution, stride)

    def forward(self, x):
        batch, n, _ = x.shape
        k, v = split_heads(self.kv(x), self.num_heads, self.head_parts)
        q = self.q(x)
        q = q.view(batch, q.shape[1], self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.gathered_bias()
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, q.shape[2],
                                                    self.num_heads * self.val_dim))


class LevitMlp(nn.Module):
    """Linear+BN -> Hardswish -> Linear+BN (expansion `mlp_ratio`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ln1 = LinearNorm(dim, hidden)
        self.act = nn.Hardswish()
        self.ln2 = LinearNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x):
        return self.ln2(self.act(self.ln1(x)))


class LevitDownsample(nn.Module):
    """Shrinking attention followed by a residual MLP."""

    def __init__(self, cfg: LeViTConfig, stage: int, resolution: Tuple[int, int]):
        super().__init__()
        in_dim, out_dim = cfg.embed_dim[stage - 1], cfg.embed_dim[stage]
        self.attn_downsample = AttentionDownsample(
            in_dim, out_dim, cfg.key_dim, cfg.down_heads(stage), cfg.down_attn_ratio,
            cfg.down_stride, resolution)
        self.mlp = LevitMlp(out_dim, int(out_dim * cfg.down_mlp_ratio))
        self.drop_path = cfg.drop_path

    def forward(self, x):
        x = self.attn_downsample(x)
        return x + drop_path(self.mlp(x), self.drop_path, self.training)


class LevitBlock(nn.Module):
    """Residual attention then residual MLP."""

    def __init__(self, cfg: LeViTConfig, stage: int, resolution: Tuple[int, int]):
        super().__init__()
        dim = cfg.embed_dim[stage]
        self.attn = Attention(dim, cfg.key_dim, cfg.num_heads[stage], cfg.attn_ratio, resolution)
        self.mlp = LevitMlp(dim, int(dim * cfg.mlp_ratio))
        self.drop_path = cfg.drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(x), self.drop_path, self.training)
        return x + drop_path(self.mlp(x), self.drop_path, self.training)


class LevitStage(nn.Module):
    def __init__(self, cfg: LeViTConfig, stage: int, resolutions):
        super().__init__()
        self.downsample = (LevitDownsample(cfg, stage, resolutions[stage - 1]) if stage > 0
                           else nn.Identity())
        self.blocks = nn.Sequential(*[LevitBlock(cfg, stage, resolutions[stage])
                                      for _ in range(cfg.depth[stage])])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class LeViT(nn.Module):
    """LeViT image classifier.

    Args:
        variant: "LeViT-128S", "LeViT-128", "LeViT-192", "LeViT-256", "LeViT-384" (or an
            ablation, or a LeViTConfig).
        fused: build a FusedLeViT (fused.py) instead: the same module, whose eval-mode
            forward runs levit_kernels' fused ops. Training mode runs the plain layers.
        num_classes: classifier outputs (0 gives pooled features).
        distillation: add the distillation head; eval returns the mean of both heads, training
            returns (head, head_dist).
        img_size: int or (height, width); sets the token grids and bias tables.
    """

    fused = False   # FusedLeViT (fused.py) sets it
    # The subclass `fused=True` builds. fused.py registers it here when it is imported (the
    # package imports it), so that this file never needs to know about kernels.
    fused_class: Optional[type] = None

    def __new__(cls, *args, fused: bool = False, **kwargs):
        if fused and not cls.fused:
            if LeViT.fused_class is None:
                raise RuntimeError("LeViT(fused=True) needs levit_kernels.model.fused: import "
                                   "levit_kernels (or levit_kernels.model) first")
            cls = LeViT.fused_class
        return super().__new__(cls)

    def __init__(self, variant: Union[str, LeViTConfig] = "LeViT-256", fused: bool = False,
                 num_classes: int = 1000, distillation: bool = True, img_size: ImageSize = 224,
                 in_chans: int = 3):
        super().__init__()
        self.config = cfg = get_config(variant)
        self.img_size = to_2tuple(img_size)
        num_classes = check_count("num_classes", num_classes, 0)
        in_chans = check_count("in_chans", in_chans, 1)
        if not isinstance(distillation, bool):
            raise TypeError(f"distillation: expected True or False, got {distillation!r}")
        self.resolutions = cfg.resolutions(self.img_size)
        self.num_classes, self.distillation = num_classes, distillation
        self.stem = Stem16(in_chans, cfg.embed_dim[0])
        self.stages = nn.Sequential(*[LevitStage(cfg, i, self.resolutions)
                                      for i in range(len(cfg.embed_dim))])
        dim = cfg.embed_dim[-1]
        self.head = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if distillation:
            self.head_dist = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, N, C) tokens of the last stage."""
        check_images(x, self.img_size)
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor):
        x = x.mean(dim=1)
        if not self.distillation:
            return self.head(x)
        out, out_dist = self.head(x), self.head_dist(x)
        if self.training:
            return out, out_dist
        return (out + out_dist) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))
