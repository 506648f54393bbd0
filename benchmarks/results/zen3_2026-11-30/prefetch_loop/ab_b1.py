import sys, time, statistics, ctypes, os
sys.path.insert(0, "/work/wt-before")
import torch
import levit_kernels.ops.extension as e
from levit_kernels import LeViT
lib = ctypes.CDLL(e._C.__file__)
flag = ctypes.c_int.in_dll(lib, "levit_exp_flag")
torch.set_num_threads(2)
for v in ("LeViT-256", "LeViT-128S"):
    m = LeViT(v, fused=True).eval(); x = torch.randn(1, 3, 224, 224)
    times = {0: [], 4: []}
    with torch.inference_mode():
        m(x)
        for r in range(12):
            for f in (0, 4) if r % 2 == 0 else (4, 0):
                flag.value = f
                for _ in range(3): m(x)
                ts = []
                for _ in range(40):
                    t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
                times[f].append(statistics.median(ts))
    ratios = [a / b for a, b in zip(times[0], times[4])]
    print(v, "b1 t2: median ms flag0 %.2f flag4 %.2f; per-round ratio flag0/flag4: min %.3f median %.3f max %.3f" % (
        1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[4]), min(ratios), statistics.median(ratios), max(ratios)), flush=True)
