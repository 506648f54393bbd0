"""Launch-config tuning (levit_kernels/ops/gpu/tuning.py) without a GPU: the tuner is driven
with a fake device (capability, name) and a fake timer, so what is checked is its bookkeeping:
pruning by shape and arch, one tuning per shape class (not per batch), the on-disk cache a
second process starts from, the default table, the off switch and CUDA-graph capture.
"""
import importlib
import json
import os

import pytest
import torch

pytest.importorskip("triton")
from levit_kernels.ops.gpu import common, tuning  # noqa: E402

attention_mod = importlib.import_module("levit_kernels.ops.gpu.attention")
linear_mod = importlib.import_module("levit_kernels.ops.gpu.linear")

pytestmark = [pytest.mark.attention, pytest.mark.linear]
DEVICE = torch.device("cuda", 0)


def attn_shape(n_q=196, n_k=196, bh=64 * 4, dtype=torch.float16, d_v=64):
    return dict(dtype=dtype, precision=common.dot_precision(dtype), N_Q=n_q, N_K=n_k, D_K=32,
                D_V=d_v, HARDSWISH=True, BH=bh)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """Tuning on as on a GPU (sm_90, "Fake H100"), a fresh cache file, a fake timer that
    records what it timed and makes BLOCK_M=32 the fastest."""
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    monkeypatch.setattr(common.RUNTIME, "capability", lambda device: 90)
    monkeypatch.setattr(common.RUNTIME, "device_name", lambda device: "Fake H100")
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "tuned.json"))
    monkeypatch.delenv(tuning.TUNE_ENV, raising=False)
    monkeypatch.setattr(tuning, "DEFAULTS", {})
    timed = []

    def fake_time(run, config):
        timed.append(config)
        return 1.0 if config.kwargs.get("BLOCK_M") == 32 else 2.0

    monkeypatch.setattr(tuning, "time_config", fake_time)
    tuner = tuning.Tuner("attention", attention_mod._attention_kernel,
                         attention_mod._attention_configs(), attention_mod._prune_attention,
                         key=attention_mod._ATTENTION.key_names, bucket="BH",
                         interpret=lambda shape: None)
    return tuner, timed, tmp_path / "tuned.json"


def test_pruning_by_shape_and_dtype():
    prune = attention_mod._prune_attention
    configs = attention_mod._attention_configs()
    for n_q in (16, 49):          # no 128-row tiles for the small stages
        assert all(c.kwargs["BLOCK_M"] <= 64 for c in prune(configs, attn_shape(n_q, n_q), 90))
    assert {c.kwargs["BLOCK_M"] for c in prune(configs, attn_shape(16, 16), 90)} == {16}
    assert any(c.kwargs["BLOCK_M"] == 128 for c in prune(configs, attn_shape(), 90))
    fp32 = prune(configs, attn_shape(dtype=torch.float32), 80)
    assert fp32 and all(c.kwargs["BLOCK_M"] == 16 and c.num_warps == 4 for c in fp32)
    # 2-warp 16-row tiles only with Dv <= 64
    assert not any(c.num_warps == 2 for c in prune(configs, attn_shape(16, 49, d_v=128), 90))
    # linear: operand tiles within the arch's shared memory, tiles no larger than the problem
    lin = dict(dtype=torch.float32, precision="tf32x3", M=12544, N=1000, K=512)
    for arch, limit in linear_mod.SMEM_LIMIT.items():
        for c in linear_mod.prune_gemm(linear_mod._LINEAR.configs, lin, arch):
            k = c.kwargs
            assert c.num_stages * (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * 4 <= limit
    ieee = linear_mod.prune_gemm(linear_mod._LINEAR.configs, dict(lin, precision="ieee"), 80)
    assert ieee and all(c.kwargs["BLOCK_M"] <= 32 for c in ieee)
    # nothing small enough: the smallest tile that keeps the float32 register rules
    tiny = dict(lin, M=1, N=8, K=8)
    (pick,) = linear_mod.prune_gemm(linear_mod._LINEAR.configs, tiny, 80)
    assert pick.kwargs["BLOCK_K"] <= 32
    small = dict(lin, dtype=torch.float16, M=16, N=64, K=64)
    assert all(c.kwargs["BLOCK_M"] <= 16 and c.kwargs["BLOCK_N"] <= 64
               for c in linear_mod.prune_gemm(linear_mod._LINEAR.configs, small, 90))


def test_one_tuning_per_shape_class_not_per_batch(fake_gpu):
    tuner, timed, path = fake_gpu
    picks = [tuner.pick(attn_shape(bh=batch * 4), DEVICE, run=None) for batch in range(17, 65)]
    assert {c.kwargs["BLOCK_M"] for c in picks} == {32}
    n_candidates = len(tuner.candidates(attn_shape(), 90))
    assert len(timed) == n_candidates      # batches 17..64 share one bucket: timed once
    tuner.pick(attn_shape(bh=65 * 4), DEVICE, run=None)     # the next bucket tunes again
    assert len(timed) == 2 * n_candidates
    tuner.pick(attn_shape(49, 49, bh=64 * 4), DEVICE, run=None)   # another shape class too
    assert len(timed) > 2 * n_candidates


def test_a_second_process_starts_tuned(fake_gpu):
    tuner, timed, path = fake_gpu
    first = tuner.pick(attn_shape(), DEVICE, run=None)
    assert timed and path.exists()
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 1 and "Fake H100" in next(iter(entries))
    # a new process: empty memory, the cache file re-read
    timed.clear()
    tuner._picked.clear()
    tuning.CACHE._path = None
    assert tuner.pick(attn_shape(), DEVICE, run=None) == first
    assert not timed
    # a changed kernel source invalidates the entry
    tuner._picked.clear()
    tuner._source = "another kernel"
    tuner.pick(attn_shape(), DEVICE, run=None)
    assert timed


def test_default_table_skips_tuning_unless_always(fake_gpu, monkeypatch):
    tuner, timed, path = fake_gpu
    shape = attn_shape()
    table = {90: {"attention": {tuner.shape_key(shape): [{"BLOCK_M": 16, "TILES_PER_PROG": 1},
                                                         4, 1]}}}
    monkeypatch.setattr(tuning, "DEFAULTS", table)
    assert tuner.pick(shape, DEVICE, run=None).kwargs["BLOCK_M"] == 16
    assert not timed and not path.exists()
    tuner._picked.clear()
    monkeypatch.setenv(tuning.TUNE_ENV, "always")
    assert tuner.pick(shape, DEVICE, run=None).kwargs["BLOCK_M"] == 32
    assert timed


def test_off_and_capture_use_the_first_candidate_untimed(fake_gpu, monkeypatch):
    tuner, timed, path = fake_gpu
    first = tuner.candidates(attn_shape(), 90)[0]
    monkeypatch.setenv(tuning.TUNE_ENV, "off")
    assert tuner.pick(attn_shape(), DEVICE, run=None) == first
    monkeypatch.setenv(tuning.TUNE_ENV, "auto")
    monkeypatch.setattr(tuning, "_capturing", lambda: True)
    assert tuner.pick(attn_shape(), DEVICE, run=None) == first
    assert not timed and not path.exists()       # nothing timed, nothing remembered
    monkeypatch.setattr(tuning, "_capturing", lambda: False)
    assert tuner.pick(attn_shape(), DEVICE, run=None).kwargs["BLOCK_M"] == 32


def test_bad_switches_name_the_variable(monkeypatch):
    monkeypatch.setenv(tuning.TUNE_ENV, "sometimes")
    with pytest.raises(ValueError, match=tuning.TUNE_ENV):
        tuning.tune_mode()
    monkeypatch.setenv(common.FP32_PRECISION_ENV, "tf16")
    with pytest.raises(ValueError, match=common.FP32_PRECISION_ENV):
        common.dot_precision(torch.float32)
    assert common.dot_precision(torch.float16) == "native"


def test_bucket_and_unreadable_cache(tmp_path, monkeypatch):
    assert [tuning.bucket(n) for n in (1, 2, 4, 5, 16, 17, 2048)] == [1, 4, 4, 16, 16, 64, 4096]
    path = tmp_path / "tuned.json"
    path.write_text("{not json")
    monkeypatch.setenv(tuning.CACHE_ENV, str(path))
    cache = tuning.TuneCache()
    assert cache.get("k", "src") is None
    cache.put("k", tuning.Config({"BLOCK_M": 16}, 4, 1), "src")
    assert cache.get("k", "src") == tuning.Config({"BLOCK_M": 16}, 4, 1)
    assert cache.get("k", "other source") is None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
