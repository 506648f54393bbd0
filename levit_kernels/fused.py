"""LeViT's eval-mode forward through the fused ops, and the cache it runs from.

Inference never needs BatchNorm as a separate step: each BN is folded into the linear or conv
before it (the head's BN into the Linear after it), the two classifier heads are averaged
into one Linear, each block's (H, Nq, Nk) attention bias is gathered once, and on CPU every
weight is packed once for the GEMM micro-kernel. One block then runs as

    qkv = linear(x)                       q, k, v are strided views of it, never copied
    a   = attention(q, k, v, bias, +hardswish)        (B, N, H*Dv), the proj's input layout
    x   = linear(a, +bias, +residual x)
    x   = mlp(x)                          x + W2 hswish(W1 x + b1) + b2 in one call

On CPU the plan also compiles these layers into one `cpu.ForwardProgram`, which eager
forwards run as a single C++ call; torch.compile traces the layers one op at a time instead.

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


def _kernels(device: torch.device):
    """What the fused layers call: the registered `levit::*` ops under torch.compile (which
    must see them to trace the graph), otherwise the launchers of levit_kernels.cpu / .gpu
    directly. The torch.ops dispatcher adds ~20 us per call and a LeViT forward makes ~50
    calls (skipping it took a batch-1 LeViT-128S CPU forward from 11.7 to 10.0 ms, 1 thread,
    before eager CPU forwards became one ForwardProgram call; the layers still run this way
    on CUDA). The launchers validate their inputs all the same."""
    if torch.compiler.is_compiling():
        return ops
    if device.type == "cpu":
        from . import cpu
        return cpu
    from . import gpu
    return gpu


class FusedLinear:
    """A folded linear layer: packed once for the CPU GEMM (cpu.PackedLinear, which also
    checks the weight once instead of per call) or kept as (N, K) for the GPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, device, dtype):
        self.out_features = weight.shape[0]
        self.bias = bias.to(device=device, dtype=dtype).contiguous()
        self.weight = weight.to(device=device, dtype=dtype).contiguous()
        self.cpu_layer, self.packed = None, None
        if device.type == "cpu":
            from . import cpu
            self.cpu_layer = cpu.PackedLinear(self.weight, self.bias)
            self.packed = self.cpu_layer.packed

    def __call__(self, x, residual=None, activation="none"):
        if self.cpu_layer is not None and not torch.compiler.is_compiling():
            return self.cpu_layer(x, residual, activation)
        if self.packed is not None:
            return ops.linear_packed(x, self.packed, self.out_features, self.bias, residual,
                                     activation)
        return _kernels(x.device).linear(x, self.weight, self.bias, residual, activation)


class FusedConv:
    """A stem convolution (3x3, stride 2, padding 1 in LeViT) with its BatchNorm folded in.

    CPU: the packed implicit-GEMM kernel on NHWC activations, Hardswish fused in its epilogue.
    CUDA: cuDNN's convolution on NCHW, then Hardswish."""

    def __init__(self, conv_norm, device, dtype):
        weight, bias = fold_conv_norm(conv_norm)
        conv = conv_norm.linear
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.out_channels, self.kernel_size = weight.shape[0], weight.shape[-1]
        self.weight = weight.to(device=device, dtype=dtype).contiguous()
        self.bias = bias.to(device=device, dtype=dtype).contiguous()
        self.cpu_layer, self.packed = None, None
        if device.type == "cpu":
            from . import cpu
            self.cpu_layer = cpu.PackedConv(self.weight, self.bias, self.stride, self.padding)
            self.packed = self.cpu_layer.packed

    def __call__(self, x, activation):
        if self.packed is not None:
            return _kernels(x.device).conv2d_packed(x, self.packed, self.out_channels,
                                                    self.kernel_size, self.stride, self.padding,
                                                    self.bias, activation)
        x = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
        return F.hardswish(x) if activation == "hardswish" else x


class FusedMlp:
    def __init__(self, mlp: LevitMlp, device, dtype):
        self.fc1 = FusedLinear(*fold_linear_norm(mlp.ln1), device, dtype)
        self.fc2 = FusedLinear(*fold_linear_norm(mlp.ln2), device, dtype)
        self.cpu_layer = None
        if device.type == "cpu":
            from . import cpu
            self.cpu_layer = cpu.PackedMlp(self.fc1.weight, self.fc1.bias, self.fc2.weight,
                                           self.fc2.bias)

    def __call__(self, x):
        if self.cpu_layer is not None:
            if not torch.compiler.is_compiling():
                return self.cpu_layer(x)
            return ops.mlp_packed(x, self.fc1.packed, self.fc1.bias, self.fc2.packed,
                                  self.fc2.bias)
        return _kernels(x.device).mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight,
                                      self.fc2.bias)


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
            out = _kernels(x.device).attention(q, k, v, self.bias, self.scale, True)
            return self.proj(out)
        qkv = self.qkv(x).view(batch, n, heads, 2 * dk + self.val_dim).permute(0, 2, 1, 3)
        q, k, v = qkv[..., :dk], qkv[..., dk:2 * dk], qkv[..., 2 * dk:]
        out = _kernels(x.device).attention(q, k, v, self.bias, self.scale, True)
        return self.proj(out, residual=x)


class FusedPlan:
    """Everything the fused forward reads, folded from one model on one device and dtype."""

    def __init__(self, model: LeViT, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.slots = _state_slots(model)
        self.key = _state_key(self.slots, device, dtype)
        self.stem = [FusedConv(getattr(model.stem, name), device, dtype)
                     for name in ("conv1", "conv2", "conv3", "conv4")]
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
        self.program = _cpu_program(self, model) if device.type == "cpu" else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.dtype)
        if self.program is not None and not torch.compiler.is_compiling():
            return self.program(x)     # the layers below, as one C++ call
        if self.device.type == "cpu":    # NHWC: the stem's output is already (B, N, C)
            x = x.permute(0, 2, 3, 1)   # a view: the first conv gathers from NCHW in place
        for i, conv in enumerate(self.stem):
            x = conv(x, "hardswish" if i < 3 else "none")
        if self.device.type == "cpu":
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        else:
            x = x.flatten(2).transpose(1, 2).contiguous()
        for layer in self.layers:
            x = layer(x)
        x = x.mean(dim=1)
        return self.head(x) if self.head is not None else x


def _cpu_program(plan: FusedPlan, model: LeViT):
    """The plan's CPU layers as one cpu.ForwardProgram (eager forwards; torch.compile traces
    the layers one by one instead)."""
    from . import cpu
    program = cpu.ForwardProgram(model.stem.conv1.linear.in_channels, *model.img_size)
    for i, conv in enumerate(plan.stem):
        program.add_conv(conv.cpu_layer, "hardswish" if i < 3 else "none")
    for layer in plan.layers:
        if isinstance(layer, FusedMlp):
            program.add_mlp(layer.cpu_layer)
        elif layer.shrinking:
            program.add_attention(layer.kv.cpu_layer, layer.proj.cpu_layer, layer.bias,
                                  layer.heads, layer.key_dim, layer.val_dim, layer.scale,
                                  q=layer.q.cpu_layer, subsample=layer.stride)
        else:
            program.add_attention(layer.qkv.cpu_layer, layer.proj.cpu_layer, layer.bias,
                                  layer.heads, layer.key_dim, layer.val_dim, layer.scale)
    if plan.head is not None:
        program.set_head(plan.head.cpu_layer)
    return program


def _state_slots(model: LeViT):
    """Where every submodule, parameter and buffer lives: (owning dict, name) pairs.

    Walking the module tree (model.parameters()) on every forward cost ~1 ms, a tenth of a
    batch-1 LeViT-128S forward; the slots are found once per plan and then read directly.
    Reading them afresh still notices a tensor or a submodule put in place of another
    (model.head = ..., module.weight = ...): a replaced module's identity changes the key.
    BatchNorm's num_batches_tracked is left out: folding never reads it."""
    tensor_slots, module_slots = [], []
    for module in model.modules():
        tensor_slots += [(module._parameters, name) for name in module._parameters]
        tensor_slots += [(module._buffers, name) for name in module._buffers
                         if name != "num_batches_tracked"]
        module_slots += [(module._modules, name) for name in module._modules]
    return tensor_slots, module_slots


def _state_key(slots, device, dtype):
    """What the plan depends on: every tensor's storage and in-place version, every submodule's
    identity, the device and dtype. (Edits through `.data` bypass the version counter: call
    model.refresh_fused() after them.)"""
    tensor_slots, module_slots = slots
    key = [device, dtype]
    for owner, name in tensor_slots:
        t = owner[name]
        if t is not None:
            key += (t.data_ptr(), t._version)
    # the modules themselves, not id()s: the key keeps them alive, so a new module can never
    # reuse a replaced one's address
    key += [owner[name] for owner, name in module_slots]
    return tuple(key)


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
    if plan is None or plan.key != _state_key(plan.slots, device, dtype):
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
