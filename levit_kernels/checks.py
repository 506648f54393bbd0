"""Input validation shared by the public ops, the CPU launchers and the GPU launchers.

Every check raises TypeError (wrong type or dtype) or ValueError (wrong shape, stride,
device) naming the argument and what was expected, before any kernel sees a pointer.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

CPU_DTYPES = (torch.float32,)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ACTIVATIONS = ("none", "hardswish")
# Kernels index with 32-bit offsets on the GPU; CPU kernels use 64-bit but share the limit so
# that both paths accept exactly the same inputs.
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
        _fail(ValueError, name, f"has {t.numel()} elements; at most {MAX_NUMEL} are supported")
    if unit_last_stride and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        _fail(ValueError, name, f"the last dimension must have unit stride, got strides "
                                f"{t.stride()} (pass a view of a row-major tensor)")


def check_same(tensors: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> None:
    """All given tensors on one device, one dtype, and that dtype supported on that device."""
    present = [(n, t) for n, t in tensors if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            _fail(ValueError, name, f"expected device {first.device} (like {first_name}), "
                                    f"got {t.device}")
        if t.dtype != first.dtype:
            _fail(TypeError, name, f"expected dtype {first.dtype} (like {first_name}), "
                                   f"got {t.dtype}")
    if first.device.type not in ("meta",):
        allowed = CUDA_DTYPES if first.device.type == "cuda" else CPU_DTYPES
        if first.dtype not in allowed:
            _fail(TypeError, first_name, f"expected dtype in {[str(d) for d in allowed]} on "
                                         f"{first.device.type}, got {first.dtype}")


def check_attention(q, k, v, bias, *, device_dtypes: bool = True) -> Tuple[int, ...]:
    """q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv) or None, bias (H,Nq,Nk).

    Returns (B, H, Nq, Nk, Dk, Dv) with Dv = 0 when v is None.
    """
    check_tensor(q, "q", ndim=4)
    check_tensor(k, "k", ndim=4)
    if v is not None:
        check_tensor(v, "v", ndim=4)
    check_tensor(bias, "bias", ndim=3)
    if device_dtypes:
        check_same([("q", q), ("k", k), ("v", v), ("bias", bias)])
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
    return batch, heads, n_q, n_k, d_k, d_v


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        _fail(ValueError, "activation", f"expected one of {ACTIVATIONS}, got {activation!r}")


def check_linear(x, weight, bias, residual, activation, *, out_features: Optional[int] = None,
                 device_dtypes: bool = True) -> Tuple[int, int]:
    """x (..., K), weight (N, K) (or a packed weight when out_features is given),
    bias (N,) or None, residual (..., N) or None. Returns (K, N)."""
    check_tensor(x, "x", min_ndim=1)
    check_activation(activation)
    k_in = x.shape[-1]
    if out_features is None:
        check_tensor(weight, "weight", ndim=2)
        n_out = weight.shape[0]
        if weight.shape[1] != k_in:
            _fail(ValueError, "weight", f"expected shape (N, K={k_in}) to match x's last "
                                        f"dimension, got {tuple(weight.shape)}")
    else:
        n_out = out_features
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != n_out:
            _fail(ValueError, "bias", f"expected shape ({n_out},), got {tuple(bias.shape)}")
    if residual is not None:
        check_tensor(residual, "residual", min_ndim=1)
        expected = tuple(x.shape[:-1]) + (n_out,)
        if tuple(residual.shape) != expected:
            _fail(ValueError, "residual", f"expected shape {expected}, got "
                                          f"{tuple(residual.shape)}")
    if device_dtypes:
        check_same([("x", x), ("weight", weight), ("bias", bias), ("residual", residual)])
    return k_in, n_out


def check_mlp(x, w1, b1, w2, b2, *, packed: bool = False, device_dtypes: bool = True):
    """x (..., C), w1 (Ch, C), b1 (Ch,), w2 (C, Ch), b2 (C,). Returns (C, Ch).

    With packed=True the weights are opaque packed tensors and sizes come from b1, b2."""
    check_tensor(x, "x", min_ndim=1)
    check_tensor(b1, "b1", ndim=1)
    check_tensor(b2, "b2", ndim=1)
    channels, hidden = x.shape[-1], b1.shape[0]
    if b2.shape[0] != channels:
        _fail(ValueError, "b2", f"expected shape ({channels},) to match x's last dimension, "
                                f"got {tuple(b2.shape)}")
    if not packed:
        check_tensor(w1, "w1", ndim=2)
        check_tensor(w2, "w2", ndim=2)
        if tuple(w1.shape) != (hidden, channels):
            _fail(ValueError, "w1", f"expected shape (Ch={hidden}, C={channels}), "
                                    f"got {tuple(w1.shape)}")
        if tuple(w2.shape) != (channels, hidden):
            _fail(ValueError, "w2", f"expected shape (C={channels}, Ch={hidden}), "
                                    f"got {tuple(w2.shape)}")
    if device_dtypes:
        check_same([("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)])
    return channels, hidden
