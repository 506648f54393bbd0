"""The compiled CPU kernels (`levit_kernels.ops._C`, built from csrc/ by setup.py), if present,
and the facts they define: the packed panel width, the packed weights' shapes per dtype and
the activation codes of the GEMM epilogue. Python reads these from the extension instead of
writing them a second time.

Importing this module never fails: without the extension `lib()` raises, naming the command
that builds it, and the constants are None / empty.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch

from . import openmp_team

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - exercised only in pure-Python installs
    _C = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None
    if _C.isa_warning():   # a LEVIT_CPU_ISA that could not be honoured is never silent
        warnings.warn(_C.isa_warning(), RuntimeWarning, stacklevel=2)
    openmp_team.attach(_C)     # the parallel loops on PyTorch's OpenMP threads, if shareable

# Width of the packed weight panels (csrc/gemm.h kPanel); None without the extension.
PANEL: Optional[int] = _C.PANEL if _C is not None else None
# Epilogue activation name -> the C++ enum value (csrc/gemm.h Act).
ACTIVATION_CODES: Dict[str, int] = dict(_C.ACTIVATIONS) if _C is not None else {}
# The element types the CPU kernels take, by torch dtype -> the binding's name for it.
KERNEL_DTYPES: Dict[torch.dtype, str] = ({getattr(torch, name): name for name in _C.DTYPES}
                                         if _C is not None else {})


def packed_shape(n: int, k: int, dtype: torch.dtype, segments: int = 1) -> Tuple[int, ...]:
    """The shape pack_weight gives an (n, k) weight of `dtype` packed in `segments` runs:
    (ceil(n/PANEL), k, PANEL) in float32, (ceil(n/PANEL), k pairs, PANEL, 2) in bfloat16
    (csrc/gemm_bf16.h), the k (pair) rows as (segments, rows per segment) where segments > 1
    (python/bindings.cpp packed_shape). Sizes are read as ints (under torch.compile a
    symbolic size is specialised here)."""
    return tuple(lib().packed_shape(n=int(n), k=int(k), dtype=KERNEL_DTYPES[dtype],
                                    segments=int(segments)))


def is_available() -> bool:
    """True when the compiled extension is importable."""
    return _C is not None


def unavailable_reason() -> str:
    """Why the extension is missing and how to build it ('' when it is available)."""
    if _C is not None:
        return ""
    return (f"levit_kernels.ops._C (the compiled CPU kernels) is not available: {_IMPORT_ERROR}. "
            "Reinstall with `pip install --no-build-isolation -e .` (needs a C++17 compiler, "
            "cmake and pybind11; LEVIT_BUILD_EXT must not be 0).")


def lib():
    """The extension module; RuntimeError naming the fix when it is not built."""
    if _C is None:
        raise RuntimeError(unavailable_reason())
    return _C
