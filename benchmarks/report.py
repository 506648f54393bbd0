"""Turn a pytest-benchmark JSON into a Markdown table and a PNG bar chart of speed-ups, or
`levit-kernels bench --json` files into one table of images/s against the reference and peers.

    python benchmarks/report.py RESULTS.json [--png speedups.png]
    python benchmarks/report.py --bench results/interleaved/*.json

Within each benchmark group the provider named "reference" is the baseline: every row gives
the median time, throughput (when the benchmark recorded `images` in extra_info) and the
speed-up over that baseline, all from the one run the JSON holds.
"""
import argparse
import json
import re
from collections import OrderedDict


def provider_of(bench):
    params = bench.get("params") or {}
    if "provider" in params:
        return params["provider"]
    match = re.search(r"\[(.*)\]", bench["name"])
    return match.group(1).split("-")[-1] if match else bench["name"]


def load_groups(path):
    """{group: [one entry per provider]}. A provider timed in several interleaved rounds
    (extra_info "round") becomes one entry whose median is the median of its rounds' medians
    and whose "rounds" lists them."""
    with open(path) as f:
        data = json.load(f)
    groups = OrderedDict()
    for bench in data["benchmarks"]:
        entries = groups.setdefault(bench["group"] or bench["name"], OrderedDict())
        entries.setdefault(provider_of(bench), []).append(bench)
    merged = OrderedDict()
    for group, providers in groups.items():
        merged[group] = []
        for benches in providers.values():
            medians = sorted(b["stats"]["median"] for b in benches)
            entry = dict(benches[0], rounds=medians)
            entry["stats"] = dict(benches[0]["stats"], median=medians[len(medians) // 2])
            merged[group].append(entry)
    return data, merged


def markdown(data, groups):
    info = data.get("machine_info", {})
    facts = info.get("levit_kernels", {})
    lines = [f"Measured {data.get('datetime', '?')[:19]} on {facts.get('machine', info.get('cpu', {}).get('brand_raw', '?'))}, "
             f"torch {facts.get('torch', '?')}, CPU ISA {facts.get('cpu isa', '?')}.", "",
             "| group | provider | median ms | images/s | speed-up vs reference | rounds |",
             "|---|---|---:|---:|---:|---:|"]
    for group, benches in groups.items():
        base = next((b for b in benches if provider_of(b) == "reference"), None)
        for b in benches:
            median = b["stats"]["median"]
            images = b.get("extra_info", {}).get("images")
            rate = f"{images / median:.1f}" if images else "-"
            speedup = f"{base['stats']['median'] / median:.2f}x" if base else "-"
            lines.append(f"| {group} | {provider_of(b)} | {median * 1e3:.3f} | {rate} | {speedup} "
                         f"| {len(b['rounds'])} |")
    return "\n".join(lines)


def plot(groups, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    providers = sorted({provider_of(b) for bs in groups.values() for b in bs} - {"reference"})
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
    width = 0.8 / max(1, len(providers))
    for i, prov in enumerate(providers):
        values = []
        for g in names:
            base = next((b for b in groups[g] if provider_of(b) == "reference"), None)
            this = next((b for b in groups[g] if provider_of(b) == prov), None)
            values.append(base["stats"]["median"] / this["stats"]["median"] if base and this else 0)
        ax.bar([x + i * width for x in range(len(names))], values, width, label=prov)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speed-up over reference")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


PEERS = ("onnxruntime", "openvino")


def bench_markdown(paths):
    """One row per `levit-kernels bench --json` file: images/s of every provider (timed in
    interleaved rounds in that run), fused over the reference and over the faster peer."""
    lines = ["| variant | setting | reference | fused | ONNX Runtime | OpenVINO | fused / reference "
             "| fused / best peer |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        cfg = report["config"]
        rate = {r["provider"]: r["images_per_s"] for r in report["results"] if not r["error"]}
        peers = [rate[p] for p in PEERS if p in rate]
        cells = [f"{rate[p]:.1f}" if p in rate else "-" for p in ("reference", "fused") + PEERS]
        cells[1] = f"**{cells[1]}**"
        ratio = f"{rate['fused'] / rate['reference']:.2f}×"
        best = f"{rate['fused'] / max(peers):.2f}×" if peers else "-"
        lines.append(f"| {cfg['variant']} | batch {cfg['batch']}, threads {cfg['threads']} | "
                     f"{' | '.join(cells)} | {ratio} | {best} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--png")
    parser.add_argument("--bench", action="store_true",
                        help="the files are `levit-kernels bench --json` outputs")
    args = parser.parse_args()
    if args.bench:
        print(bench_markdown(args.json))
        return
    if len(args.json) != 1:
        parser.error("one pytest-benchmark JSON at a time")
    data, groups = load_groups(args.json[0])
    print(markdown(data, groups))
    if args.png:
        plot(groups, args.png)
        print(f"\nsaved {args.png}")


if __name__ == "__main__":
    main()
