"""The compile matrix: every Triton kernel the fused LeViT launches, compiled ahead of time for
sm_80 (A100) and sm_90 (H100/H200) with Triton's real CUDA backend, on a machine without a GPU.

    python -m levit_kernels.tools.gpu_static --subset ci --json out.json   (what CI runs)
    python -m levit_kernels.tools.gpu_static --subset full --markdown benchmarks/gpu_static.md

1. Launches are recorded, not guessed: each variant's "gpu" plan is built on the meta device
   and its forward run through the GPU backend (model/gpu_backend.py) with the launch replaced
   by a recorder, so every kernel, argument, stride and constexpr is what a real forward
   passes (plus attention_probs at every attention's shape).
2. Each launch is compiled with every config its tuner can pick on that arch (the pruned
   candidates, and the default table's entry), for float16 / bfloat16 / float32.
3. Identical specialisations (same kernel, constexprs, config and Triton's argument
   specialisation: pointer alignment 16, integers == 1 or divisible by 16) compile once.
4. Each compile runs Triton's own launcher path (kernel.warmup) against a fake driver that
   names the target arch, in worker processes without TRITON_INTERPRET. ptxas -v (which
   Triton runs) gives registers and spill bytes; the metadata the shared memory; the PTX
   whether tensor cores are used (mma.sync / wgmma). Results are cached by the compiled
   kernel's hash (~/.cache/levit_kernels/static/).

check() lists what the matrix forbids: a failed compile, any spill, shared memory over the
arch's per-block limit, a float16/bfloat16 (or TF32) kernel without tensor-core instructions.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List

import torch

from ..model.config import VARIANTS

ARCHS = (80, 90)
SMEM_LIMIT = {80: 166912, 90: 232448}      # opt-in dynamic shared memory per block (bytes)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# The full matrix: the five variants at batch 1 and 64 (the two integer specialisations a
# batch gives: sizes divisible by 16 or not), every kernel, every candidate config, every
# dtype on both archs. CI compiles a representative subset in a few minutes: the two variants
# that span every kernel and shape class (Dk 16 with the fused MLP, Dk 32 with the two-GEMM
# MLP), batch 64, the model's kernels (not attention_probs), each launch with the config it
# gets untuned (the first candidate, or the default table's); float16 on both archs,
# bfloat16 on sm_90 (its kernels differ from float16's by conversions: same tiles, registers
# within a few), float32 on sm_80 (the smaller shared memory; registers as on sm_90).
SUBSETS = {"ci": dict(variants=("LeViT-128S", "LeViT-256"), batches=(64,),
                      tuners=("conv2d", "linear", "mlp", "attention"), configs="first",
                      skip=(("bfloat16", 80), ("float32", 90))),
           "full": dict(variants=tuple(n for n in VARIANTS if not n.startswith("LeViT-A")),
                        batches=(1, 64), tuners=None, configs="all", skip=())}
TENSOR_CORES = re.compile(r"\b(mma\.sync|wgmma\.mma_async)\b")


# ------------------------------------------------------------------ 1. recording launches
def record_launches(variant: str, batch: int, dtype: torch.dtype = torch.float16,
                    img_size: int = 224):
    """The fused forward's launches as (tuner, shape, args, consts) on meta tensors."""
    from ..model.gpu_backend import GpuLaunchers
    from ..model.levit import LeViT
    from ..model.plan import FusedPlan
    from ..ops.gpu import common, launch_attention_probs

    model = LeViT(variant, img_size=img_size).eval()
    plan = FusedPlan(model, torch.device("meta"), dtype, kernels="gpu")
    images = torch.empty(batch, 3, img_size, img_size, device="meta")
    launches = []

    def record(tuner, shape, grid, args, consts, device):
        launches.append((tuner, shape, args, consts))
        if tuner.name == "attention":       # attention_probs at the same q, k, bias
            q, k, _, bias = args[:4]
            launch_attention_probs(q, k, bias, 1.0, torch.empty(
                q.shape[0], q.shape[1], q.shape[2], k.shape[2], device="meta", dtype=q.dtype))

    saved = common.RUNTIME.launch_tuned
    common.RUNTIME.launch_tuned = record
    try:
        with torch.no_grad():
            GpuLaunchers().forward(plan, images)        # unchecked: the checks refuse meta
    finally:
        common.RUNTIME.launch_tuned = saved
    return launches


def with_precision(launch, precision: str):
    """A float32 launch as it is with another LEVIT_TRITON_FP32 precision (the launchers'
    other choices do not depend on it)."""
    tuner, shape, args, consts = launch
    if "PRECISION" in consts:
        consts = dict(consts, PRECISION=precision)
    return tuner, dict(shape, precision=precision), args, consts


def _spec(value):
    """Triton's specialisation of one argument (what makes two launches compile the same)."""
    if isinstance(value, torch.Tensor):
        return ("ptr", str(value.dtype), (value.storage_offset() * value.element_size()) % 16 == 0)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return (type(value).__name__, None)
    if isinstance(value, int):
        return ("int", 1 if value == 1 else 16 if value % 16 == 0 else 0, abs(value) >= 2**31)
    return (type(value).__name__, repr(value))


def _encode(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype).replace("torch.", ""), tuple(value.shape),
                value.stride(), value.storage_offset())
    return value


def _meta(dtype, shape, stride, offset) -> torch.Tensor:
    """A meta tensor view at `offset` elements (its data_ptr is offset * itemsize: the
    alignment Triton specialises on, as from a fresh CUDA allocation)."""
    base = torch.empty(offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride)),
                       device="meta", dtype=dtype)
    return base.as_strided(shape, stride, offset)


def _decode(value):
    if isinstance(value, tuple) and value and value[0] == "tensor":
        _, dtype, shape, stride, offset = value
        return _meta(DTYPES[dtype], shape, stride, offset)
    return value


def make_jobs(variants, batches, dtypes, archs, tuners=None, configs="all", skip=(),
              precision=None) -> Dict[tuple, dict]:
    """{specialisation key: compile job} for every launch x config x arch (configs="all": every
    candidate and the default table's entry; "first": the untuned pick only)."""
    from ..ops.gpu.common import dot_precision
    from ..ops.gpu.tuned_defaults import DEFAULTS
    from ..ops.gpu.tuning import Config

    jobs = {}
    for variant in variants:
        for batch in batches:
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                prec = "native" if dtype != torch.float32 else precision or dot_precision(dtype)
                recorded = record_launches(variant, batch, dtype)
                for tuner, shape, args, consts in (with_precision(r, prec) for r in recorded):
                    if tuners is not None and tuner.name not in tuners:
                        continue
                    for arch in (a for a in archs if (dtype_name, a) not in skip):
                        default = DEFAULTS.get(arch, {}).get(tuner.name, {}).get(
                            tuner.shape_key(shape))
                        picks = list(tuner.candidates(shape, arch))
                        if configs == "first":
                            picks = picks[:1] if default is None else []
                        if default is not None:
                            picks.append(Config.from_json(default))
                        for cfg in picks:
                            kwargs = dict(consts, **cfg.kwargs)
                            key = (tuner.name, arch, tuple(_spec(a) for a in args),
                                   tuple(sorted(kwargs.items())), cfg.num_warps, cfg.num_stages)
                            job = jobs.setdefault(key, dict(
                                kernel=(tuner.kernel.fn.__module__, tuner.kernel.fn.__name__),
                                tuner=tuner.name, arch=arch, dtype=dtype_name, precision=prec,
                                shape=tuner.shape_key(shape), config=str(cfg),
                                args=[_encode(a) for a in args], kwargs=kwargs,
                                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                where=set()))
                            job["where"].add(f"{variant}/b{batch}")
    return jobs


# ------------------------------------------------------------------ 2. compiling (workers)
class _FakeDriver:
    """Enough of Triton's active driver for kernel.warmup to compile for `arch` (the device
    number is the arch, so each arch keeps its own binder cache)."""

    def __init__(self):
        self.arch = 90

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


_DRIVER = _FakeDriver()


def _worker_init():
    os.environ.pop("TRITON_INTERPRET", None)
    from triton.runtime.driver import driver
    driver.set_active(_DRIVER)
    try:
        from triton import knobs
        knobs.nvidia.dump_ptxas_log = True
    except (ImportError, AttributeError):   # older Triton: ptxas is rerun on the PTX below
        pass


def _ptxas_stats(log: str):
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if regs is None or spills is None:
        return None
    return int(regs.group(1)), int(spills.group(1))


def _rerun_ptxas(ptx: str, arch: int) -> str:
    import tempfile
    from triton.backends.nvidia.compiler import get_ptxas
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", src, "-o",
                              os.path.join(tmp, "k.o")], capture_output=True, text=True)
    return res.stderr


def _stats_cache(name: str) -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "levit_kernels", "static", name + ".json")


def compile_job(job: dict) -> dict:
    """Compile one job for its arch: {regs, spills, smem, tensor_cores} or {error}."""
    import importlib
    _DRIVER.arch = job["arch"]
    kernel = getattr(importlib.import_module(job["kernel"][0]), job["kernel"][1])
    args = [_decode(a) for a in job["args"]]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            compiled = kernel.warmup(*args, grid=(1,), num_warps=job["num_warps"],
                                     num_stages=job["num_stages"], **job["kwargs"])
    except Exception as exc:        # noqa: BLE001  (reported as a failed compile)
        return dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
    cache = _stats_cache(f"{compiled.hash}-{job['arch']}")
    try:
        with open(cache) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    stats = _ptxas_stats(out.getvalue()) or _ptxas_stats(_rerun_ptxas(compiled.asm["ptx"],
                                                                      job["arch"]))
    result = dict(regs=stats[0], spills=stats[1], smem=int(compiled.metadata.shared),
                  tensor_cores=bool(TENSOR_CORES.search(compiled.asm["ptx"])))
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "w") as f:
        json.dump(result, f)
    return result


def run_matrix(jobs: Dict[tuple, dict], workers: int = 2) -> List[dict]:
    """Compile every job (in `workers` processes); the jobs with their results merged in."""
    import multiprocessing
    ordered = list(jobs.values())
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_worker_init) as pool:
        results = []
        for result in pool.map(compile_job, ordered, chunksize=1):
            results.append(result)
            if len(results) % 50 == 0:
                print(f"{len(results)}/{len(ordered)} compiled", file=sys.stderr, flush=True)
    rows = []
    for job, result in zip(ordered, results):
        row = {k: v for k, v in job.items() if k not in ("args", "kwargs")}
        row["where"] = sorted(row["where"])
        row.update(result)
        rows.append(row)
    return rows


# ------------------------------------------------------------------ 3. judging and reporting
def check(rows: List[dict]) -> List[str]:
    problems = []
    for r in rows:
        what = f"{r['tuner']} sm_{r['arch']} {r['dtype']} [{r['shape']}] {r['config']}"
        if "error" in r:
            problems.append(f"{what}: does not compile: {r['error']}")
            continue
        if r["spills"]:
            problems.append(f"{what}: spills {r['spills']} bytes ({r['regs']} registers)")
        if r["smem"] > SMEM_LIMIT[r["arch"]]:
            problems.append(f"{what}: {r['smem']} B shared memory > {SMEM_LIMIT[r['arch']]}")
        if r["precision"] != "ieee" and not r["tensor_cores"]:
            problems.append(f"{what}: no tensor-core instructions (mma/wgmma) in the PTX")
    return problems


def markdown(rows: List[dict]) -> str:
    """Per kernel, arch and dtype: compiles, max registers, max spill bytes, max shared
    memory, tensor cores (all / some / none)."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["tuner"], r["arch"], r["dtype"], r["precision"]), []).append(r)
    lines = ["| kernel | arch | dtype | compiles | max registers | max spill bytes | "
             "max smem (B) / limit | tensor cores |", "|---|---|---|---|---|---|---|---|"]
    for (tuner, arch, dtype, precision), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in r]
        tc = sum(r["tensor_cores"] for r in ok)
        dt = dtype if precision == "native" else f"{dtype} ({precision})"
        lines.append(
            f"| {tuner} | sm_{arch} | {dt} | {len(ok)}/{len(rs)} | "
            f"{max((r['regs'] for r in ok), default='-')} | "
            f"{max((r['spills'] for r in ok), default='-')} | "
            f"{max((r['smem'] for r in ok), default='-')} / {SMEM_LIMIT[arch]} | "
            f"{'all' if tc == len(ok) else 'none' if tc == 0 else f'{tc}/{len(ok)}'} |")
    return "\n".join(lines) + "\n"


def default_table(variants=None, dtypes=("float16", "bfloat16"),
                  tuners=("attention", "conv2d", "mlp")) -> str:
    """ops/gpu/tuned_defaults.py's DEFAULTS for LeViT's shapes: per arch, each launch's first
    candidate (the static pick; gpu_lab.py's tuned configs are the measured replacement)."""
    table: Dict[int, Dict[str, Dict[str, list]]] = {}
    for variant in variants or SUBSETS["full"]["variants"]:
        for dtype_name in dtypes:
            for tuner, shape, _, _ in record_launches(variant, 64, DTYPES[dtype_name]):
                if tuner.name not in tuners:
                    continue
                for arch in ARCHS:
                    pick = tuner.candidates(shape, arch)[0]
                    table.setdefault(arch, {}).setdefault(tuner.name, {})[
                        tuner.shape_key(shape)] = pick.to_json()
    # archs with identical picks share one dict
    shared = {}
    for arch, by_tuner in sorted(table.items()):
        shared.setdefault(repr(sorted(by_tuner.items())), []).append(arch)
    lines = []
    for i, archs in enumerate(shared.values()):
        lines.append(f"_PICKS_{i} = {{")
        for name, entries in sorted(table[archs[0]].items()):
            lines.append(f"    {name!r}: {{")
            for key, value in sorted(entries.items()):
                line = f"        {key!r}: {value!r},"
                lines += [line] if len(line) <= 100 else [f"        {key!r}:",
                                                          f"            {value!r},"]
            lines.append("    },")
        lines.append("}")
    arch_map = ", ".join(f"{a}: _PICKS_{i}" for i, archs in enumerate(shared.values())
                         for a in archs)
    lines.append(f"DEFAULTS = {{{arch_map}}}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m levit_kernels.tools.gpu_static",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=sorted(SUBSETS), default="ci")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--fp32-precision", nargs="+", default=[None],
                        help="float32 dot precisions to compile (default: the launcher's)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--markdown", help="write the summary table here")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("run without TRITON_INTERPRET")
    jobs = {}
    for precision in args.fp32_precision:
        dtypes = args.dtype if precision is None else ["float32"]
        jobs.update(make_jobs(**SUBSETS[args.subset], dtypes=dtypes, archs=args.arch,
                              precision=precision))
    print(f"{len(jobs)} compiles", file=sys.stderr, flush=True)
    rows = run_matrix(jobs, args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    table = markdown(rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    problems = check(rows)
    for p in problems:
        print("FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
