"""The fused forward's plan: LeViT folded for inference on one device and dtype, and the three
ways of running it.

Inference never needs BatchNorm as a separate step: each BN is folded into the linear or conv
before it (the head's BN into the Linear after it), the two classifier heads are averaged
into one Linear, each block's (H, Nq, Nk) attention bias is gathered once, and on CPU every
weight is packed once for the GEMM micro-kernel. One block then runs as

    qkv = linear(x)                       q, k, v are strided views of it, never copied
    a   = attention(q, k, v, bias, +hardswish)        (B, N, H*Dv), the proj's input layout
    x   = linear(a, +bias, +residual x)
    x   = mlp(x)                          x + W2 hswish(W1 x + b1) + b2 in one call

A plan is built for one family of kernels ("cpu": the C++ kernels, "gpu": Triton; by default
the device's, KERNELS) and run by a backend, chosen once per forward by the fused model
(fused.py):

    PROGRAM      eager, "cpu" plans: the whole forward as one C++ call (cpu.ForwardProgram)
    Launchers    eager, layer by layer on the launchers of ops/cpu.py
    GpuLaunchers eager, "gpu" plans: the Triton launchers, inputs checked once per input shape,
                 optionally replayed as one CUDA graph (gpu_backend.py, cuda_graphs.py)
    TORCH_OPS    under torch.compile, layer by layer on the registered levit::* ops, which the
                 compiler traces (it cannot see into the launchers)

The layers hold data only; a backend's linear / mlp / conv / attention run them.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .. import ops
from ..ops import checks, cpu
from .levit import AttentionDownsample, LeViT, LevitMlp, slot_offsets, split_heads


# The kernel family that runs a plan on each device type by default. FusedLeViT.use_kernels
# overrides it: "gpu" on CPU tensors runs the CUDA branch through the Triton launchers under
# TRITON_INTERPRET=1 (how CI tests it without a GPU).
KERNELS = {"cpu": "cpu", "cuda": "gpu"}
KERNEL_DTYPES = {"cpu": checks.CPU_DTYPES, "gpu": checks.CUDA_DTYPES}


# -- BatchNorm folding (in float64, rounded once to the plan's dtype) --------------------------
def _bn_scale_shift(bn):
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


def fold_linear_norm(ln):
    """Linear (no bias) -> BN  ==  Linear with weight W*s (rows) and bias beta - mean*s."""
    scale, shift = _bn_scale_shift(ln.bn)
    return ln.linear.weight.double() * scale[:, None], shift


def fold_conv_norm(cn):
    scale, shift = _bn_scale_shift(cn.bn)
    return cn.linear.weight.double() * scale[:, None, None, None], shift


def fold_norm_linear(nl):
    """BN -> Linear  ==  Linear with weight W*s (columns) and bias b + W @ (beta - mean*s)."""
    scale, shift = _bn_scale_shift(nl.bn)
    weight = nl.linear.weight.double()
    return weight * scale[None, :], nl.linear.bias.double() + weight @ shift


# -- folded layers ----------------------------------------------------------------------------
class FusedLinear:
    """A folded linear layer: (N, K) weight and bias, plus on CPU the weight packed once
    (cpu.PackedLinear, which also checks it once instead of per call)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, device, dtype, kernels):
        self.out_features = weight.shape[0]
        self.weight = weight.to(device=device, dtype=dtype).contiguous()
        self.bias = bias.to(device=device, dtype=dtype).contiguous()
        self.cpu = cpu.PackedLinear(self.weight, self.bias) if kernels == "cpu" else None


class FusedConv:
    """A stem convolution (3x3, stride 2, padding 1 in LeViT) with its BatchNorm folded in;
    packed once for the implicit-GEMM kernel of its family (NHWC, Hardswish in its epilogue):
    CPU panels, or the (Cout, kh*kw*Cin) matrix the Triton kernel reads."""

    def __init__(self, conv_norm, device, dtype, kernels):
        weight, bias = fold_conv_norm(conv_norm)
        conv = conv_norm.linear
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.out_channels, self.kernel_size = weight.shape[0], weight.shape[-1]
        self.weight = weight.to(device=device, dtype=dtype).contiguous()
        self.bias = bias.to(device=device, dtype=dtype).contiguous()
        self.cpu = (cpu.PackedConv(self.weight, self.bias, self.stride, self.padding)
                    if kernels == "cpu" else None)
        # (Cout, Cin, kh, kw) -> (Cout, kh*kw*Cin), ci fastest (ops/gpu/conv.py reads this)
        self.matrix = (self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
                       .contiguous() if kernels == "gpu" else None)


class FusedMlp:
    def __init__(self, mlp: LevitMlp, device, dtype, kernels):
        self.fc1 = FusedLinear(*fold_linear_norm(mlp.ln1), device, dtype, kernels)
        self.fc2 = FusedLinear(*fold_linear_norm(mlp.ln2), device, dtype, kernels)
        self.cpu = (cpu.PackedMlp(self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
                    if kernels == "cpu" else None)


class FusedAttention:
    """Self-attention block (residual) or shrinking attention (queries subsampled)."""

    def __init__(self, attn, device, dtype, kernels):
        self.heads, self.key_dim, self.val_dim = attn.num_heads, attn.key_dim, attn.val_dim
        self.scale = attn.scale
        self.head_parts = dict(attn.head_parts)     # the projection's per-head layout
        bias = attn.gathered_bias().detach().to(device=device, dtype=dtype).contiguous()
        if kernels == "gpu":
            # Rows padded to a multiple of 16 elements (the view hides the padding): Triton then
            # knows the row stride is 16-aligned and loads bias rows as vectors. With Nk = 196
            # the unaligned stride made every element its own 64-bit address, ~100 registers
            # per thread more, and the attention spilled (tools/gpu_static.py).
            n_k = bias.shape[-1]
            padded = bias.new_zeros(bias.shape[:-1] + (-(-n_k // 16) * 16,))
            padded[..., :n_k] = bias
            bias = padded[..., :n_k]
        self.bias = bias
        self.proj = FusedLinear(*fold_linear_norm(attn.proj.ln), device, dtype, kernels)
        self.shrinking = isinstance(attn, AttentionDownsample)
        if self.shrinking:
            self.qkv = FusedLinear(*fold_linear_norm(attn.kv), device, dtype, kernels)
            self.q = FusedLinear(*fold_linear_norm(attn.q.ln), device, dtype, kernels)
            self.stride, self.resolution = attn.q.down.stride, attn.q.down.resolution
        else:
            self.qkv = FusedLinear(*fold_linear_norm(attn.qkv), device, dtype, kernels)

    def __call__(self, x, kernels):
        views = split_heads(kernels.linear(self.qkv, x), self.heads, self.head_parts)
        parts = dict(zip(self.head_parts, views))
        if self.shrinking:
            # The subsampled queries' input stays a strided view of x: the GPU linear reads it
            # in place (the CPU launchers copy it).
            batch, _, channels = x.shape
            grid = x.view(batch, self.resolution[0], self.resolution[1], channels)
            q_in = kernels.linear(self.q, grid[:, ::self.stride, ::self.stride])
            (parts["q"],) = split_heads(q_in.flatten(1, 2), self.heads, {"q": self.key_dim})
        out = kernels.attention(parts["q"], parts["k"], parts["v"], self.bias, self.scale, True)
        return kernels.linear(self.proj, out, None if self.shrinking else x)


class FusedPlan:
    """Everything the fused forward reads, folded from one model on one device and dtype."""

    def __init__(self, model: LeViT, device: torch.device, dtype: torch.dtype,
                 kernels: Optional[str] = None):
        kernels = kernels or KERNELS[device.type]
        self.device, self.dtype, self.kernels = device, dtype, kernels
        args = (device, dtype, kernels)
        self.stem = [FusedConv(getattr(model.stem, name), *args)
                     for name in ("conv1", "conv2", "conv3", "conv4")]
        self.layers: List = []
        for stage in model.stages:
            if not isinstance(stage.downsample, torch.nn.Identity):
                self.layers.append(FusedAttention(stage.downsample.attn_downsample, *args))
                self.layers.append(FusedMlp(stage.downsample.mlp, *args))
            for block in stage.blocks:
                self.layers.append(FusedAttention(block.attn, *args))
                self.layers.append(FusedMlp(block.mlp, *args))
        self.head: Optional[FusedLinear] = None
        if model.num_classes > 0:
            weight, bias = fold_norm_linear(model.head)
            if model.distillation:       # eval averages the heads: average their weights
                weight_d, bias_d = fold_norm_linear(model.head_dist)
                weight, bias = (weight + weight_d) / 2, (bias + bias_d) / 2
            self.head = FusedLinear(weight, bias, *args)
        in_channels = model.stem.conv1.linear.in_channels
        self.program = (self._cpu_program(in_channels, model.img_size) if kernels == "cpu"
                        else None)
        self.backend = None      # "gpu" plans: their GpuLaunchers (gpu_backend.py)
        self.graphs = None       # and their CUDA-graph replays (cuda_graphs.py)

    def _cpu_program(self, in_channels: int, img_size) -> cpu.ForwardProgram:
        """These layers as one cpu.ForwardProgram (what PROGRAM runs)."""
        program = cpu.ForwardProgram(in_channels, *img_size)
        for i, conv in enumerate(self.stem):
            program.add_conv(conv.cpu, "hardswish" if i < len(self.stem) - 1 else "none")
        for layer in self.layers:
            if isinstance(layer, FusedMlp):
                program.add_mlp(layer.cpu)
            else:
                program.add_attention(
                    layer.qkv.cpu, layer.proj.cpu, layer.bias, layer.heads, layer.key_dim,
                    layer.val_dim, layer.scale, slot_offsets(layer.head_parts),
                    q=layer.q.cpu if layer.shrinking else None,
                    subsample=layer.stride if layer.shrinking else 1)
        if self.head is not None:
            program.set_head(self.head.cpu)
        return program


# -- backends: how a plan runs ------------------------------------------------------------------
class _Program:
    """Eager on CPU: the plan's whole forward as one C++ call."""

    @staticmethod
    def run(plan: FusedPlan, images: torch.Tensor) -> torch.Tensor:
        return plan.program(images.to(plan.dtype))


PROGRAM = _Program()


class _LayerByLayer:
    """Runs a plan one layer at a time on this backend's linear / mlp / conv / attention."""

    def run(self, plan: FusedPlan, images: torch.Tensor) -> torch.Tensor:
        x = images.to(plan.dtype)
        nhwc = plan.kernels == "cpu"
        if nhwc:                         # the CPU stem is NHWC: its output is already (B, N, C)
            x = x.permute(0, 2, 3, 1)    # a view: the first conv reads NCHW images in place
        for i, conv in enumerate(plan.stem):
            x = self.conv(conv, x, "hardswish" if i < len(plan.stem) - 1 else "none")
        if nhwc:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        else:
            x = x.flatten(2).transpose(1, 2).contiguous()
        for layer in plan.layers:
            x = layer(x, self) if isinstance(layer, FusedAttention) else self.mlp(layer, x)
        x = x.mean(dim=1)
        return self.linear(plan.head, x) if plan.head is not None else x


class _TorchOps(_LayerByLayer):
    """Under torch.compile: the registered ops, on the packed weights where there are some."""

    @staticmethod
    def linear(layer: FusedLinear, x, residual=None, activation="none"):
        if layer.cpu is not None:
            return ops.linear_packed(x, layer.cpu.packed, layer.out_features, layer.bias,
                                     residual, activation)
        return ops.linear(x, layer.weight, layer.bias, residual, activation)

    @staticmethod
    def mlp(layer: FusedMlp, x):
        if layer.cpu is not None:
            return ops.mlp_packed(x, layer.fc1.cpu.packed, layer.fc1.bias, layer.fc2.cpu.packed,
                                  layer.fc2.bias)
        return ops.mlp(x, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)

    @staticmethod
    def conv(layer: FusedConv, x, activation):
        if layer.cpu is not None:
            return ops.conv2d_packed(x, layer.cpu.packed, layer.out_channels, layer.kernel_size,
                                     layer.stride, layer.padding, layer.bias, activation)
        return _conv_nchw(layer, x, activation)

    attention = staticmethod(ops.attention)


TORCH_OPS = _TorchOps()


class Launchers(_LayerByLayer):
    """Eager, layer by layer: the launchers of ops/cpu.py (prepared, checked-once layers) or
    ops/gpu/ directly, without the torch.ops dispatcher's per-call cost. (The fused model runs
    "gpu" plans on gpu_backend.GpuLaunchers.)"""

    def __init__(self, device: torch.device):
        self.kernels = ops.launchers(device)

    def linear(self, layer: FusedLinear, x, residual=None, activation="none"):
        if layer.cpu is not None:
            return layer.cpu(x, residual, activation)
        return self.kernels.linear(x, layer.weight, layer.bias, residual, activation)

    def mlp(self, layer: FusedMlp, x):
        if layer.cpu is not None:
            return layer.cpu(x)
        return self.kernels.mlp(x, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight,
                                layer.fc2.bias)

    def conv(self, layer: FusedConv, x, activation):
        return layer.cpu(x, activation) if layer.cpu is not None else _conv_nchw(layer, x,
                                                                                 activation)

    def attention(self, q, k, v, bias, scale, hardswish):
        return self.kernels.attention(q, k, v, bias, scale, hardswish)


def _conv_nchw(layer: FusedConv, x, activation):
    """The stem off the CPU: cuDNN's convolution on NCHW, then Hardswish."""
    x = F.conv2d(x, layer.weight, layer.bias, stride=layer.stride, padding=layer.padding)
    return F.hardswish(x) if activation == "hardswish" else x
