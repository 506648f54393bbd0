import sys, time, torch
sys.path.insert(0, sys.argv[1])
import levit_kernels
torch.set_num_threads(1)
torch.manual_seed(0)
variant, batch = sys.argv[2], int(sys.argv[3])
m = levit_kernels.LeViT(variant, fused=True).eval()
x = torch.randn(batch, 3, 224, 224)
best = 1e9
with torch.no_grad():
    for _ in range(3): m(x)
    for _ in range(15):
        t = time.perf_counter(); m(x); best = min(best, time.perf_counter() - t)
print(f"{sys.argv[1]} {variant} b{batch} best {best*1e3:.1f} ms  {batch/best:.1f} img/s  {levit_kernels.__file__}")
