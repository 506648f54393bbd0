"""Graceful degradation: without the compiled extension, without Triton, without CUDA.

Each scenario runs in a fresh interpreter (the package and its optional dependencies are
imported once per process), made to lack the piece by `sys.modules[name] = None` before the
first import — Python then refuses to import it, exactly as when it is not installed — or,
for the extension, by importing a copy of the package that has no `_C` module at all: the
layout `LEVIT_BUILD_EXT=0 pip install .` produces.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import levit_kernels
from levit_kernels import cpu

PACKAGE = Path(levit_kernels.__file__).resolve().parent
BUILD_HINT = "pip install"      # every "extension missing" message names the command


def run_python(code, *, block=(), env=None, cwd=None):
    """Runs `code` in a fresh interpreter with the modules in `block` made unimportable;
    returns (stdout, stderr) and fails the test on a non-zero exit."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in block)
    run_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run_env.update(env or {})
    result = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                            text=True, timeout=300, env=run_env, cwd=cwd)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout, result.stderr


NO_EXTENSION_CHECKS = r"""
import json, warnings
import torch
import levit_kernels
from levit_kernels import LeViT, cpu, ops, reference
report = {"file": levit_kernels.__file__, "available": cpu.is_available(),
          "reason": cpu.unavailable_reason()}

# The reference path runs.
x, w = torch.randn(3, 8), torch.randn(5, 8)
assert torch.equal(reference.linear(x, w), torch.nn.functional.linear(x, w))
torch.manual_seed(0)
plain = LeViT("LeViT-128S", img_size=64).eval()
fused = LeViT("LeViT-128S", img_size=64, fused=True)
fused.load_state_dict(plain.state_dict())
images = torch.randn(2, 3, 64, 64)
with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    same = torch.equal(fused.eval()(images), plain(images))
report["fused_equals_plain"] = same
report["warnings"] = [str(w.message) for w in caught]

# An op on CPU tensors says what is missing and how to build it.
try:
    ops.linear(x, w)
    report["op_error"] = None
except Exception as exc:
    report["op_error"] = f"{type(exc).__name__}: {exc}"

report["info"] = levit_kernels.info()
print("REPORT" + json.dumps(report))
"""


def _report(stdout):
    line = next(l for l in stdout.splitlines() if l.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def _check_no_extension(report):
    assert not report["available"]
    assert BUILD_HINT in report["reason"]
    # fused=True on CPU warns, naming the fix, and falls back to the plain path.
    assert any("fused=True" in w and BUILD_HINT in w for w in report["warnings"]), \
        report["warnings"]
    assert report["fused_equals_plain"]
    assert report["op_error"] and report["op_error"].startswith("RuntimeError")
    assert BUILD_HINT in report["op_error"], report["op_error"]
    assert report["info"]["cpu extension"].startswith("missing")
    assert BUILD_HINT in report["info"]["cpu extension"]
    assert report["info"]["cpu isa"] == "-"


def test_without_the_extension_module():
    stdout, _ = run_python(NO_EXTENSION_CHECKS, block=["levit_kernels.ops._C"])
    _check_no_extension(_report(stdout))


def test_pure_python_install_layout(tmp_path):
    """The package as LEVIT_BUILD_EXT=0 installs it: the same files, no compiled module."""
    copy = tmp_path / "levit_kernels"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "*.pyd",
                                                                 "__pycache__"))
    # An editable install of this checkout adds an import hook that would still find the
    # checkout's _C for the copy: drop it, as a real pure-Python install has none.
    unhook = ("sys.meta_path[:] = [f for f in sys.meta_path\n"
              "                    if '__editable__' not in getattr(f, '__module__', '')]\n")
    stdout, _ = run_python(unhook + NO_EXTENSION_CHECKS, env={"PYTHONPATH": str(tmp_path)},
                           cwd=tmp_path)
    report = _report(stdout)
    assert Path(report["file"]).resolve().parent == copy.resolve(), \
        "the copy without _C was not the one imported"
    _check_no_extension(report)


def test_without_triton():
    code = r"""
import torch, levit_kernels
from levit_kernels import LeViT, ops
facts = levit_kernels.info()
assert "not installed" in facts["triton"], facts["triton"]
try:
    import levit_kernels.gpu
    raise SystemExit("levit_kernels.gpu imported without triton")
except ImportError as exc:
    assert "pip install triton" in str(exc), exc
try:   # what an op on a CUDA tensor meets first (no CUDA tensor is needed to get there)
    ops.launchers(torch.device("cuda"))
    raise SystemExit("no error without triton")
except RuntimeError as exc:
    assert "Triton" in str(exc) and "pip install triton" in str(exc), exc
# The CPU path does not need Triton.
model = LeViT("LeViT-128S", img_size=64, fused=True).eval()
with torch.no_grad():
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()
print("ok")
"""
    stdout, _ = run_python(code, block=["triton"])
    assert "ok" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_gpu_launchers_without_cuda_say_so():
    """No CUDA and no TRITON_INTERPRET: the Triton launchers refuse CPU tensors, saying why."""
    pytest.importorskip("triton")
    code = r"""
import torch
from levit_kernels import gpu, info
facts = info()
assert facts["cuda"] == "not available", facts["cuda"]
x, w = torch.randn(3, 8), torch.randn(5, 8)
try:
    gpu.linear(x, w)
    raise SystemExit("gpu.linear ran on a CPU tensor")
except ValueError as exc:
    assert "CUDA" in str(exc) and "TRITON_INTERPRET=1" in str(exc), exc
print("ok")
"""
    stdout, _ = run_python(code)
    assert "ok" in stdout


def test_info_reports_versions_isa_threads_and_availability(capsys):
    facts = levit_kernels.info()
    printed = capsys.readouterr().out
    for key in ("levit_kernels", "python", "torch", "torch threads", "cpu extension", "cpu isa",
                "triton", "cuda"):
        assert key in facts, key
        assert key in printed
    assert facts["levit_kernels"] == levit_kernels.__version__
    assert facts["torch"] == torch.__version__
    assert facts["torch threads"] == str(torch.get_num_threads())
    if cpu.is_available():
        # a test build that emulates AVX-512 (LEVIT_EMULATE_AVX512=1) must say so
        emulated = cpu.isa_emulation()
        assert facts["cpu extension"] == (f"built, TEST BUILD: {emulated}" if emulated else "built")
        assert facts["cpu isa"] == cpu.isa()
    try:
        import triton
        assert facts["triton"] == triton.__version__
    except ImportError:
        assert "not installed" in facts["triton"]


def test_cli_info_in_a_fresh_process_without_the_extension():
    code = "from levit_kernels.tools.cli import main\nsys.exit(main(['info']))\n"
    stdout, stderr = run_python(code, block=["levit_kernels.ops._C"])
    assert "Traceback" not in stderr
    # "key<padding>  value" per line; keys themselves contain single spaces.
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in stdout.splitlines()
                 if line.strip())
    assert lines["cpu extension"].startswith("missing") and BUILD_HINT in lines["cpu extension"]
    assert lines["torch threads"].isdigit()
    assert "cpu isa" in lines and "triton" in lines and "torch" in lines


def test_cli_breakdown_without_the_extension_says_why():
    """`breakdown` times the extension's forward: without it, one line naming the fix."""
    code = ("from levit_kernels.tools.cli import main\n"
            "code = main(['breakdown', '--img-size', '64', '--rounds', '1'])\n"
            "print('exit', code)\n")
    stdout, stderr = run_python(code, block=["levit_kernels.ops._C"])
    assert stdout.strip() == "exit 2"
    assert "Traceback" not in stderr
    assert stderr.startswith("levit-kernels breakdown: error: breakdown times the CPU "
                             "extension's forward")
    assert BUILD_HINT in stderr
