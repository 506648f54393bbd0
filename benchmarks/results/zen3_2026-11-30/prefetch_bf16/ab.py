import sys, time, statistics, torch
sys.path.insert(0, sys.argv[1])
import levit_kernels
threads, variant, batch, dtype = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), getattr(torch, sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = levit_kernels.LeViT(variant, fused=True).eval().to(dtype)
x = torch.randn(batch, 3, 224, 224).to(dtype)
ts = []
with torch.no_grad():
    for _ in range(3): m(x)
    t_end = time.perf_counter() + float(sys.argv[6])
    while time.perf_counter() < t_end or len(ts) < 5:
        t = time.perf_counter(); m(x); ts.append(time.perf_counter() - t)
tag = "before" if "wt-before" in levit_kernels.__file__ else "after"
print(f"{tag} {variant} t{threads} b{batch} {sys.argv[5]} best {min(ts)*1e3:.2f} med {statistics.median(ts)*1e3:.2f} ms n={len(ts)}", flush=True)
