import torch, time, sys
import levit_kernels
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
variant = sys.argv[1] if len(sys.argv) > 1 else "LeViT-128S"
dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float32
f = levit_kernels.LeViT(variant, fused=True).eval().to(dtype)
z = levit_kernels.freeze(f)   # the snapshot
x = torch.randn(1, 3, 224, 224, dtype=dtype)
with torch.no_grad(): f(x)
prog = f._plan.program
r = {"model": [], "frozen": [], "program": []}
with torch.no_grad():
    for _ in range(300):
        for k, fn in (("model", f), ("frozen", z), ("program", prog)):
            t = time.perf_counter(); fn(x); r[k].append(time.perf_counter() - t)
for k, v in r.items():
    v.sort(); print(f"{variant} {dtype} {k:8s}: min {v[0]*1e3:.2f} p25 {v[len(v)//4]*1e3:.2f} median {v[len(v)//2]*1e3:.2f} ms")
