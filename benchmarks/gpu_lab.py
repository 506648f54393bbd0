"""One command for a GPU machine: the CUDA tests, the op race and the model race, with results.

    python benchmarks/gpu_lab.py               on a CUDA machine (within 8 minutes on one H100/H200)
    python benchmarks/gpu_lab.py --dry-run     anywhere: builds every provider and checks the plan
                                               on CPU (Triton interpreter), times nothing

1. tests     pytest on the GPU test files (LEVIT_TRITON_TUNE=off: correctness, not tuning).
2. op race   LeViT-256 at batch 2048, float16, per layer kind: the Triton attention against
             PyTorch SDPA (the bias as attn_mask; Hardswish and the head merge after it) and
             FlexAttention (score_mod adds the bias); the Triton stem conv against cuDNN +
             Hardswish; the Triton linear (+Hardswish) against cuBLAS + Hardswish.
3. model race  LeViT-256 at batch 1, 16 and 2048 under float16 autocast: the plain model
             eager ("reference"), torch.compile(mode="max-autotune") of it, the fused model,
             and the fused model replayed as a CUDA graph. Images/s from the median of timed
             calls (wall clock, synchronised: host overhead counts), and the largest logit
             difference from the reference.

Results go to benchmarks/results/gpu/<device>_<date>.{json,md} with the device, driver, torch /
Triton / CUDA versions and the commit, plus the launch configs the tuner picked (the material
for ops/gpu/tuned_defaults.py). Work that would not finish by the deadline (7.5 minutes by
default, --deadline) is skipped and recorded as skipped, never half-timed. Runs on torch 2.11
/ Triton 3.6 as on the versions it was written with.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from provenance import command_output, git_state

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "LeViT-256"
BATCHES = (1, 16, 2048)
OP_BATCH = 2048
GPU_TESTS = ["tests/test_gpu_kernels.py", "tests/test_gpu_model.py", "tests/test_gpu_graphs.py",
             "tests/test_gpu_device.py", "tests/test_gpu_tuning.py"]


class Lab:
    def __init__(self, deadline_s: float, dry: bool):
        self.start, self.deadline, self.dry = time.perf_counter(), deadline_s, dry
        self.results = {"env": environment(), "dry_run": dry, "tests": {}, "ops": [],
                        "models": [], "skipped": []}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.start)

    def skip(self, what: str, why: str):
        self.results["skipped"].append(f"{what}: {why}")
        print(f"skipped {what}: {why}", flush=True)


def environment() -> dict:
    commit, dirty = git_state()
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda or "-", "commit": commit, "dirty": dirty}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "missing"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"sm_{props.major}{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                   driver=command_output(["nvidia-smi", "--query-gpu=driver_version",
                                          "--format=csv,noheader"]).splitlines()[:1])
    else:
        env["device"] = "cpu (dry run: Triton interpreter)"
    return env


# ---------------------------------------------------------------------------- 1. tests
def run_tests(lab: Lab):
    if lab.dry:
        lab.skip("tests", "dry run (CI runs them under the interpreter)")
        return
    budget = min(180, lab.left() - 300)
    if budget < 60:
        lab.skip("tests", "time budget")
        return
    env = dict(os.environ, LEVIT_TRITON_TUNE="off")
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *GPU_TESTS], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=budget)
        tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
        lab.results["tests"] = {"returncode": res.returncode, "summary": tail[-1] if tail else "",
                                "tail": tail, "seconds": round(time.perf_counter() - t0, 1)}
    except subprocess.TimeoutExpired:
        lab.results["tests"] = {"returncode": None, "summary": f"timed out after {budget:.0f} s"}
    print("tests:", lab.results["tests"].get("summary"), flush=True)


# ---------------------------------------------------------------------------- timing
def median_ms(fn, device, iters: int, warmup: int = 3) -> float:
    """Median wall milliseconds of fn() with the device synchronised after each call."""
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------- 2. op race
def attention_providers(batch, heads, n_q, n_k, d_k, d_v, device, dtype):
    """{name: () -> (B, Nq, H*Dv)} for one LeViT attention (q/k/v strided views of a packed
    projection, Hardswish after), and the inputs' description."""
    import torch.nn.functional as F
    from levit_kernels import gpu
    g = torch.Generator(device="cpu").manual_seed(0)
    kv = torch.randn(batch, n_k, heads, d_k + d_v, generator=g).to(device, dtype)
    q = torch.randn(batch, n_q, heads, d_k, generator=g).to(device, dtype).permute(0, 2, 1, 3)
    k, v = (t.permute(0, 2, 1, 3) for t in kv.split([d_k, d_v], dim=-1))
    bias = torch.randn(heads, n_q, n_k, generator=g).to(device, dtype)
    scale = d_k ** -0.5

    def merge(o):            # (B, H, Nq, Dv) -> hardswish, (B, Nq, H*Dv)
        return F.hardswish(o).transpose(1, 2).reshape(batch, n_q, heads * d_v)

    providers = {"triton": lambda: gpu.attention(q, k, v, bias, scale, True),
                 "sdpa": lambda: merge(F.scaled_dot_product_attention(
                     q, k, v, attn_mask=bias.unsqueeze(0), scale=scale))}
    try:
        from torch.nn.attention.flex_attention import flex_attention

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[h, q_idx, kv_idx]

        flex = flex_attention if device.type != "cuda" else torch.compile(flex_attention)
        providers["flex"] = lambda: merge(flex(q, k, v, score_mod=score_mod, scale=scale))
    except ImportError as exc:
        providers["flex"] = exc
    return providers


def levit_attention_shapes(variant=VARIANT, img_size=224):
    from levit_kernels.model.config import VARIANTS
    cfg = VARIANTS[variant]
    tokens = [r[0] * r[1] for r in cfg.resolutions(img_size)]
    shapes, dk = [], cfg.key_dim
    for i, n in enumerate(tokens):
        if i > 0:
            shapes.append((f"shrink {tokens[i - 1]}->{n}", cfg.down_heads(i), n, tokens[i - 1],
                           dk, int(cfg.down_attn_ratio * dk)))
        shapes.append((f"stage {i + 1} ({n} tokens)", cfg.num_heads[i], n, n, dk,
                       int(cfg.attn_ratio * dk)))
    return shapes


def op_race(lab: Lab, device, dtype):
    import torch.nn.functional as F
    from levit_kernels import gpu
    # the dry run builds the same providers at LeViT-128S sizes (interpreter speed)
    batch, img = (OP_BATCH, 224) if not lab.dry else (2, 32)
    variant = VARIANT if not lab.dry else "LeViT-128S"
    rows = []
    for name, *shape in levit_attention_shapes(variant, 224 if not lab.dry else 64):
        if lab.left() < 200:
            lab.skip(f"op race {name}", "time budget")
            continue
        providers = attention_providers(batch, *shape, device, dtype)
        rows.append(race(lab, f"attention {name}", providers, device))
    # the stem's first conv and a qkv projection: Triton (fused epilogue) vs cuDNN / cuBLAS
    g = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randn(batch, 3, img, img, generator=g).to(device, dtype)
    w = (torch.randn(32, 3, 3, 3, generator=g) / 5).to(device, dtype)
    b = torch.randn(32, generator=g).to(device, dtype)
    wm = gpu.conv_weight_matrix(w)
    out = torch.empty(batch, img // 2, img // 2, 32, device=device, dtype=dtype)
    rows.append(race(lab, "stem conv 3->32 (+Hardswish)", {
        "triton": lambda: gpu.launch_conv2d(images.permute(0, 2, 3, 1), wm, b, (3, 3), 2, 1,
                                            "hardswish", out),
        "cudnn": lambda: F.hardswish(F.conv2d(images, w, b, stride=2, padding=1)).permute(
            0, 2, 3, 1)}, device))
    x = torch.randn(batch * 196, 256, generator=g).to(device, dtype)
    wl = (torch.randn(768, 256, generator=g) / 16).to(device, dtype)
    bl = torch.randn(768, generator=g).to(device, dtype)
    rows.append(race(lab, "linear 256->768 (+Hardswish)", {
        "triton": lambda: gpu.linear(x, wl, bl, None, "hardswish"),
        "cublas": lambda: F.hardswish(F.linear(x, wl, bl))}, device))
    lab.results["ops"] = rows


def race(lab: Lab, what: str, providers: dict, device) -> dict:
    row = {"op": what, "ms": {}, "max_diff_vs_triton": {}, "errors": {}}
    ref = None
    for name, fn in providers.items():
        try:
            if isinstance(fn, Exception):
                raise fn
            out = fn()
            if ref is None:
                ref = out
            row["max_diff_vs_triton"][name] = max_diff(out, ref)
            if not lab.dry:
                row["ms"][name] = round(median_ms(fn, device, iters=20), 4)
        except Exception as exc:   # noqa: BLE001  (a peer that cannot run this shape)
            row["errors"][name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    print(what, row["ms"] or "built", row["errors"] or "", flush=True)
    return row


# ---------------------------------------------------------------------------- 3. model race
def model_race(lab: Lab, device):
    from levit_kernels.tools.bench import make_models, torch_provider
    # the dry run builds the same providers at LeViT-128S / 32 pixels / batch 1 (interpreter)
    variant, img = (VARIANT, 224) if not lab.dry else ("LeViT-128S", 32)
    batches = BATCHES if not lab.dry else (1,)
    for batch in batches:
        reference, fused, images = make_models(variant, str(device), torch.float32, batch,
                                               img_size=img)
        amp = torch.float16 if device.type == "cuda" else None
        if device.type != "cuda":
            fused.use_kernels("gpu").half()       # the CUDA branch, on the interpreter
        graphed = type(fused)(variant, img_size=img)
        graphed.load_state_dict(fused.state_dict())
        graphed.to(device).eval().use_cuda_graphs()
        providers = {
            "reference": torch_provider(reference, device, amp),
            "compile max-autotune": torch_provider(reference, device, amp,
                                                   compile_mode="max-autotune"),
            "fused": torch_provider(fused, device, amp),
            "fused + CUDA graph": torch_provider(graphed, device, amp),
        }
        row = {"variant": variant, "batch": batch, "images_per_s": {}, "ms": {},
               "max_diff_vs_reference": {}, "errors": {}}
        expected = None
        for name, call in providers.items():
            needs_cuda = name in ("compile max-autotune", "fused + CUDA graph")
            if lab.dry and needs_cuda:
                row["errors"][name] = "built, not run (needs CUDA)"
                continue
            if name == "compile max-autotune" and lab.left() < (300 if batch > 16 else 150):
                lab.skip(f"{name} b{batch}", "time budget")
                continue
            if lab.left() < 30:
                lab.skip(f"{name} b{batch}", "time budget")
                continue
            try:
                out = call(images)
                expected = out if expected is None else expected
                row["max_diff_vs_reference"][name] = max_diff(out, expected)
                if not lab.dry:
                    iters = 10 if batch >= 1024 else 50
                    ms = median_ms(lambda: call(images), device, iters)
                    row["ms"][name] = round(ms, 3)
                    row["images_per_s"][name] = round(batch * 1e3 / ms, 1)
            except Exception as exc:   # noqa: BLE001
                row["errors"][name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"{variant} b{batch}", row["images_per_s"] or row["max_diff_vs_reference"],
              row["errors"] or "", flush=True)
        lab.results["models"].append(row)
        del reference, fused, graphed, providers
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_plan(lab: Lab):
    """LeViT-256 at batch 2048 as the fused GPU forward launches it (meta tensors), and the
    launch configs each launch may take on sm_80 / sm_90."""
    from levit_kernels.tools import gpu_static
    launches = gpu_static.record_launches(VARIANT, OP_BATCH)
    counts = {}
    for tuner, shape, args, consts in launches:
        counts[tuner.name] = counts.get(tuner.name, 0) + 1
        for arch in gpu_static.ARCHS:
            assert tuner.candidates(shape, arch), (tuner.name, shape, arch)
    lab.results["plan"] = {"launches": counts, "total": len(launches)}
    print("plan:", counts, flush=True)


def tuned_configs() -> dict:
    import importlib
    attention, conv, linear = (importlib.import_module(f"levit_kernels.ops.gpu.{m}")
                               for m in ("attention", "conv", "linear"))
    tuners = [attention._ATTENTION, attention._PROBS, linear._LINEAR, linear._MLP, conv._CONV]
    return {t.name: {f"{k[1]} | {k[2]}": str(c) for k, c in t._picked.items()} for t in tuners}


# ---------------------------------------------------------------------------- report
def _table(title, label_keys, rows, names_key, values_key):
    """A markdown table: one row per result, one column per provider (its value or error)."""
    names = list(dict.fromkeys(n for r in rows for n in list(r[names_key]) + list(r["errors"])))
    lines = [f"## {title}", "", "| " + " | ".join(label_keys + names) + " |",
             "|---" * (len(label_keys) + len(names)) + "|"]
    for r in rows:
        cells = [f"{r[values_key][n]:.3g}" if n in r[values_key] else r["errors"].get(n, "-")[:40]
                 for n in names]
        lines.append("| " + " | ".join([str(r[k]) for k in label_keys] + cells) + " |")
    return lines + [""]


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [f"# GPU lab: {env.get('device')} ({env.get('capability', '-')})", "",
             " | ".join(f"{k} {env[k]}" for k in ("date", "torch", "triton", "cuda", "driver",
                                                   "commit") if k in env), ""]
    if results["tests"]:
        lines += [f"**Tests**: {results['tests'].get('summary')}", ""]
    dry = results["dry_run"]
    if results["ops"]:
        what = ("dry run: max |difference| from Triton" if dry
                else f"batch {OP_BATCH}, float16, median ms")
        lines += _table(f"Op race ({what})", ["op"], results["ops"], "max_diff_vs_triton",
                        "max_diff_vs_triton" if dry else "ms")
    if results["models"]:
        what = ("dry run: max |logit difference| from the reference" if dry
                else "float16 autocast, images/s")
        lines += _table(f"Model race ({what})", ["variant", "batch"], results["models"],
                        "max_diff_vs_reference", "max_diff_vs_reference" if dry else "images_per_s")
    if results["skipped"]:
        lines += ["Skipped: " + "; ".join(results["skipped"]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="build every provider and check the plan on CPU; time nothing")
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="seconds after which no new work starts (default 450)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"),
                        help="directory for the JSON and markdown results")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: use --dry-run")
    if args.dry_run and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")     # before triton is first imported
    sys.path.insert(0, str(ROOT))
    lab = Lab(args.deadline, args.dry_run)
    device = torch.device("cuda" if not args.dry_run else "cpu")
    dtype = torch.float16
    sections = {}
    for name, step in (("tests", lambda: run_tests(lab)), ("plan", lambda: check_plan(lab)),
                       ("ops", lambda: op_race(lab, device, dtype)),
                       ("models", lambda: model_race(lab, device))):
        t0 = time.perf_counter()
        with torch.no_grad():
            step()
        sections[name] = round(time.perf_counter() - t0, 1)
    lab.results["section_seconds"] = sections
    lab.results["tuned"] = tuned_configs()
    lab.results["seconds"] = round(time.perf_counter() - lab.start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "dry_run" if args.dry_run else "".join(
        c if c.isalnum() else "_" for c in lab.results["env"]["device"])
    stem = out / f"{slug}_{datetime.date.today().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps(lab.results, indent=1, default=str))
    stem.with_suffix(".md").write_text(markdown(lab.results))
    print(f"wrote {stem}.json / .md in {lab.results['seconds']} s")
    failed = lab.results["tests"].get("returncode") not in (None, 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
