"""benchmarks/gpu_lab.py --dry-run: every provider of the GPU lab is built and agrees with the
others on CPU (Triton under the interpreter), and LeViT-256's plan at batch 2048 is checked,
so a GPU session only has to run the command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU check")
def test_dry_run_builds_every_provider(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_lab.py"), "--dry-run",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    (result,) = tmp_path.glob("dry_run_*.json")
    data = json.loads(result.read_text())
    assert (tmp_path / result.name.replace(".json", ".md")).exists()
    assert data["dry_run"] and data["env"]["torch"] == torch.__version__
    # the plan: LeViT-256 at batch 2048 launches 4 convs, 14 attentions and its linears
    assert data["plan"]["launches"]["conv2d"] == 4
    assert data["plan"]["launches"]["attention"] == 14
    # op race: Triton and SDPA agree on every LeViT attention (float16), the conv and the linear
    # agree with cuDNN / cuBLAS's math
    assert len(data["ops"]) == 7
    for row in data["ops"]:
        assert not row["ms"]                                   # nothing timed
        diffs = row["max_diff_vs_triton"]
        peer = "sdpa" if row["op"].startswith("attention") else next(
            n for n in diffs if n != "triton")
        assert peer in diffs and diffs[peer] <= 2e-2, row
        assert "flex" in diffs or "flex" in row["errors"] or not row["op"].startswith("att")
    # model race: the fused model's CUDA branch (float16 plan) matches the reference; the
    # CUDA-only providers were built
    (model,) = data["models"]
    assert model["max_diff_vs_reference"]["fused"] <= 2e-2
    assert set(model["errors"]) == {"compile max-autotune", "fused + CUDA graph"}
