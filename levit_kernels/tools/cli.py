"""The `levit-kernels` command (also `python -m levit_kernels`).

    levit-kernels bench      reference vs fused LeViT (and peers with --compare); the main job
    levit-kernels profile    the paper's per-component block timing (supplementary Table 1)
    levit-kernels biases     the learned attention-bias maps of a checkpoint (Appendix B)
    levit-kernels summary    parameters and multiply-adds per variant (Table 3's columns)
    levit-kernels info       versions, CPU ISA, threads, extension / Triton / CUDA status

Bad arguments, unknown variants and unreadable checkpoints end with one line on stderr and
exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..model.config import VARIANTS, canonical_name, multiply_adds


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _variant(name: str) -> str:
    try:
        return canonical_name(name)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _img_size(text: str):
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    if len(parts) not in (1, 2) or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"expected N or HxW with sides >= 16, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _output_file(text: str) -> str:
    """A file the command writes when it is done: checked up front, so that a typo in the
    directory fails now, not with a traceback after minutes of benchmarking."""
    parent = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, expected a file name")
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no such directory {parent!r}")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: directory {parent!r} is not "
                                         f"writable")
    return text


def cmd_bench(args) -> int:
    from .bench import format_table, run_benchmark
    if args.paper:          # the paper's Table 3 protocol
        if args.device == "cpu":
            args.threads, args.batch, args.dtype = 1, 16, "float32"
        else:
            args.batch = 1024 if args.variant == "LeViT-384" else 2048
            args.dtype, args.amp = "float16", True
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
    elif args.dtype == "float16":
        raise UsageError(f"--dtype {args.dtype}: CPU kernels run float32 and bfloat16 only")
    report = run_benchmark(variant=args.variant, batch=args.batch, threads=args.threads,
                           device=args.device, dtype=args.dtype, amp=args.amp,
                           compare=args.compare, compile_models=args.compile,
                           seconds=args.seconds, img_size=args.img_size)
    print(format_table(report))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        except OSError as exc:
            raise UsageError(f"--json {args.json!r}: cannot write it: {exc.strerror or exc}")
        print(f"saved {args.json}")
    return 0


def cmd_profile(args) -> int:
    from .profile import profile_table
    table, _ = profile_table(fused=not args.reference_only)
    print(table)
    return 0


def cmd_biases(args) -> int:
    from .biases import plot_bias_maps
    from ..model import create_model
    try:
        model = create_model(args.variant, checkpoint=args.checkpoint, img_size=args.img_size)
    except FileNotFoundError:
        raise UsageError(f"--checkpoint: no such file {args.checkpoint!r}")
    except Exception as exc:
        detail = str(exc) or f"{type(exc).__name__} (empty or truncated file?)"
        raise UsageError(f"--checkpoint {args.checkpoint!r}: cannot load it into "
                         f"{args.variant}: {detail}".splitlines()[0])
    blocks = None
    if args.blocks:
        try:
            blocks = [int(b) for b in args.blocks.split(",")]
        except ValueError:
            raise UsageError(f"--blocks: expected comma-separated integers, got {args.blocks!r}")
    try:
        print(f"saved {plot_bias_maps(model, args.out, blocks)}")
    except ValueError as exc:
        raise UsageError(str(exc))
    except OSError as exc:
        raise UsageError(f"--out {args.out!r}: cannot write it: {exc.strerror or exc}")
    return 0


def cmd_summary(args) -> int:
    import torch
    from ..model import LeViT
    print(f"{'variant':<12} {'params':>12} {'paper params':>13} {'MACs (M)':>9} "
          f"{'paper MACs (M)':>15}")
    for name, cfg in VARIANTS.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in LeViT(cfg).parameters())
        print(f"{name:<12} {params:>12,} {cfg.paper_params or '-':>13} "
              f"{multiply_adds(cfg) / 1e6:>9.0f} {cfg.paper_flops / 1e6:>15.0f}")
    return 0


def cmd_info(args) -> int:
    from .info import info
    info()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="levit-kernels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time reference vs fused LeViT (the main job)")
    bench.add_argument("--variant", type=_variant, default="LeViT-256")
    bench.add_argument("--batch", type=_positive, default=16)
    bench.add_argument("--threads", type=_positive, default=None,
                       help="torch/peer threads (default: torch's default)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    bench.add_argument("--amp", action="store_true", help="run under autocast with --dtype")
    bench.add_argument("--img-size", type=_img_size, default=224)
    bench.add_argument("--seconds", type=_positive_seconds, default=3.0,
                       help="timing budget per provider")
    bench.add_argument("--compare", action="store_true",
                       help="also time the peers (CPU, when installed): ONNX Runtime and "
                            "OpenVINO in float32; with bfloat16, OpenVINO at its default "
                            "precision and pinned to bf16, and timm under autocast")
    bench.add_argument("--compile", action="store_true", help="also time torch.compile of each")
    bench.add_argument("--paper", action="store_true",
                       help="the paper's protocol: CPU 1 thread batch 16 fp32; GPU batch 2048 "
                            "(1024 for LeViT-384) under fp16 autocast")
    bench.add_argument("--json", metavar="PATH", type=_output_file,
                       help="save the numbers as JSON")
    bench.set_defaults(func=cmd_bench)

    prof = sub.add_parser("profile", help="per-component block timing (paper's suppl. Table 1)")
    prof.add_argument("--reference-only", action="store_true")
    prof.set_defaults(func=cmd_profile)

    biases = sub.add_parser("biases", help="plot learned attention-bias maps (Appendix B)")
    biases.add_argument("--checkpoint", required=True)
    biases.add_argument("--variant", type=_variant, default="LeViT-256")
    biases.add_argument("--img-size", type=_img_size, default=224)
    biases.add_argument("--blocks", help="comma-separated attention block indices (default all)")
    biases.add_argument("--out", type=_output_file, default="attention_biases.png")
    biases.set_defaults(func=cmd_biases)

    sub.add_parser("summary", help="params and multiply-adds per variant").set_defaults(
        func=cmd_summary)
    sub.add_parser("info", help="versions, ISA, threads, what is available").set_defaults(
        func=cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)          # argparse itself exits 2 with one usage line
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"levit-kernels {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
