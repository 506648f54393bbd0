"""`levit-kernels validate`: the fused model's top-1 / top-5 accuracy on an ImageFolder set
and, with a reference model run on the same batches, how closely the two agree.

Counts are integers summed on rank 0 from every image's result (runner.py gathers them in
input order), so a run over N processes gives exactly the numbers of one process.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from .distributed import Processes
from .images import ImageFiles
from .runner import ImagePass

TOPK = 5


def validate(model, files: ImageFiles, targets: List[int], processes: Processes, batch: int,
             workers: int, dtype: torch.dtype = torch.float32, reference=None,
             quiet: bool = False) -> Optional[Dict]:
    """Run `model` (and `reference`) over `files`; the metrics on rank 0, None elsewhere.

    The reference gets the float32 images whatever `dtype` the fused model runs in: the
    agreement then measures all that the fused path changes, its precision included."""
    k = min(TOPK, model.num_classes)

    def forward(images):
        logits = model(images.to(dtype)).float()
        out = [logits.topk(k, dim=1).indices.tolist()]
        if reference is not None:
            ref = reference(images).float()
            out += [ref.topk(k, dim=1).indices.tolist(),
                    (logits - ref).abs().amax(dim=1).tolist()]
        return list(zip(*out))

    run = ImagePass(files, processes, forward, batch, workers, quiet, "validate")
    top1 = top5 = ref1 = ref5 = agree = 0
    max_diff = 0.0
    for index, (top, *compared) in run:
        target = targets[index]
        top1 += top[0] == target
        top5 += target in top
        if compared:
            ref_top, diff = compared
            ref1 += ref_top[0] == target
            ref5 += target in ref_top
            agree += top[0] == ref_top[0]
            if diff > max_diff or math.isnan(diff):     # a NaN stays: later diffs compare False
                max_diff = diff
    if processes.rank != 0:
        return None
    n = run.images
    result = {"images": n, "skipped": len(run.skipped), "topk": k,
              "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
              "top1_correct": top1, "top5_correct": top5,
              "seconds": run.seconds, "images_per_s": n / run.seconds}
    if reference is not None:
        result["reference"] = {"top1": 100.0 * ref1 / n, "top5": 100.0 * ref5 / n,
                               "top1_correct": ref1, "top5_correct": ref5}
        result["agreement"] = {"top1": agree / n, "top1_same": agree,
                               "max_abs_logit_diff": max_diff}
    result["skipped_files"] = [{"path": path, "reason": reason} for path, reason in run.skipped]
    return result


def format_result(result: Dict) -> str:
    n, k = result["images"], result["topk"]
    lines = [f"{n} images ({result['skipped']} skipped), {result['images_per_s']:.1f} images/s "
             f"over the whole pass",
             f"fused      top-1 {result['top1']:7.3f}%  top-{k} {result['top5']:7.3f}%"]
    if "reference" in result:
        ref, agreement = result["reference"], result["agreement"]
        lines += [f"reference  top-1 {ref['top1']:7.3f}%  top-{k} {ref['top5']:7.3f}%",
                  f"fused vs reference: same top-1 on {agreement['top1_same']}/{n} images "
                  f"({100 * agreement['top1']:.3f}%), max |logit difference| "
                  f"{agreement['max_abs_logit_diff']:.3g}"]
    return "\n".join(lines)
