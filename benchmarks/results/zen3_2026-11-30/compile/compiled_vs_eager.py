"""torch.compile (inductor) of the fused model against its eager forward on CPU, interleaved in
one process: per round, the eager and the compiled fused forward, each called twice; the
median over all calls. No plain-model call sits between them: PyTorch's OpenMP threads spin
after a parallel op and slow the next fused call by several ms on 2 cores.

    python compiled_vs_eager.py LeViT-128S 1 2      # variant, batch, threads
"""
import statistics
import subprocess
import sys
import time
import warnings

import torch

import levit_kernels

warnings.simplefilter("ignore")
variant, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 30
torch.set_num_threads(threads)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
model = levit_kernels.LeViT(variant, fused=True).eval()
images = torch.randn(batch, 3, 224, 224)
start = time.time()
compiled = torch.compile(model)
with torch.no_grad():
    compiled(images)
compile_s = time.time() - start
forwards = {"eager fused": model, "compiled fused": compiled}
times = {name: [] for name in forwards}
with torch.no_grad():
    for _ in range(rounds):
        for name, forward in forwards.items():
            for _ in range(2):
                t = time.perf_counter()
                forward(images)
                times[name].append(time.perf_counter() - t)
eager = statistics.median(times["eager fused"])
print(f"{variant} batch {batch} threads {threads}, HEAD {commit} (+ working tree), "
      f"torch {torch.__version__}, first compiled call {compile_s:.1f} s")
for name, ts in times.items():
    median = statistics.median(ts)
    print(f"  {name:15s} {median * 1e3:8.2f} ms  ({eager / median:.2f}x eager's speed)")
