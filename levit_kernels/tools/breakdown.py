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
from typing import Dict, List, Optional, Sequence

import torch

from ..model.plan import FusedPlan
from .bench import make_models, threads_note

# The kinds of step the program reports (csrc/forward.h, StepTime), as the summary names them.
KINDS = {"convolution": "stem convolutions", "gemm": "projections and the head (GEMMs)",
         "attention": "attention (scores, bias, softmax, x V)", "mlp": "MLPs (two GEMMs each)",
         "copy": "copies and the mean"}


def run_breakdowns(variant: str = "LeViT-256", batch: int = 16, threads: Optional[int] = None,
                   dtypes: Sequence[str] = ("bfloat16", "float32"), img_size=224,
                   rounds: int = 10) -> Dict[str, Dict]:
    """{dtype: report} for the same weights and images in each dtype, their rounds
    interleaved in one process (the order alternating), so ratios between the dtypes are not
    skewed by the machine's drift between runs. A report: {"config": ..., "steps": [{"step",
    "kind", "ms", "flops", "gflops_per_s"}, ...] (kind: a key of KINDS), "forward_ms": an
    untimed forward's median, "steps_ms": the steps' medians summed}."""
    from .info import collect
    if threads is not None:
        torch.set_num_threads(threads)
    _, fused, images = make_models(variant, "cpu", torch.float32, batch, img_size)
    programs, inputs = {}, {}
    with torch.no_grad():
        for dtype in dtypes:
            programs[dtype] = FusedPlan(fused, torch.device("cpu"), getattr(torch, dtype)).program
            inputs[dtype] = images.to(getattr(torch, dtype))
    for _ in range(2):    # first-touch of the workspaces, caches, the kernels' thread pool
        for dtype in dtypes:
            programs[dtype].profile(inputs[dtype])
    seconds: Dict[str, Dict[str, List[float]]] = {dtype: {} for dtype in dtypes}
    facts: Dict[str, Dict[str, dict]] = {dtype: {} for dtype in dtypes}  # kind, flops per step
    untimed: Dict[str, List[float]] = {dtype: [] for dtype in dtypes}
    for r in range(rounds):
        for dtype in (dtypes if r % 2 == 0 else dtypes[::-1]):
            program, x = programs[dtype], inputs[dtype]
            t0 = time.perf_counter()
            program(x)
            untimed[dtype].append(time.perf_counter() - t0)
            for step in program.profile(x)[1]:
                seconds[dtype].setdefault(step["step"], []).append(step["seconds"])
                facts[dtype][step["step"]] = step
    threads = torch.get_num_threads()
    environment = collect()
    reports = {}
    for dtype in dtypes:
        steps = []
        for name, times in seconds[dtype].items():
            median, flops = statistics.median(times), facts[dtype][name]["flops"]
            steps.append(dict(step=name, kind=facts[dtype][name]["kind"], ms=median * 1e3,
                              flops=flops,
                              gflops_per_s=flops / median / 1e9 if median > 0 else 0.0))
        config = dict(variant=variant, batch=batch, threads=threads, dtype=dtype,
                      img_size=img_size, rounds=rounds, interleaved_with=[d for d in dtypes
                                                                          if d != dtype],
                      threads_note=threads_note(threads, "cpu"), **environment)
        reports[dtype] = {"config": config, "steps": steps,
                          "forward_ms": statistics.median(untimed[dtype]) * 1e3,
                          "steps_ms": sum(step["ms"] for step in steps)}
    return reports


def ms_by_kind(report: Dict) -> Dict[str, float]:
    """{kind: milliseconds} of a report's steps, for every kind of KINDS."""
    return {kind: sum(s["ms"] for s in report["steps"] if s["kind"] == kind) for kind in KINDS}


def format_breakdown(report: Dict, baseline: Optional[Dict] = None) -> str:
    """The steps and the kinds of `report`; with `baseline` (the other dtype of the same
    run_breakdowns call) each row also has the baseline's time and baseline / report."""
    cfg, steps = report["config"], report["steps"]
    total = report["steps_ms"]
    base_ms = {s["step"]: s["ms"] for s in baseline["steps"]} if baseline else {}
    other = baseline["config"]["dtype"] if baseline else ""
    extra = f" {other + ' ms':>15} {'ratio':>6}" if baseline else ""

    def versus(ms: float, base: Optional[float]) -> str:
        if not baseline:
            return ""
        if base is None:
            return f" {'-':>15} {'-':>6}"
        return f" {base:15.3f} {base / ms if ms else float('nan'):5.2f}x"

    lines = [f"{cfg['variant']}  batch {cfg['batch']}  cpu {cfg['dtype']}  threads "
             f"{cfg['threads']}  isa {cfg['cpu isa']}  torch {cfg['torch']}  {cfg['machine']}",
             f"medians of {cfg['rounds']} profiled forwards: steps sum to {total:.2f} ms; an "
             f"untimed forward takes {report['forward_ms']:.2f} ms"]
    if baseline:
        lines.append(f"{other}, interleaved in the same run: steps sum to "
                     f"{baseline['steps_ms']:.2f} ms; ratio = {other} ms / {cfg['dtype']} ms")
    lines += ["", f"{'step':<72} {'ms':>8} {'share':>6} {'GFLOP/s':>8}{extra}"]
    for s in steps:
        rate = f"{s['gflops_per_s']:8.1f}" if s["flops"] else f"{'-':>8}"
        lines.append(f"{s['step']:<72} {s['ms']:8.3f} {s['ms'] / total:6.1%} {rate}"
                     f"{versus(s['ms'], base_ms.get(s['step']))}")
    lines += ["", f"{'by kind':<72} {'ms':>8} {'share':>6} {'GFLOP/s':>8}{extra}"]
    mine = ms_by_kind(report)
    base_kinds = ms_by_kind(baseline) if baseline else {}
    for kind, label in KINDS.items():
        if not mine[kind]:
            continue
        flops = sum(s["flops"] for s in steps if s["kind"] == kind)
        rate = f"{flops / mine[kind] / 1e6:8.1f}" if flops else f"{'-':>8}"
        lines.append(f"{label:<72} {mine[kind]:8.3f} {mine[kind] / total:6.1%} {rate}"
                     f"{versus(mine[kind], base_kinds.get(kind))}")
    if baseline:
        lines.append(f"{'all steps':<72} {total:8.3f} {'':>6} {'':>8}"
                     f"{versus(total, baseline['steps_ms'])}")
    note = [f"note: {cfg['threads_note']}"] if cfg.get("threads_note") else []
    return "\n".join(note + lines)
