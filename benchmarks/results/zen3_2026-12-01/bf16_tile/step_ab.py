# In-process A/B of the fused program, step by step: flag 0 (new) vs ALT (old), alternating
# profiled calls; per step the median of old/new time ratios.
import ctypes, sys, time, statistics, torch, levit_kernels
from levit_kernels.ops import extension
from levit_kernels.model.plan import FusedPlan
variant, batch, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dt = getattr(torch, sys.argv[5]) if len(sys.argv) > 5 else torch.float32
alt = int(sys.argv[6]) if len(sys.argv) > 6 else 1
torch.set_num_threads(threads)
flag = ctypes.c_int.in_dll(ctypes.CDLL(extension._C.__file__), "levit_ab_old")
m = levit_kernels.LeViT(variant, fused=False).eval()
p = FusedPlan(m, torch.device("cpu"), dt).program
x = torch.randn(batch, 3, 224, 224).to(dt)
steps = {0: {}, 1: {}}; tot = {0: [], 1: []}; outs = {}
for v in (0, 1): flag.value = v * alt; p.profile(x)
for r in range(rounds):
    for v in ((1, 0) if r % 2 else (0, 1)):
        flag.value = v * alt
        t = time.perf_counter(); outs[v], st = p.profile(x); tot[v].append(time.perf_counter() - t)
        for s in st: steps[v].setdefault(s["step"], []).append(s["seconds"])
print(f"{variant} b{batch} t{threads} {dt}: same={torch.equal(outs[0], outs[1])}; whole call old/new {statistics.median(o/n for o, n in zip(tot[1], tot[0])):.3f} (old {statistics.median(tot[1])*1e3:.2f} ms, new {statistics.median(tot[0])*1e3:.2f})")
for name in steps[0]:
    o, n = steps[1][name], steps[0][name]
    ratio = statistics.median(a / b for a, b in zip(o, n))
    if sys.argv[7:] and sys.argv[7] not in name: continue
    print(f"  {ratio:6.3f}  old {statistics.median(o)*1e3:7.3f} new {statistics.median(n)*1e3:7.3f} ms  {name}")
kinds = {}
for name in steps[0]:
    k = name.split(": ")[-1] if "attention (" in name else ("stem conv" if name.startswith("stem conv") else ("mlp" if " mlp " in name else name.split(" (")[0]))
    o, n = sum(statistics.median(steps[1][name]) for _ in [0]), statistics.median(steps[0][name])
    a = kinds.setdefault(k, [0, 0]); a[0] += o; a[1] += n
for k, (o, n) in kinds.items(): print(f"  kind {k:28s} old {o*1e3:8.3f} new {n*1e3:8.3f} ms  {o/n:.3f}x")
