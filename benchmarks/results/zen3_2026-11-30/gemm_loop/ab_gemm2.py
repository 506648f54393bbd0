"""In-process A/B: wt-before's _C with exp_old(True) (A: old micro-kernel) vs exp_old(False) (B: new)."""
import sys; sys.path.insert(0, "/work/wt-before")
import time, statistics, torch
from levit_kernels.ops import cpu, _C
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
what = sys.argv[2] if len(sys.argv) > 2 else "gemm"
torch.set_num_threads(threads)
shapes = [(256,512,1024),(784,384,768),(3136,256,512),(3136,256,256),(784,384,384),(256,512,512),(16,512,1024),(49,384,768)]
m = statistics.median
tot = {"A":0,"B":0}
for (M,K,N) in shapes:
    x = torch.randn(M,K); w = torch.randn(N,K); bias = torch.randn(N)
    packed = cpu.pack_weight(w)
    if what == "mlp":
        w2 = torch.randn(K, N); b2 = torch.randn(K); p2 = cpu.pack_weight(w2)
        f = lambda: cpu.mlp_packed(x, packed, bias, p2, b2)
        fl = 4*M*K*N
    else:
        f = lambda: cpu.linear_packed(x, packed, N, bias, None, "hardswish")
        fl = 2*M*K*N
    outs = {}
    for n, flag in (("A", True), ("B", False)):
        _C.exp_old(flag); f(); outs[n] = f()
    assert torch.allclose(outs["A"], outs["B"], rtol=1e-5, atol=1e-4), "mismatch"
    reps = max(3, int(1e9/fl))
    res = {"A": [], "B": []}
    for rnd in range(10):
        order = (("A", True), ("B", False)) if rnd % 2 == 0 else (("B", False), ("A", True))
        for n, flag in order:
            _C.exp_old(flag)
            t = time.perf_counter()
            for _ in range(reps): f()
            res[n].append((time.perf_counter()-t)/reps)
    for n in res: tot[n] += m(res[n])
    print(f"M={M:5d} K={K:4d} N={N:5d}: A {fl/m(res['A'])/1e9:5.1f}  B {fl/m(res['B'])/1e9:5.1f} GFLOP/s  B/A {m(res['A'])/m(res['B']):.3f}", flush=True)
print(f"sum of medians: B/A {tot['A']/tot['B']:.3f}")
