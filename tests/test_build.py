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
    assert cpu.isa() in ("amx_bf16", "avx512_bf16", "avx512", "avx2", "generic")


def test_package_metadata():
    assert importlib.metadata.version("levit-kernels")


def _python(code, **env_changes):
    """Runs `code` in a fresh interpreter whose environment has `env_changes` (None: the
    variable removed); returns (stdout, stderr)."""
    env = dict(os.environ)
    for name, value in env_changes.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    result = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                            capture_output=True, text=True)
    return result.stdout, result.stderr


def _isa_in_subprocess(value):
    code = "import levit_kernels.ops._C as C; print(C.isa()); print(C.isa_note())"
    out = _python(code, LEVIT_CPU_ISA=value)[0].splitlines()
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


def _threads_note_in_subprocess(value):
    code = "from levit_kernels import cpu; print(cpu.threads_note())"
    out, err = _python(code, LEVIT_THREAD_POOL=value)
    return out.strip(), err


def _needs_openmp_pytorch():
    from levit_kernels.ops import openmp_team
    if not openmp_team.pytorch_runs_on_openmp():
        pytest.skip("this PyTorch's CPU ops do not run on OpenMP: nothing to share")


def test_kernels_run_on_pytorchs_openmp_team_where_pytorch_runs_on_openmp():
    """By default the parallel loops use PyTorch's OpenMP threads (ops/openmp_team.py), which
    would otherwise spin on the cores the kernels need; LEVIT_THREAD_POOL=own keeps the
    kernels' own pool, and a bad value says so and keeps the default."""
    _needs_openmp_pytorch()
    note, _ = _threads_note_in_subprocess(None)
    assert note.startswith("PyTorch's OpenMP team ("), note
    assert _threads_note_in_subprocess("own")[0] == "the kernels' own pool (LEVIT_THREAD_POOL=own)"
    note, stderr = _threads_note_in_subprocess("omp")
    assert note.startswith("PyTorch's OpenMP team (") and "LEVIT_THREAD_POOL='omp'" in stderr


_WHO_RUNS_THE_LOOPS = r"""
import threading, torch
from levit_kernels import cpu, ops
torch.set_num_threads(2)
x, w = torch.randn(64, 64), torch.randn(64, 64)
expected = ops.linear(x, w)
main = cpu._lib().thread_pool_workers()         # the importing thread: on the OpenMP team
results = []
thread = threading.Thread(target=lambda: results.append(ops.linear(x, w)))
thread.start(); thread.join()
print(main, cpu._lib().thread_pool_workers(), torch.equal(results[0], expected))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: every loop runs inline")
def test_only_the_importing_threads_loops_run_on_the_openmp_team():
    """Another thread's jobs stay on the kernels' pool: a team per thread would give the process
    more OpenMP threads than CPUs, past which libgomp stops spinning in all of them."""
    _needs_openmp_pytorch()
    out = _python(_WHO_RUNS_THE_LOOPS, LEVIT_THREAD_POOL=None)[0].split()
    assert out == ["0", "1", "True"], out
