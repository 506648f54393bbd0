"""Build driver: setuptools + CMake + Ninja for the C++ extension `levit_kernels.ops._C`.

Follows pybind/cmake_example: a CMakeExtension has no sources of its own; build_ext runs
CMake (configured with pybind11's CMake dir from the pybind11 Python package) and Ninja, and
asks CMake to put the module where setuptools expects it (works for `pip install .` and for
editable installs).

Environment switches:
  LEVIT_BUILD_EXT=0   skip the extension: the package installs as pure Python.
  LEVIT_SANITIZE=1    build with -fsanitize=address,undefined (CMake option LEVIT_SANITIZE).
  LEVIT_EMULATE_AVX512=1  test builds only: the AVX-512 and AVX512_BF16 kernels run on an AVX2
                      CPU through SIMDe (CMake option LEVIT_EMULATE_AVX512, csrc/avx512_emulation.h).
  LEVIT_BUILD_TYPE    CMake build type (default Release).
  CMAKE_BUILD_PARALLEL_LEVEL  passed through to the build step.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_EXT = os.environ.get("LEVIT_BUILD_EXT", "1") != "0"


def _works(cmd):
    """True when `cmd --version` runs (a pyenv shim can exist without a real binary)."""
    exe = shutil.which(cmd)
    if exe is None:
        return False
    try:
        subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=30)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


def _build_requires():
    """cmake/ninja from PyPI only when the machine lacks them (keeps offline builds working)."""
    if not BUILD_EXT:
        return []
    reqs = []
    if not _works("cmake"):
        reqs.append("cmake>=3.18")
    if not _works("ninja"):
        reqs.append("ninja")
    return reqs


class CMakeExtension(Extension):
    def __init__(self, name, sourcedir=""):
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        ext_fullpath = Path.cwd() / self.get_ext_fullpath(ext.name)
        extdir = ext_fullpath.parent.resolve()
        build_type = os.environ.get("LEVIT_BUILD_TYPE", "Debug" if self.debug else "Release")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DLEVIT_SANITIZE={'ON' if os.environ.get('LEVIT_SANITIZE') == '1' else 'OFF'}",
            f"-DLEVIT_EMULATE_AVX512={'ON' if os.environ.get('LEVIT_EMULATE_AVX512') == '1' else 'OFF'}",
        ]
        if _works("ninja"):
            cmake_args += ["-G", "Ninja"]
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        build_args = ["--build", ".", "--config", build_type]
        if "CMAKE_BUILD_PARALLEL_LEVEL" not in os.environ:
            build_args += ["--parallel", str(os.cpu_count() or 1)]
        subprocess.run(["cmake", *build_args], cwd=build_temp, check=True)


setup(
    ext_modules=[CMakeExtension("levit_kernels.ops._C", sourcedir=str(ROOT))] if BUILD_EXT else [],
    cmdclass={"build_ext": CMakeBuild} if BUILD_EXT else {},
    # setuptools.build_meta returns setup_requires from get_requires_for_build_wheel, so pip
    # installs these into the isolated build environment only when they are needed.
    setup_requires=_build_requires(),
    zip_safe=False,
)
