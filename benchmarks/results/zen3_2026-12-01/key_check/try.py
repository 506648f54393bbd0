import sys, time, statistics, ctypes, array, torch, levit_kernels
torch.set_num_threads(2)
dt = getattr(torch, sys.argv[1]); lines = int(sys.argv[2])
lib = ctypes.CDLL("/tmp/s27/pf/pf.so")
m = levit_kernels.LeViT("LeViT-128S", fused=True).eval().to(dt)
x = torch.randn(1, 3, 224, 224).to(dt)
with torch.no_grad():
    m(x); m(x)
    prog = m._plan.program; key = m._plan.key
    objs = [m] + list(key._modules) + key._dicts + key._vars + list(key._tensors)
    addrs = [id(o) for o in objs] + [t._cdata for t in key._tensors]
    arr = array.array("Q", addrs); ptr, n = arr.buffer_info()
    res = {"plain": [], "prefetch": [], "prefetch_only": []}
    for r in range(300):
        for k in ("plain", "prefetch"):
            prog(x)
            t0 = time.perf_counter()
            if k == "prefetch": lib.prefetch_all(ctypes.c_void_p(ptr), ctypes.c_int64(n), ctypes.c_int64(lines))
            ok = key.matches(m)
            res[k].append(time.perf_counter() - t0)
            assert ok
        prog(x); t0 = time.perf_counter(); lib.prefetch_all(ctypes.c_void_p(ptr), ctypes.c_int64(n), ctypes.c_int64(lines)); res["prefetch_only"].append(time.perf_counter() - t0)
print(dt, "objects", n, {k: round(statistics.median(v) * 1e6, 1) for k, v in res.items()}, "us")
