"""LeViT configurations: the paper's five variants and the Appendix A.2 ablations.

A variant is three stages of attention + MLP blocks (at 14x14, 7x7 and 4x4 tokens for a
224-pixel image) joined by shrinking-attention blocks. Shrinking attention uses the paper's
settings: key dim D, C/D heads (C = channels entering it), attention ratio 4, MLP ratio 2,
stride 2. Names are accepted as "LeViT-128S", "128S" or "levit_128s", in any case.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
from typing import Dict, Tuple, Union

ImageSize = Union[int, Tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class LeViTConfig:
    name: str
    embed_dim: Tuple[int, ...]          # channels C of each stage
    key_dim: int                        # D: per-head key/query width, all stages
    num_heads: Tuple[int, ...]          # heads of each stage's attention blocks
    depth: Tuple[int, ...]              # attention+MLP blocks per stage
    attn_ratio: float = 2.0             # value width = attn_ratio * D
    mlp_ratio: float = 2.0              # MLP hidden width = mlp_ratio * C
    down_attn_ratio: float = 4.0        # shrinking attention: value width = 4 * D
    down_mlp_ratio: float = 2.0         # MLP after shrinking attention
    down_stride: int = 2
    drop_path: float = 0.0              # constant drop-path rate of every residual (paper)
    # What the paper reports, for checking (Table 3): parameters with both heads, multiply-adds.
    paper_params: int = 0
    paper_flops: int = 0

    def __post_init__(self):
        stages = len(self.embed_dim)
        if not (len(self.num_heads) == len(self.depth) == stages) or stages == 0:
            raise ValueError(f"{self.name}: embed_dim, num_heads and depth need one entry per stage")
        # Every width the model derives must be a positive int: a zero-width layer makes a
        # model that divides by zero, or one no kernel (and no sensible checkpoint) has.
        for field, minimum in (("embed_dim", 1), ("num_heads", 1), ("depth", 0)):
            for i, value in enumerate(getattr(self, field)):
                check_count(f"{self.name}: {field}[{i}]", value, minimum)
        check_count(f"{self.name}: key_dim", self.key_dim, 1)
        check_count(f"{self.name}: down_stride", self.down_stride, 1)
        widths = [("attn_ratio", self.attn_ratio, self.key_dim),
                  ("down_attn_ratio", self.down_attn_ratio, self.key_dim)]
        widths += [(ratio, getattr(self, ratio), c) for c in self.embed_dim
                   for ratio in ("mlp_ratio", "down_mlp_ratio")]
        for ratio, value, base in widths:
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise ValueError(f"{self.name}: {ratio}: expected a finite number, got {value!r}")
            if int(value * base) < 1:
                raise ValueError(f"{self.name}: {ratio}={value!r} gives a width of "
                                 f"int({value!r} * {base}) = 0; expected {ratio} * {base} >= 1")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"{self.name}: drop_path={self.drop_path!r}, expected a rate in "
                             f"[0, 1)")
        for i in range(1, stages):
            if self.embed_dim[i - 1] % self.key_dim:
                raise ValueError(f"{self.name}: embed_dim[{i - 1}]={self.embed_dim[i - 1]} must be a "
                                 f"multiple of key_dim={self.key_dim} (shrinking attention heads)")

    def down_heads(self, stage: int) -> int:
        """Heads of the shrinking attention entering `stage` (C/D of the previous stage)."""
        return self.embed_dim[stage - 1] // self.key_dim

    def resolutions(self, img_size: ImageSize = 224) -> Tuple[Tuple[int, int], ...]:
        """Token grid (rows, cols) of each stage for an input image size."""
        res = stem_resolution(img_size)
        out = [res]
        for _ in range(1, len(self.embed_dim)):
            res = tuple(downsampled(r, self.down_stride) for r in res)
            out.append(res)
        return tuple(out)


def check_count(name: str, value, minimum: int) -> int:
    """`value` as an int (ints and numpy ints; not bools or floats) >= minimum; the error
    names `name`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        count = None
    if count is None or count < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return count


def to_2tuple(size: ImageSize, name: str = "img_size") -> Tuple[int, int]:
    """An int or (height, width) of positive ints -> (height, width); anything else (floats,
    bools, strings, other lengths) is an error naming `name`."""
    sides = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    try:
        if len(sides) != 2 or any(isinstance(side, bool) for side in sides):
            raise TypeError
        sides = tuple(operator.index(side) for side in sides)    # ints, numpy ints; no floats
    except TypeError:
        raise TypeError(f"{name}: expected an int or (height, width) of ints, "
                        f"got {size!r}") from None
    if min(sides) < 1:
        raise ValueError(f"{name}: expected positive sides, got {sides}")
    return sides


def downsampled(n: int, stride: int) -> int:
    """Length after a stride-`stride` subsampling/convolution with 'same' padding: ceil(n/stride)."""
    return (n - 1) // stride + 1


def stem_resolution(img_size: ImageSize) -> Tuple[int, int]:
    """Four 3x3 stride-2 convolutions with padding 1: 224 -> 112 -> 56 -> 28 -> 14."""
    h, w = to_2tuple(img_size)
    for _ in range(4):
        h, w = downsampled(h, 2), downsampled(w, 2)
    return (h, w)


VARIANTS: Dict[str, LeViTConfig] = {c.name: c for c in [
    LeViTConfig("LeViT-128S", (128, 256, 384), 16, (4, 6, 8), (2, 3, 4),
                paper_params=7_777_058, paper_flops=305_000_000),
    LeViTConfig("LeViT-128", (128, 256, 384), 16, (4, 8, 12), (4, 4, 4),
                paper_params=9_213_936, paper_flops=406_000_000),
    LeViTConfig("LeViT-192", (192, 288, 384), 32, (3, 5, 6), (4, 4, 4),
                paper_params=10_947_069, paper_flops=658_000_000),
    LeViTConfig("LeViT-256", (256, 384, 512), 32, (4, 6, 8), (4, 4, 4),
                paper_params=18_893_876, paper_flops=1_120_000_000),
    LeViTConfig("LeViT-384", (384, 512, 768), 32, (6, 9, 12), (4, 4, 4), drop_path=0.1,
                paper_params=39_128_836, paper_flops=2_353_000_000),
    # Appendix A.2 ablations, sized to LeViT-128S's budget (see README for how).
    # A1: no pyramid -- one stage of depth 11 at 14x14 (C 80, 6 heads of D 16: 299M).
    LeViTConfig("LeViT-A1", (80,), 16, (6,), (11,), paper_flops=305_000_000),
    # A6: DeiT-like blocks -- wide keys and values (D = Dv = 64 in every stage) and MLP
    # ratio 4, depths cut to stay on budget (310M multiply-adds).
    LeViTConfig("LeViT-A6", (128, 256, 384), 64, (2, 4, 6), (1, 2, 2), attn_ratio=1.0,
                mlp_ratio=4.0, paper_flops=305_000_000),
]}


def canonical_name(name: str) -> str:
    """'LeViT-128S', '128s', 'levit_128s' -> 'LeViT-128S'."""
    if not isinstance(name, str):
        raise TypeError(f"variant must be a str, got {type(name).__name__}")
    key = re.sub(r"^levit[-_ ]?", "", name.strip().lower())
    for canonical in VARIANTS:
        if canonical.lower().removeprefix("levit-") == key:
            return canonical
    raise ValueError(f"unknown LeViT variant {name!r}; expected one of {', '.join(VARIANTS)}")


def get_config(variant: Union[str, LeViTConfig]) -> LeViTConfig:
    if isinstance(variant, LeViTConfig):
        return variant
    return VARIANTS[canonical_name(variant)]


def multiply_adds(cfg: LeViTConfig, img_size: ImageSize = 224) -> int:
    """Multiply-adds of one forward pass, counted as the paper's code counts them.

    Convolutions and linear layers: in * out (* kernel area) per output position; attention:
    H * Nq * Nk * (Dk + 1 + Dv) -- the logits, one per softmax entry, and the value product.
    The classifier heads and the elementwise work (BatchNorm folds away, Hardswish) are not
    counted, which is how 305M for LeViT-128S comes out.
    """
    cfg = get_config(cfg)
    h, w = to_2tuple(img_size)
    total, chans = 0, (3,) + tuple(cfg.embed_dim[0] // d for d in (8, 4, 2, 1))
    for c_in, c_out in zip(chans, chans[1:]):               # the stem
        h, w = downsampled(h, 2), downsampled(w, 2)
        total += c_in * c_out * 9 * h * w
    res = cfg.resolutions(img_size)

    def attention(n_q, n_k, heads, dk, dv):
        return heads * n_q * n_k * (dk + 1 + dv)

    for stage, (dim, heads, depth) in enumerate(zip(cfg.embed_dim, cfg.num_heads, cfg.depth)):
        n = res[stage][0] * res[stage][1]
        if stage > 0:                                          # shrinking attention + MLP
            n_k, c_in = res[stage - 1][0] * res[stage - 1][1], cfg.embed_dim[stage - 1]
            d_heads, dk = cfg.down_heads(stage), cfg.key_dim
            dv = int(cfg.down_attn_ratio * dk)
            total += n_k * c_in * d_heads * (dk + dv)          # kv projection
            total += n * c_in * d_heads * dk                   # q projection (subsampled)
            total += attention(n, n_k, d_heads, dk, dv)
            total += n * d_heads * dv * dim                    # output projection
            total += 2 * n * dim * int(dim * cfg.down_mlp_ratio)
        dk, dv = cfg.key_dim, int(cfg.attn_ratio * cfg.key_dim)
        block = n * dim * heads * (2 * dk + dv) + attention(n, n, heads, dk, dv)
        block += n * heads * dv * dim + 2 * n * dim * int(dim * cfg.mlp_ratio)
        total += depth * block
    return total
