"""The two reads of the model's parameters in a fused eager forward, cold (after a C++
program run, as in a real call) and right after the plan's key check, the old way (walking
the model) and the new (the key's own list, which the check has just brought into cache).

    python first_parameter.py VARIANT
"""
import statistics
import sys
import time

import torch

import levit_kernels

torch.set_num_threads(2)
model = levit_kernels.LeViT(sys.argv[1], fused=True).eval()
images = torch.randn(1, 3, 224, 224)
model(images)
plan = model._plan
key, program = plan.key, plan.program
cases = {
    "walk: next(model.parameters()).dtype": lambda: next(model.parameters()).dtype,
    "key:  key.parameters[0].dtype": lambda: key.parameters[0].dtype,
    "walk: first parameter requiring grad":
        lambda: next((p for p in model.parameters() if p.requires_grad), None),
    "key:  first parameter requiring grad":
        lambda: next((p for p in key.parameters if p.requires_grad), None),
}
with torch.no_grad():
    for name, read in cases.items():
        times = []
        for _ in range(200):
            program(images)                 # the previous forward
            assert key.matches(model)       # the check every eager call makes first
            t = time.perf_counter()
            read()
            times.append(time.perf_counter() - t)
        print(f"{sys.argv[1]}  {name:40s} {statistics.median(times) * 1e6:6.1f} us")
