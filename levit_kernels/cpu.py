"""CPU launchers: the levit_kernels op signatures on top of the compiled `_C` kernels.

Every function validates its inputs here (dtype float32, CPU device, ranks, shapes, unit
stride on the last dim) and raises TypeError/ValueError naming the argument, before any raw
address is handed to the C++ kernels in csrc/ (which trust their arguments). q/k/v are never
copied: the attention kernel reads them through their strides. Threads: the kernels use
`torch.get_num_threads()` threads, read at every call.

Pre-packed weights: LeViT's weights are constants at inference, so `pack_weight` rearranges a
(N, K) weight once into (ceil(N/16), K, 16) zero-padded column panels (the layout does not
depend on the ISA path, so a packed weight stays valid after `set_isa`), and
`linear_packed`/`mlp_packed` use it directly. `linear`/`mlp` pack on every call.
"""
from __future__ import annotations

from typing import List, Optional

import torch

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - exercised only in pure-Python installs
    _C = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

__all__ = [
    "attention", "attention_probs", "linear", "mlp", "pack_weight", "linear_packed", "mlp_packed",
    "is_available", "isa", "set_isa", "available_isas",
]

PANEL = 16
_ACTS = {"none": 0, "hardswish": 1}


# ---------------------------------------------------------------- availability / ISA switch
def is_available() -> bool:
    """True when the compiled extension `levit_kernels._C` is importable."""
    return _C is not None


def unavailable_reason() -> str:
    """Why the extension is missing and how to build it ('' when it is available)."""
    if _C is not None:
        return ""
    return (f"levit_kernels._C (the compiled CPU kernels) is not available: {_IMPORT_ERROR}. "
            "Reinstall with `pip install --no-build-isolation -e .` (needs a C++17 compiler, "
            "cmake and pybind11; LEVIT_BUILD_EXT must not be 0).")


def _lib():
    if _C is None:
        raise RuntimeError(
            "levit_kernels._C (the compiled CPU kernels) is not available: "
            f"{_IMPORT_ERROR}. Reinstall with `pip install --no-build-isolation -e .` "
            "(needs a C++17 compiler, cmake and pybind11; LEVIT_BUILD_EXT must not be 0).")
    return _C


def isa() -> str:
    """The active CPU path: 'avx512', 'avx2' or 'generic'."""
    return _lib().isa()


def available_isas() -> List[str]:
    """The paths this CPU supports, best first."""
    return list(_lib().available_isas())


def set_isa(name: str) -> None:
    """Switch the CPU path at run time (ValueError if unknown or unsupported by this CPU)."""
    _lib().set_isa(name)


# ---------------------------------------------------------------- validation helpers
def _tensor(name: str, t, ndim: Optional[int] = None, min_ndim: int = 1) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must have dtype torch.float32, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {t.device}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dim(s), got shape {tuple(t.shape)}")
    return t


def _unit_last(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride on its last dim, got strides {t.stride()}")


def _shape(name: str, t: torch.Tensor, expected) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def _act(activation) -> int:
    if activation not in _ACTS:
        raise ValueError(f"activation must be one of {tuple(_ACTS)}, got {activation!r}")
    return _ACTS[activation]


def _threads() -> int:
    return max(1, torch.get_num_threads())


# ---------------------------------------------------------------- attention
def _attention(q, k, v, bias, scale, hardswish: bool, probs: bool) -> torch.Tensor:
    q = _tensor("q", q, 4)
    k = _tensor("k", k, 4)
    batch, heads, n_q, d_k = q.shape
    n_k = k.shape[2]
    _shape("k", k, (batch, heads, n_k, d_k))
    if not probs:
        v = _tensor("v", v, 4)
        if tuple(v.shape[:3]) != (batch, heads, n_k):
            raise ValueError(f"v must have shape ({batch}, {heads}, {n_k}, Dv), got {tuple(v.shape)}")
        _unit_last("v", v)
    bias = _tensor("bias", bias, 3)
    _shape("bias", bias, (heads, n_q, n_k))
    _unit_last("q", q)
    _unit_last("k", k)
    if n_q < 1 or n_k < 1 or d_k < 1 or (not probs and v.shape[3] < 1):
        raise ValueError(f"attention needs Nq, Nk, Dk, Dv >= 1, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}" + ("" if probs else f", v {tuple(v.shape)}"))
    if not isinstance(scale, (float, int)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    bias = bias.contiguous()
    d_v = 0 if probs else v.shape[3]
    if probs:
        out = torch.empty((batch, heads, n_q, n_k), dtype=torch.float32)
    else:
        out = torch.empty((batch, n_q, heads * d_v), dtype=torch.float32)
    if out.numel() == 0:
        return out
    vs = (0, 0, 0) if probs else v.stride()[:3]
    _lib().attention(q.data_ptr(), k.data_ptr(), 0 if probs else v.data_ptr(), bias.data_ptr(),
                     out.data_ptr(), batch, heads, n_q, n_k, d_k, d_v, *q.stride()[:3],
                     *k.stride()[:3], *vs, float(scale), bool(hardswish), probs, _threads())
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              scale: float, hardswish: bool) -> torch.Tensor:
    """act(softmax(scale·q·kᵀ + bias)·v) -> (B, Nq, H·Dv), heads side by side.

    q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv): any strides with unit stride on the last dim
    (views of a packed qkv projection are read in place); bias (H,Nq,Nk).
    """
    return _attention(q, k, v, bias, scale, hardswish, probs=False)


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """softmax(scale·q·kᵀ + bias) over the keys -> (B, H, Nq, Nk)."""
    return _attention(q, k, None, bias, scale, False, probs=True)


# ---------------------------------------------------------------- linear / mlp
def _rows(name: str, x: torch.Tensor) -> torch.Tensor:
    """x (..., K) as a contiguous (M, K) matrix (copies only a non-contiguous x)."""
    x = _tensor(name, x, min_ndim=1)
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have a last dim >= 1, got shape {tuple(x.shape)}")
    return x.contiguous().reshape(-1, x.shape[-1])


def _vector(name: str, t, n: int) -> torch.Tensor:
    t = _tensor(name, t, 1)
    _shape(name, t, (n,))
    return t.contiguous()


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack a (N, K) weight into (ceil(N/16), K, 16) zero-padded panels (ISA-independent)."""
    weight = _tensor("weight", weight, 2)
    n, k = weight.shape
    if n < 1 or k < 1:
        raise ValueError(f"weight must have both dims >= 1, got shape {tuple(weight.shape)}")
    if weight.stride(1) != 1 and k > 1:
        weight = weight.contiguous()
    packed = torch.empty(((n + PANEL - 1) // PANEL, k, PANEL), dtype=torch.float32)
    _lib().pack_weight(weight.data_ptr(), n, k, weight.stride(0), packed.data_ptr(), _threads())
    return packed


def _check_packed(name: str, packed, out_features: int, in_features: int) -> torch.Tensor:
    packed = _tensor(name, packed, 3)
    if not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features must be a positive int, got {out_features!r}")
    _shape(name, packed, ((out_features + PANEL - 1) // PANEL, in_features, PANEL))
    if not packed.is_contiguous():
        raise ValueError(f"{name} must be contiguous (as returned by pack_weight)")
    return packed


def linear_packed(x: torch.Tensor, packed: torch.Tensor, out_features: int,
                  bias: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                  activation: str = "none") -> torch.Tensor:
    """act(x·Wᵀ + bias) + residual with W pre-packed by `pack_weight`."""
    act = _act(activation)
    x2 = _rows("x", x)
    m, k = x2.shape
    n = out_features
    packed = _check_packed("packed", packed, n, k)
    out_shape = tuple(x.shape[:-1]) + (n,)
    b = None if bias is None else _vector("bias", bias, n)
    r = None
    if residual is not None:
        r = _tensor("residual", residual)
        _shape("residual", r, out_shape)
        r = r.contiguous()
    out = torch.empty(out_shape, dtype=torch.float32)
    if m == 0:
        return out
    _lib().gemm_packed(x2.data_ptr(), m, k, k, packed.data_ptr(), n,
                       0 if b is None else b.data_ptr(), 0 if r is None else r.data_ptr(), n,
                       act, out.data_ptr(), n, _threads())
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: str = "none") -> torch.Tensor:
    """act(x·weightᵀ + bias) + residual; weight (N, K) is packed on the fly."""
    weight = _tensor("weight", weight, 2)
    x = _tensor("x", x)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (N, {x.shape[-1]}) to match x, "
                         f"got {tuple(weight.shape)}")
    _act(activation)
    return linear_packed(x, pack_weight(weight), weight.shape[0], bias, residual, activation)


def mlp_packed(x: torch.Tensor, w1_packed: torch.Tensor, b1: torch.Tensor,
               w2_packed: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """x + hardswish(x·W1ᵀ + b1)·W2ᵀ + b2 with packed W1 (Ch, C) and W2 (C, Ch).

    The hidden sizes come from b1 (Ch,) and b2 (C,).
    """
    x2 = _rows("x", x)
    m, c = x2.shape
    b1 = _tensor("b1", b1, 1).contiguous()
    ch = b1.shape[0]
    if ch < 1:
        raise ValueError("b1 must have at least one element")
    b2 = _vector("b2", b2, c)
    w1_packed = _check_packed("w1_packed", w1_packed, ch, c)
    w2_packed = _check_packed("w2_packed", w2_packed, c, ch)
    out = torch.empty(tuple(x.shape), dtype=torch.float32)
    if m == 0:
        return out
    _lib().mlp_packed(x2.data_ptr(), m, c, c, w1_packed.data_ptr(), b1.data_ptr(), ch,
                      w2_packed.data_ptr(), b2.data_ptr(), out.data_ptr(), _threads())
    return out


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
        b2: torch.Tensor) -> torch.Tensor:
    """LeViT's residual MLP x + hardswish(x·w1ᵀ + b1)·w2ᵀ + b2 in one call."""
    x = _tensor("x", x)
    w1 = _tensor("w1", w1, 2)
    w2 = _tensor("w2", w2, 2)
    c = x.shape[-1]
    ch = w1.shape[0]
    _shape("w1", w1, (ch, c))
    _shape("w2", w2, (c, ch))
    return mlp_packed(x, pack_weight(w1), b1, pack_weight(w2), b2)
