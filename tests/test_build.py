"""The compiled CPU extension must be there: CI requires it, so a missing `_C` FAILS here
(it is not skipped). Build it with `pip install --no-build-isolation -e .`."""
import importlib
import importlib.metadata
import os
import subprocess
import sys

import pytest


def test_extension_is_built():
    try:
        C = importlib.import_module("levit_kernels.ops._C")
    except ImportError as exc:  # a clear failure, naming the fix
        pytest.fail(f"levit_kernels.ops._C did not build/import ({exc}); "
                    "run `pip install --no-build-isolation -e .`")
    assert C.isa() in C.available_isas()
    assert "generic" in C.available_isas()
    assert C.PANEL == 16


def test_cpu_module_reports_available():
    from levit_kernels import cpu
    assert cpu.is_available()
    assert cpu.isa() in ("avx512_bf16", "avx512", "avx2", "generic")


def test_package_metadata():
    assert importlib.metadata.version("levit-kernels")


def _isa_in_subprocess(value):
    env = dict(os.environ, LEVIT_CPU_ISA=value)
    code = "import levit_kernels.ops._C as C; print(C.isa()); print(C.isa_note())"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return out[0], out[1]


def test_env_override_selects_generic():
    isa, note = _isa_in_subprocess("generic")
    assert isa == "generic" and "LEVIT_CPU_ISA" in note


def test_env_override_bad_value_falls_back_with_reason():
    from levit_kernels.ops import _C
    isa, note = _isa_in_subprocess("sse9")
    assert isa == _C.available_isas()[0]
    assert "sse9" in note


def test_set_isa_rejects_unknown():
    from levit_kernels.ops import _C
    with pytest.raises(ValueError):
        _C.set_isa("sse9")
