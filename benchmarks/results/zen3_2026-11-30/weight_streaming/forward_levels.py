"""A whole batch-1 forward (the C++ program alone) with its weights left in cache by the call
before it, against the same forward after 48 MB were read (weights in DRAM).

    python forward_levels.py VARIANT DTYPE THREADS

LeViT-128S in bf16 (16 MB of weights) fits this machine's 32 MB L3; in float32 (31 MB) and
LeViT-256 (38 / 76 MB) it does not. 10 interleaved rounds of 20 calls; the eviction is a
NumPy read (single-threaded: a torch op would leave its OpenMP threads spinning).
"""
import statistics
import sys
import time

import numpy as np
import torch

import levit_kernels

variant, dtype, threads = sys.argv[1], getattr(torch, sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model = levit_kernels.LeViT(variant, fused=True).eval().to(dtype)
images = torch.randn(1, 3, 224, 224).to(dtype)
big = np.ones(48 << 18, np.float32)
with torch.no_grad():
    model(images)
    program = model._plan.program
    res = {"back to back": [], "after reading 48 MB": []}
    for _ in range(10):
        for name, evict in (("back to back", False), ("after reading 48 MB", True)):
            ts = []
            for _ in range(20):
                if evict:
                    big.sum()
                t = time.perf_counter()
                program(images)
                ts.append(time.perf_counter() - t)
            res[name].append(statistics.median(ts) * 1e3)
print(f"{variant} {sys.argv[2]} batch 1, {threads} thread(s): " + "; ".join(
    f"{k} {statistics.median(v):.2f} ms ({min(v):.2f}..{max(v):.2f})" for k, v in res.items()))
