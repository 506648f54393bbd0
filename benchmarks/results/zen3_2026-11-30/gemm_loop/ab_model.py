import sys; sys.path.insert(0, "/work/wt-before")
import time, statistics, torch, levit_kernels
from levit_kernels.ops import _C
variant, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model = levit_kernels.LeViT(variant, fused=True).eval()
x = torch.randn(batch, 3, 224, 224)
m = statistics.median
with torch.no_grad():
    outs = {}
    for flag in (True, False):
        _C.exp_old(flag); model(x); outs[flag] = model(x)
    assert torch.allclose(outs[True], outs[False], rtol=1e-4, atol=1e-4)
    res = {True: [], False: []}
    reps = 3 if batch > 1 else 30
    for rnd in range(10):
        for flag in ((True, False) if rnd % 2 == 0 else (False, True)):
            _C.exp_old(flag)
            t = time.perf_counter()
            for _ in range(reps): model(x)
            res[flag].append((time.perf_counter() - t) / reps)
print(f"{variant} b{batch} t{threads}: old {batch/m(res[True]):6.1f} img/s  new {batch/m(res[False]):6.1f} img/s  new/old {m(res[True])/m(res[False]):.3f}")
