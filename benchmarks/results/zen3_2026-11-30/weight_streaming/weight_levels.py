"""Batch-1 layers stream their weights from memory: how much does that cost the fused MLP?

    python weight_levels.py M C H        (LeViT-256 stage 3 at batch 1: 16 512 1024)

Times cpu.mlp_packed (M rows, C -> H -> C, float32) with its packed weights hot (the call
repeated), in L3 (3 MB summed between calls, past L2) and in DRAM (48 MB summed, past L3),
against a plain read of the same weights from DRAM (NumPy sum, one thread), at 1 and 2 threads, in 8
interleaved rounds of 40 calls each; prints the median of the rounds' medians (min..max).
"""
import time, statistics, torch, sys
import numpy as np
from levit_kernels import cpu
torch.manual_seed(0)
M, C, H = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x = torch.randn(M, C)
w1 = torch.randn(H, C) / C**0.5; b1 = torch.randn(H); w2 = torch.randn(C, H) / H**0.5; b2 = torch.randn(C)
p1 = cpu.pack_weight(w1); p2 = cpu.pack_weight(w2)
mb = (p1.numel() + p2.numel()) * 4 / 2**20
# 3 MB (past L2), 48 MB (past L3). Read by NumPy, single-threaded: a torch op would leave
# torch's OpenMP threads spinning on the cores the timed call needs.
small, big = np.ones(3 << 18, np.float32), np.ones(48 << 18, np.float32)
res = {}
for rnd in range(8):
  for t in (1, 2):
    torch.set_num_threads(t)
    for name, ev in (("hot", None), ("weights in L3", small), ("weights in DRAM", big)):
        ts = []
        for _ in range(40):
            if ev is not None: ev.sum()
            s = time.perf_counter(); cpu.mlp_packed(x, p1, b1, p2, b2); ts.append(time.perf_counter() - s)
        res.setdefault((t, name), []).append(statistics.median(ts) * 1e3)
    for name, ev in (("raw read, DRAM", big),):
        ts = []
        for _ in range(40):
            ev.sum(); s = time.perf_counter(); p1.numpy().sum(); p2.numpy().sum()
            ts.append(time.perf_counter() - s)
        res.setdefault((t, name), []).append(statistics.median(ts) * 1e3)
print(f"mlp_packed M={M} C={C} H={H} (weights {mb:.1f} MB), median of 8 interleaved rounds of 40 calls")
for k, v in res.items(): print(f"  threads {k[0]} {k[1]:16s} {statistics.median(v):.3f} ms ({min(v):.3f}..{max(v):.3f})")
