"""`levit_kernels.info()`: what this installation can run, for bug reports and benchmarks."""
from __future__ import annotations

import importlib.util
import platform
from importlib import metadata
from typing import Dict

import torch


def package_version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    try:
        return metadata.version("levit-kernels")
    except metadata.PackageNotFoundError:     # a copy of the package that was not installed
        return "0+unknown"


def _extension_state(cpu) -> str:
    if not cpu.is_available():
        return f"missing ({cpu.unavailable_reason()})"
    emulated = cpu.isa_emulation()
    return f"built, TEST BUILD: {emulated}" if emulated else "built"


def collect() -> Dict[str, str]:
    from ..ops import cpu
    facts = {
        "levit_kernels": package_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {cpu_model_name()}",
        "torch threads": str(torch.get_num_threads()),
        "cpu extension": _extension_state(cpu),
        "cpu isa": cpu.isa() if cpu.is_available() else "-",
        # which kernels each dtype runs on that path, and why the path is what it is
        # (the CPU's best, LEVIT_CPU_ISA, or why LEVIT_CPU_ISA was ignored)
        "cpu float32 path": cpu.float32_path() if cpu.is_available() else "-",
        "cpu bfloat16 path": cpu.bf16_path() if cpu.is_available() else "-",
        "cpu isa chosen by": cpu.isa_note() if cpu.is_available() else "-",
        "cpu kernel threads": cpu.threads_note() if cpu.is_available() else "-",
        "triton": _triton_version(),
        "cuda": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                 else "not available"),
    }
    return facts


def info() -> Dict[str, str]:
    """Print and return versions, CPU ISA in use, threads, extension/Triton/CUDA status."""
    facts = collect()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    return facts


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _triton_version() -> str:
    # find_spec only: importing triton here would fix TRITON_INTERPRET for the process.
    if importlib.util.find_spec("triton") is None:
        return "not installed (GPU kernels unavailable)"
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return "installed"
