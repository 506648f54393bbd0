"""Whole-model speed comparison: reference vs fused LeViT, and the peers a user could pick.

Every provider runs the same weights on the same synthetic images in one process, so the
ratios are taken in one run. A provider is a callable images -> logits built by one of the
`*_provider` functions; `run_benchmark` builds them all, then times them in interleaved
rounds (each round gives every provider an equal slice of the budget, in turn), and reports
images/s (from the median call), speed-up over the reference, and the largest logit difference
from the reference. Interleaving matters on shared machines: on the 2-core VM these numbers
were taken on, speed drifts by 10-20% over seconds, and back-to-back blocks of one provider
each would put that drift into the ratios.

Accuracy beside speed (CPU runs): every provider's logits on the benchmark images against
the plain model in float64 on the same weights and images (relative L2 error), and the
fraction of images whose top-1 class is the float32 plain model's. bfloat16 runs
(`--dtype bfloat16`, or `--amp` for a float32 model under autocast) with `--compare` time the
peers a user would pick for bf16 on CPU: OpenVINO at its default precision (bf16 on CPUs with
native bf16) and pinned to bf16, and timm's LeViT (our plain one without timm) under
torch.autocast("cpu", torch.bfloat16); and our own fused model in float32, so that what bf16
buys over it is a ratio from the same run (benchmarks/cpu_bf16_bar.py judges issue 12's bar
from these reports). `--compare` also times `levit_kernels.freeze(fused)` ("fused frozen"), a
snapshot like the peers' models.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..model import LeViT, freeze
from .distributed import available_cores

PEERS = ("onnxruntime", "openvino")


@dataclass
class Result:
    provider: str
    images_per_s: float
    median_ms: float
    iterations: int
    speedup: float = float("nan")
    max_abs_diff: float = float("nan")
    rel_l2_vs_float64: float = float("nan")    # ||logits - float64 logits|| / ||float64 logits||
    top1_vs_float32: float = float("nan")      # fraction of images with float32's top-1
    error: str = ""
    note: str = ""


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ROUNDS = 5  # interleaved timing rounds per provider


def time_calls(fn: Callable, images, device, seconds: float, min_iters: int = 1) -> List[float]:
    """Wall times of fn(images) calls, at least `min_iters` of them or `seconds` worth."""
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(images)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def make_models(variant: str, device: str, dtype: torch.dtype, batch: int,
                img_size=224, seed: int = 0):
    """Reference and fused models sharing one set of random weights (BN statistics too)."""
    gen = torch.Generator().manual_seed(seed)
    reference = LeViT(variant, img_size=img_size).eval()
    with torch.no_grad():
        for name, t in reference.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif t.ndim >= 2:
                    t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    fused = LeViT(variant, fused=True, img_size=img_size)
    fused.load_state_dict(reference.state_dict())
    reference.to(device=device, dtype=dtype)
    fused.to(device=device, dtype=dtype).eval()
    size = reference.img_size
    images = torch.randn(batch, 3, *size, generator=gen).to(device=device, dtype=dtype)
    return reference, fused, images


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def torch_provider(model, device, amp_dtype=None, compile_mode: Optional[str] = None,
                   fullgraph: bool = False):
    run = model
    if compile_mode is not None:
        run = torch.compile(model, mode=None if compile_mode == "default" else compile_mode,
                            fullgraph=fullgraph)

    def call(images):
        with torch.no_grad(), _autocast(device, amp_dtype):
            return run(images)
    return call


def onnxruntime_provider(model, images, threads: int, workdir: str):
    import onnxruntime as ort
    path = export_onnx(model, images, workdir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def openvino_provider(model, images, threads: int, precision: Optional[str] = "f32"):
    """OpenVINO on a float32 model (float32 images in): `precision` is its
    INFERENCE_PRECISION_HINT ("f32", "bf16"), None for its default (bf16 on CPUs with native
    bf16, Sapphire Rapids and Zen 4 on). The precision it runs is in `.precision`."""
    import openvino as ov
    ov_model = ov.convert_model(model, example_input=images.float())
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()

    def call(x):
        return torch.from_numpy(request.infer([x.float().numpy()])[compiled.output(0)].copy())
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")     # an ov.Type: "f32", "bf16"
    call.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return call


def timm_model(model):
    """timm's LeViT with `model`'s weights (timm's parameter names are ours), or None."""
    try:
        import timm
    except ImportError:
        return None
    name = {"LeViT-128S": "levit_128s", "LeViT-128": "levit_128", "LeViT-192": "levit_192",
            "LeViT-256": "levit_256", "LeViT-384": "levit_384"}.get(model.config.name)
    if name is None or model.num_classes != 1000:
        return None
    peer = timm.create_model(name, img_size=model.img_size, pretrained=False)
    peer.load_state_dict(model.state_dict())
    return peer.eval()


def export_onnx(model, images, workdir: str) -> str:
    import os
    path = os.path.join(workdir, "levit.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (images,), path, input_names=["images"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    return path


def threads_note(threads: int, device: str) -> str:
    """'' unless PyTorch runs more threads than this process has CPUs. The fused kernels'
    pool stops at one thread per CPU (csrc/thread_pool.cpp counts the affinity mask, as
    available_cores does) while PyTorch and the peers start every thread asked for, which then
    take turns on the CPUs: the ratios measure that oversubscription as much as the kernels."""
    cpus = available_cores()
    if device != "cpu" or threads <= cpus:
        return ""
    return (f"the fused kernels run at most {cpus} threads (one per CPU this process may use) "
            f"while PyTorch and the peers run the requested {threads}, oversubscribed")


def run_benchmark(variant="LeViT-256", batch=16, threads: Optional[int] = None, device="cpu",
                  dtype="float32", amp: bool = False, compare: bool = False,
                  compile_models: bool = False, seconds: float = 3.0, img_size=224,
                  progress=None) -> Dict:
    """Time every provider; returns {"config": ..., "results": [Result, ...]}; the config's
    `threads_note` says when `threads` oversubscribes the CPUs (threads_note). Progress lines
    go to `progress` (default: sys.stderr as it is at the call, not at import)."""
    import tempfile
    progress = progress or sys.stderr
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device_t = torch.device(device)
    dtype_t = getattr(torch, dtype)
    amp_dtype = dtype_t if amp else None
    model_dtype = torch.float32 if amp else dtype_t
    reference, fused, images = make_models(variant, device, model_dtype, batch, img_size)
    # The same weights in float32 (make_models is seeded): the peers' input model, our own
    # float32 fused model (the yardstick of a bf16 run's speed), and the yardsticks of the
    # accuracy columns.
    base, fused_float32, _ = make_models(variant, "cpu", torch.float32, batch, img_size)

    providers: Dict[str, Callable[[], Callable]] = {
        "reference": lambda: torch_provider(reference, device_t, amp_dtype),
        "fused": lambda: torch_provider(fused, device_t, amp_dtype),
    }
    if compare:
        # The peers run snapshots of the model (an ONNX session, a compiled OpenVINO model):
        # so does levit_kernels.freeze(), without the fused model's per-call check that its
        # plan is still the model's (~1 ms at batch 1; model/frozen.py).
        providers["fused frozen"] = lambda: freeze(fused, amp_dtype)
    if compile_models:
        providers["reference+compile"] = lambda: torch_provider(reference, device_t, amp_dtype,
                                                                "default")
        providers["fused+compile"] = lambda: torch_provider(fused, device_t, amp_dtype,
                                                            "default", fullgraph=True)
    workdir = tempfile.mkdtemp(prefix="levit_bench_")
    bf16 = dtype_t == torch.bfloat16
    if compare and device_t.type == "cpu" and not bf16 and model_dtype == torch.float32:
        providers["onnxruntime"] = lambda: onnxruntime_provider(reference, images, threads,
                                                                workdir)
        providers["openvino"] = lambda: openvino_provider(reference, images, threads)
    if compare and device_t.type == "cpu" and bf16:
        # What bf16 buys over our float32, in the same interleaved run (images widened in the
        # call, as OpenVINO's provider does).
        def fused_float32_provider():
            call = torch_provider(fused_float32, device_t)
            return lambda x: call(x.float())
        providers["fused float32"] = fused_float32_provider
        providers["openvino (default precision)"] = lambda: openvino_provider(base, images,
                                                                              threads, None)
        providers["openvino bf16"] = lambda: openvino_provider(base, images, threads, "bf16")
        peer = timm_model(base)
        name = "timm+autocast" if peer is not None else "reference+autocast"
        providers[name] = lambda: torch_provider(peer if peer is not None else base, device_t,
                                                 torch.bfloat16)
    accuracy = accuracy_yardsticks(base, images) if device_t.type == "cpu" else None

    results: List[Result] = []
    callables: Dict[str, Callable] = {}
    expected = None
    for i, (name, build) in enumerate(providers.items(), 1):
        print(f"[{i}/{len(providers)}] {name}: building ...", file=progress, flush=True)
        try:
            fn = build()
            with torch.no_grad():
                out = fn(images).float().cpu()
                fn(images)                     # warm-up beyond the first call
            _sync(device_t)
        except ImportError as exc:
            results.append(Result(name, float("nan"), float("nan"), 0,
                                  error=f"not installed ({exc.name})"))
            continue
        except Exception as exc:   # a peer failing must not hide the other numbers
            results.append(Result(name, float("nan"), float("nan"), 0,
                                  error=f"{type(exc).__name__}: {exc}"[:200]))
            continue
        if expected is None:
            expected = out
        callables[name] = fn
        result = Result(name, float("nan"), float("nan"), 0,
                        max_abs_diff=(out - expected).abs().max().item(),
                        note=f"runs {fn.precision}" if hasattr(fn, "precision") else "")
        if accuracy is not None:
            result.rel_l2_vs_float64, result.top1_vs_float32 = accuracy(out)
        results.append(result)
    times: Dict[str, List[float]] = {name: [] for name in callables}
    for r in range(ROUNDS):
        print(f"timing round {r + 1}/{ROUNDS}: {', '.join(callables)} in turn, "
              f"~{seconds / ROUNDS:g}s each ...", file=progress, flush=True)
        for name, fn in callables.items():
            times[name] += time_calls(fn, images, device_t, seconds / ROUNDS)
    for res in results:
        if res.provider in times:
            median = statistics.median(times[res.provider])
            res.images_per_s, res.median_ms = batch / median, median * 1e3
            res.iterations = len(times[res.provider])
    base = results[0].images_per_s
    for res in results:
        res.speedup = res.images_per_s / base
    from .info import collect
    config = dict(variant=variant, batch=batch, threads=threads, device=device, dtype=dtype,
                  amp=amp, img_size=img_size, seconds=seconds,
                  threads_note=threads_note(threads, device), **collect())
    return {"config": config, "results": [asdict(r) for r in results]}


def accuracy_yardsticks(base, images):
    """A function logits -> (relative L2 error vs the float64 plain model, top-1 agreement
    with the float32 plain model), both run once here on the benchmark's images."""
    with torch.no_grad():
        exact = copy.deepcopy(base).double()(images.double().cpu())
        top1 = base(images.float().cpu()).argmax(-1)

    def accuracy(out):
        out = out.double().cpu()
        return (((out - exact).norm() / exact.norm()).item(),
                (out.argmax(-1) == top1).double().mean().item())
    return accuracy


def format_table(report: Dict) -> str:
    cfg = report["config"]
    lines = [f"{cfg['variant']}  batch {cfg['batch']}  {cfg['device']} {cfg['dtype']}"
             f"{' (autocast)' if cfg['amp'] else ''}  threads {cfg['threads']}  "
             f"torch {cfg['torch']}  {cfg['machine']}",
             f"{'provider':<28} {'images/s':>10} {'ms/batch':>10} {'speed-up':>9} "
             f"{'max |Δlogit|':>13} {'rel L2 vs f64':>14} {'top-1 = f32':>12}"]
    for r in report["results"]:
        if r["error"]:
            lines.append(f"{r['provider']:<28} {'-':>10} {'-':>10} {'-':>9} {'-':>13} "
                         f"{'-':>14} {'-':>12}  {r['error']}")
            continue
        lines.append(f"{r['provider']:<28} {r['images_per_s']:>10.1f} {r['median_ms']:>10.2f} "
                     f"{r['speedup']:>8.2f}x {r['max_abs_diff']:>13.2e} "
                     f"{r.get('rel_l2_vs_float64', float('nan')):>14.2e} "
                     f"{r.get('top1_vs_float32', float('nan')):>12.1%}"
                     + (f"  ({r['note']})" if r.get("note") else ""))
    # the note first: the ratios below it are read in its light
    note = [f"note: {cfg['threads_note']}"] if cfg.get("threads_note") else []
    return "\n".join(note + lines)
