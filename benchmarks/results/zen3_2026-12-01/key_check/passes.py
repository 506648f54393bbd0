import sys, time, statistics, operator, torch, levit_kernels
from levit_kernels.model import state_key as S
torch.set_num_threads(2)
dt = getattr(torch, sys.argv[1])
m = levit_kernels.LeViT("LeViT-128S", fused=True).eval().to(dt)
x = torch.randn(1, 3, 224, 224).to(dt)
with torch.no_grad():
    m(x); m(x)
    prog = m._plan.program; k = m._plan.key
    passes = {
        "types": lambda: list(map(type, k._modules)) == k._types,
        "dicts": lambda: k._dicts == k._dict_copies,
        "versions": lambda: list(map(S._VERSION, k._versioned)) == k._versions,
        "ptrs": lambda: list(map(S._DATA_PTR, k._tensors)) == k._ptrs,
        "attrs": lambda: list(map(S._GET_ITEMS, k._getters, k._vars)) == k._attributes,
        "sizes": lambda: list(map(len, k._vars)) == k._sizes,
        "all": lambda: k.matches(m),
    }
    res = {n: [] for n in passes}; hot = {n: [] for n in passes}
    for r in range(100):
        for n, f in passes.items():
            prog(x); t0 = time.perf_counter(); f(); res[n].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); f(); hot[n].append(time.perf_counter() - t0)
print(dt, "counts: modules", len(k._modules), "dicts", len(k._dicts), "tensors", len(k._tensors))
for n in passes: print(f"  {n:9s} cold {statistics.median(res[n])*1e6:7.1f} us  hot {statistics.median(hot[n])*1e6:6.1f}")
