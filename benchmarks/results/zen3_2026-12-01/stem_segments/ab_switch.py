import ctypes, sys, time, statistics, torch, levit_kernels
from levit_kernels.ops import extension
variant, batch, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
flag = ctypes.c_int.in_dll(ctypes.CDLL(extension._C.__file__), "levit_ab_old")
f = levit_kernels.LeViT(variant, fused=True).eval().to(getattr(torch, sys.argv[5]) if len(sys.argv) > 5 else torch.float32)
z = levit_kernels.freeze(f)
x = torch.randn(batch, 3, 224, 224).to(f.head.linear.weight.dtype)
res = {0: [], 1: []}; outs = {}
for r in range(rounds):
    for v in ((1, 0) if r % 2 else (0, 1)):
        flag.value = v
        t = time.perf_counter(); outs[v] = z(x); res[v].append(time.perf_counter() - t)
ratios = [o / n for o, n in zip(res[1], res[0])]
print(f"{variant} b{batch} t{threads}: max|diff| {(outs[0]-outs[1]).abs().max().item():.1e}; per-call-pair old/new median {statistics.median(ratios):.3f} "
      f"[p25 {sorted(ratios)[len(ratios)//4]:.3f}, p75 {sorted(ratios)[3*len(ratios)//4]:.3f}]; old {statistics.median(res[1])*1e3:.2f} ms, new {statistics.median(res[0])*1e3:.2f} ms")
