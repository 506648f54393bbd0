"""Pure-PyTorch versions of every levit_kernels op: the oracle.

Tests and benchmarks compare the CPU (C++) and GPU (Triton) kernels against these functions.
They are written the way LeViT's own code computes each step, one torch call per step, and are
never edited to agree with a kernel. Signatures match the kernels exactly (see DESIGN.md).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "hardswish")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              scale: float, hardswish: bool) -> torch.Tensor:
    """act(softmax(scale * q @ k^T + bias) @ v) with heads side by side.

    q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv), bias (H,Nq,Nk) -> (B, Nq, H*Dv).
    """
    batch, heads, n_q, _ = q.shape
    probs = attention_probs(q, k, bias, scale)
    out = torch.matmul(probs, v)                       # (B, H, Nq, Dv)
    out = out.transpose(1, 2).reshape(batch, n_q, heads * v.shape[-1])
    return F.hardswish(out) if hardswish else out


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias) over the keys: (B, H, Nq, Nk)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale + bias
    return scores.softmax(dim=-1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: str = "none") -> torch.Tensor:
    """act(x @ weight^T + bias) + residual, with act in {"none", "hardswish"}."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    out = F.linear(x, weight, bias)
    if activation == "hardswish":
        out = F.hardswish(out)
    if residual is not None:
        out = out + residual
    return out


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
        b2: torch.Tensor) -> torch.Tensor:
    """LeViT's residual MLP: x + (hardswish(x @ w1^T + b1) @ w2^T + b2)."""
    hidden = linear(x, w1, b1, activation="hardswish")
    return linear(hidden, w2, b2, residual=x)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
           padding: int, activation: str = "none") -> torch.Tensor:
    """act(conv2d(x, weight, bias)) in NHWC: x (B, H, W, Cin) -> (B, Ho, Wo, Cout), weight
    (Cout, Cin, kh, kw) -- a stem convolution (BN folded) with its Hardswish."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=stride, padding=padding)
    if activation == "hardswish":
        out = F.hardswish(out)
    return out.permute(0, 2, 3, 1)
