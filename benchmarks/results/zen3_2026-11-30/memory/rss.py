"""RSS of a plain or fused LeViT: after building it (the fused eval() builds its plan) and after one forward."""
import resource, sys, torch, levit_kernels, warnings
warnings.simplefilter("ignore")
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
v, fused, batch = sys.argv[1], sys.argv[2] == "fused", int(sys.argv[3])
torch.set_num_threads(1)
base = rss()
m = levit_kernels.LeViT(v, fused=fused).eval()
built = rss()
with torch.no_grad(): m(torch.randn(batch, 3, 224, 224))
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{v} {'fused' if fused else 'plain'} batch {batch}: model+plan {built-base:.0f} MiB, after a forward {after-base:.0f} MiB, peak RSS {peak:.0f} MiB (import {base:.0f})")
