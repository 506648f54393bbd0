"""Cold cost of each part of StateKey.matches (after streaming 32 MB)."""
import statistics, sys, time, operator
import torch, levit_kernels
from levit_kernels.model import state_key as sk
variant = sys.argv[1]
torch.set_num_threads(1)
model = levit_kernels.LeViT(variant, fused=True).eval()
x = torch.randn(1, 3, 224, 224)
with torch.no_grad():
    model(x)
key = model._plan.key
print("modules", len(key._modules), "tensors", len(key._tensors), "dicts", len(key._dicts))
parts = {
    "types": lambda: list(map(type, key._modules)) == key._types,
    "dicts": lambda: key._dicts == key._dict_copies,
    "versions": lambda: list(map(sk._VERSION, key._versioned)) == key._versions,
    "ptrs": lambda: list(map(sk._DATA_PTR, key._tensors)) == key._ptrs,
    "root": lambda: key._root_getter(vars(model)) == key._root_attributes and sk._public_attributes(model) == key._root_names,
    "attrs": lambda: list(map(sk._GET_ITEMS, key._getters, key._vars)) == key._attributes,
    "sizes": lambda: list(map(len, key._vars)) == key._sizes,
    "hooks": key._hooks_unchanged,
    "all": lambda: key.matches(model),
}
big = torch.ones(32 << 18)
for name, f in parts.items():
    for state in ("hot", "cold"):
        ts = []
        for _ in range(200):
            if state == "cold":
                big.add_(1.0)
            t = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t)
        assert r
        print(f"{name:9s} {state}: {statistics.median(ts)*1e6:7.1f} us")
