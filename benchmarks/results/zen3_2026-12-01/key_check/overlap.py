# Would overlapping the plan-key check with the C++ forward pay? Prototype with a Python helper thread.
import sys, time, statistics, threading, torch, levit_kernels
torch.set_num_threads(int(sys.argv[2]))
dt = getattr(torch, sys.argv[1])
m = levit_kernels.LeViT("LeViT-128S", fused=True).eval().to(dt)
x = torch.randn(1, 3, 224, 224).to(dt)
go, done = threading.Event(), threading.Event()
box = {}
def helper():
    while True:
        go.wait(); go.clear()
        box["out"] = prog(x)
        done.set()
with torch.no_grad():
    m(x); m(x)
    prog = m._plan.program; key = m._plan.key
    threading.Thread(target=helper, daemon=True).start()
    res = {"serial": [], "overlap": [], "program": []}
    for r in range(300):
        t0 = time.perf_counter(); ok = key.matches(m); out = prog(x); res["serial"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); go.set(); time.sleep(0); ok2 = key.matches(m); done.wait(); done.clear(); res["overlap"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); prog(x); res["program"].append(time.perf_counter() - t0)
        assert ok and ok2
print(dt, "threads", sys.argv[2], {k: round(statistics.median(v) * 1e3, 3) for k, v in res.items()}, "ms")
