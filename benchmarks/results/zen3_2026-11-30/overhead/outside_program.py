"""Per-call time of LeViT(fused=True) outside its one C++ call (batch 1), and why it is large.

    python outside_program.py THREADS VARIANT DTYPE [grad]

Times 400 eval forwards under torch.no_grad() (with `grad`: grad mode on, as a plain
`model(images)` runs), with the C++ program call timed from inside
(the plan's program wrapped), and prints the medians of the whole call, the C++ call and the
difference. Then the StateKey check alone (the largest Python step) hot (back to back) and cold
(after streaming 32 MB, as a forward's weights do).
"""
import statistics
import sys
import time

import torch

import levit_kernels

threads, variant, dtype = int(sys.argv[1]), sys.argv[2], getattr(torch, sys.argv[3])
grad = sys.argv[4:] == ["grad"]
torch.set_num_threads(threads)
model = levit_kernels.LeViT(variant, fused=True).eval().to(dtype)
images = torch.randn(1, 3, 224, 224).to(dtype)
with torch.enable_grad() if grad else torch.no_grad():
    model(images)
    plan = model._plan
    program, inner = plan.program, []

    def timed(x):
        t = time.perf_counter()
        out = program(x)
        inner.append(time.perf_counter() - t)
        return out
    plan.program = timed
    outer = []
    for _ in range(400):
        t = time.perf_counter()
        model(images)
        outer.append(time.perf_counter() - t)
    plan.program = program
outside = [o - i for o, i in zip(outer, inner)]
med = statistics.median
print(f"{variant} batch 1, {threads} thread(s), {sys.argv[3]}{', grad on' if grad else ''}: whole call {med(outer) * 1e3:.2f} ms, "
      f"C++ program {med(inner) * 1e3:.2f} ms, outside it {med(outside) * 1e6:.0f} us "
      f"({med(outside) / med(outer):.0%})")
key, big = plan.key, torch.ones(32 << 18)
for state in ("hot", "cold"):
    ts = []
    for _ in range(100):
        if state == "cold":
            big.add_(1.0)
        t = time.perf_counter()
        key.matches(model)
        ts.append(time.perf_counter() - t)
    print(f"   StateKey.matches {state}: {med(ts) * 1e6:.0f} us")
