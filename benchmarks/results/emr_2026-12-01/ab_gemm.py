import ctypes, time, torch, sys, glob
import levit_kernels
from levit_kernels import cpu
lib = ctypes.CDLL(glob.glob('/work/main/levit_kernels/ops/_C*.so')[0])
flag = ctypes.c_int.in_dll(lib, "levit_ab_old")
torch.set_num_threads(1)
variant = sys.argv[1] if len(sys.argv) > 1 else "LeViT-128S"
m = levit_kernels.LeViT(variant, fused=True).eval().bfloat16()
x = torch.randn(16, 3, 224, 224).bfloat16()
best = {0: [], 1: []}
with torch.inference_mode():
    for _ in range(3): m(x)
    for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 12):
        for v in (1, 0):
            flag.value = v
            t = time.perf_counter()
            for _ in range(5): m(x)
            best[v].append((time.perf_counter() - t) / 5 * 1e3)
import statistics
ratios = sorted(o / n for o, n in zip(best[1], best[0]))
print(variant, "old", round(min(best[1]), 2), "new", round(min(best[0]), 2), "ms; old/new per round median", round(statistics.median(ratios), 3), "range", round(ratios[0], 3), round(ratios[-1], 3))
