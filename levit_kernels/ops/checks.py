"""Input validation shared by the public ops, the CPU launchers and the GPU launchers.

Every check raises TypeError (wrong type or dtype) or ValueError (wrong shape, stride,
device, size) naming the argument and what was expected, before any kernel sees a pointer
and before any output is allocated: the fake (meta) implementations run the same checks, so
a bad call fails identically under torch.compile, on meta tensors and on real ones. (One check
reads values, so it runs on real CPU tensors only: a bf16 packed weight's run padding.)
"""
from __future__ import annotations

import numbers
from typing import Mapping, Optional, Sequence, Tuple

import torch

from .extension import KERNEL_DTYPES, PANEL, lib, packed_shape, unavailable_reason
from .reference import ACTIVATIONS

CPU_DTYPES = (torch.float32, torch.bfloat16)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The Triton launchers on CPU tensors (TRITON_INTERPRET=1): the interpreter has no bfloat16
# arithmetic (triton-lang/triton#11584; it returned float bit patterns read as integers).
INTERPRETER_DTYPES = (torch.float16, torch.float32)
# What the registered ops take on each device type: {device type: dtypes}. Meta tensors
# (shape-only calls of the fake implementations) may have any dtype a real device takes.
OP_DTYPES = {"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES,
             "meta": tuple(dict.fromkeys(CPU_DTYPES + CUDA_DTYPES))}
# Kernels index with 32-bit offsets on the GPU; CPU kernels use 64-bit but share the limit so
# that both paths accept exactly the same inputs. It bounds every input's element count and the
# largest offset its strides reach (a small view into a huge buffer is indexed from the view's
# start, so the span counts, not the buffer), every output and every intermediate a kernel or
# the reference materialises.
MAX_NUMEL = 2**31 - 1


def _fail(exc, name, msg):
    raise exc(f"{name}: {msg}")


def check_tensor(t, name: str, ndim: Optional[int] = None, min_ndim: Optional[int] = None,
                 unit_last_stride: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(TypeError, name, f"expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        _fail(ValueError, name, f"expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        _fail(ValueError, name, f"expected at least {min_ndim} dimensions, got shape "
                                f"{tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        _fail(TypeError, name, f"expected a floating-point tensor, got {t.dtype}")
    if t.numel() > MAX_NUMEL:
        _fail(ValueError, name, f"has {t.numel()} elements; at most {MAX_NUMEL} are supported "
                                f"(32-bit indexing)")
    if t.numel() and sum((n - 1) * s for n, s in zip(t.shape, t.stride())) > MAX_NUMEL:
        _fail(ValueError, name, f"its strides {t.stride()} reach past element {MAX_NUMEL} from "
                                f"its start; at most {MAX_NUMEL} elements are supported "
                                f"(32-bit indexing): pass a smaller view")
    if unit_last_stride and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        _fail(ValueError, name, f"the last dimension must have unit stride, got strides "
                                f"{t.stride()} (pass a view of a row-major tensor)")


def check_same(tensors: Sequence[Tuple[str, Optional[torch.Tensor]]],
               allowed: Mapping[str, Sequence[torch.dtype]] = OP_DTYPES,
               devices: str = "") -> None:
    """All given tensors on one device and of one dtype, both among `allowed` ({device type:
    dtypes}; the ops' table by default). `devices` phrases the allowed devices for the error
    (default: their names)."""
    present = [(n, t) for n, t in tensors if t is not None]
    first_name, first = present[0]
    # The first tensor's device and dtype first: for x float64 with float32 weights the
    # message should blame x's dtype, not say that the weights should have been float64.
    if first.device.type not in allowed:
        wanted = devices or " or ".join(allowed) + " tensors"
        _fail(ValueError, first_name, f"expected {wanted}, got device {first.device}")
    dtypes = allowed[first.device.type]
    if first.dtype not in dtypes:
        _fail(TypeError, first_name, f"expected dtype in {[str(d) for d in dtypes]} on "
                                     f"{first.device.type}, got {first.dtype}")
    for name, t in present[1:]:
        if t.device != first.device:
            _fail(ValueError, name, f"expected device {first.device} (like {first_name}), "
                                    f"got {t.device}")
        if t.dtype != first.dtype:
            _fail(TypeError, name, f"expected dtype {first.dtype} (like {first_name}), "
                                   f"got {t.dtype}")


def check_numel(shape, names: str, what: str) -> None:
    """An output or intermediate of `shape` must fit 32-bit indexing too (checked before it
    is allocated: small or stride-0 inputs can still ask for a huge output)."""
    numel = 1
    for n in shape:      # no int(): under torch.compile sizes may be symbolic
        numel = numel * n
    if numel > MAX_NUMEL:
        _fail(ValueError, names, f"{what} {tuple(shape)} would have {numel} elements; at most "
                                 f"{MAX_NUMEL} are supported (32-bit indexing)")


def check_scale(scale) -> float:
    """The softmax scale: a real number or a one-element tensor (NaN/inf are allowed and
    propagate as in the reference)."""
    if isinstance(scale, torch.SymFloat):     # a symbolic float under torch.compile
        return scale
    ok = isinstance(scale, numbers.Real) and not isinstance(scale, bool)
    ok = ok or (isinstance(scale, torch.Tensor) and scale.numel() == 1
                and not scale.dtype.is_complex and scale.dtype != torch.bool)
    if not ok:
        _fail(TypeError, "scale", f"expected a float, got {type(scale).__name__} {scale!r}")
    try:
        return float(scale)
    except OverflowError:     # an int past float's range (10**400)
        _fail(ValueError, "scale", f"expected a float, got an int too large for one: {scale}")


def check_flag(value, name: str) -> bool:
    """A bool argument (hardswish=...): bool() would take "false" or 2 for True."""
    if not isinstance(value, bool):
        _fail(TypeError, name, f"expected a bool, got {type(value).__name__} {value!r}")
    return value


# torch.func transforms (vmap, grad, jacrev...) hand functions wrapper tensors with no storage.
is_transformed = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor",
                         lambda t: False)


def check_untracked(named, launchers: str, grad: bool = True) -> None:
    """For the launchers (cpu.*, gpu.*), which compute values only: refuse, naming the
    argument, what autograd or a torch.func transform would track, since the result would
    silently lose its gradient (grad=False: a packing, meant for parameters) or the kernels
    would find no storage. `named`: (name, value) pairs; non-tensors are skipped."""
    tracking = grad and torch.is_grad_enabled()
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            continue
        if is_transformed(t):
            _fail(TypeError, name, f"a torch.func transform (vmap, grad, ...) is active; the "
                                   f"{launchers} launchers take plain tensors: use "
                                   f"levit_kernels.ops.* (registered torch ops) inside "
                                   f"transforms")
        if tracking and t.requires_grad:
            _fail(RuntimeError, name, f"requires grad, but the {launchers} kernels compute no "
                                      f"gradients; call them under torch.no_grad() or with "
                                      f"detached tensors, or use levit_kernels.reference.* for "
                                      f"a differentiable answer")


INT64_MAX = 2 ** 63 - 1   # every int goes to C++ as an int64


def check_int(value, name: str, minimum: int, maximum: int = INT64_MAX):
    """An int argument in [minimum, maximum] (a SymInt under torch.compile passes as it is);
    int() would truncate 1.9 to 1 and take "2" for 2."""
    if isinstance(value, torch.SymInt):
        return value
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or value > maximum):
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        too_big = isinstance(value, numbers.Integral) and value > maximum
        bound = f" <= {maximum}" if too_big or maximum != INT64_MAX else ""
        _fail(ValueError, name, f"expected {wanted}{bound}, got {value!r}")
    return int(value)


def check_attention(q, k, v, bias, *, probs: bool = False, scale=None,
                    allowed: Mapping = OP_DTYPES, devices: str = "") -> Tuple[int, ...]:
    """q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv) (None for probs=True), bias (H,Nq,Nk),
    and the scale when given (the registered ops' schema takes any Python number, bool too).

    Returns (B, H, Nq, Nk, Dk, Dv) with Dv = 0 for probs=True.
    """
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    if probs:
        v = None
    else:
        check_tensor(v, "v", ndim=4)
    check_tensor(bias, "bias", ndim=3)
    batch, heads, n_q, d_k = q.shape
    n_k = k.shape[2]
    if tuple(k.shape) != (batch, heads, n_k, d_k):
        _fail(ValueError, "k", f"expected shape (B={batch}, H={heads}, Nk, Dk={d_k}) to match q, "
                               f"got {tuple(k.shape)}")
    d_v = 0
    if v is not None:
        d_v = v.shape[3]
        if tuple(v.shape[:3]) != (batch, heads, n_k):
            _fail(ValueError, "v", f"expected shape (B={batch}, H={heads}, Nk={n_k}, Dv) to match "
                                   f"q and k, got {tuple(v.shape)}")
    if tuple(bias.shape) != (heads, n_q, n_k):
        _fail(ValueError, "bias", f"expected shape (H={heads}, Nq={n_q}, Nk={n_k}), "
                                  f"got {tuple(bias.shape)}")
    if probs:
        check_numel((batch, heads, n_q, n_k), "q, k", "the output (B, H, Nq, Nk) =")
    else:
        check_numel((batch, n_q, heads * d_v), "q, v", "the output (B, Nq, H*Dv) =")
    check_same([("q", q), ("k", k), ("v", v), ("bias", bias)], allowed, devices)
    if scale is not None:
        check_scale(scale)
    return batch, heads, n_q, n_k, d_k, d_v


def check_packed(packed, name: str, out_features, in_features: int, segments: int = 1, *,
                 out_name: Optional[str] = None, source: Optional[str] = None) -> None:
    """A weight from levit_kernels.cpu.pack_weight, contiguous: (ceil(N/PANEL), K, PANEL) in
    float32, (ceil(N/PANEL), K pairs, PANEL, 2) in bfloat16 (K in `segments` runs: a conv's
    kernel rows, shown as their own dimension). `out_name` is the argument that gave
    out_features (default: `name`), `source` what the weight should have been packed from,
    for the messages."""
    if PANEL is None:    # packed weights come from the extension, and so does their layout
        raise RuntimeError(unavailable_reason())
    check_tensor(packed, name, min_ndim=3)
    # SymInt: under torch.compile(dynamic=True) the sizes taken from b1/b2 are symbolic.
    if (isinstance(out_features, bool) or
            not isinstance(out_features, (numbers.Integral, torch.SymInt)) or out_features < 1):
        _fail(ValueError, out_name or name,
              f"expected a positive int for the number of output features, got {out_features!r}")
    source = source or (f"a ({out_features}, {in_features}) weight packed by "
                        f"levit_kernels.cpu.pack_weight")
    if packed.dtype not in CPU_DTYPES:
        _fail(TypeError, name, f"expected dtype in {[str(d) for d in CPU_DTYPES]} (what "
                               f"pack_weight packs), got {packed.dtype}")
    panels = packed.shape[0]
    if not (panels - 1) * PANEL < out_features <= panels * PANEL:
        # (also keeps a huge out_features from overflowing the shape computed below)
        _fail(ValueError, name, f"shape {tuple(packed.shape)}: its {panels} panel(s) of {PANEL} "
                                f"columns hold {(panels - 1) * PANEL + 1}..{panels * PANEL} "
                                f"output features, not out_features={out_features}")
    expected = packed_shape(out_features, in_features, packed.dtype, segments)
    if tuple(packed.shape) != expected:
        _fail(ValueError, name, f"expected shape {expected} ({source}), got "
                                f"{tuple(packed.shape)}")
    if not packed.is_contiguous():
        _fail(ValueError, name, f"expected a contiguous tensor (as pack_weight returns it), "
                                f"got strides {packed.stride()}")
    readable = _has_values(packed)
    if readable:
        # N and N' with as many panels give one shape; the padding columns' marks tell them
        # apart (csrc/gemm.h kColumnPadMark). The kernels would drop columns of the weight or
        # return padding ones.
        marked = lib().packed_out_features(packed=packed.data_ptr(), panels=panels,
                                           panel_numel=packed.numel() // panels,
                                           dtype=KERNEL_DTYPES[packed.dtype])
        if marked != out_features:
            _fail(ValueError, name, f"was packed for {marked} output features, not for the "
                                    f"{out_features} of {out_name or 'this call'} (both give "
                                    f"the shape {tuple(packed.shape)})")
    if packed.dtype == torch.bfloat16 and readable and not lib().run_padding_matches(
            packed=packed.data_ptr(), k=in_features, segments=segments):
        # K and K ± 1 per run give the same bf16 shape (runs are padded to pairs); the values
        # tell them apart (csrc/gemm_bf16.h kRunPadBits). The kernels would drop a column
        # of the weight or multiply one of the input's by 0.
        other = in_features + (segments if (in_features // segments) % 2 else -segments)
        _fail(ValueError, name, f"was packed for K = {other}, not for the K = {in_features} "
                                f"of the input (in bfloat16 both give the shape "
                                f"{tuple(packed.shape)})")


def _has_values(t) -> bool:
    """A plain CPU tensor whose memory can be read (not fake or meta, not a torch.func wrapper,
    not being traced): the one kind of tensor a check may read values from."""
    return (type(t) is torch.Tensor and t.device.type == "cpu" and not is_transformed(t)
            and not torch.compiler.is_compiling())


def check_activation(activation) -> None:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        _fail(ValueError, "activation", f"expected one of {ACTIVATIONS}, got {activation!r}")


def check_bias(bias, n_out: int) -> None:
    """An optional per-output bias: None or an (N,) vector."""
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != n_out:
            _fail(ValueError, "bias", f"expected shape ({n_out},), got {tuple(bias.shape)}")


def check_linear(x, weight, bias, residual, activation, *, out_features: Optional[int] = None,
                 allowed: Mapping = OP_DTYPES, devices: str = "") -> Tuple[int, int]:
    """x (..., K), weight (N, K) (or a packed weight, named packed_weight, when out_features
    is given), bias (N,) or None, residual (..., N) or None. Returns (K, N)."""
    check_tensor(x, "x", min_ndim=1)
    check_activation(activation)
    k_in = x.shape[-1]
    weight_name = "weight" if out_features is None else "packed_weight"
    if out_features is None:
        check_tensor(weight, "weight", ndim=2)
        n_out = weight.shape[0]
        if weight.shape[1] != k_in:
            _fail(ValueError, "weight", f"expected shape (N, K={k_in}) to match x's last "
                                        f"dimension, got {tuple(weight.shape)}")
    else:
        if k_in < 1:   # pack_weight never makes an empty weight
            _fail(ValueError, "x", f"expected a last dimension >= 1 for a packed weight, got "
                                   f"shape {tuple(x.shape)}")
        check_packed(weight, "packed_weight", out_features, k_in, out_name="out_features")
        n_out = out_features
    check_bias(bias, n_out)
    if residual is not None:
        check_tensor(residual, "residual", min_ndim=1)
        expected = tuple(x.shape[:-1]) + (n_out,)
        if tuple(residual.shape) != expected:
            _fail(ValueError, "residual", f"expected shape {expected}, got "
                                          f"{tuple(residual.shape)}")
    check_numel(tuple(x.shape[:-1]) + (n_out,), f"x, {weight_name}", "the output (..., N) =")
    check_same([("x", x), (weight_name, weight), ("bias", bias), ("residual", residual)],
               allowed, devices)
    return k_in, n_out


def check_mlp(x, w1, b1, w2, b2, *, packed: bool = False, allowed: Mapping = OP_DTYPES,
              devices: str = ""):
    """x (..., C), w1 (Ch, C), b1 (Ch,), w2 (C, Ch), b2 (C,). Returns (C, Ch).

    With packed=True the weights (named w1_packed, w2_packed) come from cpu.pack_weight and
    the sizes from b1, b2."""
    check_tensor(x, "x", min_ndim=1)
    check_tensor(b1, "b1", ndim=1)
    check_tensor(b2, "b2", ndim=1)
    channels, hidden = x.shape[-1], b1.shape[0]
    if b2.shape[0] != channels:
        _fail(ValueError, "b2", f"expected shape ({channels},) to match x's last dimension, "
                                f"got {tuple(b2.shape)}")
    w1_name, w2_name = ("w1_packed", "w2_packed") if packed else ("w1", "w2")
    if packed:         # pack_weight never makes an empty weight
        if channels < 1:
            _fail(ValueError, "x", f"expected a last dimension >= 1 for packed weights, got "
                                   f"shape {tuple(x.shape)}")
        if hidden < 1:
            _fail(ValueError, "b1", f"expected at least one hidden channel, got shape "
                                    f"{tuple(b1.shape)}")
        check_packed(w1, "w1_packed", hidden, channels)
        check_packed(w2, "w2_packed", channels, hidden)
    else:
        check_tensor(w1, "w1", ndim=2)
        check_tensor(w2, "w2", ndim=2)
        if w1.shape[1] != channels:
            _fail(ValueError, "w1", f"expected shape (Ch, C={channels}) to match x's last "
                                    f"dimension, got {tuple(w1.shape)}")
        if hidden != w1.shape[0]:   # Ch is w1's: a b1 of another size is b1's mistake
            _fail(ValueError, "b1", f"expected shape (Ch={w1.shape[0]},) to match w1, "
                                    f"got {tuple(b1.shape)}")
        if tuple(w2.shape) != (channels, hidden):
            _fail(ValueError, "w2", f"expected shape (C={channels}, Ch={hidden}), "
                                    f"got {tuple(w2.shape)}")
    # The hidden activation (..., Ch) is materialised by the reference and by the unfused GPU
    # path (the CPU kernel keeps it in row blocks, but both paths accept the same inputs).
    check_numel(tuple(x.shape[:-1]) + (hidden,), f"x, {w1_name}",
                "the hidden activation (..., Ch) =")
    check_same([("x", x), (w1_name, w1), ("b1", b1), (w2_name, w2), ("b2", b2)], allowed,
               devices)
    return channels, hidden


def _pair(name: str, value, minimum: int):
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)):
        pair = tuple(value)
    else:
        pair = ()       # 3.0, "3": refused below
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                 for v in pair):
        raise ValueError(f"{name}: expected an int or a pair of ints >= {minimum}, got {value!r}")
    return pair


def check_conv2d_packed(x, packed, out_channels, kernel_size, stride, padding, bias, activation,
                        *, allowed: Mapping = OP_DTYPES, devices: str = ""):
    """x (B, H, W, Cin) NHWC of any strides, packed from pack_conv_weight for a (Cout, Cin, kh,
    kw) weight, a kernel_size int or pair, stride >= 1, padding >= 0, bias (Cout,) or None.
    Returns (B, H, W, Cin, kh, kw, Ho, Wo)."""
    check_activation(activation)
    check_tensor(x, "x", ndim=4, unit_last_stride=False)
    kh, kw = _pair("kernel_size", kernel_size, 1)
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        _fail(ValueError, "stride", f"expected an int >= 1, got {stride!r}")
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        _fail(ValueError, "padding", f"expected an int >= 0, got {padding!r}")
    batch, h, w, cin = x.shape
    if cin < 1:
        _fail(ValueError, "x", f"expected at least one channel (NHWC), got shape "
                               f"{tuple(x.shape)}")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        _fail(ValueError, "x", f"NHWC {tuple(x.shape)} is smaller than the {kh}x{kw} kernel "
                               f"with padding {padding}")
    check_packed(packed, "packed", out_channels, kh * kw * cin, segments=kh,
                 out_name="out_channels",
                 source=f"a (Cout, Cin, kh, kw) = ({out_channels}, {cin}, {kh}, {kw}) weight "
                        f"packed by levit_kernels.cpu.pack_conv_weight")
    check_bias(bias, out_channels)
    check_same([("x", x), ("packed", packed), ("bias", bias)], allowed, devices)
    check_numel((batch, ho, wo, out_channels), "x, packed", "the output (B, Ho, Wo, N) =")
    return batch, h, w, cin, kh, kw, ho, wo
