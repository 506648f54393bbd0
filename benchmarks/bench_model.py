"""Whole-model speed: reference (fused=False) vs fused LeViT, and the CPU peers.

    python -m pytest benchmarks/bench_model.py --benchmark-json=model.json
    python benchmarks/report.py model.json --png model.png

Groups are "<variant> <device> b<batch> t<threads>"; providers: reference, fused, and on CPU
fused-frozen (levit_kernels.freeze(fused): the plan without the per-call key check, a snapshot
as the peers' models are) and onnxruntime / openvino when installed (same weights, pinned to
float32 and the same threads).
CPU settings are the issue's: 1 thread batch 16 (the paper's protocol) and 2 threads batch 1.

bfloat16 groups ("<variant> cpu bf16 b<batch> t<threads>", issue 12), timed in the same
interleaved rounds: the fused model in bf16, timm's LeViT under torch.autocast("cpu",
bfloat16) (our plain model without timm), OpenVINO at its default precision and pinned to
bf16. Every result's extra_info carries its accuracy: relative L2 logit error against the
float64 plain model and top-1 agreement with float32 (levit_kernels.tools.bench).

Within a group the CPU providers run in ROUNDS interleaved rounds (every provider once per
round, in turn; tests are ordered provider-fastest) and report.py takes each provider's median
over its rounds: on a shared machine speed drifts by 10-20% over tens of seconds, and one
block per provider would put that drift into the ratios.
"""
import time

import pytest
import torch

from levit_kernels import LeViT, freeze
from levit_kernels.tools.bench import (accuracy_yardsticks, make_models, onnxruntime_provider,
                                       openvino_provider, timm_model, torch_provider)

VARIANTS = ["LeViT-128S", "LeViT-128", "LeViT-192", "LeViT-256", "LeViT-384"]
CPU_SETTINGS = [(1, 16), (2, 1)]              # (threads, batch)
PROVIDERS = ["reference", "fused", "fused-frozen", "onnxruntime", "openvino"]
BF16_PROVIDERS = ["fused-bf16", "timm+autocast", "openvino-default", "openvino-bf16"]
ROUNDS = 3

_cache = {}        # the models of the current group
_providers = {}    # the built providers of the current group: building one takes seconds


def _setup(variant, device, threads, batch):
    key = (variant, device, batch)
    if key not in _cache:
        _cache.clear()
        _cache[key] = make_models(variant, device, torch.float32, batch)
    torch.set_num_threads(threads)
    return _cache[key]


def _build(name, reference, fused, images, threads, tmp_path):
    device = images.device
    if name == "fused-bf16":
        model = LeViT(reference.config.name, fused=True)
        model.load_state_dict(reference.state_dict())
        return torch_provider(model.bfloat16().eval(), device)
    if name == "timm+autocast":
        return torch_provider(timm_model(reference) or reference, device, torch.bfloat16)
    if name.startswith("openvino-"):
        pytest.importorskip("openvino")
        return openvino_provider(reference, images, threads,
                                 None if name == "openvino-default" else "bf16")
    if name == "reference":
        return torch_provider(reference, device)
    if name == "fused":
        return torch_provider(fused, device)
    if name == "fused-frozen":
        return freeze(fused)
    if name == "onnxruntime":
        pytest.importorskip("onnxruntime")
        return onnxruntime_provider(reference, images, threads, str(tmp_path))
    pytest.importorskip("openvino")
    return openvino_provider(reference, images, threads)


def _provider(setting, name, reference, fused, images, threads, tmp_path):
    if not any(key[0] == setting for key in _providers):
        _providers.clear()
    if (setting, name) not in _providers:
        _providers[setting, name] = _build(name, reference, fused, images, threads, tmp_path)
    return _providers[setting, name]


_accuracy = {}    # setting -> the accuracy function of its models (built once per setting)


@pytest.mark.parametrize("provider", PROVIDERS + BF16_PROVIDERS)
@pytest.mark.parametrize("round_", range(1, ROUNDS + 1), ids=lambda r: f"round{r}")
@pytest.mark.parametrize("threads,batch", CPU_SETTINGS, ids=[f"t{t}-b{b}" for t, b in CPU_SETTINGS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_cpu(benchmark, variant, threads, batch, round_, provider, tmp_path):
    reference, fused, images = _setup(variant, "cpu", threads, batch)
    setting = (variant, threads, batch)
    fn = _provider(setting, provider, reference, fused, images, threads, tmp_path)
    if setting not in _accuracy:
        _accuracy.clear()
        _accuracy[setting] = accuracy_yardsticks(reference, images)
    with torch.no_grad():
        rel_l2, top1 = _accuracy[setting](fn(images))
    precision = " bf16" if provider in BF16_PROVIDERS else ""
    benchmark.group = f"{variant} cpu{precision} b{batch} t{threads}"
    benchmark.extra_info.update(images=batch, threads=threads, round=round_,
                                rel_l2_vs_float64=rel_l2, top1_vs_float32=top1)
    with torch.no_grad():
        benchmark.pedantic(fn, args=(images,), rounds=5, iterations=_iterations(fn, images),
                           warmup_rounds=1)


def _iterations(fn, images, round_seconds=0.3):
    """Calls per round so that a round lasts ~round_seconds: a batch-1 forward takes a few ms,
    and single calls that short make a noisy median on a shared machine."""
    fn(images)
    t0 = time.perf_counter()
    fn(images)
    return max(1, round(round_seconds / (time.perf_counter() - t0)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("provider", ["reference", "fused"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_cuda(benchmark, variant, provider):
    batch = 1024 if variant == "LeViT-384" else 2048
    reference, fused, images = _setup(variant, "cuda", torch.get_num_threads(), batch)
    fn = torch_provider(reference if provider == "reference" else fused, images.device,
                        amp_dtype=torch.float16)

    def timed():
        fn(images)
        torch.cuda.synchronize()
    benchmark.group = f"{variant} cuda b{batch} fp16-autocast"
    benchmark.extra_info.update(images=batch)
    benchmark.pedantic(timed, rounds=10, iterations=1, warmup_rounds=2)
