"""The fused forward's plan: LeViT folded for inference on one device and dtype, and the ways
of running it.

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
    TORCH_OPS    under torch.compile off the CPU, and in torch.export graphs, layer by layer
                 on the registered levit::* ops, which the compiler traces (it cannot see into
                 the launchers). A compiled "cpu" plan runs its program as one op instead
                 (levit::fused_program, fused.py)

The layers hold data only; a backend's linear / mlp / conv / attention run them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

from .. import ops
from ..ops import checks, cpu
from .levit import (Attention, AttentionDownsample, ConvNorm, LeViT, LevitBlock, LevitDownsample,
                    LevitMlp, LevitStage, LinearNorm, NormLinear, Stem16, Subsample, slot_offsets,
                    split_heads)
from .state_key import GLOBAL_HOOKS


class UnsupportedModel(Exception):
    """The model is not the LeViT the plan folds: a layer replaced by another kind, a layer
    with forward hooks or in training mode, a convolution the stem kernel does not take...
    The fused model then runs the plain layers, which give the plain model's answer by
    definition. `module` is the offending submodule (its name is looked up for messages)."""

    def __init__(self, module: nn.Module, problem: str):
        super().__init__(problem)
        self.module, self.problem = module, problem


def _expect(module, cls):
    """`module` computes what folding it as a `cls` assumes, or UnsupportedModel says why not.

    Its class must be `cls` or a subclass with `cls`'s forward (parametrize's generated
    `Parametrized*` classes are such subclasses; a user subclass overriding forward is not);
    it must not be in training mode if that changes what it computes (BatchNorm, stochastic
    depth; a new nn.Linear head is in training mode and computes the same); and it must have
    no forward hooks, which the plain forward would run and the fused one cannot, except
    torch.nn.utils.prune's pre-hook, which only recomputes `weight = weight_orig *
    weight_mask` (applied while the plan folds)."""
    if not isinstance(module, cls) or type(module).forward is not cls.forward:
        raise UnsupportedModel(module, f"is a {type(module).__name__} where the fused plan folds "
                                       f"a {cls.__name__}")
    if module.training and (isinstance(module, nn.modules.batchnorm._BatchNorm)
                            or getattr(module, "drop_path", 0) > 0):
        raise UnsupportedModel(module, "is in training mode while the model is in eval mode")
    if module._forward_hooks or any(not isinstance(hook, prune.BasePruningMethod)
                                    for hook in module._forward_pre_hooks.values()):
        raise UnsupportedModel(module, "has forward hooks, which only the plain layers run")
    _expect_no_instance_methods(module)
    return module


def _expect_no_instance_methods(module):
    """A method replaced on the instance (`block.forward = ...`, `model.forward_head = ...`)
    is what the plain forward calls; the plan folds the class's."""
    for name in vars(module):
        if callable(getattr(type(module), name, None)):
            raise UnsupportedModel(module, f"has its own {name}() (set on the instance), which "
                                           f"only the plain layers call")


def _expect_no_global_hooks(model):
    """nn.Module's hooks for every module of every model: the plain layers run them, the fused
    forward cannot."""
    if any(getattr(nn.modules.module, name, None) for name in GLOBAL_HOOKS):
        raise UnsupportedModel(model, "runs under global forward hooks "
                                      "(torch.nn.modules.module.register_module_forward_hook or "
                                      "_pre_hook), which only the plain layers run")


def _expect_one_dtype(model):
    """The fused forward computes in one dtype; a model cast in part (`model.head.bfloat16()`)
    gets the plain layers, which answer or refuse as PyTorch's layers do for mixed dtypes."""
    dtypes = {t.dtype for t in itertools.chain(model.parameters(), model.buffers())
              if t.is_floating_point()}
    if len(dtypes) > 1:
        raise UnsupportedModel(model, f"has floating-point tensors of several dtypes "
                                      f"({', '.join(sorted(map(str, dtypes)))}); the fused "
                                      f"forward computes in one")


def _expect_sequence(seq, classes):
    """A Sequential (its forward runs every child, in order) of exactly these layers."""
    _expect(seq, nn.Sequential)
    children = list(seq._modules.values())
    if len(children) != len(classes):
        raise UnsupportedModel(seq, f"has {len(children)} layers where the fused plan folds "
                                    f"{len(classes)}")
    return [_expect(child, cls) for child, cls in zip(children, classes)]


@contextlib.contextmanager
def _pruned(model: nn.Module):
    """Every pruned tensor as the plain forward's pre-hook sets it before each call (weight =
    weight_orig * weight_mask), while the plan folds; then as it was (under torch.export the
    values are traced tensors that must not stay behind in the model)."""
    saved = []
    try:
        for module in model.modules():
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    name = hook._tensor_name
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, hook.apply_mask(module))
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


# The kernel family that runs a plan on each device type by default. FusedLeViT.use_kernels
# overrides it: "gpu" on CPU tensors runs the CUDA branch through the Triton launchers under
# TRITON_INTERPRET=1 (how CI tests it without a GPU).
KERNELS = {"cpu": "cpu", "cuda": "gpu"}
KERNEL_DTYPES = {"cpu": checks.CPU_DTYPES, "gpu": checks.CUDA_DTYPES}


@dataclasses.dataclass(frozen=True)
class Target:
    """What a plan's layers are folded for: the device and dtype of their tensors, the kernel
    family that will read them, and whether CPU weights are packed (not under torch.export)."""
    device: torch.device
    dtype: torch.dtype
    kernels: str
    pack: bool = True

    @property
    def packs_cpu(self) -> bool:
        return self.pack and self.kernels == "cpu" and self.device.type == "cpu"


def _number(module, name: str):
    """A number attribute the plan reads once (an attention's scale, a BN's eps). One set to
    a tensor could be edited in place, which no key sees (StateKey records the version of
    parameters and buffers only): such a model runs the plain layers, which read it each call."""
    value = getattr(module, name)
    if isinstance(value, torch.Tensor):
        raise UnsupportedModel(module, f"holds {name} as a tensor, which the fused plan would "
                                       f"read once; set a Python number")
    return value


# -- BatchNorm folding (in float64, rounded once to the plan's dtype) --------------------------
def _bn_scale_shift(bn, bias=None):
    """BN(y + bias) == scale * y + shift, in eval mode (the running statistics).

    BN without running statistics normalises with the batch's own even in eval mode, and a
    BN without affine parameters has weight/bias None: the former cannot be folded, the latter
    folds with gain 1 and shift 0."""
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModel(bn, "has no running statistics (it normalises each batch by its "
                                   "own), which cannot be folded")
    std = torch.sqrt(bn.running_var.double() + _number(bn, "eps"))
    scale = 1 / std if bn.weight is None else bn.weight.double() / std
    mean = bn.running_mean.double()
    shift = -mean * scale if bias is None else (bias.double() - mean) * scale
    return scale, shift if bn.bias is None else shift + bn.bias.double()


def fold_linear_norm(ln):
    """Linear -> BN  ==  Linear with weight W*s (rows) and bias beta + (b - mean)*s."""
    linear, bn = _expect(ln.linear, nn.Linear), _expect(ln.bn, nn.BatchNorm1d)
    scale, shift = _bn_scale_shift(bn, linear.bias)
    return linear.weight.double() * scale[:, None], shift


def fold_conv_norm(cn):
    conv, bn = _expect(cn.linear, nn.Conv2d), _expect(cn.bn, nn.BatchNorm2d)
    scale, shift = _bn_scale_shift(bn, conv.bias)
    return conv.weight.double() * scale[:, None, None, None], shift


def fold_norm_linear(nl):
    """BN -> Linear  ==  Linear with weight W*s (columns) and bias b + W @ (beta - mean*s)."""
    bn, linear = _expect(nl.bn, nn.BatchNorm1d), _expect(nl.linear, nn.Linear)
    scale, shift = _bn_scale_shift(bn)
    weight = linear.weight.double()
    bias = weight @ shift
    return weight * scale[None, :], bias if linear.bias is None else bias + linear.bias.double()


def fold_head(head):
    """A classifier head as (weight, bias): LeViT's BN + Linear, or a plain Linear put in its
    place (fine-tuning); None for nn.Identity (pooled features)."""
    if isinstance(head, NormLinear):
        return fold_norm_linear(_expect(head, NormLinear))
    if isinstance(head, nn.Linear):
        linear = _expect(head, nn.Linear)
        weight = linear.weight.double()
        bias = torch.zeros_like(weight[:, 0]) if linear.bias is None else linear.bias.double()
        return weight, bias
    _expect(head, nn.Identity)
    return None


# -- folded layers ----------------------------------------------------------------------------
class FusedLinear:
    """A folded linear layer: (N, K) weight and bias. In "cpu" plans that pack, the weight is
    packed once (`cpu`: a cpu.PackedLinear, which also checks it once instead of per call)
    and not kept unpacked (`weight` None): nothing reads that copy, which cost as much memory
    as the packed one. pack=False leaves it unpacked (an MLP packs its two layers together)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, target: Target,
                 pack: bool = True):
        self.out_features = weight.shape[0]
        weight = weight.to(device=target.device, dtype=target.dtype).contiguous()
        self.bias = bias.to(device=target.device, dtype=target.dtype).contiguous()
        self.cpu = cpu.PackedLinear(weight, self.bias) if target.packs_cpu and pack else None
        self.weight = weight if self.cpu is None else None


class FusedConv:
    """A stem convolution (3x3, stride 2, padding 1 in LeViT) with its BatchNorm folded in;
    packed once for the implicit-GEMM kernel of its family (NHWC, Hardswish in its epilogue):
    CPU panels, or the (Cout, kh*kw*Cin) matrix the Triton kernel reads."""

    def __init__(self, conv_norm, target: Target):
        weight, bias = fold_conv_norm(_expect(conv_norm, ConvNorm))
        conv = conv_norm.linear
        # What the kernels take: a square kernel, one stride and one zero padding for both
        # directions, no dilation or groups.
        if (len(set(conv.stride)) != 1 or not isinstance(conv.padding, tuple)
                or len(set(conv.padding)) != 1 or conv.kernel_size[0] != conv.kernel_size[1]
                or set(conv.dilation) != {1} or conv.groups != 1 or conv.padding_mode != "zeros"):
            raise UnsupportedModel(conv, "is not a square convolution with equal strides and "
                                         "zero padding, dilation 1 and groups 1")
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.out_channels, self.kernel_size = weight.shape[0], weight.shape[-1]
        weight = weight.to(device=target.device, dtype=target.dtype).contiguous()
        self.bias = bias.to(device=target.device, dtype=target.dtype).contiguous()
        self.cpu = (cpu.PackedConv(weight, self.bias, self.stride, self.padding)
                    if target.packs_cpu else None)
        self.weight = weight if self.cpu is None else None      # as FusedLinear's
        self.matrix = None
        if target.kernels == "gpu":
            from ..ops.gpu.conv import conv_weight_matrix      # imports Triton: only when needed
            self.matrix = conv_weight_matrix(weight)


class FusedMlp:
    def __init__(self, mlp: LevitMlp, target: Target):
        _expect(mlp, LevitMlp)
        _expect(mlp.act, nn.Hardswish)
        # Packed together (cpu.PackedMlp) in "cpu" plans that pack, then kept only so: the
        # fused MLP never runs its two layers as linears.
        self.fc1 = FusedLinear(*fold_linear_norm(_expect(mlp.ln1, LinearNorm)), target, False)
        self.fc2 = FusedLinear(*fold_linear_norm(_expect(mlp.ln2, LinearNorm)), target, False)
        self.cpu = None
        if target.packs_cpu:
            self.cpu = cpu.PackedMlp(self.fc1.weight, self.fc1.bias, self.fc2.weight,
                                     self.fc2.bias)
            self.fc1.weight = self.fc2.weight = None


class FusedAttention:
    """Self-attention block (residual) or shrinking attention (queries subsampled)."""

    def __init__(self, attn, target: Target):
        self.shrinking = isinstance(attn, AttentionDownsample)
        _expect(attn, AttentionDownsample if self.shrinking else Attention)
        self.heads, self.key_dim, self.val_dim = attn.num_heads, attn.key_dim, attn.val_dim
        self.scale = _number(attn, "scale")
        self.head_parts = dict(attn.head_parts)     # the projection's per-head layout
        bias = attn.gathered_bias().detach().to(device=target.device, dtype=target.dtype)
        if target.kernels == "gpu":
            # Rows padded to a multiple of 16 elements (the view hides the padding): Triton then
            # knows the row stride is 16-aligned and loads bias rows as vectors. With Nk = 196
            # the unaligned stride made every element its own 64-bit address, ~100 registers
            # per thread more, and the attention spilled (tools/gpu_static.py).
            n_k = bias.shape[-1]
            padded = bias.new_zeros(bias.shape[:-1] + (-(-n_k // 16) * 16,))
            padded[..., :n_k] = bias
            self.bias = padded[..., :n_k]
        else:
            self.bias = bias.contiguous()
        _, proj = _expect_sequence(attn.proj, [nn.Hardswish, LinearNorm])
        self.proj = FusedLinear(*fold_linear_norm(proj), target)
        if self.shrinking:
            down, q = _expect_sequence(attn.q, [Subsample, LinearNorm])
            self.qkv = FusedLinear(*fold_linear_norm(_expect(attn.kv, LinearNorm)), target)
            self.q = FusedLinear(*fold_linear_norm(q), target)
            self.stride, self.resolution = down.stride, down.resolution
        else:
            self.qkv = FusedLinear(*fold_linear_norm(_expect(attn.qkv, LinearNorm)), target)

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
    """Everything the fused forward reads, folded from one model on one device and dtype.

    Building one checks that every layer the plain forward would run is one the plan folds
    (else UnsupportedModel). `kernels` is the kernel family (default: the device's, KERNELS;
    none on the meta device, where a plan only holds the folded tensors' shapes).
    pack=False leaves the CPU weights unpacked and builds no CPU program: what torch.export
    traces, where the plan is built inside the exported graph."""

    def __init__(self, model: LeViT, device: torch.device, dtype: torch.dtype,
                 kernels: Optional[str] = None, pack: bool = True):
        target = Target(device, dtype, kernels or KERNELS.get(device.type, ""), pack)
        self.device, self.dtype, self.kernels = device, dtype, target.kernels
        if (type(model).forward_features is not LeViT.forward_features
                or type(model).forward_head is not LeViT.forward_head):
            raise UnsupportedModel(model, "overrides forward_features or forward_head")
        _expect_no_instance_methods(model)
        _expect_no_global_hooks(model)
        _expect_one_dtype(model)
        with _pruned(model):
            self._fold(model, target)
        self.backend = None      # "gpu" plans: their GpuLaunchers (gpu_backend.py)
        self.graphs = None       # and their CUDA-graph replays (cuda_graphs.py)

    def _fold(self, model, target: Target):
        stem = _expect_sequence(_expect(model.stem, Stem16),
                                [ConvNorm, nn.Hardswish] * 3 + [ConvNorm])
        self.stem = [FusedConv(conv, target) for conv in stem[::2]]
        self.layers: List = []
        for stage in _expect_sequence(model.stages, [LevitStage] * len(model.stages)):
            if isinstance(stage.downsample, nn.Identity):
                _expect(stage.downsample, nn.Identity)
            else:
                down = _expect(stage.downsample, LevitDownsample)
                self.layers.append(FusedAttention(down.attn_downsample, target))
                self.layers.append(FusedMlp(down.mlp, target))
            for block in _expect_sequence(stage.blocks, [LevitBlock] * len(stage.blocks)):
                self.layers.append(FusedAttention(block.attn, target))
                self.layers.append(FusedMlp(block.mlp, target))
        self.head: Optional[FusedLinear] = self._fold_heads(model, target)
        in_channels = model.stem.conv1.linear.in_channels
        self.program = (self._cpu_program(in_channels, model.img_size) if target.packs_cpu
                        else None)

    @staticmethod
    def _fold_heads(model, target: Target) -> Optional[FusedLinear]:
        """The classifier; with distillation, eval averages both heads: average their weights.
        None (pooled features) when the heads are nn.Identity."""
        heads = [fold_head(model.head)]
        if model.distillation:
            heads.append(fold_head(model.head_dist))
        if all(h is None for h in heads):
            return None
        if any(h is None for h in heads):
            raise UnsupportedModel(model, "has one classifier head and one nn.Identity head")
        weight = sum(w for w, _ in heads) / len(heads)
        bias = sum(b for _, b in heads) / len(heads)
        return FusedLinear(weight, bias, target)

    def _cpu_program(self, in_channels: int, img_size) -> cpu.ForwardProgram:
        """These layers as one cpu.ForwardProgram (what PROGRAM runs)."""
        program = cpu.ForwardProgram(in_channels, *img_size, dtype=self.dtype)
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
        # .to() of a tensor already in the dtype returns it too, but through the dispatcher:
        # 60-110 us per call cold (batch 1, after the previous forward), against 25-35 for this.
        return plan.program(images if images.dtype == plan.dtype else images.to(plan.dtype))


PROGRAM = _Program()


class LayerByLayer:
    """Runs a plan one layer at a time on this backend's linear / mlp / conv / attention.

    A backend whose first convolution casts the images as it loads them sets casts_on_load
    (no separate cast of the whole batch), and one whose stem is NHWC says so in nhwc_stem."""

    casts_on_load = False

    @staticmethod
    def nhwc_stem(plan: FusedPlan) -> bool:
        return plan.stem[0].cpu is not None      # the packed CPU stem is NHWC

    def run(self, plan: FusedPlan, images: torch.Tensor) -> torch.Tensor:
        x = images if self.casts_on_load else images.to(plan.dtype)
        nhwc = self.nhwc_stem(plan)
        if nhwc:                         # an NHWC stem's output is already (B, N, C)
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


class _TorchOps(LayerByLayer):
    """Under torch.compile off the CPU and in torch.export graphs: the registered ops on the
    folded (unpacked) weights. (A compiled "cpu" plan runs its program as one op instead.)"""

    @staticmethod
    def linear(layer: FusedLinear, x, residual=None, activation="none"):
        return ops.linear(x, layer.weight, layer.bias, residual, activation)

    @staticmethod
    def mlp(layer: FusedMlp, x):
        return ops.mlp(x, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)

    @staticmethod
    def conv(layer: FusedConv, x, activation):
        return _conv_nchw(layer, x, activation)

    attention = staticmethod(ops.attention)


TORCH_OPS = _TorchOps()


class Launchers(LayerByLayer):
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
