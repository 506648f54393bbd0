"""The paper's supplementary Table 1: where one block's time goes, LeViT-256 vs DeiT-Tiny.

Both blocks run at 14x14 tokens, batch 1, on one CPU thread:
  LeViT-256 stage 1: C 256, 4 heads, D 32, values 2D, MLP x2, BatchNorm (folds away in eval)
  DeiT-Tiny:         C 192, 3 heads, D 64, values D,  MLP x4, LayerNorm, Hardswish for GELU
Each component is timed on its own (median of many calls) in plain PyTorch; the fused path
times what levit_kernels runs instead, where one call covers several rows of the table.
The paper measured 2474 us (DeiT-Tiny) vs 2365 us (LeViT-256) on a Xeon E5-2698 core.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from .. import ops

ROWS = ["LayerNorm / BatchNorm", "Q/K projection", "V projection", "QK^T (+bias, softmax)",
        "attention x V", "attention projection", "MLP"]


def median_us(fn: Callable[[], object], min_time: float = 0.2, min_iters: int = 20) -> float:
    for _ in range(3):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _block_tensors(channels, heads, d_k, d_v, mlp_ratio, n=196, gen=None):
    r = lambda *s: torch.randn(*s, generator=gen) / (s[-1] ** 0.5 if len(s) > 1 else 1)  # noqa
    return dict(
        x=torch.randn(1, n, channels, generator=gen),
        w_qk=r(heads * 2 * d_k, channels), w_v=r(heads * d_v, channels),
        w_proj=r(channels, heads * d_v),
        w1=r(int(channels * mlp_ratio), channels), w2=r(channels, int(channels * mlp_ratio)),
        bias=torch.randn(heads, n, n, generator=gen))


def reference_rows(channels, heads, d_k, d_v, mlp_ratio, norm: str) -> Dict[str, float]:
    """Time each component of one block in plain PyTorch (as timm/DeiT run it)."""
    t = _block_tensors(channels, heads, d_k, d_v, mlp_ratio)
    x, n = t["x"], t["x"].shape[1]
    q = torch.randn(1, heads, n, d_k)
    k, v = torch.randn(1, heads, n, d_k), torch.randn(1, heads, n, d_v)
    attn = torch.softmax(torch.randn(1, heads, n, n), -1)
    attn_out = torch.randn(1, n, heads * d_v)
    scale = d_k ** -0.5
    if norm == "layernorm":      # pre-norm before attention and before the MLP
        g, b = torch.ones(channels), torch.zeros(channels)
        norm_fn = lambda: (F.layer_norm(x, (channels,), g, b), F.layer_norm(x, (channels,), g, b))  # noqa
    else:                        # BN after qkv, proj, and both MLP linears
        sizes = [heads * (2 * d_k + d_v), channels, int(channels * mlp_ratio), channels]
        stats = [(torch.zeros(s), torch.ones(s)) for s in sizes]
        feats = [torch.randn(n, s) for s in sizes]
        norm_fn = lambda: [F.batch_norm(f, m, v_, training=False) for f, (m, v_) in zip(feats, stats)]  # noqa
    return {
        ROWS[0]: median_us(norm_fn),
        ROWS[1]: median_us(lambda: F.linear(x, t["w_qk"])),
        ROWS[2]: median_us(lambda: F.linear(x, t["w_v"])),
        ROWS[3]: median_us(lambda: torch.softmax(q @ k.transpose(-2, -1) * scale + t["bias"], -1)),
        ROWS[4]: median_us(lambda: (attn @ v).transpose(1, 2).reshape(1, n, heads * d_v)),
        ROWS[5]: median_us(lambda: F.linear(F.hardswish(attn_out), t["w_proj"]) + x),
        ROWS[6]: median_us(lambda: x + F.linear(F.hardswish(F.linear(x, t["w1"])), t["w2"])),
    }


def fused_rows(channels, heads, d_k, d_v, mlp_ratio) -> Dict[str, float]:
    """Time what the fused block runs: 4 calls, each covering one or more table rows."""
    from ..ops import cpu
    t = _block_tensors(channels, heads, d_k, d_v, mlp_ratio)
    x, n = t["x"], t["x"].shape[1]
    w_qkv = torch.cat([t["w_qk"], t["w_v"]])
    b_qkv = torch.zeros(w_qkv.shape[0])
    packed_qkv = cpu.pack_weight(w_qkv)
    packed_proj, b_proj = cpu.pack_weight(t["w_proj"]), torch.zeros(channels)
    hidden = t["w1"].shape[0]
    packed_1, packed_2 = cpu.pack_weight(t["w1"]), cpu.pack_weight(t["w2"])
    b1, b2 = torch.zeros(hidden), torch.zeros(channels)
    qkv = ops.linear_packed(x, packed_qkv, w_qkv.shape[0], b_qkv).view(1, n, heads, -1)
    qkv = qkv.permute(0, 2, 1, 3)
    q, k, v = qkv[..., :d_k], qkv[..., d_k:2 * d_k], qkv[..., 2 * d_k:]
    attn_out = ops.attention(q, k, v, t["bias"], d_k ** -0.5, True)
    return {
        ROWS[0]: 0.0,            # folded into the linear layers
        "qkv projection (Q/K + V)": median_us(
            lambda: ops.linear_packed(x, packed_qkv, w_qkv.shape[0], b_qkv)),
        "attention (QK^T, bias, softmax, x V, Hardswish)": median_us(
            lambda: ops.attention(q, k, v, t["bias"], d_k ** -0.5, True)),
        "projection + residual": median_us(
            lambda: ops.linear_packed(attn_out, packed_proj, channels, b_proj, x)),
        ROWS[6]: median_us(lambda: ops.mlp_packed(x, packed_1, b1, packed_2, b2)),
    }


BLOCKS: Dict[str, Tuple] = {
    "DeiT-Tiny": (192, 3, 64, 64, 4.0, "layernorm"),
    "LeViT-256": (256, 4, 32, 64, 2.0, "batchnorm"),
}


def profile_table(fused: bool = True) -> Tuple[str, Dict]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = {name: reference_rows(*spec) for name, spec in BLOCKS.items()}
        if fused:
            data["LeViT-256 fused"] = fused_rows(*BLOCKS["LeViT-256"][:5])
    finally:
        torch.set_num_threads(old)
    lines = ["One block at 14x14 tokens, batch 1, 1 CPU thread (microseconds, median)", ""]
    names = list(data)
    rows = ROWS + [r for r in data.get("LeViT-256 fused", {}) if r not in ROWS]
    lines.append(f"{'component':<50}" + "".join(f"{n:>18}" for n in names))
    for row in rows:
        cells = "".join(f"{data[n][row]:>18.1f}" if row in data[n] else f"{'':>18}"
                        for n in names)
        lines.append(f"{row:<50}{cells}")
    lines.append(f"{'total':<50}" + "".join(f"{sum(data[n].values()):>18.1f}" for n in names))
    lines.append("")
    lines.append("Paper (Xeon E5-2698, 1 core): DeiT-Tiny 2474 us, LeViT-256 2365 us.")
    return "\n".join(lines), data
