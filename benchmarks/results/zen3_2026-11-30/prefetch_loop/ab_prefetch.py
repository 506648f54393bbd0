import sys, time, statistics, ctypes, os, json
sys.path.insert(0, "/work/wt-before")
import torch
import levit_kernels.ops.extension as e
from levit_kernels import LeViT
lib = ctypes.CDLL(e._C.__file__)
flag = ctypes.c_int.in_dll(lib, "levit_exp_flag"); rows = ctypes.c_int.in_dll(lib, "levit_exp_rows")
rows.value = int(os.environ.get("ROWS", "48"))
FLAGS = [int(f) for f in os.environ.get("FLAGS", "0,1,2").split(",")]
ROUNDS = int(os.environ.get("ROUNDS", "6"))
settings = [(v, b, t) for v in os.environ.get("VARIANTS", "LeViT-128S,LeViT-256").split(",") for b, t in ((16, 1), (1, 2))]
res = {}
for v, b, t in settings:
    torch.set_num_threads(t)
    m = LeViT(v, fused=True).eval(); x = torch.randn(b, 3, 224, 224)
    calls = 4 if b == 16 else 40
    with torch.inference_mode():
        m(x)
        times = {f: [] for f in FLAGS}
        for r in range(ROUNDS):
            for f in FLAGS:
                flag.value = f
                m(x)
                ts = []
                for _ in range(calls):
                    t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
                times[f].append(statistics.median(ts))
    base = statistics.median(times[0])
    line = f"{v:11s} b{b} t{t}: " + "  ".join(
        f"flag{f} {b/statistics.median(times[f]):7.1f} img/s ({base/statistics.median(times[f]):.3f}x)" for f in FLAGS)
    print(line, flush=True)
    res[f"{v} b{b} t{t}"] = {f: times[f] for f in FLAGS}
json.dump(res, open(os.environ.get("OUT", "/tmp/ab_prefetch.json"), "w"))
