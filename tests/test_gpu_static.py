"""The compile matrix (levit_kernels/tools/gpu_static.py): the Triton kernels compiled ahead of
time for sm_80 and sm_90 with Triton's CUDA backend, at the launches a LeViT forward makes,
without a GPU. Every compile must succeed without register spills, within the arch's shared
memory, and with tensor-core instructions (every dtype here runs on tensor cores: float16 /
bfloat16 natively, float32 as 3xTF32).

CI compiles the tool's "ci" subset (a few minutes on 2 cores; see SUBSETS for what it covers);
LEVIT_GPU_STATIC=full compiles the whole matrix (all five variants, batch 1 and 64, every
candidate config, every dtype on both archs; about an hour on 2 cores), whose table is
benchmarks/gpu_static.md.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
from levit_kernels.tools import gpu_static  # noqa: E402

pytestmark = [pytest.mark.attention, pytest.mark.linear, pytest.mark.mlp, pytest.mark.conv2d]


def _has_cuda_backend():
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.exists(get_ptxas(90).path)
    except Exception:   # noqa: BLE001
        return False


needs_backend = pytest.mark.skipif(not _has_cuda_backend(),
                                   reason="Triton's CUDA backend (ptxas) is not installed")


def test_recorded_launches_are_the_forward():
    """LeViT-256's forward, as recorded on meta tensors: one launch per layer."""
    launches = gpu_static.record_launches("LeViT-256", 2)
    names = [tuner.name for tuner, *_ in launches]
    cfg = gpu_static.VARIANTS["LeViT-256"]
    blocks = sum(cfg.depth) + 2                     # + the two shrinking attentions
    two_gemm_mlps = blocks                          # C >= 256 everywhere: two GEMMs each
    assert names.count("conv2d") == 4
    assert names.count("attention") == names.count("attention_probs") == blocks
    assert names.count("linear") == 2 * blocks + 2 + 2 * two_gemm_mlps + 1
    assert "mlp" not in names
    # the shrinking attention's query projection reads the subsampled grid through strides
    q_proj = [args for tuner, shape, args, consts in launches
              if tuner.name == "linear" and args[8] > 1]        # D1 > 1: a strided row grid
    assert len(q_proj) == 2
    # the gpu plan's attention biases have 16-aligned rows
    for tuner, shape, args, consts in launches:
        if tuner.name == "attention":
            assert args[3].stride(1) % 16 == 0


def test_default_table_entries_are_candidates():
    """Every default the table gives a LeViT-256 launch is a config its tuner could pick
    (so the compile matrix covers it), on both archs and in both 16-bit dtypes."""
    from levit_kernels.ops.gpu.tuned_defaults import DEFAULTS
    from levit_kernels.ops.gpu.tuning import Config
    found = 0
    for dtype in (torch.float16, torch.bfloat16):
        for tuner, shape, _, _ in gpu_static.record_launches("LeViT-256", 64, dtype):
            for arch in gpu_static.ARCHS:
                entry = DEFAULTS.get(arch, {}).get(tuner.name, {}).get(tuner.shape_key(shape))
                if entry is not None:
                    found += 1
                    assert Config.from_json(entry) in tuner.candidates(shape, arch)
    assert found >= 2 * 2 * (5 + 4)        # every attention and conv launch class


def test_jobs_dedupe_identical_specialisations():
    jobs = gpu_static.make_jobs(["LeViT-256"], (64,), ["float16"], [90], configs="first")
    keys = {(j["tuner"], j["shape"], j["config"]) for j in jobs.values()}
    assert len(keys) <= len(jobs) < 40
    assert all(j["where"] == {"LeViT-256/b64"} for j in jobs.values())


def test_check_flags_what_the_matrix_forbids():
    good = dict(tuner="linear", arch=80, dtype="float16", precision="native", shape="s",
                config="c", regs=128, spills=0, smem=1000, tensor_cores=True)
    assert gpu_static.check([good]) == []
    bad = [dict(good, spills=8), dict(good, smem=gpu_static.SMEM_LIMIT[80] + 1),
           dict(good, tensor_cores=False), dict(good, error="PTXASError: boom")]
    problems = gpu_static.check(bad)
    assert len(problems) == 4 and "spills 8 bytes" in problems[0]
    assert gpu_static.check([dict(good, precision="ieee", tensor_cores=False)]) == []


@needs_backend
def test_compile_matrix(tmp_path):
    subset = os.environ.get("LEVIT_GPU_STATIC", "ci")
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "levit_kernels.tools.gpu_static", "--subset",
                          subset, "--json", str(out)], env=env, capture_output=True, text=True,
                         timeout=7200 if subset == "full" else 900)
    assert out.exists(), res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows and {r["tuner"] for r in rows} >= {"attention", "linear", "conv2d", "mlp"}
    assert {r["arch"] for r in rows} == {80, 90}
    assert {r["dtype"] for r in rows} == {"float16", "bfloat16", "float32"}
    problems = gpu_static.check(rows)
    assert not problems, "\n".join(problems)
    assert res.returncode == 0, res.stdout[-3000:]
