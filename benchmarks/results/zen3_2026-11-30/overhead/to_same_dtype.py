"""`images.to(dtype)` when the images already have that dtype, cold (after 48 MB were read,
as after a forward), against comparing the dtype first.

    python to_same_dtype.py
"""
import statistics
import time

import numpy as np
import torch

images = torch.randn(1, 3, 224, 224)
big = np.ones(48 << 18, np.float32)
f32 = torch.float32
for name, step in (("images.to(float32)", lambda: images.to(f32)),
                   ("dtype compared first", lambda: images if images.dtype == f32 else images.to(f32)),
                   ("nothing (the timer)", lambda: None)):
    times = []
    for _ in range(200):
        big.sum()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(f"{name:22s} cold {statistics.median(times) * 1e6:6.1f} us")
