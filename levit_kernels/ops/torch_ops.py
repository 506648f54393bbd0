"""The `levit::*` torch ops: one schema each, input checks, device dispatch, fake impls.

Each op's three faces: the oracle in ops/reference.py, the CPU kernel behind ops/cpu.py
(csrc/), the GPU kernel in ops/gpu/ (Triton); the schema is declared once, here.

    levit::attention(q, k, v, bias, scale, hardswish)      -> (B, Nq, H*Dv)
    levit::attention_probs(q, k, bias, scale)              -> (B, H, Nq, Nk)
    levit::linear(x, weight, bias, residual, activation)   -> (..., N)
    levit::mlp(x, w1, b1, w2, b2)                          -> (..., C)
    levit::linear_packed / levit::mlp_packed               CPU only: weights from cpu.pack_weight
    levit::conv2d_packed(x, w, cout, k, stride, pad, bias, activation)   CPU only, NHWC (stem)

CPU tensors run the C++ kernels (ops/cpu.py), CUDA tensors the Triton kernels (ops/gpu/);
both are imported on first use, so importing this module touches neither
CUDA nor Triton. The ops are opaque to torch.compile (custom_op with a fake implementation),
so `torch.compile(model, fullgraph=True)` traces them without graph breaks. Empty inputs are
answered by the reference (empty in, empty out; an empty reduction gives what PyTorch gives).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.types import Number
from torch.library import custom_op

from . import checks, reference
from .extension import lib


def launchers(device: torch.device):
    """The launcher module for a device: ops/cpu.py or ops/gpu/."""
    if device.type == "cpu":
        from . import cpu
        lib()  # raises, naming the fix, when the extension is not built
        return cpu
    if device.type == "cuda":
        try:
            from . import gpu
        except ImportError as exc:   # no Triton: say so instead of a bare import error
            raise RuntimeError(f"levit_kernels ops on CUDA tensors run Triton kernels: {exc}") \
                from exc
        return gpu
    raise ValueError(f"levit_kernels ops run on cpu or cuda tensors, got device {device}")


# -- attention -------------------------------------------------------------------------------
# `scale` is a Scalar in the schema, not a float: the dispatcher turns a bool (even a bool
# tensor) passed for a float into 1.0 before any Python code sees it, so only a Scalar lets
# the checks refuse `scale=True` (the wrappers below hand the ops a float).
@custom_op("levit::attention", mutates_args=(), device_types=("cpu", "cuda"))
def _attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: Number,
               hardswish: bool) -> Tensor:
    batch, heads, n_q, n_k, _, d_v = checks.check_attention(q, k, v, bias, scale=scale)
    if batch * n_q * heads * d_v == 0 or n_k == 0 or q.shape[-1] == 0:
        return reference.attention(q, k, v, bias, scale, hardswish).contiguous()
    return launchers(q.device).attention(q, k, v, bias, scale, hardswish)


@_attention.register_fake
def _(q, k, v, bias, scale, hardswish):
    batch, heads, n_q, _, _, d_v = checks.check_attention(q, k, v, bias, scale=scale)
    return q.new_empty((batch, n_q, heads * d_v))


@custom_op("levit::attention_probs", mutates_args=(), device_types=("cpu", "cuda"))
def _attention_probs(q: Tensor, k: Tensor, bias: Tensor, scale: Number) -> Tensor:
    batch, heads, n_q, n_k, d_k, _ = checks.check_attention(q, k, None, bias, probs=True,
                                                            scale=scale)
    if batch * heads * n_q * n_k == 0 or d_k == 0:
        return reference.attention_probs(q, k, bias, scale).contiguous()
    return launchers(q.device).attention_probs(q, k, bias, scale)


@_attention_probs.register_fake
def _(q, k, bias, scale):
    batch, heads, n_q, n_k, _, _ = checks.check_attention(q, k, None, bias, probs=True,
                                                          scale=scale)
    return q.new_empty((batch, heads, n_q, n_k))


# -- linear / mlp ----------------------------------------------------------------------------
@custom_op("levit::linear", mutates_args=(), device_types=("cpu", "cuda"))
def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
            activation: str) -> Tensor:
    k_in, n_out = checks.check_linear(x, weight, bias, residual, activation)
    if x.numel() == 0 or k_in == 0 or n_out == 0:
        return reference.linear(x, weight, bias, residual, activation).contiguous()
    return launchers(x.device).linear(x, weight, bias, residual, activation)


@_linear.register_fake
def _(x, weight, bias, residual, activation):
    _, n_out = checks.check_linear(x, weight, bias, residual, activation)
    return x.new_empty(tuple(x.shape[:-1]) + (n_out,))


@custom_op("levit::mlp", mutates_args=(), device_types=("cpu", "cuda"))
def _mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    channels, hidden = checks.check_mlp(x, w1, b1, w2, b2)
    if x.numel() == 0 or hidden == 0:
        return reference.mlp(x, w1, b1, w2, b2).contiguous()
    return launchers(x.device).mlp(x, w1, b1, w2, b2)


@_mlp.register_fake
def _(x, w1, b1, w2, b2):
    checks.check_mlp(x, w1, b1, w2, b2)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# -- CPU ops on pre-packed weights (what the fused model runs on CPU) ------------------------
@custom_op("levit::linear_packed", mutates_args=(), device_types="cpu")
def _linear_packed(x: Tensor, packed_weight: Tensor, out_features: int, bias: Optional[Tensor],
                   residual: Optional[Tensor], activation: str) -> Tensor:
    checks.check_linear(x, packed_weight, bias, residual, activation, out_features=out_features)
    return launchers(x.device).linear_packed(x, packed_weight, out_features, bias, residual,
                                            activation)


@_linear_packed.register_fake
def _(x, packed_weight, out_features, bias, residual, activation):
    checks.check_linear(x, packed_weight, bias, residual, activation, out_features=out_features)
    return x.new_empty(tuple(x.shape[:-1]) + (out_features,))


@custom_op("levit::mlp_packed", mutates_args=(), device_types="cpu")
def _mlp_packed(x: Tensor, w1_packed: Tensor, b1: Tensor, w2_packed: Tensor,
                b2: Tensor) -> Tensor:
    checks.check_mlp(x, w1_packed, b1, w2_packed, b2, packed=True)
    return launchers(x.device).mlp_packed(x, w1_packed, b1, w2_packed, b2)


@_mlp_packed.register_fake
def _(x, w1_packed, b1, w2_packed, b2):
    checks.check_mlp(x, w1_packed, b1, w2_packed, b2, packed=True)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@custom_op("levit::conv2d_packed", mutates_args=(), device_types="cpu")
def _conv2d_packed(x: Tensor, packed_weight: Tensor, out_channels: int, kernel_size: int,
                   stride: int, padding: int, bias: Optional[Tensor], activation: str) -> Tensor:
    return launchers(x.device).conv2d_packed(x, packed_weight, out_channels, kernel_size, stride,
                                            padding, bias, activation)


@_conv2d_packed.register_fake
def _(x, packed_weight, out_channels, kernel_size, stride, padding, bias, activation):
    batch, _, _, _, _, _, out_h, out_w = checks.check_conv2d_packed(
        x, packed_weight, out_channels, kernel_size, stride, padding, bias, activation)
    return x.new_empty((batch, out_h, out_w, out_channels))


# -- public wrappers: keyword defaults, the same checks ---------------------------------------
# Under torch.func transforms (grad, jacrev, jvp, vmap...) the wrappers of the differentiable
# ops compute with the reference's math, after the ops' own checks: torch.func cannot run a
# custom op's registered backward (PyTorch's generated autograd.Function has no setup_context,
# pytorch/pytorch#170834: "must override the setup_context staticmethod"), and vmap would loop
# the kernels over the batch one sample at a time. The reference is the ops' definition, so
# the transforms get the ops' values and gradients. (torch.ops.levit.* called directly keep
# PyTorch's behaviour.)
_under_torch_func = torch._C._are_functorch_transforms_active


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float,
              hardswish: bool = False) -> Tensor:
    """act(softmax(scale * q @ k^T + bias) @ v) as (B, Nq, H*Dv); see levit::attention."""
    scale, hardswish = checks.check_scale(scale), checks.check_flag(hardswish, "hardswish")
    if _under_torch_func():
        checks.check_attention(q, k, v, bias, scale=scale)
        return reference.attention(q, k, v, bias, scale, hardswish)
    return torch.ops.levit.attention(q, k, v, bias, scale, hardswish)


def attention_probs(q: Tensor, k: Tensor, bias: Tensor, scale: float) -> Tensor:
    """softmax(scale * q @ k^T + bias) as (B, H, Nq, Nk)."""
    scale = checks.check_scale(scale)
    if _under_torch_func():
        checks.check_attention(q, k, None, bias, probs=True, scale=scale)
        return reference.attention_probs(q, k, bias, scale)
    return torch.ops.levit.attention_probs(q, k, bias, scale)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           residual: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    """act(x @ weight^T + bias) + residual, act in {"none", "hardswish"}."""
    checks.check_activation(activation)
    if _under_torch_func():
        checks.check_linear(x, weight, bias, residual, activation)
        return reference.linear(x, weight, bias, residual, activation)
    return torch.ops.levit.linear(x, weight, bias, residual, activation)


def mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """x + hardswish(x @ w1^T + b1) @ w2^T + b2."""
    if _under_torch_func():
        checks.check_mlp(x, w1, b1, w2, b2)
        return reference.mlp(x, w1, b1, w2, b2)
    return torch.ops.levit.mlp(x, w1, b1, w2, b2)


def linear_packed(x: Tensor, packed_weight: Tensor, out_features: int,
                  bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
                  activation: str = "none") -> Tensor:
    """linear() with a weight packed once by levit_kernels.cpu.pack_weight (CPU only).

    out_features must be the N of the (N, K) weight that was packed: the layout pads N to
    whole panels of 16 columns, so N and N' of as many panels give the same shape; the
    padding columns are marked (csrc/gemm.h kColumnPadMark), and another out_features is a
    ValueError."""
    checks.check_activation(activation)
    return torch.ops.levit.linear_packed(x, packed_weight,
                                         checks.check_int(out_features, "out_features", 1), bias,
                                         residual, activation)


def mlp_packed(x: Tensor, w1_packed: Tensor, b1: Tensor, w2_packed: Tensor, b2: Tensor) -> Tensor:
    """mlp() with both weights packed by levit_kernels.cpu.pack_weight (CPU only)."""
    return torch.ops.levit.mlp_packed(x, w1_packed, b1, w2_packed, b2)


def conv2d_packed(x: Tensor, packed_weight: Tensor, out_channels: int, kernel_size: int,
                  stride: int = 1, padding: int = 0, bias: Optional[Tensor] = None,
                  activation: str = "none") -> Tensor:
    """act(conv2d + bias) in NHWC, x (B, H, W, Cin) -> (B, Ho, Wo, Cout), square kernel, with
    the weight packed by levit_kernels.cpu.pack_conv_weight (CPU only)."""
    checks.check_activation(activation)
    checks.check_tensor(x, "x", ndim=4, unit_last_stride=False)   # NCHW views are fine
    return torch.ops.levit.conv2d_packed(
        x, packed_weight, checks.check_int(out_channels, "out_channels", 1),
        checks.check_int(kernel_size, "kernel_size", 1), checks.check_int(stride, "stride", 1),
        checks.check_int(padding, "padding", 0), bias, activation)


# -- autograd: the kernels compute values; gradients come from the reference's math ----------
def _backward_from_reference(op, reference_fn) -> None:
    """Give `op` the gradients of `reference_fn` (its oracle, same arguments): the backward
    recomputes the forward in plain PyTorch and differentiates that. Training through the ops
    then works (at the reference's speed), instead of autograd's "no formula" error."""
    def setup_context(ctx, inputs, output):
        ctx.inputs = [None if isinstance(a, Tensor) else a for a in inputs]
        ctx.positions = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.positions))

    def backward(ctx, grad):
        # Grad mode is on here only for backward(create_graph=True): then the gradients are
        # themselves recorded, for second derivatives.
        higher_order = torch.is_grad_enabled()
        args = list(ctx.inputs)
        with torch.enable_grad():
            # One tensor per argument, even where one tensor was passed twice (residual=x):
            # each position's gradient is its own partial. A view keeps the graph for second
            # derivatives; a detached copy is enough for first ones.
            for i, t in zip(ctx.positions, ctx.saved_tensors):
                args[i] = (t.view_as(t) if higher_order
                           else t.detach().requires_grad_(ctx.needs_input_grad[i]))
            wanted = [i for i in ctx.positions if ctx.needs_input_grad[i]]
            out = reference_fn(*args)
            grads = torch.autograd.grad(out, [args[i] for i in wanted], grad, allow_unused=True,
                                        create_graph=higher_order)
        result = [None] * len(args)
        for i, g in zip(wanted, grads):
            result[i] = torch.zeros_like(args[i]) if g is None else g
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


_backward_from_reference(_attention, reference.attention)
_backward_from_reference(_attention_probs, reference.attention_probs)
_backward_from_reference(_linear, reference.linear)
_backward_from_reference(_mlp, reference.mlp)


def _no_backward(op, name: str, instead: str) -> None:
    """A packed op's weight is a layout, not a tensor a gradient could flow back into: its
    backward says what to use instead of autograd's generic "no formula registered"."""
    def backward(ctx, grad):
        raise RuntimeError(f"{name} has no backward (its weight is packed for the kernels); "
                           f"for gradients use {instead}")

    op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)


_no_backward(_linear_packed, "levit::linear_packed", "levit::linear")
_no_backward(_mlp_packed, "levit::mlp_packed", "levit::mlp")
_no_backward(_conv2d_packed, "levit::conv2d_packed", "torch.nn.functional.conv2d")
