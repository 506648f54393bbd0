"""The C++ kernels under AddressSanitizer + UndefinedBehaviorSanitizer.

Builds tests/fuzz/fuzz_kernels.cpp — a torch-free randomized test of levit::attention,
gemm_packed, mlp_packed and pack_weight against a double-precision reference, with strided
inputs, NaN guard regions, every ISA path and 1 or 2 threads — as the CMake target levit_fuzz
(-DLEVIT_FUZZ=ON -DLEVIT_SANITIZE=ON, and -DLEVIT_PYTHON=OFF so the build needs neither Python
nor pybind11), then runs it briefly. Any mismatch, damaged guard, out-of-bounds access, leak
or undefined behaviour fails the test with the fuzzer's report. Longer runs: README.md,
"Fuzzing under sanitizers".

On an AVX2 CPU without AVX-512, the same build also emulates the AVX-512 and AVX512_BF16
paths with SIMDe (csrc/avx512_emulation.h, CMake LEVIT_EMULATE_AVX512), so their kernels —
vdpbf16ps's pair layout above all — run here too, under the sanitizers, before anyone
measures them on a Zen 4. SIMDe is header-only: the system's copy if there is one, else
Debian's package fetched with `apt-get download` and unpacked into a temporary folder (no
root, nothing installed); without either, test_fuzz_reaches_every_isa_path skips, saying so.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
ITERS = 3000        # ~5 s under the sanitizers on 2 cores; the build takes ~40 s (~90 s emulating)
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


ALL_ISAS = ("amx_bf16", "avx512_bf16", "avx512", "avx2", "generic")
SIMDE_HEADER = Path("simde/x86/avx512/dpbf16.h")


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _simde(tmp_path_factory) -> Tuple[Optional[Path], str]:
    """SIMDe's include folder, or None and why not."""
    for folder in (os.environ.get("SIMDE_INCLUDE_DIR"), "/usr/include", "/usr/local/include"):
        if folder and (Path(folder) / SIMDE_HEADER).is_file():
            return Path(folder), ""
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None, "SIMDe's headers are not installed and there is no apt-get to fetch them"
    where = tmp_path_factory.mktemp("simde")
    try:
        subprocess.run(["apt-get", "download", "libsimde-dev"], cwd=where, check=True,
                       capture_output=True, timeout=180)
        deb = next(where.glob("libsimde-dev_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(where / "root")], check=True,
                       capture_output=True, timeout=180)
    except (OSError, StopIteration, subprocess.SubprocessError) as error:
        return None, f"SIMDe's headers are not installed and `apt-get download libsimde-dev` failed ({error})"
    folder = where / "root" / "usr" / "include"
    if not (folder / SIMDE_HEADER).is_file():
        return None, f"the downloaded libsimde-dev has no {SIMDE_HEADER}: too old for AVX512_BF16"
    return folder, ""


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """Builds levit_fuzz under ASan + UBSan and runs it once; both tests read that run.

    Returns (exit status, output, why the AVX-512 paths are not covered or "")."""
    if not _works("cmake"):
        pytest.skip("cmake is not installed: cannot build the sanitizer fuzzer")
    compilers = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    cxx = next((c for c in compilers if _works(c)), None)
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++, clang++) found: cannot build the fuzzer")
    build = tmp_path_factory.mktemp("fuzz") / "build"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DLEVIT_PYTHON=OFF",
                 "-DLEVIT_FUZZ=ON", "-DLEVIT_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CXX_COMPILER={shutil.which(cxx)}"]
    if _works("ninja"):
        configure += ["-G", "Ninja"]
    flags = _cpu_flags()
    uncovered = ""
    if "avx512f" in flags:   # the real instructions run; nothing to emulate
        if "avx512_bf16" not in flags:
            uncovered = "this CPU has AVX-512 without AVX512_BF16, and emulation would replace its real avx512 path"
        elif "amx_bf16" not in flags:
            uncovered = "this CPU has AVX512_BF16 without AMX-BF16, and emulation would replace its real AVX-512 paths"
    elif not {"avx2", "fma"} <= flags:
        uncovered = "this CPU lacks AVX2 + FMA, which the emulated AVX-512 build compiles for"
    else:
        simde, uncovered = _simde(tmp_path_factory)
        if simde is not None:
            configure += ["-DLEVIT_EMULATE_AVX512=ON", f"-DSIMDE_INCLUDE_DIR={simde}"]
    result = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, \
        f"cmake configure failed:\n{_tail(result.stdout + result.stderr)}"
    result = subprocess.run(["cmake", "--build", str(build), "--target", "levit_fuzz",
                             "--parallel", str(os.cpu_count() or 1)],
                            capture_output=True, text=True, timeout=900)
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
    return result.returncode, result.stdout + result.stderr, uncovered


def test_fuzz_kernels_under_asan_ubsan(fuzz_run):
    returncode, output, _ = fuzz_run
    assert "runtime error" not in output, f"UBSan finding:\n{_tail(output)}"
    assert "ERROR: AddressSanitizer" not in output, f"ASan finding:\n{_tail(output)}"
    assert "ERROR: LeakSanitizer" not in output, f"LSan finding:\n{_tail(output)}"
    assert returncode == 0, f"levit_fuzz exited {returncode}:\n{_tail(output)}"
    assert f"{ITERS} iterations passed" in output, output


def test_fuzz_reaches_every_isa_path(fuzz_run):
    """Every kernel path the package ships ran in the fuzz run: natively where the CPU has
    it, emulated where it has AVX2 only."""
    returncode, output, uncovered = fuzz_run
    if uncovered:
        pytest.skip(f"the AVX-512 paths are not fuzzed here: {uncovered}")
    assert returncode == 0, f"levit_fuzz exited {returncode}:\n{_tail(output)}"
    reached = output.rpartition("isas:")[2].partition(")")[0].split()
    assert sorted(reached) == sorted(ALL_ISAS), output
