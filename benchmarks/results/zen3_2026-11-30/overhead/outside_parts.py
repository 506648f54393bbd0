"""Cold cost of the fused forward outside the C++ program, by step (program replaced by a stub)."""
import statistics, sys, time
import torch, levit_kernels
from levit_kernels.model import fused as F
variant = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
model = levit_kernels.LeViT(variant, fused=True).eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    ref = model(x)
plan = model._plan
prog = plan.program
out = ref.clone()
plan.program = lambda images: out
big = torch.ones(32 << 18)
key = plan.key
steps = {
  "whole (stub program)": lambda: model(x),
  "key.matches": lambda: key.matches(model),
  "check_images": lambda: F.check_images(x, model.img_size),
  "needs_plain": lambda: F._needs_plain_layers(model, x),
  "compute_dtype": lambda: F._compute_dtype(key.parameters[0], x),
  "kernels_for+run": lambda: F._kernels_run(model._kernels_for(x.device), x.device, torch.float32, warn=True),
  "backend.run(stub)": lambda: F.PROGRAM.run(plan, x),
  "empty": lambda: None,
}
with torch.no_grad():
  for rnd in range(2):
    for name, f in steps.items():
        ts = []
        for _ in range(150):
            big.add_(1.0)
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        print(f"{name:22s} cold {statistics.median(ts)*1e6:7.1f} us")
