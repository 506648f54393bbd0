"""CPU launchers: the levit_kernels op signatures on top of the compiled kernels in csrc/.

    attention / attention_probs   csrc/attention.cpp   reference.attention / attention_probs
    linear / linear_packed        csrc/gemm.cpp        reference.linear
    mlp / mlp_packed              csrc/gemm.cpp        reference.mlp
    conv2d_packed                 csrc/conv.cpp        F.conv2d (+ Hardswish), in NHWC
    ForwardProgram                csrc/forward.cpp     the fused LeViT forward, one call

Every function validates its inputs with ops/checks.py (the checks the registered ops and the
GPU launchers use: dtype, CPU device, ranks, shapes, unit stride on the last dim where the
kernel reads in place, 32-bit sizes) and raises TypeError/ValueError naming the argument,
before anything is copied or allocated and before any raw address is handed to the C++
kernels (which trust their arguments). Empty inputs get the reference's answer. q/k/v are
never copied: the attention kernel reads them through their strides. Threads: the kernels use
`torch.get_num_threads()` threads, read at every call.

Pre-packed weights: LeViT's weights are constants at inference, so `pack_weight` rearranges a
(N, K) weight once into (ceil(N/PANEL), K, PANEL) column panels, padded past N with zeros
and one mark per padding column that tells N from another N of as many panels (csrc/gemm.h
kColumnPadMark; the layout does not depend on the ISA path, so a packed weight stays valid
after `set_isa`), and
`linear_packed`/`mlp_packed` use it directly. `linear`/`mlp` pack on every call.

Dtypes: float32 and bfloat16, one per call (a mixed call is a TypeError naming the odd
argument). bf16 runs the bf16 kernels (csrc/gemm_bf16.h): products accumulated in float32,
epilogues and the softmax in float32, each output rounded to bf16 once; a bf16 weight is
packed in the pairs AVX512_BF16's vdpbf16ps reads, (ceil(N/PANEL), K pairs, PANEL, 2), on
every ISA path (`bf16_path()` says what runs).
"""
from __future__ import annotations

import threading
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from . import checks, openmp_team, reference
from .extension import (ACTIVATION_CODES, KERNEL_DTYPES, PANEL, is_available, lib as _lib,
                        packed_shape, unavailable_reason)

__all__ = [
    "attention", "attention_probs", "linear", "mlp", "pack_weight", "linear_packed", "mlp_packed",
    "pack_conv_weight", "conv2d_packed", "PackedLinear", "PackedMlp", "PackedConv",
    "ForwardProgram", "PANEL",
    "is_available", "unavailable_reason", "isa", "set_isa", "available_isas", "isa_note",
    "isa_emulation",
    "float32_path", "bf16_path",
]

# What these launchers take (checks.check_same): CPU tensors of the CPU dtypes.
CPU_ONLY = {"cpu": checks.CPU_DTYPES}
ON_CPU = "a CPU tensor"
# The largest image side, kernel, stride, padding or head size a ForwardProgram takes
# (csrc/forward.cpp kMaxDim).
MAX_SIDE = 2 ** 31 - 1


# ---------------------------------------------------------------- ISA switch
def isa() -> str:
    """The active CPU path: 'amx_bf16', 'avx512_bf16', 'avx512', 'avx2' or 'generic'."""
    return _lib().isa()


def isa_note() -> str:
    """Why the active path is what it is (the CPU's best, LEVIT_CPU_ISA, or set_isa), and why
    LEVIT_CPU_ISA was ignored when it was."""
    return _lib().isa_note()


def float32_path() -> str:
    """What the float32 kernels run on the active path, e.g. 'avx2: AVX2 FMA'."""
    return _lib().float32_path()


def bf16_path() -> str:
    """What the bfloat16 kernels run on the active path, e.g. 'avx2: bf16 widened to float32,
    AVX2 FMA ...', 'avx512_bf16: vdpbf16ps ...' or 'amx_bf16: AMX tiles ...'."""
    return _lib().bf16_path()


def threads_note() -> str:
    """What runs the kernels' parallel loops: PyTorch's OpenMP team, or the kernels' own pool
    and why (ops/openmp_team.py; LEVIT_THREAD_POOL=own forces the pool)."""
    _lib()
    return openmp_team.describe()


def available_isas() -> List[str]:
    """The paths this CPU supports, best first."""
    return list(_lib().available_isas())


def isa_emulation() -> str:
    """'' in a real build. In a test build made with LEVIT_EMULATE_AVX512=1, what it emulates:
    there the AVX-512 paths are portable code on AVX2, right but slow, never to be measured."""
    return _lib().isa_emulation()


def set_isa(name: str) -> None:
    """Switch the CPU path at run time (ValueError if unknown or unsupported by this CPU)."""
    _lib().set_isa(name)


# ---------------------------------------------------------------- validation helpers
def _act(activation) -> int:
    checks.check_activation(activation)
    return ACTIVATION_CODES[activation]


def _dtype(t: torch.Tensor) -> str:
    """The binding's name of a (checked) tensor's dtype."""
    return KERNEL_DTYPES[t.dtype]


def _address(t: Optional[torch.Tensor]) -> int:
    """A tensor's address for the kernels, 0 for an absent optional one."""
    return 0 if t is None else t.data_ptr()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _cpu_tensor(t, name: str, **dims) -> None:
    """check_tensor plus a CPU dtype on the CPU, for tensors that are checked alone."""
    checks.check_tensor(t, name, **dims)
    checks.check_same([(name, t)], CPU_ONLY, ON_CPU)


def _plain_inputs(*named, grad: bool = True) -> None:
    checks.check_untracked(named, "levit_kernels.cpu", grad)


def _any_strides(t, name: str):
    """For launchers that copy their input anyway: a tensor of any strides made contiguous
    (after its size is checked); anything else is returned for the full checks to reject."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    checks.check_tensor(t, name, unit_last_stride=False)
    return t.contiguous()


# ---------------------------------------------------------------- attention
def _attention(q, k, v, bias, scale, hardswish: bool, probs: bool) -> torch.Tensor:
    _plain_inputs(("q", q), ("k", k), ("v", v), ("bias", bias))
    batch, heads, n_q, n_k, d_k, d_v = checks.check_attention(q, k, v, bias, probs=probs,
                                                              allowed=CPU_ONLY, devices=ON_CPU)
    scale = checks.check_scale(scale)
    if batch * heads * n_q * n_k * d_k * (1 if probs else d_v) == 0:
        if probs:
            return reference.attention_probs(q, k, bias, scale).contiguous()
        return reference.attention(q, k, v, bias, scale, hardswish).contiguous()
    bias = bias.contiguous()
    out = q.new_empty((batch, heads, n_q, n_k) if probs else (batch, n_q, heads * d_v))
    _lib().attention(q=q.data_ptr(), k=k.data_ptr(), v=0 if probs else v.data_ptr(),
                     bias=bias.data_ptr(), out=out.data_ptr(), batch=batch, heads=heads, nq=n_q,
                     nk=n_k, dk=d_k, dv=d_v, q_strides=q.stride()[:3], k_strides=k.stride()[:3],
                     v_strides=(0, 0, 0) if probs else v.stride()[:3], scale=scale,
                     hardswish=hardswish, probs=probs, nthreads=_threads(),
                     dtype=_dtype(q))
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              scale: float, hardswish: bool) -> torch.Tensor:
    """act(softmax(scale·q·kᵀ + bias)·v) -> (B, Nq, H·Dv), heads side by side.

    q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv): any strides with unit stride on the last dim
    (views of a packed qkv projection are read in place); bias (H,Nq,Nk).
    """
    return _attention(q, k, v, bias, scale, checks.check_flag(hardswish, "hardswish"),
                      probs=False)


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """softmax(scale·q·kᵀ + bias) over the keys -> (B, H, Nq, Nk)."""
    return _attention(q, k, None, bias, scale, False, probs=True)


# ---------------------------------------------------------------- linear / mlp
def pack_weight(weight: torch.Tensor, segments: int = 1) -> torch.Tensor:
    """Pack a (N, K) weight into column panels padded past N (zeros, and a mark in each
    padding column's first row: csrc/gemm.h kColumnPadMark), the same for every ISA path:
    float32 (ceil(N/PANEL), K, PANEL); bfloat16 (ceil(N/PANEL), K pairs, PANEL, 2), K taken
    as `segments` runs each padded to pairs (1 for a linear layer; a conv's kernel rows).
    With segments > 1 the K (pair) rows are shaped (segments, rows per segment): the same
    memory, a shape that tells a 3x5 kernel's weight from a 5x3 one's."""
    _plain_inputs(("weight", weight), grad=False)
    _cpu_tensor(weight, "weight", ndim=2, unit_last_stride=False)
    n, k = weight.shape
    if n < 1 or k < 1:
        raise ValueError(f"weight: expected both dimensions >= 1, got shape {tuple(weight.shape)}")
    # An int here (True or 2.0 would pass as one); packed_shape refuses one that does not
    # divide K (python/bindings.cpp check_segments).
    segments = checks.check_int(segments, "segments", 1)
    if weight.stride(1) != 1 and k > 1:
        weight = weight.contiguous()
    packed = weight.new_empty(packed_shape(n, k, weight.dtype, segments))
    _lib().pack_weight(w=weight.data_ptr(), n=n, k=k, ldw=weight.stride(0),
                       packed=packed.data_ptr(), nthreads=_threads(), dtype=_dtype(weight),
                       segments=segments)
    return packed


def _gemm(x, packed, n: int, bias, residual, act: int) -> torch.Tensor:
    """The launch, on checked arguments: x, bias, residual contiguous (or None)."""
    k = x.shape[-1]
    out = x.new_empty(x.shape[:-1] + (n,))
    m = x.numel() // k
    if m:
        _lib().gemm_packed(x=x.data_ptr(), m=m, k=k, ldx=k, packed=packed.data_ptr(), n=n,
                           bias=_address(bias), residual=_address(residual), ldr=n, act=act,
                           out=out.data_ptr(), ldo=n, nthreads=_threads(), dtype=_dtype(x))
    return out


def linear_packed(x: torch.Tensor, packed: torch.Tensor, out_features: int,
                  bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                  activation: str = "none") -> torch.Tensor:
    """act(x·Wᵀ + bias) + residual with W pre-packed by `pack_weight`."""
    _plain_inputs(("x", x), ("packed_weight", packed), ("bias", bias), ("residual", residual))
    checks.check_int(out_features, "out_features", 1)   # None would mean an unpacked weight
    checks.check_linear(x, packed, bias, residual, activation, out_features=out_features,
                        allowed=CPU_ONLY, devices=ON_CPU)
    return _gemm(x.contiguous(), packed, out_features, None if bias is None else bias.contiguous(),
                 None if residual is None else residual.contiguous(), _act(activation))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: str = "none") -> torch.Tensor:
    """act(x·weightᵀ + bias) + residual; weight (N, K) is packed on the fly. Every tensor
    may have any strides (they are copied, after their sizes are checked)."""
    _plain_inputs(("x", x), ("weight", weight), ("bias", bias), ("residual", residual))
    x, weight, bias, residual = (_any_strides(t, name) for t, name in (
        (x, "x"), (weight, "weight"), (bias, "bias"), (residual, "residual")))
    k_in, n_out = checks.check_linear(x, weight, bias, residual, activation, allowed=CPU_ONLY,
                                      devices=ON_CPU)
    if x.numel() == 0 or k_in == 0 or n_out == 0:
        return reference.linear(x, weight, bias, residual, activation).contiguous()
    return linear_packed(x, pack_weight(weight), n_out, bias, residual, activation)


def _mlp(x, w1_packed, b1, w2_packed, b2) -> torch.Tensor:
    """The launch, on checked arguments: x, b1, b2 contiguous; sizes from b1 and b2."""
    channels, hidden = b2.shape[0], b1.shape[0]
    out = x.new_empty(x.shape)
    m = x.numel() // channels
    if m:
        _lib().mlp_packed(x=x.data_ptr(), m=m, c=channels, ldx=channels,
                          w1p=w1_packed.data_ptr(), b1=b1.data_ptr(), ch=hidden,
                          w2p=w2_packed.data_ptr(), b2=b2.data_ptr(), out=out.data_ptr(),
                          nthreads=_threads(), dtype=_dtype(x))
    return out


def mlp_packed(x: torch.Tensor, w1_packed: torch.Tensor, b1: torch.Tensor,
               w2_packed: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """x + hardswish(x·W1ᵀ + b1)·W2ᵀ + b2 with packed W1 (Ch, C) and W2 (C, Ch).

    The hidden sizes come from b1 (Ch,) and b2 (C,).
    """
    _plain_inputs(("x", x), ("w1_packed", w1_packed), ("b1", b1), ("w2_packed", w2_packed),
                  ("b2", b2))
    checks.check_mlp(x, w1_packed, b1, w2_packed, b2, packed=True, allowed=CPU_ONLY,
                     devices=ON_CPU)
    return _mlp(x.contiguous(), w1_packed, b1.contiguous(), w2_packed, b2.contiguous())


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
        b2: torch.Tensor) -> torch.Tensor:
    """LeViT's residual MLP x + hardswish(x·w1ᵀ + b1)·w2ᵀ + b2 in one call; the weights are
    packed on the fly. Every tensor may have any strides (copied, as in `linear`)."""
    _plain_inputs(("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))
    x, w1, b1, w2, b2 = (_any_strides(t, name) for t, name in (
        (x, "x"), (w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")))
    channels, hidden = checks.check_mlp(x, w1, b1, w2, b2, allowed=CPU_ONLY, devices=ON_CPU)
    if x.numel() == 0 or channels == 0 or hidden == 0:
        return reference.mlp(x, w1, b1, w2, b2).contiguous()
    return mlp_packed(x, pack_weight(w1), b1, pack_weight(w2), b2)


# ---------------------------------------------------------------- conv (the stem)
def pack_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack a conv weight (Cout, Cin, kh, kw) for `conv2d_packed`: the (Cout, kh·kw·Cin)
    matrix of its (Cout, kh, kw, Cin) permutation, packed like a linear weight in kh runs of
    kw·Cin (the patch rows the kernel reads; pack_weight's segments): float32 (ceil(Cout/PANEL),
    kh, kw·Cin, PANEL)."""
    _cpu_tensor(weight, "weight", ndim=4, unit_last_stride=False)
    if weight.numel() == 0:
        raise ValueError(f"weight: expected every dimension >= 1, got shape "
                         f"{tuple(weight.shape)}")
    return pack_weight(weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1),
                       segments=weight.shape[2])


def conv2d_packed(x: torch.Tensor, packed: torch.Tensor, out_channels: int, kernel_size,
                  stride: int, padding: int, bias: Optional[torch.Tensor] = None,
                  activation: str = "none") -> torch.Tensor:
    """act(conv2d(x, W, bias, stride, padding)) in NHWC: x (B, H, W, Cin) -> (B, Ho, Wo, Cout).

    x may have any strides: `images.permute(0, 2, 3, 1)` of NCHW images is read in place.
    W (Cout, Cin, kh, kw) packed by `pack_conv_weight`. Equals
    F.conv2d(x.permute(0, 3, 1, 2), W, bias, stride, padding) (+ Hardswish), permuted back
    to (B, Ho, Wo, Cout) and made contiguous."""
    _plain_inputs(("x", x), ("packed_weight", packed), ("bias", bias))
    batch, h, w, cin, kh, kw, ho, wo = checks.check_conv2d_packed(
        x, packed, out_channels, kernel_size, stride, padding, bias, activation,
        allowed=CPU_ONLY, devices=ON_CPU)
    out = x.new_empty((batch, ho, wo, out_channels))
    if out.numel() == 0:
        return out
    _lib().conv2d_packed(x=x.data_ptr(), batch=batch, height=h, width=w, channels=cin,
                         nhwc_strides=x.stride(), kernel_h=kh, kernel_w=kw, stride=stride,
                         pad=padding, packed=packed.data_ptr(), cout=out_channels,
                         bias=_address(None if bias is None else bias.contiguous()),
                         act=ACTIVATION_CODES[activation], out=out.data_ptr(),
                         nthreads=_threads(), dtype=_dtype(x))
    return out


# ---------------------------------------------------------------- prepared layers
# The fused model calls a kernel ~50 times per forward with constant weights, and checking
# those weights on every call is a visible part of a batch-1 forward. These hold a weight
# packed and checked once, and take a fast path for activations that are already contiguous
# CPU tensors of the weight's dtype and the right width; anything else goes through the full
# checks. They are for inference: their outputs never require grad (the bias is held
# detached; inputs that require grad are refused while grad mode is on).
def _ready(x, features: int, dtype: torch.dtype) -> bool:
    """x is a contiguous CPU tensor (..., features) of `dtype`: nothing to check or copy."""
    return (type(x) is torch.Tensor and x.dtype is dtype and x.is_cpu and x.dim() > 0
            and x.shape[-1] == features and x.is_contiguous() and not x.requires_grad
            and not checks.is_transformed(x))


class PackedLinear:
    """act(x·Wᵀ + bias) + residual with W (N, K) packed once (see `linear_packed`)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        self.packed = pack_weight(weight)
        self.out_features, self.in_features = weight.shape
        checks.check_bias(bias, self.out_features)
        if bias is not None:
            checks.check_same([("weight", weight), ("bias", bias)])
            bias = bias.detach().contiguous()
        self.bias = bias

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 activation: str = "none") -> torch.Tensor:
        n, dtype = self.out_features, self.packed.dtype
        if (_ready(x, self.in_features, dtype) and type(activation) is str
                and activation in ACTIVATION_CODES
                and (residual is None or (_ready(residual, n, dtype)
                                          and residual.shape[:-1] == x.shape[:-1]))):
            return _gemm(x, self.packed, n, self.bias, residual, ACTIVATION_CODES[activation])
        return linear_packed(x, self.packed, n, self.bias, residual, activation)


class PackedMlp:
    """x + hardswish(x·W1ᵀ + b1)·W2ᵀ + b2 with W1 (Ch, C) and W2 (C, Ch) packed once."""

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor):
        # check_mlp takes C from x: an empty x of w1's width stands for the inputs to come.
        checks.check_tensor(w1, "w1", ndim=2)
        self.channels, _ = checks.check_mlp(w1.new_empty((0, w1.shape[1])), w1, b1, w2, b2)
        self.fc1, self.fc2 = PackedLinear(w1, b1), PackedLinear(w2, b2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc1, self.fc2
        if not _ready(x, self.channels, fc1.packed.dtype):
            return mlp_packed(x, fc1.packed, fc1.bias, fc2.packed, fc2.bias)
        return _mlp(x, fc1.packed, fc1.bias, fc2.packed, fc2.bias)


class PackedConv:
    """act(conv2d(x, W, bias, stride, padding)) in NHWC with W packed once and checked once,
    for ForwardProgram.add_conv; a call goes through the full checks of `conv2d_packed`."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                 padding: int):
        _cpu_tensor(weight, "weight", ndim=4, unit_last_stride=False)
        self.out_channels, self.in_channels, kh, kw = weight.shape
        if kh != kw:
            raise ValueError(f"weight: expected a square kernel, got shape {tuple(weight.shape)}")
        self.kernel_size = kh
        self.stride = checks.check_int(stride, "stride", 1, MAX_SIDE)
        self.padding = checks.check_int(padding, "padding", 0, MAX_SIDE)
        self.packed = pack_conv_weight(weight)
        checks.check_bias(bias, self.out_channels)
        checks.check_same([("weight", weight), ("bias", bias)])
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return conv2d_packed(x, self.packed, self.out_channels, self.kernel_size, self.stride,
                             self.padding, self.bias, activation)


class ForwardProgram:
    """A whole fused LeViT forward as one C++ call (csrc/forward.h): the stem, every attention
    and MLP layer, the mean over tokens and the classifier, with activations in one workspace.
    At batch 1 it saves what ~50 separate launches from Python would cost
    (benchmarks/README.md).

    Built from prepared layers (PackedConv, PackedLinear, PackedMlp: weights already packed
    and checked) in forward order; each `add_*` checks that the layer fits the ones before it.
    The program holds the layers, so the weights it points at live as long as it does.

    `dtype` is the program's one element type (float32 or bfloat16) for images, weights, the
    activations between layers (bf16 halves the workspace) and the output."""

    def __init__(self, in_channels: int, height: int, width: int,
                 dtype: torch.dtype = torch.float32):
        if dtype not in KERNEL_DTYPES:
            raise TypeError(f"dtype: expected one of {[str(d) for d in KERNEL_DTYPES]}, got "
                            f"{dtype}")
        for name, value in (("in_channels", in_channels), ("height", height), ("width", width)):
            checks.check_int(value, name, 1, MAX_SIDE)
        cls = _lib().Program if dtype == torch.float32 else _lib().ProgramBf16
        self._program = cls(in_channels=in_channels, height=height, width=width)
        self.dtype = dtype
        self.in_channels, self.height, self.width = in_channels, height, width
        self._layers: list = []   # keeps every tensor the program has an address of alive
        # The workspace is kept between calls: allocated afresh, its tens of MB come back from
        # the OS as new pages and every forward pays their page faults.
        # A call that finds it in use (another Python thread) allocates its own.
        self._workspace = torch.empty(0, dtype=dtype, device="cpu")
        self._workspace_lock = threading.Lock()

    @property
    def output_features(self) -> int:
        return self._program.output_features

    def _check_dtype(self, name: str, t: torch.Tensor) -> None:
        if t.dtype != self.dtype:
            raise TypeError(f"{name}: expected dtype {self.dtype} (the program's), got {t.dtype}")

    def add_conv(self, conv: PackedConv, activation: str) -> None:
        self._check_dtype("conv", conv.packed)
        self._program.add_conv(packed=conv.packed.data_ptr(), bias=_address(conv.bias),
                               cin=conv.in_channels, cout=conv.out_channels,
                               kernel=conv.kernel_size, stride=conv.stride, pad=conv.padding,
                               act=_act(activation))
        self._layers.append(conv)

    def add_attention(self, qkv: PackedLinear, proj: PackedLinear, bias: torch.Tensor,
                      heads: int, key_dim: int, val_dim: int, scale: float,
                      offsets: Mapping[str, int], q: Optional[PackedLinear] = None,
                      subsample: int = 1) -> None:
        """Self-attention with a residual, or with q shrinking attention (queries on every
        subsample-th row and column; subsample > 1 needs q).

        qkv projects every head's slot of qkv.out_features / heads channels; `offsets` says
        where q, k and v (self-attention) or k and v (shrinking: qkv is the kv projection, q
        its own) start inside a slot, as the model lays its projection out."""
        for name, value in (("heads", heads), ("key_dim", key_dim), ("val_dim", val_dim),
                            ("subsample", subsample)):
            checks.check_int(value, name, 1, MAX_SIDE)
        p, shrinking = self._program, q is not None
        if subsample > 1 and not shrinking:
            raise ValueError("q: shrinking attention (subsample > 1) needs the q projection")
        for name, layer in (("qkv", qkv), ("proj", proj), ("q", q)):
            if layer is not None:
                self._check_dtype(name, layer.packed)
        rows, cols, channels = p.rows, p.cols, p.channels
        n_k = rows * cols
        n_q = ((rows - 1) // subsample + 1) * ((cols - 1) // subsample + 1)
        parts = {"k": key_dim, "v": val_dim} if shrinking else {"q": key_dim, "k": key_dim,
                                                                "v": val_dim}
        if set(offsets) != set(parts):
            raise ValueError(f"offsets: expected the offsets of {sorted(parts)}, got "
                             f"{dict(offsets)}")
        for part, offset in offsets.items():
            checks.check_int(offset, f"offsets[{part!r}]", 0, MAX_SIDE)
        expected = [("qkv", qkv.in_features, channels),
                    ("qkv", qkv.out_features, heads * sum(parts.values())),
                    ("proj", proj.in_features, heads * val_dim)]
        if shrinking:
            expected += [("q", q.in_features, channels), ("q", q.out_features, heads * key_dim)]
        for name, got, want in expected:
            if got != want:
                raise ValueError(f"{name}: expected {want} features here, got {got}")
        _cpu_tensor(bias, "bias", ndim=3)
        self._check_dtype("bias", bias)
        if tuple(bias.shape) != (heads, n_q, n_k):
            raise ValueError(f"bias: expected shape (H={heads}, Nq={n_q}, Nk={n_k}) for the "
                             f"{rows}x{cols} token grid, got {tuple(bias.shape)}")
        bias = bias.contiguous()
        p.add_attention(_lib().AttentionLayer(
            channels=channels, out_channels=proj.out_features, heads=heads, dk=key_dim,
            dv=val_dim, subsample=subsample, head_width=qkv.out_features // heads,
            q_offset=offsets.get("q", 0), k_offset=offsets["k"], v_offset=offsets["v"],
            scale=checks.check_scale(scale), bias=bias.data_ptr(), qkv_packed=qkv.packed.data_ptr(),
            qkv_bias=_address(qkv.bias), q_packed=0 if q is None else q.packed.data_ptr(),
            q_bias=_address(None if q is None else q.bias), proj_packed=proj.packed.data_ptr(),
            proj_bias=_address(proj.bias)))
        self._layers.append((qkv, proj, bias, q))

    def add_mlp(self, mlp: PackedMlp) -> None:
        fc1, fc2 = mlp.fc1, mlp.fc2
        self._check_dtype("mlp", fc1.packed)
        self._program.add_mlp(channels=mlp.channels, hidden=fc1.out_features,
                              w1_packed=fc1.packed.data_ptr(), b1=fc1.bias.data_ptr(),
                              w2_packed=fc2.packed.data_ptr(), b2=fc2.bias.data_ptr())
        self._layers.append(mlp)

    def set_head(self, head: PackedLinear) -> None:
        """The classifier, on the mean token: the last layer (the program checks both)."""
        self._check_dtype("head", head.packed)
        self._program.set_head(packed=head.packed.data_ptr(), bias=_address(head.bias),
                               in_features=head.in_features, classes=head.out_features)
        self._layers.append(head)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) CPU images of the program's dtype, any strides -> (B, output_features)
        of that dtype."""
        return self._forward(images, self._program.run)[0]

    def profile(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[Dict[str, object]]]:
        """The forward of `__call__` with each of its steps timed: (output, steps), steps in
        forward order, each {"step": name, "kind": "convolution" / "gemm" / "attention" /
        "mlp" / "copy", "seconds", "flops"}, summed over the batch's images (flops: 2 per
        multiply-add, 0 for copies and the mean)."""
        out, timed = self._forward(images, self._program.run_profiled)
        return out, [{"step": name, "kind": kind, "seconds": seconds, "flops": flops}
                     for name, kind, flops, seconds in timed or []]

    def _forward(self, images: torch.Tensor, run):
        """(output, what `run` returned): the checks, output and workspace of one call."""
        _plain_inputs(("images", images))
        _cpu_tensor(images, "images", ndim=4, unit_last_stride=False)
        self._check_dtype("images", images)
        expected = (self.in_channels, self.height, self.width)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images: expected shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(images.shape)}")
        batch = images.shape[0]
        # device="cpu" always: under `with torch.device("meta")` (or set_default_device) a
        # bare torch.empty would hand the kernels a meta tensor's null pointer.
        out = torch.empty((batch, self.output_features), dtype=self.dtype, device="cpu")
        if batch == 0:
            return out, None
        size = self._program.workspace_elements(batch=batch)  # bounded: batches run in chunks
        if not self._workspace_lock.acquire(blocking=False):
            workspace = torch.empty(size, dtype=self.dtype, device="cpu")
            return out, self._run(run, images, workspace, out)
        try:
            if self._workspace.numel() < size:
                self._workspace = torch.empty(size, dtype=self.dtype, device="cpu")
            return out, self._run(run, images, self._workspace, out)
        finally:
            self._workspace_lock.release()

    @staticmethod
    def _run(run, images, workspace, out):
        return run(images=images.data_ptr(), batch=images.shape[0], nchw_strides=images.stride(),
                   workspace=workspace.data_ptr(), out=out.data_ptr(), nthreads=_threads())
