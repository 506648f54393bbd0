"""The `levit-kernels` command (also `python -m levit_kernels`).

    levit-kernels bench      reference vs fused LeViT (and peers with --compare); the main job
    levit-kernels profile    the paper's per-component block timing (supplementary Table 1)
    levit-kernels breakdown  each step of the fused CPU forward timed (where the time goes)
    levit-kernels biases     the learned attention-bias maps of a checkpoint (Appendix B)
    levit-kernels summary    parameters and multiply-adds per variant (Table 3's columns)
    levit-kernels info       versions, CPU ISA, threads, extension / Triton / CUDA status
    levit-kernels validate   accuracy on an ImageFolder set, fused vs reference (torchrun-ready)
    levit-kernels predict    top-k classes of image files to CSV / JSON lines (torchrun-ready)

Bad arguments, unknown variants and unreadable checkpoints end with one line on stderr and
exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import List, Optional

from ..model.config import VARIANTS, canonical_name, multiply_adds
from .errors import UsageError


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


def _integer_type(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive = _integer_type(1, "a positive integer")
_non_negative = _integer_type(0, "an integer >= 0")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
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
    if not text:    # "" would pass the checks below (its folder is the current one)
        raise argparse.ArgumentTypeError("expected a file name, got an empty one")
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
        given = [flag for flag, value, default in (("--batch", args.batch, 16),
                                                   ("--threads", args.threads, None),
                                                   ("--dtype", args.dtype, "float32"),
                                                   ("--amp", args.amp, False))
                 if value != default]
        if given:
            raise UsageError(f"--paper fixes batch, threads and dtype (CPU: batch 16, 1 thread, "
                             f"float32; GPU: batch 2048, fp16 autocast): drop {', '.join(given)}")
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
    if args.amp and args.dtype == "float32":
        raise UsageError("--amp: autocast runs a lower precision (--dtype bfloat16, or float16 "
                         "on GPU); with float32 there is nothing to autocast")
    report = run_benchmark(variant=args.variant, batch=args.batch, threads=args.threads,
                           device=args.device, dtype=args.dtype, amp=args.amp,
                           compare=args.compare, compile_models=args.compile,
                           seconds=args.seconds, img_size=args.img_size)
    print(format_table(report))
    if args.json:
        _save_json(args.json, report)
    return 0


def _save_json(path: str, data) -> None:
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
    except OSError as exc:
        raise UsageError(f"--json {path!r}: cannot write it: {exc.strerror or exc}")
    print(f"saved {path}")


def cmd_profile(args) -> int:
    from .profile import profile_table
    table, _ = profile_table(fused=not args.reference_only)
    print(table)
    return 0


def cmd_breakdown(args) -> int:
    from ..ops import cpu
    from .breakdown import format_breakdown, run_breakdowns
    if not cpu.is_available():
        raise UsageError(f"breakdown times the CPU extension's forward: "
                         f"{cpu.unavailable_reason()}")
    if args.versus == args.dtype:
        raise UsageError(f"--versus {args.versus}: compare against the other dtype")
    dtypes = (args.dtype,) + ((args.versus,) if args.versus else ())
    reports = run_breakdowns(variant=args.variant, batch=args.batch, threads=args.threads,
                             dtypes=dtypes, img_size=args.img_size, rounds=args.rounds)
    print(format_breakdown(reports[args.dtype], reports.get(args.versus)))
    if args.json:
        _save_json(args.json, reports if args.versus else reports[args.dtype])
    return 0


def _read_checkpoint(path: Optional[str]):
    """What the --checkpoint file holds (None without one)."""
    from ..model.checkpoint import read_checkpoint
    if path is None:
        return None
    try:
        return read_checkpoint(path)
    except FileNotFoundError:
        raise UsageError(f"--checkpoint: no such file {path!r}")
    except ImportError as exc:
        raise UsageError(f"--checkpoint {path!r}: reading it needs the safetensors package "
                         f"({exc}): pip install safetensors")
    except OSError as exc:      # a directory, no permission: the file system's own words
        raise UsageError(_cannot_load(path, exc))
    except Exception as exc:
        raise UsageError(f"--checkpoint {path!r}: cannot load it: {_unreadable_content(exc)}")


def _unreadable_content(exc: Exception) -> str:
    """Why torch.load (weights_only) or safetensors could not read a file, in a few words.

    torch.load's message is a page of advice to pass weights_only=False, which runs whatever
    code the file holds and cannot be done from here anyway; the reason is the line after
    "WeightsUnpickler error:". A forbidden global (a training script's argparse.Namespace,
    a numpy array) means a real checkpoint that holds more than tensors; anything else, a file
    that is not a checkpoint or is damaged."""
    text = str(exc)
    forbidden = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if forbidden:
        return (f"it holds an object of type {forbidden.group(1)}, which a safe (weights-only) "
                f"load does not build: save the state dict alone "
                f"(torch.save(model.state_dict(), PATH))")
    unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = f"unpickling: {unpickler.group(1)}" if unpickler else text.strip().split("\n")[0]
    detail = detail.split(". ")[0].rstrip(".")[:100] or f"{type(exc).__name__}, empty or truncated"
    return f"not a PyTorch checkpoint or safetensors file, or a damaged one ({detail})"


def _cannot_load(path: Optional[str], exc: Exception, variant: str = "") -> str:
    detail = str(exc) or f"{type(exc).__name__} (empty or truncated file?)"
    if path is None:
        return f"cannot build {variant}: {detail}".splitlines()[0]
    into = f" into {variant}" if variant else ""
    return f"--checkpoint {path!r}: cannot load it{into}: {detail}".splitlines()[0]


def _create_model(args, checkpoint, **kwargs):
    """args.variant at args.img_size with `checkpoint` (what _read_checkpoint read, or a state
    dict) loaded; without one, the same random weights in every process (seed 0)."""
    import torch
    from ..model import create_model
    trained_at = args.checkpoint_img_size
    if trained_at is not None and checkpoint is None:
        raise UsageError("--checkpoint-img-size: says what size --checkpoint was trained at; "
                         "give --checkpoint too")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create_model(args.variant, checkpoint=checkpoint, img_size=args.img_size,
                                checkpoint_img_size=trained_at, **kwargs)
    except Exception as exc:
        if _out_of_memory(exc):
            raise                   # main() says so: not the checkpoint's fault
        raise UsageError(_cannot_load(args.checkpoint, exc, args.variant))


def _out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a failed allocation: Python's, or PyTorch's allocators' (a RuntimeError
    that says so, or torch.OutOfMemoryError on CUDA)."""
    torch_oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", MemoryError)
    return isinstance(exc, (MemoryError, torch_oom)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def cmd_biases(args) -> int:
    from .biases import plot_bias_maps
    model = _create_model(args, _read_checkpoint(args.checkpoint))
    blocks = None
    if args.blocks:
        try:
            blocks = [int(b) for b in args.blocks.split(",")]
        except ValueError:
            raise UsageError(f"--blocks: expected comma-separated integers, got {args.blocks!r}")
    try:
        print(f"saved {plot_bias_maps(model, args.out, blocks)}")
    except ImportError as exc:
        raise UsageError(f"plotting the maps needs matplotlib ({exc}): pip install matplotlib "
                         f"(or the bench extra: pip install 'levit-kernels[bench]')")
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


_DTYPES = ("float32", "bfloat16")


def _image_model(args, command: str):
    """What validate and predict share: this process's place among those torchrun started
    (or a world of one), the checkpoint, and the fused model on the process's device. Models
    are loaded before the processes join, so a bad argument fails every one of them at once
    instead of leaving the others waiting."""
    from .distributed import Processes
    processes = Processes(args.device, args.threads, command)
    checkpoint = _read_checkpoint(args.checkpoint)
    if checkpoint is None and processes.rank == 0:
        print(f"levit-kernels {command}: no --checkpoint: random weights (seed 0)",
              file=sys.stderr)
    model = _create_model(args, checkpoint, fused=True)
    args.workers = processes.default_workers() if args.workers is None else args.workers
    return processes, checkpoint, model


def _dtype(args):
    import torch
    return getattr(torch, args.dtype)


def _to_device(model, processes, dtype=None):
    """The model in eval mode on the process's device, in `dtype` (default float32)."""
    return model.to(device=processes.device, dtype=dtype).eval()


def _describe(args, processes, model) -> str:
    height, width = model.img_size
    return (f"{model.config.name} fused on {processes.device.type} {args.dtype}, "
            f"{height}x{width} px (crop {args.crop_pct}), batch {args.batch}, "
            f"{processes.world} process(es) x {processes.threads} threads, "
            f"{args.workers} loader workers each")


@contextlib.contextmanager
def _images_extra():
    """validate and predict read images with torchvision (PIL) and show progress with tqdm:
    the `images` extra. Without it, one line that names the fix."""
    try:
        yield
    except ImportError as exc:
        raise UsageError(f"reading images needs the images extra ({exc}): "
                         f"pip install 'levit-kernels[images]'")


def _transform(eval_transform, model, args):
    """The evaluation transform; a --crop-pct that resizes past what PIL takes is the user's
    to fix, not every image file's failure."""
    try:
        return eval_transform(model.img_size, args.crop_pct)
    except ValueError as exc:
        raise UsageError(f"--crop-pct {args.crop_pct}: {exc}")


def cmd_validate(args) -> int:
    with _images_extra():
        from .images import ImageFiles, eval_transform, image_folder
        from .validate import format_result, validate
    paths, targets, classes = image_folder(args.data)
    processes, checkpoint, model = _image_model(args, "validate")
    if len(classes) > model.num_classes:
        raise UsageError(f"--data {args.data!r}: {len(classes)} class folders, but the model "
                         f"has {model.num_classes} classes")
    reference = None
    if args.compare == "reference":
        # the same weights: the checkpoint, or the fused model's own random ones
        weights = checkpoint if checkpoint is not None else model.state_dict()
        reference = _to_device(_create_model(args, weights), processes)
    model = _to_device(model, processes, _dtype(args))
    files = ImageFiles(paths, _transform(eval_transform, model, args))
    if processes.rank == 0:
        print(_describe(args, processes, model), flush=True)
    with processes:
        result = validate(model, files, targets, processes, args.batch, args.workers,
                          _dtype(args), reference, args.quiet)
    if result is None:          # not rank 0
        return 0
    config = {"data": args.data, "variant": model.config.name, "checkpoint": args.checkpoint,
              "img_size": list(model.img_size), "crop_pct": args.crop_pct,
              "classes": len(classes), "num_classes": model.num_classes,
              "device": processes.device.type, "dtype": args.dtype, "batch": args.batch,
              "workers": args.workers, "threads": processes.threads,
              "processes": processes.world, "compare": args.compare}
    print(format_result(result))
    if args.json:
        _save_json(args.json, {"config": config, "result": result})
    return 0


def cmd_predict(args) -> int:
    from ..model.checkpoint import class_names
    with _images_extra():
        from .images import ImageFiles, eval_transform, find_images
        from .predict import output_format, predict, read_labels
    try:
        output_format(args.out)
    except ValueError as exc:
        raise UsageError(f"--out {exc}")
    paths = find_images(args.inputs)
    labels = read_labels(args.labels) if args.labels else None
    processes, checkpoint, model = _image_model(args, "predict")
    if labels is None:
        labels = class_names(checkpoint)
    if labels is not None and len(labels) != model.num_classes:
        source = f"--labels {args.labels!r}" if args.labels else "the checkpoint's class names"
        raise UsageError(f"{source}: {len(labels)} names for a model of {model.num_classes} "
                         f"classes")
    if args.topk > model.num_classes:
        raise UsageError(f"--topk {args.topk}: the model has {model.num_classes} classes")
    model = _to_device(model, processes, _dtype(args))
    files = ImageFiles(paths, _transform(eval_transform, model, args))
    if processes.rank == 0:
        print(_describe(args, processes, model), flush=True)
    with processes:
        summary = predict(model, files, processes, args.out, args.topk, labels, args.batch,
                          args.workers, _dtype(args), args.quiet)
    if summary is not None:
        print(f"wrote {summary['images']} predictions to {args.out} ({summary['skipped']} "
              f"unreadable files skipped), {summary['images_per_s']:.1f} images/s")
    return 0


def _add_checkpoint_img_size(parser) -> None:
    parser.add_argument("--checkpoint-img-size", type=_img_size, default=None, metavar="HxW",
                        help="the image size --checkpoint was trained at, when not square "
                             "(its bias tables cannot tell 224x320 from 320x224)")


def _add_image_arguments(parser) -> None:
    """The arguments validate and predict share: the model, the transform, the run."""
    parser.add_argument("--variant", type=_variant, default="LeViT-256")
    parser.add_argument("--checkpoint", help="timm or original-release weights (.pth, "
                        ".safetensors); without it random weights")
    parser.add_argument("--img-size", type=_img_size, default=224)
    _add_checkpoint_img_size(parser)
    parser.add_argument("--crop-pct", type=_fraction, default=0.9,
                        help="resize to img-size / crop-pct, then center crop (default 0.9: "
                             "224 px from 248; the original LeViT code used 0.875)")
    parser.add_argument("--batch", type=_positive, default=64, help="images per forward")
    parser.add_argument("--workers", type=_non_negative, default=None,
                        help="DataLoader workers per process (default: up to 4, no more than "
                             "the process's cores)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch threads per process (default: torch's; under torchrun "
                             "the cores divided among the machine's processes)")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: one GPU per process (LOCAL_RANK)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none either "
                        "when stderr is not a terminal)")


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

    steps = sub.add_parser("breakdown", help="each step of the fused CPU forward timed")
    steps.add_argument("--variant", type=_variant, default="LeViT-256")
    steps.add_argument("--batch", type=_positive, default=16)
    steps.add_argument("--threads", type=_positive, default=None,
                       help="torch threads (default: torch's default)")
    steps.add_argument("--dtype", choices=_DTYPES, default="float32")
    steps.add_argument("--img-size", type=_img_size, default=224)
    steps.add_argument("--versus", choices=_DTYPES, default=None,
                       help="also time the other dtype, interleaved in the same run, with "
                            "each step's ratio (--dtype bfloat16 --versus float32)")
    steps.add_argument("--rounds", type=_positive, default=10,
                       help="profiled forwards (each step's median is reported)")
    steps.add_argument("--json", metavar="PATH", type=_output_file,
                       help="save the numbers as JSON")
    steps.set_defaults(func=cmd_breakdown)

    biases = sub.add_parser("biases", help="plot learned attention-bias maps (Appendix B)")
    biases.add_argument("--checkpoint", required=True)
    biases.add_argument("--variant", type=_variant, default="LeViT-256")
    biases.add_argument("--img-size", type=_img_size, default=224)
    _add_checkpoint_img_size(biases)
    biases.add_argument("--blocks", help="comma-separated attention block indices (default all)")
    biases.add_argument("--out", type=_output_file, default="attention_biases.png")
    biases.set_defaults(func=cmd_biases)

    val = sub.add_parser("validate", help="accuracy on an ImageFolder set, fused vs reference")
    val.add_argument("--data", required=True,
                     help="DIR/<class>/<image> (the ImageNet val layout); classes in sorted order")
    _add_image_arguments(val)
    val.add_argument("--compare", choices=["reference"],
                     help="also run the plain PyTorch model on the same batches")
    val.add_argument("--json", metavar="PATH", type=_output_file, help="save the result as JSON")
    val.set_defaults(func=cmd_validate)

    pred = sub.add_parser("predict", help="top-k classes of image files to .csv or .jsonl")
    pred.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="an image file, a folder (searched recursively) or @LIST (a file "
                           "naming one file or folder a line, relative to the list's folder)")
    pred.add_argument("--out", required=True, type=_output_file, help="PATH.csv or PATH.jsonl")
    pred.add_argument("--topk", type=_positive, default=5)
    pred.add_argument("--labels", help="class names, one a line (default: the checkpoint's "
                      "class_names / classes when it has them, else class indices)")
    _add_image_arguments(pred)
    pred.set_defaults(func=cmd_predict)

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
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(f"levit-kernels {args.command}: error: out of memory "
              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): the sizes "
              f"asked for (--batch, --img-size) need more than this machine has",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
