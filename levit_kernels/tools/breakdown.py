"""Where a fused CPU forward's time goes: every step of the one-call program, timed.

The fused model runs on CPU as one C++ call (cpu.ForwardProgram); `ForwardProgram.profile`
times each of its steps inside that call (a steady clock around each convolution, GEMM,
attention, MLP and copy; nothing is timed in an ordinary call). This runs it a few rounds on
random weights and images (as `bench` does), alternating with untimed forwards, and reports
each step's median, its share and its GFLOP/s, then the same by kind of step. Beside the
steps' sum stands an untimed forward's median: the difference is what lies outside the steps
(the Python call's checks; the clock's bookkeeping, between steps, made a profiled
LeViT-128S call ~0.2 ms slower at batch 1 on Zen 3). Uses: which layer a kernel change should
target; on a new CPU (AVX512_BF16, say), which kinds of step did and did not get faster than
float32.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, List, Optional

import torch

from ..model.plan import FusedPlan
from .bench import make_models, threads_note

# The kinds of step the program reports (csrc/forward.h, StepTime), as the summary names them.
KINDS = {"convolution": "stem convolutions", "gemm": "projections and the head (GEMMs)",
         "attention": "attention (scores, bias, softmax, x V)", "mlp": "MLPs (two GEMMs each)",
         "copy": "copies and the mean"}


def run_breakdown(variant: str = "LeViT-256", batch: int = 16, threads: Optional[int] = None,
                  dtype: str = "float32", img_size=224, rounds: int = 10) -> Dict:
    """{"config": ..., "steps": [{"step", "kind", "ms", "flops", "gflops_per_s"}, ...] (kind:
    a key of KINDS),
    "forward_ms": an untimed forward's median, "steps_ms": the steps' medians summed}."""
    from .info import collect
    if threads is not None:
        torch.set_num_threads(threads)
    dtype_t = getattr(torch, dtype)
    _, fused, images = make_models(variant, "cpu", torch.float32, batch, img_size)
    with torch.no_grad():
        program = FusedPlan(fused, torch.device("cpu"), dtype_t).program
    images = images.to(dtype_t)
    for _ in range(2):    # first-touch of the workspace, caches, the kernels' thread pool
        program.profile(images)
    seconds: Dict[str, List[float]] = {}
    facts: Dict[str, dict] = {}     # each step's kind and flops (the same every round)
    untimed: List[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        program(images)
        untimed.append(time.perf_counter() - t0)
        for step in program.profile(images)[1]:
            seconds.setdefault(step["step"], []).append(step["seconds"])
            facts[step["step"]] = step
    steps = []
    for name, times in seconds.items():
        median, flops = statistics.median(times), facts[name]["flops"]
        steps.append(dict(step=name, kind=facts[name]["kind"], ms=median * 1e3, flops=flops,
                          gflops_per_s=flops / median / 1e9 if median > 0 else 0.0))
    threads = torch.get_num_threads()
    config = dict(variant=variant, batch=batch, threads=threads, dtype=dtype, img_size=img_size,
                  rounds=rounds, threads_note=threads_note(threads, "cpu"), **collect())
    return {"config": config, "steps": steps, "forward_ms": statistics.median(untimed) * 1e3,
            "steps_ms": sum(s["ms"] for s in steps)}


def format_breakdown(report: Dict) -> str:
    cfg, steps = report["config"], report["steps"]
    total = report["steps_ms"]
    lines = [f"{cfg['variant']}  batch {cfg['batch']}  cpu {cfg['dtype']}  threads "
             f"{cfg['threads']}  isa {cfg['cpu isa']}  torch {cfg['torch']}  {cfg['machine']}",
             f"medians of {cfg['rounds']} profiled forwards: steps sum to {total:.2f} ms; an "
             f"untimed forward takes {report['forward_ms']:.2f} ms", "",
             f"{'step':<72} {'ms':>8} {'share':>6} {'GFLOP/s':>8}"]
    for s in steps:
        rate = f"{s['gflops_per_s']:8.1f}" if s["flops"] else f"{'-':>8}"
        lines.append(f"{s['step']:<72} {s['ms']:8.3f} {s['ms'] / total:6.1%} {rate}")
    lines += ["", f"{'by kind':<72} {'ms':>8} {'share':>6} {'GFLOP/s':>8}"]
    for kind, label in KINDS.items():
        mine = [s for s in steps if s["kind"] == kind]
        if not mine:
            continue
        ms, flops = sum(s["ms"] for s in mine), sum(s["flops"] for s in mine)
        rate = f"{flops / ms / 1e6:8.1f}" if flops and ms else f"{'-':>8}"
        lines.append(f"{label:<72} {ms:8.3f} {ms / total:6.1%} {rate}")
    note = [f"note: {cfg['threads_note']}"] if cfg.get("threads_note") else []
    return "\n".join(note + lines)
