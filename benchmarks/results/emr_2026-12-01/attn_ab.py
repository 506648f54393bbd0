import time, torch
from levit_kernels import cpu
torch.set_num_threads(1)
B=16
shapes = [(4,196,196,32,64),(8,49,196,32,64),(6,49,49,32,64),(8,16,16,32,64)]  # LeViT-256-ish
for H,nq,nk,dk,dv in shapes:
    qkv = torch.randn(B, nk, H, 2*dk+dv).bfloat16()
    q = torch.randn(B, nq, H, dk).bfloat16().permute(0,2,1,3)
    k = qkv[..., :dk].permute(0,2,1,3); v = qkv[..., 2*dk:].permute(0,2,1,3)
    bias = torch.randn(H, nq, nk).bfloat16()
    res = {}
    for rnd in range(5):
        for isa in ("amx_bf16", "avx512"):
            cpu.set_isa(isa)
            cpu.attention(q,k,v,bias,dk**-0.5,True)
            t=time.perf_counter(); n=20
            for _ in range(n): cpu.attention(q,k,v,bias,dk**-0.5,True)
            res.setdefault(isa, []).append((time.perf_counter()-t)/n*1e3)
    print(H,nq,nk,{k: round(min(v),3) for k,v in res.items()})
