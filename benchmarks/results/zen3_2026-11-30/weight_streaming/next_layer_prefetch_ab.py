"""A/B of next_layer_prefetch.diff, built in a scratch checkout at /work/wt-before (path below).

    python next_layer_prefetch_ab.py VARIANT THREADS BATCH
"""
import os, sys, time, statistics, torch
sys.path.insert(0, "/work/wt-before")
import levit_kernels
variant, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
m = levit_kernels.LeViT(variant, fused=True).eval()
x = torch.randn(batch, 3, 224, 224)
with torch.no_grad():
    m(x); prog = m._plan.program
    ref = prog(x)
    res = {}
    for rnd in range(12):
        for la in ("0", "1"):
            os.environ["LEVIT_LOOKAHEAD"] = la
            ts = []
            for _ in range(15 if batch == 1 else 3):
                s = time.perf_counter(); out = prog(x); ts.append(time.perf_counter() - s)
            assert torch.equal(out, ref)
            res.setdefault(la, []).append(statistics.median(ts) * 1e3)
print(f"{variant} b{batch} t{threads}: " + "; ".join(f"lookahead={k}: {statistics.median(v):.2f} ms ({min(v):.2f}..{max(v):.2f})" for k, v in res.items()))
