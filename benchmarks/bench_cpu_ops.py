"""CPU op benchmarks at LeViT-256 shapes: `reference` (plain PyTorch, reference.py) vs `fused`
(the C++ kernels in levit_kernels.cpu; linear/mlp with pre-packed weights, as the fused model
uses them; `fused_unpacked` packs the weight on every call).

pytest-benchmark (one group per op and shape):
    taskset -c 1 python -m pytest benchmarks/bench_cpu_ops.py --benchmark-only -q
Markdown table for benchmarks/README.md (ratios, GFLOP/s, torch.mm 2048³ in the same run):
    taskset -c 1 python benchmarks/bench_cpu_ops.py [--batch 16 1] [--threads 1]
Both run with torch.set_num_threads(1) unless told otherwise. `--dtype bfloat16` (and the
pytest-benchmark groups marked bfloat16) time the bf16 kernels against PyTorch in bf16.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time

import pytest
import torch

from levit_kernels import cpu, reference as ref

# LeViT-256: C = (256, 384, 512), heads (4, 6, 8), Dk 32, Dv = 2·Dk (4·Dk when shrinking).
# (name, tokens per image, K, N)
LINEAR_SHAPES = [
    ("qkv s1", 196, 256, 512), ("qkv s2", 49, 384, 768), ("qkv s3", 16, 512, 1024),
    ("proj s1", 196, 256, 256), ("proj s2", 49, 384, 384), ("proj s3", 16, 512, 512),
    ("kv shrink1", 196, 256, 1280), ("q shrink1", 49, 256, 256),
    ("kv shrink2", 49, 384, 1920), ("q shrink2", 16, 384, 384),
    ("proj shrink1", 49, 1024, 384), ("proj shrink2", 16, 1536, 512),
]
EPILOGUES = ["none", "bias", "bias+hardswish", "bias+residual"]
MLP_SHAPES = [("mlp s1", 196, 256), ("mlp s2", 49, 384), ("mlp s3", 16, 512)]  # C -> 2C -> C
# (name, H, Nq, Nk, Dk, Dv)
ATTN_SHAPES = [("attn s1", 4, 196, 196, 32, 64), ("attn s2", 6, 49, 49, 32, 64),
               ("attn s3", 8, 16, 16, 32, 64), ("attn shrink1", 8, 49, 196, 32, 128),
               ("attn shrink2", 12, 16, 49, 32, 128)]


def linear_case(batch, tokens, k, n, epilogue, dtype=torch.float32):
    x = torch.randn(batch * tokens, k).to(dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = torch.randn(n).to(dtype) if epilogue != "none" else None
    r = torch.randn(batch * tokens, n).to(dtype) if epilogue == "bias+residual" else None
    act = "hardswish" if epilogue == "bias+hardswish" else "none"
    packed = cpu.pack_weight(w)
    flops = 2 * batch * tokens * k * n
    return flops, {
        "reference": lambda: ref.linear(x, w, b, r, act),
        "fused": lambda: cpu.linear_packed(x, packed, n, b, r, act),
        "fused_unpacked": lambda: cpu.linear(x, w, b, r, act),
    }


def mlp_case(batch, tokens, c, dtype=torch.float32):
    x = torch.randn(batch * tokens, c).to(dtype)
    w1, b1 = (torch.randn(2 * c, c) / c ** 0.5).to(dtype), torch.randn(2 * c).to(dtype)
    w2, b2 = (torch.randn(c, 2 * c) / (2 * c) ** 0.5).to(dtype), torch.randn(c).to(dtype)
    p1, p2 = cpu.pack_weight(w1), cpu.pack_weight(w2)
    flops = 2 * 2 * batch * tokens * c * 2 * c
    return flops, {
        "reference": lambda: ref.mlp(x, w1, b1, w2, b2),
        "fused": lambda: cpu.mlp_packed(x, p1, b1, p2, b2),
        "fused_unpacked": lambda: cpu.mlp(x, w1, b1, w2, b2),
    }


def attn_case(batch, h, n_q, n_k, dk, dv, dtype=torch.float32):
    # q/k/v as views of a packed projection, exactly as LeViT produces them.
    kv = torch.randn(batch, n_k, h, dk + dv).to(dtype).permute(0, 2, 1, 3)
    q = torch.randn(batch, n_q, h, dk).to(dtype).permute(0, 2, 1, 3)
    k, v = kv[..., :dk], kv[..., dk:]
    bias = torch.randn(h, n_q, n_k).to(dtype)
    scale = dk ** -0.5
    flops = 2 * batch * h * n_q * n_k * (dk + dv)
    return flops, {
        "reference": lambda: ref.attention(q, k, v, bias, scale, True),
        "fused": lambda: cpu.attention(q, k, v, bias, scale, True),
    }


def all_cases(batch, dtype=torch.float32):
    for name, tokens, k, n in LINEAR_SHAPES:
        for epi in EPILOGUES:
            yield (f"linear {name} M={batch * tokens} {k}->{n} [{epi}]",
                   linear_case(batch, tokens, k, n, epi, dtype))
    for name, tokens, c in MLP_SHAPES:
        yield f"mlp {name} M={batch * tokens} {c}->{2 * c}->{c}", mlp_case(batch, tokens, c, dtype)
    for name, h, n_q, n_k, dk, dv in ATTN_SHAPES:
        yield (f"attention {name} B={batch} H={h} Nq={n_q} Nk={n_k} Dk={dk} Dv={dv} +hswish",
               attn_case(batch, h, n_q, n_k, dk, dv, dtype))


# ---------------------------------------------------------------- pytest-benchmark
def _params():
    for batch in (16, 1):
        for name, shape in [(f"{n} M={batch * t} {k}->{nn} [{e}]", ("linear", batch, t, k, nn, e))
                            for n, t, k, nn in LINEAR_SHAPES for e in EPILOGUES] + \
                           [(f"{n} M={batch * t}", ("mlp", batch, t, c)) for n, t, c in MLP_SHAPES] + \
                           [(f"{n} B={batch}", ("attn", batch, *s)) for n, *s in ATTN_SHAPES]:
            for dtype in ("float32", "bfloat16"):
                for provider in ("reference", "fused"):
                    yield pytest.param(shape, dtype, provider, id=f"{name}-{dtype}-{provider}")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("shape,dtype,provider", list(_params()))
def test_cpu_op(benchmark, shape, dtype, provider):
    kind, *args = shape
    case = {"linear": linear_case, "mlp": mlp_case, "attn": attn_case}[kind]
    flops, fns = case(*args, dtype=getattr(torch, dtype))
    benchmark.group = f"{kind} {args} {dtype}"
    benchmark.extra_info["gflop"] = flops / 1e9
    benchmark(fns[provider])


# ---------------------------------------------------------------- table for the README
def _calls_for(fn, min_time):
    """How many calls of fn take at least min_time seconds."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 >= min_time:
            return n
        n *= 2


def best_times(fns, repeats=7, min_time=0.1):
    """Seconds per call of each fn: the best of `repeats` rounds, the fns interleaved in each
    round, so a slow spell of a shared machine hits all of them alike instead of one."""
    counts = [_calls_for(fn, min_time) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, (fn, n) in enumerate(zip(fns, counts)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the kernels' dtype (bfloat16: against PyTorch in bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = 2 * 2048 ** 3 / best_times([lambda: torch.mm(a, b)], repeats=5, min_time=0.5)[0] / 1e9
    gcc = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"machine: {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"torch {torch.__version__}, {gcc}, ISA path {cpu.isa()}, {args.dtype} "
          f"({cpu.bf16_path() if args.dtype == 'bfloat16' else cpu.float32_path()}), "
          f"{datetime.date.today()}")
    print(f"torch.mm 2048³: {mm:.1f} GFLOP/s\n")
    print("| case | reference ms | fused ms | fused/ref speed-up | fused GFLOP/s | % of mm | unpacked speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        for name, (flops, fns) in all_cases(batch, getattr(torch, args.dtype)):
            if args.filter not in name:
                continue
            names = [n for n in ("reference", "fused", "fused_unpacked") if n in fns]
            times = dict(zip(names, best_times([fns[n] for n in names])))
            t_ref, t_fused = times["reference"], times["fused"]
            unpacked = f"{t_ref / times['fused_unpacked']:.2f}×" if "fused_unpacked" in times else "—"
            gf = flops / t_fused / 1e9
            print(f"| {name} | {t_ref * 1e3:.3f} | {t_fused * 1e3:.3f} | {t_ref / t_fused:.2f}× | "
                  f"{gf:.1f} | {100 * gf / mm:.0f}% | {unpacked} |", flush=True)


if __name__ == "__main__":
    main()
