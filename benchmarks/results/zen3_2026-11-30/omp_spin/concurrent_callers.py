"""Throughput of LeViT-128S fused, batch 1, 2 torch threads, called from 1 and from 4 Python threads at
once (as a threaded server would), on the own pool and on PyTorch's OpenMP team, alternating; median of 3."""
import threading, time, torch, levit_kernels, sys, statistics
from levit_kernels.ops import _C, openmp_team
torch.set_num_threads(2)
m = levit_kernels.LeViT("LeViT-128S", fused=True).eval()
x = torch.randn(1, 3, 224, 224)
def serve(n_threads, seconds=4.0):
    count = [0] * n_threads
    stop = time.perf_counter() + seconds
    def worker(i):
        with torch.no_grad():
            while time.perf_counter() < stop:
                m(x); count[i] += 1
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return sum(count) / seconds
modes = {"own pool": lambda: _C.set_team_runner(address=0), "openmp team": lambda: openmp_team.attach(_C)}
res = {k: {1: [], 4: []} for k in modes}
for r in range(3):
    for k, f in modes.items():
        f()
        for n in (1, 4):
            res[k][n].append(serve(n))
for k in res:
    print(k, " ".join(f"{n} threads: {statistics.median(v):.1f} img/s" for n, v in res[k].items()))
import os
print("OS threads now:", len(os.listdir("/proc/self/task")))
