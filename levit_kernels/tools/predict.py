"""`levit-kernels predict`: the fused model's top-k classes for every image file, written
once each, in input order, as CSV or JSON lines.

Only rank 0 writes: runner.py hands it every file's result in input order as each step's
results are gathered, so the file grows as the run goes and is the same whatever the number
of processes. Probabilities are written to 6 significant digits.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .distributed import Processes
from .errors import UsageError
from .images import ImageFiles
from .runner import ImagePass

FORMATS = (".csv", ".jsonl")


def output_format(path: str) -> str:
    """The format an --out path asks for, from its suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path!r}: expected a .csv or .jsonl file name")
    return suffix


def read_labels(path: str) -> List[str]:
    """A labels file: the name of class i on line i (trailing blank lines ignored), in UTF-8
    with or without a byte order mark (Windows Notepad writes one: it is not part of class 0's
    name)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path!r}: cannot read it: "
                         f"{getattr(exc, 'strerror', None) or exc}")
    if not text:   # "".split("\n") would be one empty name
        raise UsageError(f"--labels {path!r}: the file is empty (expected one class name a line)")
    return [line.strip() for line in text.split("\n")]


def _csv_writer(f, topk: int) -> Callable:
    writer = csv.writer(f)
    writer.writerow(["path"] + [f"top{j}_{column}" for j in range(1, topk + 1)
                                for column in ("index", "label", "prob")])

    def write(path, top):
        writer.writerow([path] + [value for entry in top for value in
                                  (entry["index"], entry["label"], f"{entry['prob']:.6g}")])
    return write


def _jsonl_writer(f, topk: int) -> Callable:
    def write(path, top):
        top = [{**entry, "prob": float(f"{entry['prob']:.6g}")} for entry in top]
        f.write(json.dumps({"path": path, "top": top}) + "\n")
    return write


def predict(model, files: ImageFiles, processes: Processes, out: str, topk: int,
            labels: Optional[Sequence[str]], batch: int, workers: int,
            dtype: torch.dtype = torch.float32, quiet: bool = False) -> Optional[Dict]:
    """Write `model`'s top-k classes of every readable file to `out` (rank 0); a summary on
    rank 0, None elsewhere. Class i is written as labels[i], or as "i" without labels."""
    def forward(images):
        probs = model(images.to(dtype)).float().softmax(dim=1)
        top = probs.topk(topk, dim=1)
        return list(zip(top.indices.tolist(), top.values.tolist()))

    run = ImagePass(files, processes, forward, batch, workers, quiet, "predict")
    if processes.rank != 0:
        for _ in run:           # yields nothing here: takes part in every step's gather
            pass
        return None
    make_writer = {".csv": _csv_writer, ".jsonl": _jsonl_writer}[output_format(out)]
    try:
        # A file name that is not UTF-8 (legal on Linux) reaches us with surrogate escapes:
        # the CSV gets its bytes as they are on disk (JSONL escapes them as \udcXX).
        f = open(out, "w", newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"--out {out!r}: cannot write it: {exc.strerror or exc}")
    with f:
        write = make_writer(f, topk)
        for index, (classes, probs) in run:
            write(files.paths[index], [{"index": c, "label": labels[c] if labels else str(c),
                                        "prob": p} for c, p in zip(classes, probs)])
    return {"images": run.images, "skipped": len(run.skipped), "seconds": run.seconds,
            "images_per_s": run.images / run.seconds, "out": out}
