"""What the Triton kernels and their launchers share: the fp32 dot switch, where the launchers
may run (CUDA, or CPU tensors under TRITON_INTERPRET=1) and the `out=` buffer check."""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks

GPU_DEVICES = "a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1)"


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """tl.dot, in IEEE fp32 when IEEE is set (float32 inputs: TF32 would cost ~1e-3)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


def interpreting() -> bool:
    """True when Triton runs its kernels on CPU tensors (set before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def gpu_dtypes():
    """{device type: dtypes} the launchers take (checks.check_same)."""
    allowed = {"cuda": checks.CUDA_DTYPES}
    if interpreting():
        allowed["cpu"] = checks.CUDA_DTYPES
    return allowed


def check_out(out: Optional[torch.Tensor], shape, like: torch.Tensor) -> torch.Tensor:
    """A caller's output buffer (contiguous, `shape`, like's dtype and device), or a new one."""
    if out is None:
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous tensor of shape {tuple(shape)}, got shape "
                         f"{tuple(out.shape)} with strides {out.stride()}")
    if out.dtype != like.dtype or out.device != like.device:
        raise TypeError(f"out: expected {like.dtype} on {like.device}, got {out.dtype} on "
                        f"{out.device}")
    return out
