import statistics, time, operator
import torch, levit_kernels
from levit_kernels.model import state_key as sk
torch.set_num_threads(1)
model = levit_kernels.LeViT("LeViT-128S", fused=True).eval()
with torch.no_grad():
    model(torch.randn(1, 3, 224, 224))
key = model._plan.key
T = key._tensors
V, P = key._versions, key._ptrs
both = list(zip(V, P))
comb = lambda t: (t._version, t.data_ptr())
dp = torch.Tensor.data_ptr
ver = operator.attrgetter("_version")
parts = {
 "two maps": lambda: list(map(ver, T)) == V and list(map(dp, T)) == P,
 "lambda pair": lambda: list(map(comb, T)) == both,
 "ptr then ver": lambda: list(map(dp, T)) == P and list(map(ver, T)) == V,
}
big = torch.ones(32 << 18)
for rnd in range(3):
  for name, f in parts.items():
    for state in ("hot", "cold"):
        ts = []
        for _ in range(150):
            if state == "cold": big.add_(1.0)
            t = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t)
        assert r
        print(f"{name:14s} {state}: {statistics.median(ts)*1e6:7.1f} us")
