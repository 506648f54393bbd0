"""Which threads run the CPU kernels' parallel loops: PyTorch's own OpenMP team, or the
kernels' pool (csrc/thread_pool.h).

PyTorch's CPU ops run on OpenMP (libgomp in the Linux wheels; MKL too), whose threads spin for
a few milliseconds after every parallel region before they sleep. A second pool started
right after a torch op shares its cores with those spinning threads: on 2 cores a batch-1
LeViT forward took ~7 ms longer (benchmarks/README.md, "OpenMP threads"). So, where PyTorch's
ATen runs on OpenMP and exactly one OpenMP runtime is loaded (PyTorch's), the kernels hand
their jobs to that runtime's GOMP_parallel: the threads that would spin take the work.

Only the jobs of the thread that imports the package (normally the main thread, where
scripts run their torch ops) go there; other threads' jobs stay on the pool. OpenMP gives
each thread that starts a parallel region a team of its own, and once a process has more
OpenMP threads than CPUs libgomp stops spinning in all of them (csrc/thread_pool.cpp).

`LEVIT_THREAD_POOL=own` keeps the kernels' own pool (for comparisons, or a runtime that
misbehaves). A fork()ed child always uses the own pool (thread_pool.h).
"""
from __future__ import annotations

import ctypes
import os
import warnings
from typing import List, Tuple

import torch

ENV = "LEVIT_THREAD_POOL"
_CHOICES = ("auto", "own")
# How libraries that provide GOMP_parallel are named: GNU's libgomp (also as bundled by
# wheels: libgomp-<hash>.so.1), LLVM's libomp and Intel's libiomp5 (both export the GOMP ABI).
_RUNTIME_PREFIXES = ("libgomp", "libomp", "libiomp")

_state = "the kernels' own pool (the extension is not loaded)"


def _loaded_openmp_runtimes() -> List[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith(_RUNTIME_PREFIXES))


def pytorch_runs_on_openmp() -> bool:
    """Whether PyTorch's ATen runs its CPU ops' parallel loops on OpenMP."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _pytorch_runtime() -> Tuple[str, str]:
    """(path of the OpenMP runtime PyTorch's CPU ops run on, '') or ('', why there is none
    to share)."""
    if not pytorch_runs_on_openmp():
        return "", "PyTorch's CPU ops do not run on OpenMP"
    runtimes = _loaded_openmp_runtimes()
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    own = [p for p in runtimes if os.path.abspath(p).startswith(torch_dir + os.sep)]
    candidates = own or runtimes
    if len(candidates) != 1:
        return "", (f"{len(candidates)} OpenMP runtimes are loaded "
                    f"({', '.join(candidates) or 'none found'}), not one to tell PyTorch's by")
    return candidates[0], ""


def attach(extension) -> None:
    """Point the extension's parallel loops at PyTorch's OpenMP team where it can be shared
    (see the module docstring); records what runs them for describe()."""
    global _state
    choice = os.environ.get(ENV, "auto") or "auto"
    if choice not in _CHOICES:
        warnings.warn(f"{ENV}={choice!r} is not one of {', '.join(_CHOICES)}: using 'auto'",
                      RuntimeWarning, stacklevel=3)
        choice = "auto"
    if choice == "own":
        extension.set_team_runner(address=0)
        _state = f"the kernels' own pool ({ENV}=own)"
        return
    path, why = _pytorch_runtime()
    address = 0
    if path:
        try:
            # Already loaded: dlopen returns that same runtime, whose threads PyTorch uses.
            address = ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value or 0
        except (OSError, AttributeError) as exc:
            why = f"{path} has no usable GOMP_parallel ({exc})"
    extension.set_team_runner(address=address)
    _state = (f"PyTorch's OpenMP team ({os.path.basename(path)})" if address
              else f"the kernels' own pool ({why})")


def describe() -> str:
    """What runs the kernels' parallel loops, and why (levit_kernels.info())."""
    return _state
