import sys, time, torch
import levit_kernels
from levit_kernels.tools.bench import openvino_provider
torch.set_num_threads(1)
torch.manual_seed(0)
variant, batch = sys.argv[1], int(sys.argv[2])
ref = levit_kernels.LeViT(variant).eval()
x = torch.randn(batch, 3, 224, 224)
call = openvino_provider(ref, x, 1)
best = 1e9
for _ in range(3): call(x)
for _ in range(15):
    t = time.perf_counter(); call(x); best = min(best, time.perf_counter() - t)
print(f"openvino {variant} b{batch} best {best*1e3:.1f} ms  {batch/best:.1f} img/s")
