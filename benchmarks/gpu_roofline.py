"""The GPU roofline on paper: what each kernel of a LeViT forward must cost, fused and unfused.

    python benchmarks/gpu_roofline.py [--variant LeViT-256] [--batch 2048]

For every layer of the forward (grouped by kind and stage, with how many there are) it counts
FLOPs (2 per multiply-add; attention: q.k^T and p.v) and the HBM bytes a kernel must move in
float16 if every tensor crosses HBM exactly once per kernel that reads or writes it:

  fused     what levit_kernels launches: each linear reads x and W and writes its output once
            (bias, Hardswish, residual in the epilogue); the attention reads q, k, v and the
            bias once and writes (B, N, H*Dv) once; the stem conv reads its input once and
            writes NHWC once (Hardswish fused, no transpose); the two-GEMM MLP writes and
            reads its hidden activation once.
  unfused   the plain model in PyTorch eager: Linear then BatchNorm, Hardswish and the residual
            add as separate passes; attention as q@k^T, *scale, +bias, softmax, @v, transpose,
            Hardswish, each a pass over its tensor; conv, BatchNorm, Hardswish, and the
            tokens' transpose copy.

Time bounds: max(FLOPs / peak, bytes / bandwidth) with H100 SXM's 989 TFLOP/s (dense fp16
tensor cores) and 3.35 TB/s, and the H200's 4.8 TB/s (same compute). A measured kernel time
(benchmarks/gpu_lab.py) can be read against these: the ratio to the bound is the efficiency.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from levit_kernels.model.config import get_config  # noqa: E402

PEAK_FLOPS = 989e12
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
E = 2       # bytes per float16 element


def linear(m, k, n, act=False, res=False):
    """(flops, fused bytes, unfused bytes) of act(BN(x W^T)) (+ residual)."""
    flops = 2 * m * k * n
    fused = E * (m * k + n * k + n + m * n + (m * n if res else 0))
    unfused = E * (m * k + n * k + m * n       # Linear
                   + 2 * m * n + 2 * n         # BatchNorm: read, write (+ stats)
                   + (2 * m * n if act else 0)
                   + (3 * m * n if res else 0))
    return flops, fused, unfused


def attention(b, h, nq, nk, dk, dv):
    flops = 2 * b * h * nq * nk * (dk + dv)
    qkv = b * h * (nq * dk + nk * dk + nk * dv)
    out = b * nq * h * dv
    fused = E * (qkv + h * nq * nk + out)
    scores = b * h * nq * nk
    unfused = E * (qkv                          # q @ k^T reads q, k ...
                   + scores                     # ... writes the scores
                   + 2 * scores                 # * scale
                   + 2 * scores + h * nq * nk   # + bias (broadcast read)
                   + 2 * scores                 # softmax
                   + scores + b * h * nk * dv + out   # p @ v
                   + 2 * out                    # transpose to (B, N, H*Dv) (reshape copies)
                   + 2 * out)                   # Hardswish
    return flops, fused, unfused


def conv(b, cin, cout, h_out, w_out, act=True):
    flops = 2 * b * h_out * w_out * cout * cin * 9
    x_in, out = b * cin * (2 * h_out) * (2 * w_out), b * cout * h_out * w_out
    fused = E * (x_in + cout * cin * 9 + out)
    unfused = E * (x_in + cout * cin * 9 + out + 2 * out + (2 * out if act else 0))
    return flops, fused, unfused


def layers(variant: str, batch: int):
    """[(name, count, (flops, fused bytes, unfused bytes))] of one forward."""
    cfg = get_config(variant)
    tokens = [r[0] * r[1] for r in cfg.resolutions(224)]
    rows = []
    chans = [3] + [cfg.embed_dim[0] // d for d in (8, 4, 2, 1)]
    side = 224
    for i in range(4):
        side = (side + 1) // 2
        rows.append((f"stem conv{i + 1} {chans[i]}->{chans[i + 1]} @{side}x{side}", 1,
                     conv(batch, chans[i], chans[i + 1], side, side, act=i < 3)))
    rows.append(("tokens transpose (unfused only)", 1,
                 (0, 0, 2 * E * batch * tokens[0] * cfg.embed_dim[0])))
    dk = cfg.key_dim
    for s, (c, h, depth) in enumerate(zip(cfg.embed_dim, cfg.num_heads, cfg.depth)):
        n, m = tokens[s], batch * tokens[s]
        if s > 0:
            c_in, nk, hd = cfg.embed_dim[s - 1], tokens[s - 1], cfg.down_heads(s)
            dvd = int(cfg.down_attn_ratio * dk)
            rows += [
                (f"s{s + 1} shrink kv {c_in}->{hd * (dk + dvd)}", 1,
                 linear(batch * nk, c_in, hd * (dk + dvd))),
                (f"s{s + 1} shrink q {c_in}->{hd * dk} (subsampled)", 1,
                 _plus(linear(m, c_in, hd * dk), (0, 0, 2 * E * m * c_in))),   # copy
                (f"s{s + 1} shrink attention {nk}->{n} H{hd} Dv{dvd}", 1,
                 attention(batch, hd, n, nk, dk, dvd)),
                (f"s{s + 1} shrink proj {hd * dvd}->{c}", 1, linear(m, hd * dvd, c)),
                (f"s{s + 1} shrink MLP fc1 {c}->{2 * c} +hswish", 1,
                 linear(m, c, 2 * c, act=True)),
                (f"s{s + 1} shrink MLP fc2 {2 * c}->{c} +res", 1, linear(m, 2 * c, c, res=True)),
            ]
        dv = int(cfg.attn_ratio * dk)
        hidden = int(cfg.mlp_ratio * c)
        rows += [
            (f"s{s + 1} qkv {c}->{h * (2 * dk + dv)}", depth, linear(m, c, h * (2 * dk + dv))),
            (f"s{s + 1} attention {n}x{n} H{h} Dv{dv}", depth, attention(batch, h, n, n, dk, dv)),
            (f"s{s + 1} proj {h * dv}->{c} +res", depth, linear(m, h * dv, c, res=True)),
            (f"s{s + 1} MLP fc1 {c}->{hidden} +hswish", depth, linear(m, c, hidden, act=True)),
            (f"s{s + 1} MLP fc2 {hidden}->{c} +res", depth, linear(m, hidden, c, res=True)),
        ]
    c = cfg.embed_dim[-1]
    tokens_out = E * batch * tokens[-1] * c           # the mean reads the last tokens once
    rows.append(("mean + head", 1, _plus((0, tokens_out, tokens_out), linear(batch, c, 1000))))
    return rows


def _plus(a, b):
    return tuple(x + y for x, y in zip(a, b))


def bound_us(flops, nbytes, bandwidth):
    return max(flops / PEAK_FLOPS, nbytes / bandwidth) * 1e6


def table(variant: str, batch: int) -> str:
    lines = [f"LeViT forward `{variant}`, batch {batch}, float16: per kernel (x count), FLOPs "
             "and HBM bytes, and the time each bound predicts (µs, all launches of the row).",
             "", "| kernel | count | GFLOP | fused MB | unfused MB | H100 fused µs | bound | "
             "H100 unfused µs | H200 fused µs |", "|---|---|---|---|---|---|---|---|---|"]
    total = [0.0] * 5
    for name, count, (flops, fused, unfused) in layers(variant, batch):
        flops, fused, unfused = flops * count, fused * count, unfused * count
        h100 = bound_us(flops, fused, BANDWIDTH["H100"])
        kind = ("-" if not fused else "memory" if fused / BANDWIDTH["H100"] > flops / PEAK_FLOPS
                else "compute")
        h100_unfused = bound_us(flops, unfused, BANDWIDTH["H100"])
        h200 = bound_us(flops, fused, BANDWIDTH["H200"])
        for i, v in enumerate((flops, fused, unfused, h100, h100_unfused)):
            total[i] += v
        lines.append(f"| {name} | {count} | {flops / 1e9:.1f} | {fused / 1e6:.0f} | "
                     f"{unfused / 1e6:.0f} | {h100:.0f} | {kind} | {h100_unfused:.0f} | "
                     f"{h200:.0f} |")
    h200_total = sum(count * bound_us(f, b, BANDWIDTH["H200"])
                     for _, count, (f, b, _) in layers(variant, batch))
    lines.append(f"| **total** | | {total[0] / 1e9:.0f} | {total[1] / 1e6:.0f} | "
                 f"{total[2] / 1e6:.0f} | {total[3]:.0f} | | {total[4]:.0f} | "
                 f"{h200_total:.0f} |")
    per_s = batch / (total[3] * 1e-6)
    lines += ["", f"Sum of per-kernel bounds: fused {total[3] / 1e3:.2f} ms on H100 "
              f"(~{per_s:,.0f} images/s), unfused {total[4] / 1e3:.2f} ms; "
              f"H200 fused {h200_total / 1e3:.2f} ms."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="LeViT-256")
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args()
    print(table(args.variant, args.batch))
