"""What the Triton kernels and their launchers share: the dot precision switch, where the
launchers may run (CUDA, or CPU tensors under TRITON_INTERPRET=1), the `out=` buffer check, and
the one place every kernel is launched from (`RUNTIME.launch`), which puts the tensors' device
in charge first.

Why a device guard: Triton launches on `torch.cuda.current_device()`'s current stream, whatever
device the tensors live on, so a model on cuda:1 would otherwise launch on GPU 0 (or fault).
Under the guard the launch goes to the tensors' device and its current stream (which is also
the stream a CUDA graph capture on that device records).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks

GPU_DEVICES = "a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1)"
LAUNCHERS = "levit_kernels.gpu"   # how checks.check_untracked names these launchers

# float32 dot products: "tf32x3" (the default) splits each operand into a TF32 high part and a
# TF32 remainder and sums three tensor-core products: float32-level error (measured in
# benchmarks/README.md, "GPU: fp32 precision") at tensor-core speed. "tf32" is one TF32
# product (~1e-3 relative error); "ieee" is FMA-only, exact float32 (slow, register-hungry).
FP32_PRECISIONS = ("tf32x3", "tf32", "ieee")
FP32_PRECISION_ENV = "LEVIT_TRITON_FP32"


@triton.jit
def dot(a, b, PRECISION: tl.constexpr):
    """tl.dot with float32 inputs at PRECISION ("native" for float16/bfloat16 inputs)."""
    if PRECISION == "ieee":
        return tl.dot(a, b, input_precision="ieee")
    elif PRECISION == "tf32x3":
        return tl.dot(a, b, input_precision="tf32x3")
    elif PRECISION == "tf32":
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b)


@triton.jit
def load_tile(ptrs, row_mask, col_mask, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A 2-D tile, masked (zero fill) only along the axes that need it: full key blocks and
    power-of-two head dims load without predicates."""
    if MASK_ROWS and MASK_COLS:
        return tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    elif MASK_ROWS:
        return tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    elif MASK_COLS:
        return tl.load(ptrs, mask=col_mask[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def hardswish(x):
    return x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row block, column block) of an (M, N) output, programs ordered in bands
    of GROUP_M row blocks: the programs running together share the same weight column blocks,
    which then stay in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    band = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // band) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % band) % group_rows, (pid % band) // group_rows


def dot_precision(dtype: torch.dtype) -> str:
    """The PRECISION constexpr for inputs of `dtype` (LEVIT_TRITON_FP32 picks float32's)."""
    if dtype != torch.float32:
        return "native"
    precision = os.environ.get(FP32_PRECISION_ENV, FP32_PRECISIONS[0])
    if precision not in FP32_PRECISIONS:
        raise ValueError(f"{FP32_PRECISION_ENV}: expected one of {FP32_PRECISIONS}, got "
                         f"{precision!r}")
    return precision


def interpreting() -> bool:
    """True when Triton runs its kernels on CPU tensors (set before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def gpu_dtypes():
    """{device type: dtypes} the launchers take (checks.check_same)."""
    allowed = {"cuda": checks.CUDA_DTYPES}
    if interpreting():
        allowed["cpu"] = checks.INTERPRETER_DTYPES
    return allowed


def _byte_span(t: torch.Tensor):
    """[first, last + 1) bytes of t's storage that t's elements can reach."""
    first = t.storage_offset()
    last = first + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return first * t.element_size(), (last + 1) * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _byte_span(a), _byte_span(b)
    return a0 < b1 and b0 < a1


def check_out(out: Optional[torch.Tensor], shape, like: torch.Tensor, inputs=(),
              same_place: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A caller's output buffer (contiguous, `shape`, like's dtype and device), or a new one.

    `inputs`: (name, tensor or None) the kernel reads. Blocks of the output are written while
    other blocks still read them, so `out` may share no memory with any of them, except that
    it may be exactly `same_place` (same address, shape and strides): an input the kernel
    reads only at the output element it then writes (a residual)."""
    if out is None:
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous tensor of shape {tuple(shape)}, got shape "
                         f"{tuple(out.shape)} with strides {out.stride()}")
    if out.dtype != like.dtype or out.device != like.device:
        raise TypeError(f"out: expected {like.dtype} on {like.device}, got {out.dtype} on "
                        f"{out.device}")
    for name, t in inputs:
        if t is None or not _overlap(out, t):
            continue
        if (t is same_place and t.data_ptr() == out.data_ptr() and t.shape == out.shape
                and t.stride() == out.stride()):
            continue
        raise ValueError(f"out: shares memory with {name}, which the kernel still reads while "
                         f"it writes out; pass a separate tensor")
    return out


class Runtime:
    """Where launches go: the device in charge of a tensor, the current device, switching
    devices, the device's compute capability and name, and the launch itself.

    `RUNTIME` is the one instance the launchers use. It is also a seam: the device-guard test
    replaces parts of it with a fake two-device runtime, and the ahead-of-time compile tool
    (tools/gpu_static.py) replaces `launch_tuned` to record launches instead of running them."""

    def __init__(self):
        self._props = {}

    @staticmethod
    def device_of(t: torch.Tensor) -> torch.device:
        return t.device

    @staticmethod
    def current_device() -> int:
        return torch.cuda.current_device()

    @staticmethod
    def use_device(index: int):
        return torch.cuda.device(index)

    def _properties(self, device: torch.device):
        index = device.index if device.index is not None else self.current_device()
        if index not in self._props:
            major, minor = torch.cuda.get_device_capability(index)
            self._props[index] = (10 * major + minor, torch.cuda.get_device_name(index))
        return self._props[index]

    def capability(self, device: torch.device) -> int:
        """sm_XY as XY (80 for A100, 90 for H100/H200); 0 off CUDA."""
        return self._properties(device)[0] if device.type == "cuda" else 0

    def device_name(self, device: torch.device) -> str:
        return self._properties(device)[1] if device.type == "cuda" else device.type

    @staticmethod
    def run(kernel, grid, args, kwargs) -> None:
        kernel[grid](*args, **kwargs)

    def in_charge(self, device: torch.device):
        """A context that makes `device` current: a device switch for a CUDA device other
        than the current one, nothing otherwise."""
        if device.type == "cuda" and device.index is not None \
                and device.index != self.current_device():
            return self.use_device(device.index)
        return contextlib.nullcontext()

    def launch(self, kernel, grid, args, kwargs, device: torch.device) -> None:
        """kernel[grid](*args, **kwargs) on `device` and its current stream."""
        with self.in_charge(device):
            self.run(kernel, grid, args, kwargs)

    def launch_tuned(self, tuner, shape: dict, grid, args, consts: dict,
                     device: torch.device) -> None:
        """Launch tuner.kernel with the config tuner picks for `shape` (grid(config) -> the
        grid; consts: the constexprs the launcher fixed)."""
        def run(config):
            self.launch(tuner.kernel, grid(config), args, {**consts, **config.launch_kwargs()},
                        device)

        with self.in_charge(device):   # tuning times on the right device too
            run(tuner.pick(shape, device, run))


RUNTIME = Runtime()
