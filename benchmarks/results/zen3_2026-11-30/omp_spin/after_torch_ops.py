"""A fused batch-1 forward (2 threads) right after other work: nothing, a sleep, a 64 MB
torch op (1 or 2 threads), a tiny parallel torch matmul (MKL/OpenMP). Median of 40 rounds,
interleaved. Run it with and without OMP_WAIT_POLICY=PASSIVE, and with LEVIT_THREAD_POOL=own
(the kernels' own pool) against the default (PyTorch's OpenMP team, where it can be shared).

    python after_torch_ops.py LeViT-128S
"""
import time, statistics, torch, levit_kernels, warnings, sys
warnings.simplefilter("ignore")
torch.set_num_threads(2)
print("kernel threads:", levit_kernels.cpu.threads_note())
m = levit_kernels.LeViT(sys.argv[1] if len(sys.argv) > 1 else "LeViT-128S", fused=True).eval()
x = torch.randn(1, 3, 224, 224)
big = torch.ones(16 << 20)  # 64 MB
small = torch.ones(1 << 16)
def evict_1t():
    torch.set_num_threads(1); big.add_(1.0); torch.set_num_threads(2)
def spin_only():
    small.add_(1.0)   # parallel? 64K elements: below grain size -> maybe not parallel
def spin_par():
    (small.view(256, 256) @ small.view(256, 256))  # parallel mm, tiny data
pre = {"back to back": lambda: None, "sleep 20ms": lambda: time.sleep(0.02),
       "evict 64MB (1 thread)": evict_1t, "evict 64MB (2 threads)": lambda: big.add_(1.0),
       "tiny parallel mm": spin_par, "tiny parallel mm + sleep 20ms": lambda: (spin_par(), time.sleep(0.02))}
res = {k: [] for k in pre}
with torch.no_grad():
    for r in range(40):
        for k, f in pre.items():
            m(x); f()
            t = time.perf_counter(); m(x); res[k].append(time.perf_counter() - t)
for k, v in res.items():
    print(f"{k:32s} {statistics.median(v)*1e3:7.2f} ms")
