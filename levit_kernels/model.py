"""The LeViT model (Graham et al., ICCV 2021), written to read like the paper.

    image -> 4 x (3x3 stride-2 conv + BN, Hardswish between)     the convolutional stem
          -> stage 1: [attention block, MLP block] x depth       14x14 tokens for 224 px
          -> shrinking attention (queries subsampled 2x) + MLP
          -> stage 2 ... -> stage 3
          -> average over tokens -> BN + Linear (classifier and distillation heads)

Every linear or conv is followed by BatchNorm, every activation is Hardswish, and position
enters as a learned per-head bias added to the attention logits, looked up from a table
indexed by the absolute (dy, dx) offset between query and key.

Parameter names follow timm's LeViT, so its state dicts load unchanged. `fused=True` makes
eval-mode forwards run through levit_kernels' fused ops (see fused.py); training mode and
`fused=False` run the plain PyTorch layers below.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ImageSize, LeViTConfig, get_config, to_2tuple


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
        return x[:, ::self.stride, ::self.stride].reshape(batch, -1, channels)


def bias_offsets(q_res: Tuple[int, int], k_res: Tuple[int, int], stride: int) -> torch.Tensor:
    """(Nq, Nk) index into a per-head table of Nk entries: the |dy|, |dx| offset of each pair.

    Query i sits at grid point stride*(row, col) of the key grid; the table is laid out like the
    key grid, so offset (dy, dx) is entry dy * k_cols + dx.
    """
    def grid(rows, cols, step):
        r, c = torch.meshgrid(torch.arange(0, rows * step, step), torch.arange(0, cols * step, step),
                              indexing="ij")
        return torch.stack([r.flatten(), c.flatten()])       # (2, rows*cols)

    q_pos, k_pos = grid(*q_res, stride), grid(*k_res, 1)
    rel = (q_pos[:, :, None] - k_pos[:, None, :]).abs()
    return rel[0] * k_res[1] + rel[1]


class AttentionBias(nn.Module):
    """Learned per-head bias `attention_biases` (H, Nk) gathered to (H, Nq, Nk) by offset."""

    def _init_bias(self, heads: int, q_res: Tuple[int, int], k_res: Tuple[int, int], stride: int):
        self.key_resolution = k_res     # the table is laid out like this (rows, cols) grid
        self.attention_biases = nn.Parameter(torch.zeros(heads, k_res[0] * k_res[1]))
        self.register_buffer("attention_bias_idxs", bias_offsets(q_res, k_res, stride),
                             persistent=False)

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
        # Per head the projection holds [q | k | v]: (Dk, Dk, Dv) channels.
        self.qkv = LinearNorm(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Sequential(OrderedDict([
            ("act", nn.Hardswish()),
            ("ln", LinearNorm(num_heads * self.val_dim, dim, bn_weight_init=0.0)),
        ]))
        self._init_bias(num_heads, resolution, resolution, 1)

    def forward(self, x):
        batch, n, _ = x.shape
        qkv = self.qkv(x).view(batch, n, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.gathered_bias()
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, n, -1))


class AttentionDownsample(AttentionBias):
    """Shrinking attention: queries from the subsampled grid, keys/values from the full one."""

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int,
                 attn_ratio: float, stride: int, resolution: Tuple[int, int]):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        q_res = tuple((r - 1) // stride + 1 for r in resolution)
        self.kv = LinearNorm(in_dim, num_heads * (key_dim + self.val_dim))
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
        kv = self.kv(x).view(batch, n, self.num_heads, -1)
        k, v = (t.permute(0, 2, 1, 3) for t in kv.split([self.key_dim, self.val_dim], dim=3))
        q = self.q(x).view(batch, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.gathered_bias()
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, q.shape[2], -1))


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
        fused: in eval mode, run through levit_kernels' fused ops (BatchNorm folded, biases
            gathered once, weights packed). Training mode always runs the plain layers.
        num_classes: classifier outputs (0 gives pooled features).
        distillation: add the distillation head; eval returns the mean of both heads, training
            returns (head, head_dist).
        img_size: int or (height, width); sets the token grids and bias tables.
    """

    def __init__(self, variant: Union[str, LeViTConfig] = "LeViT-256", fused: bool = False,
                 num_classes: int = 1000, distillation: bool = True, img_size: ImageSize = 224,
                 in_chans: int = 3):
        super().__init__()
        self.config = cfg = get_config(variant)
        self.img_size = to_2tuple(img_size)
        self.resolutions = cfg.resolutions(self.img_size)
        self.num_classes, self.distillation = num_classes, distillation
        self.stem = Stem16(in_chans, cfg.embed_dim[0])
        self.stages = nn.Sequential(*[LevitStage(cfg, i, self.resolutions)
                                      for i in range(len(cfg.embed_dim))])
        dim = cfg.embed_dim[-1]
        self.head = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if distillation:
            self.head_dist = NormLinear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.fused = bool(fused)
        self._fused_cache = None        # a fused.FusedPlan: built and checked there, never stale

    # -- plain PyTorch path ------------------------------------------------------------------
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
        if self.fused and not self.training:
            from .fused import fused_forward
            return fused_forward(self, x)
        return self.forward_head(self.forward_features(x))

    # -- the fused path's cache ----------------------------------------------------------------
    # fused.get_plan checks every tensor's storage and version counter on each eager call, so
    # in-place edits are caught there. Where tensors are replaced or the mode changes, the plan
    # is rebuilt at once, so torch.compile (which cannot run those checks) always finds one.
    def refresh_fused(self):
        """Rebuild the fused path's folded/packed weights now. Needed only after edits the
        cache cannot see: in-place changes through `.data` (which has its own version counter,
        e.g. `p.data.mul_(...)`); everything else rebuilds it by itself."""
        self._refresh_fused()

    def __getstate__(self):
        # The plan is derived state, and its C++ forward program cannot be pickled: a copy
        # (copy.deepcopy, torch.save of the whole model) builds its own on first use.
        state = self.__dict__.copy()
        state["_fused_cache"] = None
        return state

    def _refresh_fused(self):
        self._fused_cache = None
        if self.fused and not self.training:
            from .fused import prepare
            prepare(self)

    def train(self, mode: bool = True):
        super().train(mode)
        self._refresh_fused()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._refresh_fused()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._refresh_fused()
        return result
