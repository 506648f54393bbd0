"""Appendix B of the paper: each head's learned attention bias as a map over offsets.

A bias table (H, rows*cols) holds one value per absolute offset (|dy|, |dx|). Mirrored into
all four quadrants it becomes a (2*rows-1, 2*cols-1) image centred on the query: what a head
adds to a key's logit as a function of where that key sits relative to the query.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..model.levit import AttentionBias, LeViT


def attention_modules(model: LeViT) -> List[tuple]:
    """(name, module) for every attention with a bias table, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionBias)]


def offset_maps(module: AttentionBias) -> torch.Tensor:
    """(H, 2*rows-1, 2*cols-1): each head's bias at every signed offset (dy, dx)."""
    rows, cols = module.key_resolution
    table = module.attention_biases.detach().float().cpu().reshape(-1, rows, cols)
    top = torch.cat([table.flip(1)[:, :-1], table], dim=1)        # dy from -(rows-1) to rows-1
    return torch.cat([top.flip(2)[:, :, :-1], top], dim=2)        # dx likewise


def plot_bias_maps(model: LeViT, path: str, blocks: Optional[Sequence[int]] = None) -> str:
    """Write a PNG grid (one row per chosen attention block, one column per head)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = attention_modules(model)
    chosen = range(len(mods)) if blocks is None else blocks
    for b in chosen:
        if not 0 <= b < len(mods):
            raise ValueError(f"blocks: index {b} out of range; the model has {len(mods)} "
                             f"attention blocks (0..{len(mods) - 1})")
    maps = [(mods[b][0], offset_maps(mods[b][1])) for b in chosen]
    heads = max(m.shape[0] for _, m in maps)
    fig, axes = plt.subplots(len(maps), heads, figsize=(1.6 * heads, 1.7 * len(maps)),
                             squeeze=False)
    for row, (name, m) in enumerate(maps):
        for h in range(heads):
            ax = axes[row][h]
            ax.axis("off")
            if h < m.shape[0]:
                ax.imshow(m[h].numpy(), cmap="viridis")
                ax.set_title(f"head {h}", fontsize=7)
        axes[row][0].text(-0.15, 0.5, name.replace(".attn", "").replace("stages.", "s"),
                          transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=6)
    fig.suptitle(f"{model.config.name}: learned attention bias by offset (dy, dx)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
