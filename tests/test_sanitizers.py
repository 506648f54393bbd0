"""The C++ kernels under AddressSanitizer + UndefinedBehaviorSanitizer.

Builds tests/fuzz/fuzz_kernels.cpp — a torch-free randomized test of levit::attention,
gemm_packed, mlp_packed and pack_weight against a double-precision reference, with strided
inputs, NaN guard regions, every ISA path and 1 or 2 threads — as the CMake target levit_fuzz
(-DLEVIT_FUZZ=ON -DLEVIT_SANITIZE=ON, and -DLEVIT_PYTHON=OFF so the build needs neither Python
nor pybind11), then runs it briefly. Any mismatch, damaged guard, out-of-bounds access, leak
or undefined behaviour fails the test with the fuzzer's report. Longer runs: README.md,
"Fuzzing under sanitizers".
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ITERS = 3000        # ~5 s under the sanitizers on 2 cores; the build takes ~40 s
SEED = 20240611


def _works(exe) -> bool:
    """`exe --version` runs (a pip or pyenv shim can exist without a working binary)."""
    path = shutil.which(exe) if exe else None
    if path is None:
        return False
    try:
        subprocess.run([path, "--version"], check=True, capture_output=True, timeout=60)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_fuzz_kernels_under_asan_ubsan(tmp_path):
    if not _works("cmake"):
        pytest.skip("cmake is not installed: cannot build the sanitizer fuzzer")
    compilers = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    cxx = next((c for c in compilers if _works(c)), None)
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++, clang++) found: cannot build the fuzzer")
    build = tmp_path / "build"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DLEVIT_PYTHON=OFF",
                 "-DLEVIT_FUZZ=ON", "-DLEVIT_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CXX_COMPILER={shutil.which(cxx)}"]
    if _works("ninja"):
        configure += ["-G", "Ninja"]
    result = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, \
        f"cmake configure failed:\n{_tail(result.stdout + result.stderr)}"
    result = subprocess.run(["cmake", "--build", str(build), "--target", "levit_fuzz",
                             "--parallel", str(os.cpu_count() or 1)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, \
        f"building levit_fuzz failed:\n{_tail(result.stdout + result.stderr)}"

    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               ASAN_OPTIONS="detect_leaks=1")
    env.pop("LEVIT_CPU_ISA", None)   # the fuzzer switches paths itself
    fuzz = str(build / "levit_fuzz")
    # A typo in a long run must not pass silently: bad arguments exit 2.
    assert subprocess.run([fuzz, "--iters", "many"], capture_output=True, env=env,
                          timeout=60).returncode == 2
    result = subprocess.run([fuzz, "--iters", str(ITERS), "--seed", str(SEED)],
                            capture_output=True, text=True, timeout=600, env=env)
    output = result.stdout + result.stderr
    assert "runtime error" not in output, f"UBSan finding:\n{_tail(output)}"
    assert "ERROR: AddressSanitizer" not in output, f"ASan finding:\n{_tail(output)}"
    assert "ERROR: LeakSanitizer" not in output, f"LSan finding:\n{_tail(output)}"
    assert result.returncode == 0, f"levit_fuzz exited {result.returncode}:\n{_tail(output)}"
    assert f"{ITERS} iterations passed" in output, output

