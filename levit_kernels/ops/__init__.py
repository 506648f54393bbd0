"""The kernel layer: LeViT's fused ops as torch ops, with their oracle and their launchers.
It knows no model (levit_kernels.model builds on it).

    torch_ops.py   the `levit::*` registrations (schemas, fake impls) and these wrappers:
                   attention, attention_probs, linear, mlp, linear_packed, mlp_packed,
                   conv2d_packed
    reference.py   the pure-PyTorch oracle every kernel is tested against
    checks.py      input validation shared by the ops and both launcher families
    cpu.py         CPU launchers on the C++ kernels of csrc/ (extension.py loads them)
    gpu/           GPU launchers on Triton kernels, one file per op (imported on first use)

Importing this package touches neither CUDA nor Triton.
"""
from . import checks, cpu, reference
from .torch_ops import (attention, attention_probs, conv2d_packed, launchers, linear,
                        linear_packed, mlp, mlp_packed)

__all__ = ["attention", "attention_probs", "linear", "mlp", "linear_packed", "mlp_packed",
           "conv2d_packed", "launchers", "checks", "cpu", "reference"]
