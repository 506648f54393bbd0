import ctypes, sys, time, statistics, torch
from levit_kernels.ops import cpu, extension
torch.set_num_threads(1)
flag = ctypes.c_int.in_dll(ctypes.CDLL(extension._C.__file__), "levit_ab_old")
variants = [int(v) for v in sys.argv[1].split(",")]
shapes = [(3136, 128, 256), (784, 256, 512), (256, 384, 768), (784, 256, 1280), (16*196*4, 27, 16)]
for m, k, n in shapes:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).bfloat16(); w = torch.randn(n, k, generator=g).bfloat16(); b = torch.randn(n, generator=g).bfloat16()
    pw = cpu.pack_weight(w)
    f = lambda: cpu.linear_packed(x, pw, n, b, None, "hardswish")
    res = {v: [] for v in variants}; outs = {}
    for v in variants: flag.value = v; f()
    for r in range(15):
        for v in (variants if r % 2 else variants[::-1]):
            flag.value = v
            t = time.perf_counter(); outs[v] = f(); res[v].append(time.perf_counter() - t)
    base = variants[0]
    line = f"M{m} K{k} N{n}: "
    for v in variants:
        med = statistics.median(res[v]); ratio = statistics.median(a / b_ for a, b_ in zip(res[base], res[v]))
        line += f" v{v} {2*m*k*n/med/1e9:5.1f} GF/s ({ratio:.3f}x, same={torch.equal(outs[v], outs[base])})"
    print(line)
flag.value = 0
