"""Back-to-back fused forwards, 2 threads, the kernels' own pool and PyTorch's OpenMP team
alternating every round in one process (switched with the extension's set_team_runner).
Median per mode over all rounds.

    python team_vs_pool_in_process.py LeViT-128S 16
"""
import statistics
import sys
import time

import torch

import levit_kernels
from levit_kernels.ops import _C, openmp_team

variant, batch = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(2)
model = levit_kernels.LeViT(variant, fused=True).eval()
images = torch.randn(batch, 3, 224, 224)
modes = {"own pool": lambda: _C.set_team_runner(address=0),
         "openmp team": lambda: openmp_team.attach(_C)}
times = {mode: [] for mode in modes}
calls = max(3, 48 // batch)
with torch.no_grad():
    expected = model(images)
    for _ in range(12):
        for mode, switch in modes.items():
            switch()
            model(images)                       # the first call after a switch is not timed
            for _ in range(calls):
                start = time.perf_counter()
                out = model(images)
                times[mode].append(time.perf_counter() - start)
            assert torch.equal(out, expected)
print(f"{variant} batch {batch}, 2 threads, {openmp_team.describe()}")
for mode, ts in times.items():
    print(f"  {mode:12s} {statistics.median(ts) * 1e3:8.2f} ms")
