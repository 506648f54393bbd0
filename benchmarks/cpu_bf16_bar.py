"""Issue 12's bar in one command: fused bf16 LeViT against OpenVINO, timm+autocast and our float32.

    python benchmarks/cpu_bf16_bar.py           on a CPU with AVX512_BF16 (Zen 4, Cooper Lake;
                                                with AMX: Sapphire Rapids on): ~10 minutes,
                                                judges the bar
    python benchmarks/cpu_bf16_bar.py --quick   anywhere: small images, short timing; checks
                                                the script end to end, judges nothing

Runs `levit-kernels bench --dtype bfloat16 --compare` (levit_kernels/tools/bench.py) for
LeViT-128S and LeViT-256, at 1 thread batch 16 and at 2 threads batch 1. Each run times, in
interleaved rounds: the plain model in bf16, our fused model in bf16 and in float32, OpenVINO
at its default precision and pinned to bf16, and timm's LeViT under
torch.autocast("cpu", torch.bfloat16), all on the same weights and images. Then it checks the
bar, each ratio from one run:

  speed     fused bf16 >= 1.05x the faster of OpenVINO (default precision) and timm+autocast
  vs f32    fused bf16 >= 1.6x our fused float32                          (batch 16 only)
  accuracy  fused bf16's relative L2 logit error against float64 <= 1.5x OpenVINO-bf16's

Beside each verdict, not judged: levit_kernels.freeze(fused) against the same peers. After
the runs, not judged either: `levit-kernels breakdown --dtype bfloat16 --versus float32` of
each variant at 1 thread batch 16 (each step of the fused forward timed, the two dtypes
interleaved), so a bar not met already says which kinds of step (stem, GEMMs, attention,
MLPs) fell short of the float32 ratio.

The bar is judged only where the fused model ran bf16 instructions (the avx512_bf16 path's
vdpbf16ps or the amx_bf16 path's AMX tiles) in a real (not emulated) build and OpenVINO really ran bf16; anywhere else every criterion is reported as
"not judged", with why, and the numbers are still written. Results: one bench JSON per run and
verdict.md, with the CPU (model, family, flags), versions and commit, under
benchmarks/results/cpu_bf16/<cpu>_<date>/. Exit status: 0 bar met, 1 not met, 2 not judged.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from provenance import git_state

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("LeViT-128S", 1, 16), ("LeViT-128S", 2, 1), ("LeViT-256", 1, 16), ("LeViT-256", 2, 1)]
PEERS = ("openvino (default precision)", "timm+autocast")
SPEED_BAR, FLOAT32_BAR, ACCURACY_BAR = 1.05, 1.6, 1.5
# The bf16 paths that multiply bf16 in hardware (levit_kernels.info()'s "cpu bfloat16 path").
NATIVE_PATHS = ("avx512_bf16:", "amx_bf16:")


def cpu_facts() -> Dict[str, str]:
    """The first processor's lines of /proc/cpuinfo that identify it, and its bf16 flags."""
    facts: Dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model name": "unknown (no /proc/cpuinfo)"}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "cpu family", "model", "stepping"):
            facts[key] = value
        elif key == "flags":
            flags = value.split()
            facts["avx512 / bf16 flags"] = " ".join(
                f for f in flags if f.startswith("avx512") or f.startswith("amx")) or "none"
    return facts


def peer_versions() -> Dict[str, str]:
    from importlib import metadata
    versions = {}
    for name in ("openvino", "timm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def timed(report: Dict) -> Dict[str, float]:
    """{provider: images/s} of the providers a report timed (no error, a positive rate)."""
    return {r["provider"]: r["images_per_s"] for r in report["results"]
            if not r.get("error") and r["images_per_s"] > 0}


def best_peer(rates: Dict[str, float]) -> Optional[float]:
    return max((rates[p] for p in PEERS if p in rates), default=None)


def judge(report: Dict) -> List[Dict]:
    """Issue 12's criteria on one `run_benchmark` report: [{criterion, value, bound, at_most,
    met, why}]: met is value >= bound (value <= bound where at_most), None where the report
    cannot decide it (why says what is missing)."""
    cfg = report["config"]
    results = {r["provider"]: r for r in report["results"]}
    fused = results.get("fused", {})
    path, extension = cfg.get("cpu bfloat16 path", "-"), cfg.get("cpu extension", "-")
    native = path.startswith(NATIVE_PATHS) and "TEST BUILD" not in extension
    not_native = None if native else (
        f"the fused model ran the '{path}' path ({extension}), not bf16 instructions "
        "(vdpbf16ps or AMX tiles) on a real build")

    rates = timed(report)
    rate = rates.get

    def verdict(criterion, value, bound, why, at_most=False):
        met = None if why or value is None else value <= bound if at_most else value >= bound
        return dict(criterion=criterion, value=value, bound=bound, at_most=at_most, met=met,
                    why=why or "")

    rows = []
    ours = rate("fused")
    peers = {name: rate(name) for name in PEERS}
    best = best_peer(rates)
    missing = ", ".join(f"{n} ({results.get(n, {}).get('error') or 'absent'})"
                        for n, v in peers.items() if not v)
    rows.append(verdict(f"speed: fused / max({', '.join(PEERS)})",
                        ours / best if ours and best else None, SPEED_BAR,
                        not_native or (f"peer not timed: {missing}" if missing else "")))
    if cfg["batch"] == 16:
        f32 = rate("fused float32")
        rows.append(verdict("vs f32: fused bf16 / fused float32",
                            ours / f32 if ours and f32 else None, FLOAT32_BAR,
                            not_native or ("" if f32 else "fused float32 not timed")))
    ov_bf16 = results.get("openvino bf16", {})
    ours_err, ov_err = fused.get("rel_l2_vs_float64"), ov_bf16.get("rel_l2_vs_float64")
    ov_ran_bf16 = ov_bf16.get("note") == "runs bf16"
    ov_state = ov_bf16.get("note") or ov_bf16.get("error") or "absent"
    rows.append(verdict("accuracy: fused rel L2 error vs float64 / OpenVINO-bf16's",
                        ours_err / ov_err if ours_err and ov_err else None, ACCURACY_BAR,
                        not_native or ("" if ov_ran_bf16 else
                                       f"OpenVINO pinned to bf16 did not run bf16 ({ov_state})"),
                        at_most=True))
    return rows


def overall(verdicts: List[List[Dict]]) -> Optional[bool]:
    """True: every criterion of every run met; False: one judged and missed; None: otherwise."""
    flat = [v["met"] for rows in verdicts for v in rows]
    if False in flat:
        return False
    return True if flat and all(flat) else None


def markdown(env: Dict, reports: List[Dict], verdicts: List[List[Dict]]) -> str:
    from levit_kernels.tools.bench import format_table
    result = overall(verdicts)
    title = {True: "MET", False: "NOT MET", None: "NOT JUDGED"}[result]
    lines = [f"# Issue 12's bar: {title}",
             "", *(f"- {k}: {v}" for k, v in env.items()), ""]
    for report, rows in zip(reports, verdicts):
        cfg = report["config"]
        lines += [f"## {cfg['variant']}, {cfg['threads']} thread(s), batch {cfg['batch']}", "",
                  "```", format_table(report), "```", "",
                  "| criterion | value | bar | verdict |", "|---|---:|---:|---|"]
        for v in rows:
            value = "-" if v["value"] is None else f"{v['value']:.3f}"
            mark = {True: "met", False: "**not met**", None: f"not judged: {v['why']}"}[v["met"]]
            lines.append(f"| {v['criterion']} | {value} | {'≤' if v['at_most'] else '≥'} "
                         f"{v['bound']:.2f} | {mark} |")
        lines += ["", frozen_line(report), ""]
    return "\n".join(lines)


def frozen_line(report: Dict) -> str:
    """Reported beside the verdict, not judged: the bar is the drop-in LeViT(fused=True);
    levit_kernels.freeze() is the snapshot without its per-call key check, as the peers'
    models are snapshots."""
    rates = timed(report)
    best = best_peer(rates)
    if "fused frozen" not in rates or best is None:
        return "Not judged: fused frozen / best peer: -"
    return (f"Not judged: fused frozen (levit_kernels.freeze) / best peer: "
            f"{rates['fused frozen'] / best:.3f}")


def breakdown_table(bf16: Dict, float32: Dict) -> str:
    """Markdown: each kind of step's time in float32 and in bf16 (one variant, medians of
    `levit-kernels breakdown --dtype bfloat16 --versus float32`), and how much faster bf16
    runs it."""
    from levit_kernels.tools.breakdown import KINDS, ms_by_kind
    b, f = ms_by_kind(bf16), ms_by_kind(float32)
    cfg = bf16["config"]
    lines = [f"### Where the time goes: {cfg['variant']}, {cfg['threads']} thread(s), batch "
             f"{cfg['batch']} (not judged)", "",
             "| kind of step | float32 ms | bf16 ms | float32 / bf16 |", "|---|---:|---:|---:|"]
    for kind, label in KINDS.items():
        if f[kind] or b[kind]:
            ratio = f"{f[kind] / b[kind]:.2f}x" if b[kind] else "-"
            lines.append(f"| {label} | {f[kind]:.2f} | {b[kind]:.2f} | {ratio} |")
    total_f, total_b = float32["steps_ms"], bf16["steps_ms"]
    lines.append(f"| all steps | {total_f:.2f} | {total_b:.2f} | {total_f / total_b:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="LeViT-128S only, 128-pixel images, 0.5 s of timing per run: "
                             "checks the script, judges nothing")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="timing budget per provider and run, split over 5 interleaved "
                             "rounds (default 15)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_bf16"),
                        help="parent directory of this run's results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from levit_kernels.tools.bench import run_benchmark
    from levit_kernels.tools.breakdown import format_breakdown, run_breakdowns

    runs = [r for r in RUNS if r[0] == "LeViT-128S"] if args.quick else RUNS
    seconds, img_size = (0.5, 128) if args.quick else (args.seconds, 224)
    reports, verdicts = [], []
    for i, (variant, threads, batch) in enumerate(runs, 1):
        print(f"== run {i}/{len(runs)}: {variant}, {threads} thread(s), batch {batch}",
              flush=True)
        report = run_benchmark(variant=variant, batch=batch, threads=threads,
                               dtype="bfloat16", compare=True, seconds=seconds,
                               img_size=img_size)
        rows = judge(report)
        if args.quick:
            for v in rows:
                v["met"], v["why"] = None, "--quick (small images, short timing)"
        reports.append(report)
        verdicts.append(rows)
    breakdowns = []   # (variant, {dtype: report}) at 1 thread, batch 16
    for variant in dict.fromkeys(r[0] for r in runs):
        print(f"== breakdown: {variant}, 1 thread, batch 16, bfloat16 and float32 interleaved",
              flush=True)
        breakdowns.append((variant, run_breakdowns(
            variant=variant, batch=16, threads=1, dtypes=("bfloat16", "float32"),
            img_size=img_size, rounds=2 if args.quick else 10)))

    commit, dirty = git_state()
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "commit": commit, "uncommitted changes": dirty,
           **cpu_facts(), **peer_versions(),
           **{k: v for k, v in reports[0]["config"].items()     # the threads are per run
              if k not in ("variant", "batch", "threads", "torch threads", "seconds")}}
    slug = "quick" if args.quick else "".join(
        c if c.isalnum() else "_" for c in env.get("model name", "cpu")).strip("_")
    out = Path(args.out) / f"{slug}_{datetime.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    for report in reports:
        cfg = report["config"]
        name = f"{cfg['variant']}_t{cfg['threads']}_b{cfg['batch']}.json"
        (out / name).write_text(json.dumps(report, indent=1))
    for variant, by_dtype in breakdowns:
        (out / f"breakdown_{variant}.json").write_text(json.dumps(by_dtype, indent=1))
        (out / f"breakdown_{variant}.txt").write_text(
            format_breakdown(by_dtype["bfloat16"], by_dtype["float32"]) + "\n")
    text = "\n\n".join([markdown(env, reports, verdicts)] +
                        [breakdown_table(d["bfloat16"], d["float32"]) for _, d in breakdowns])
    (out / "verdict.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out}/")
    result = overall(verdicts)
    return 0 if result else 1 if result is False else 2


if __name__ == "__main__":
    sys.exit(main())
