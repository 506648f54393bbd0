"""LeViT's eval-mode forward through the fused ops, and the cache it runs from.

Inference never needs BatchNorm as a separate step: each BN is folded into the linear or conv
before it (the head's BN into the Linear after it), the two classifier heads are averaged
into one Linear, each block's (H, Nq, Nk) attention bias is gathered once, and on CPU every
weight is packed once for the GEMM micro-kernel. One block then runs as

    qkv = linear(x)                       q, k, v are strided views of it, never copied
    a   = attention(q, k, v, bias, +hardswish)        (B, N, H*Dv), the proj's input layout
    x   = linear(a, +bias, +residual x)
    x   = mlp(x)                          x + W2 hswish(W1 x + b1) + b2 in one call

The cache (`FusedPlan`) is derived state and never stale: it is keyed on the device and
dtype and on every parameter's and buffer's storage and version counter, so `.to()`,
`load_state_dict`, `train()`/`eval()` and in-place edits all rebuild it on the next call.
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F

from . import checks, ops
from .model import AttentionDownsample, LeViT, LevitMlp, check_images

_warned = set()      # one warning per reason per process


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


class FusedLinear:
    """A folded linear layer, packed for the CPU GEMM or kept as (N, K) for the GPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, device, dtype):
        self.out_features = weight.shape[0]
        self.bias = bias.to(device=device, dtype=dtype).contiguous()
        weight = weight.to(device=device, dtype=dtype).contiguous()
        if device.type == "cpu":
            from . import cpu
            self.weight, self.packed = weight, cpu.pack_weight(weight)
        else:
            self.weight, self.packed = weight, None

    def __call__(self, x, residual=None, activation="none"):
        if self.packed is not None:
            return ops.linear_packed(x, self.packed, self.out_features, self.bias, residual,
                                     activation)
        return ops.linear(x, self.weight, self.bias, residual, activation)


class FusedMlp:
    def __init__(self, mlp: LevitMlp, device, dtype):
        self.fc1 = FusedLinear(*fold_linear_norm(mlp.ln1), device, dtype)
        self.fc2 = FusedLinear(*fold_linear_norm(mlp.ln2), device, dtype)

    def __call__(self, x):
        if self.fc1.packed is not None:
            return ops.mlp_packed(x, self.fc1.packed, self.fc1.bias, self.fc2.packed,
                                  self.fc2.bias)
        return ops.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class FusedAttention:
    """Self-attention block (residual) or shrinking attention (queries subsampled)."""

    def __init__(self, attn, device, dtype):
        self.heads, self.key_dim, self.val_dim = attn.num_heads, attn.key_dim, attn.val_dim
        self.scale = attn.scale
        self.bias = attn.gathered_bias().detach().to(device=device, dtype=dtype).contiguous()
        self.proj = FusedLinear(*fold_linear_norm(attn.proj.ln), device, dtype)
        self.shrinking = isinstance(attn, AttentionDownsample)
        if self.shrinking:
            self.kv = FusedLinear(*fold_linear_norm(attn.kv), device, dtype)
            self.q = FusedLinear(*fold_linear_norm(attn.q.ln), device, dtype)
            self.stride, self.resolution = attn.q.down.stride, attn.q.down.resolution
        else:
            self.qkv = FusedLinear(*fold_linear_norm(attn.qkv), device, dtype)

    def __call__(self, x):
        batch, n, channels = x.shape
        heads, dk = self.heads, self.key_dim
        if self.shrinking:
            kv = self.kv(x).view(batch, n, heads, dk + self.val_dim).permute(0, 2, 1, 3)
            k, v = kv[..., :dk], kv[..., dk:]
            grid = x.view(batch, self.resolution[0], self.resolution[1], channels)
            x_sub = grid[:, ::self.stride, ::self.stride].reshape(batch, -1, channels)
            q = self.q(x_sub).view(batch, -1, heads, dk).permute(0, 2, 1, 3)
            out = ops.attention(q, k, v, self.bias, self.scale, True)
            return self.proj(out)
        qkv = self.qkv(x).view(batch, n, heads, 2 * dk + self.val_dim).permute(0, 2, 1, 3)
        q, k, v = qkv[..., :dk], qkv[..., dk:2 * dk], qkv[..., 2 * dk:]
        out = ops.attention(q, k, v, self.bias, self.scale, True)
        return self.proj(out, residual=x)


class FusedPlan:
    """Everything the fused forward reads, folded from one model on one device and dtype."""

    def __init__(self, model: LeViT, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.key = _state_key(model, device, dtype)
        self.stem = []
        for name in ("conv1", "conv2", "conv3", "conv4"):
            weight, bias = fold_conv_norm(getattr(model.stem, name))
            self.stem.append((weight.to(device, dtype), bias.to(device, dtype)))
        self.layers: List = []
        for stage in model.stages:
            if not isinstance(stage.downsample, torch.nn.Identity):
                self.layers.append(FusedAttention(stage.downsample.attn_downsample, device, dtype))
                self.layers.append(FusedMlp(stage.downsample.mlp, device, dtype))
            for block in stage.blocks:
                self.layers.append(FusedAttention(block.attn, device, dtype))
                self.layers.append(FusedMlp(block.mlp, device, dtype))
        self.head: Optional[FusedLinear] = None
        if model.num_classes > 0:
            weight, bias = fold_norm_linear(model.head)
            if model.distillation:       # eval averages the heads: average their weights
                weight_d, bias_d = fold_norm_linear(model.head_dist)
                weight, bias = (weight + weight_d) / 2, (bias + bias_d) / 2
            self.head = FusedLinear(weight, bias, device, dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.dtype)
        for i, (weight, bias) in enumerate(self.stem):
            x = F.conv2d(x, weight, bias, stride=2, padding=1)
            if i < 3:
                x = F.hardswish(x)
        x = x.flatten(2).transpose(1, 2).contiguous()
        for layer in self.layers:
            x = layer(x)
        x = x.mean(dim=1)
        return self.head(x) if self.head is not None else x


def _state_tensors(model: LeViT):
    return [t for t in list(model.parameters()) + list(model.buffers())]


def _state_key(model: LeViT, device, dtype):
    """What the plan depends on: every tensor's storage and in-place version, device, dtype."""
    return (device, dtype) + tuple((t.data_ptr(), t._version) for t in _state_tensors(model))


def _compute_dtype(model: LeViT, images: torch.Tensor) -> torch.dtype:
    """The model's dtype, or autocast's on CUDA (the ops take one dtype for all inputs)."""
    if images.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return next(model.parameters()).dtype


def get_plan(model: LeViT, images: torch.Tensor) -> FusedPlan:
    device, dtype = images.device, _compute_dtype(model, images)
    plan = model._fused_cache
    if torch.compiler.is_compiling():
        # Under torch.compile the plan built eagerly before tracing is used as is (version
        # counters are not traceable); edit weights -> the next eager call or recompile rebuilds.
        if plan is None:
            raise RuntimeError("torch.compile of a fused LeViT: run one eager forward first "
                               "(model(images)) so the fused weights exist before tracing")
        return plan
    if plan is None or plan.key != _state_key(model, device, dtype):
        with torch.no_grad():
            plan = FusedPlan(model, device, dtype)
        model._fused_cache = plan
    return plan


def kernels_support(device: torch.device, dtype: torch.dtype) -> bool:
    allowed = {"cpu": checks.CPU_DTYPES, "cuda": checks.CUDA_DTYPES}.get(device.type, ())
    return dtype in allowed


def prepare(model: LeViT) -> None:
    """Build the plan for the model's own device and dtype (called on eval(), .to(), loads)."""
    param = next(model.parameters(), None)
    if (param is None or not kernels_support(param.device, param.dtype)
            or extension_missing(param, warn=False)):
        return
    with torch.no_grad():
        model._fused_cache = FusedPlan(model, param.device, param.dtype)


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def extension_missing(images: torch.Tensor, warn: bool = True) -> bool:
    """True (and a one-time warning) when CPU images cannot use the C++ kernels."""
    if images.device.type != "cpu":
        return False
    from . import cpu
    if cpu.is_available():
        return False
    if warn:
        _warn_once("extension", f"LeViT(fused=True) runs the plain PyTorch path on CPU: "
                                f"{cpu.unavailable_reason()}")
    return True


def fused_forward(model: LeViT, images: torch.Tensor) -> torch.Tensor:
    check_images(images, model.img_size)
    dtype = _compute_dtype(model, images)
    if not kernels_support(images.device, dtype):
        _warn_once(("dtype", images.device.type, dtype),
                   f"LeViT(fused=True) runs the plain PyTorch path for {dtype} on "
                   f"{images.device.type}: the fused kernels take "
                   f"{'float32' if images.device.type == 'cpu' else 'float16/bfloat16/float32'}")
        return model.forward_head(model.forward_features(images))
    if extension_missing(images):
        return model.forward_head(model.forward_features(images))
    with torch.no_grad():
        return get_plan(model, images).forward(images)
