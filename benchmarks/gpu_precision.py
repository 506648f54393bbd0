"""The precision choices of the Triton kernels, measured on CPU by emulating the GPU arithmetic.

    python benchmarks/gpu_precision.py            (prints the markdown tables of benchmarks/README.md)

The interpreter ignores tl.dot's input_precision and has no bfloat16 arithmetic, so the two
choices are measured here in PyTorch, step by step as the kernels compute, against a float64
reference, at LeViT-256's shapes (random inputs of LeViT-like scale, fixed seed):

1. float32 dots: TF32 (operands rounded to 10 mantissa bits, round-to-nearest-away as PTX's
   cvt.rna.tf32.f32 does, products accumulated in fp32), 3xTF32 (a = a_hi + a_lo, both TF32,
   a*b ~ a_hi*b_hi + a_hi*b_lo + a_lo*b_hi, what Triton's "tf32x3" emits) and IEEE fp32.
2. bfloat16 attention: the probabilities rounded to bfloat16 before the AV product (what the
   kernel does, and what PyTorch's bf16 softmax @ v does) against keeping them in fp32 (a TF32
   product of fp32 probabilities and values), both measured against plain PyTorch in bf16 by
   flash-attention's rule: error / torch_bf16_error <= 2.
"""
from __future__ import annotations

import torch

SEED = 0
CASES = {   # name: (B, H, Nq, Nk, Dk, Dv) attention; (M, K, N) linear
    "attention 196x196 (Dk 32, Dv 64)": (8, 4, 196, 196, 32, 64),
    "attention 49x196 shrink (Dv 128)": (8, 8, 49, 196, 32, 128),
    "attention 16x16 (Dv 64)": (8, 8, 16, 16, 32, 64),
    "linear 256 -> 512 (qkv)": (1568, 256, 512),
    "linear 768 -> 384 (MLP fc2)": (392, 768, 384),
}


def tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 explicit mantissa bits), nearest with ties away from zero."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def dot(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a @ b as the kernels' tl.dot computes it for float32 inputs (fp32 accumulation is
    modelled exactly by an fp64 product rounded once: its own error is far below TF32's)."""
    a, b = a.float(), b.float()
    if precision == "ieee":
        return (a.double() @ b.double()).float()
    a_hi, b_hi = tf32(a), tf32(b)
    out = a_hi.double() @ b_hi.double()
    if precision == "tf32x3":
        a_lo, b_lo = tf32(a - a_hi), tf32(b - b_hi)
        out = out + a_hi.double() @ b_lo.double() + a_lo.double() @ b_hi.double()
    return out.float()


def attention(q, k, v, bias, scale, precision, p_dtype=None):
    """The kernel's attention math: scores by `precision`, fp32 softmax, probabilities
    optionally rounded to p_dtype, AV product by `precision`."""
    s = dot(q, k.transpose(-1, -2), precision) * scale + bias.float()
    p = torch.softmax(s, dim=-1)
    if p_dtype is not None:
        p = p.to(p_dtype).float()
        v = v.float()
    return dot(p, v, precision)


def rel(out, ref) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def attention_inputs(b, h, nq, nk, dk, dv, g):
    q = torch.randn(b, h, nq, dk, generator=g)
    k = torch.randn(b, h, nk, dk, generator=g)
    v = torch.randn(b, h, nk, dv, generator=g)
    bias = 2 * torch.randn(h, nq, nk, generator=g)       # learned biases reach a few units
    return q, k, v, bias, dk ** -0.5


def fp32_table() -> str:
    g = torch.Generator().manual_seed(SEED)
    lines = ["| case | TF32 | 3xTF32 | IEEE fp32 |", "|---|---|---|---|"]
    for name, shape in CASES.items():
        if name.startswith("attention"):
            q, k, v, bias, scale = attention_inputs(*shape, g)
            ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale
                                + bias.double(), -1) @ v.double()
            errs = [rel(attention(q, k, v, bias, scale, p), ref)
                    for p in ("tf32", "tf32x3", "ieee")]
        else:
            m, k_in, n = shape
            x = torch.randn(m, k_in, generator=g)
            w = torch.randn(n, k_in, generator=g) / k_in ** 0.5
            ref = x.double() @ w.double().T
            errs = [rel(dot(x, w.T, p), ref) for p in ("tf32", "tf32x3", "ieee")]
        lines.append(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    return "\n".join(lines)


def bf16_table() -> str:
    g = torch.Generator().manual_seed(SEED + 1)
    lines = ["| case | torch bf16 | kernel, p rounded to bf16 | kernel, p kept fp32 (TF32 AV) "
             "| ratio (rounded / torch) |", "|---|---|---|---|---|"]
    for name, shape in CASES.items():
        if not name.startswith("attention"):
            continue
        q, k, v, bias, scale = (t.to(torch.bfloat16) if isinstance(t, torch.Tensor) else t
                                for t in attention_inputs(*shape, g))
        ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale + bias.double(),
                            -1) @ v.double()
        torch_bf16 = torch.softmax(q @ k.transpose(-1, -2) * scale + bias, -1) @ v
        # bf16 operands are exact in fp32, so the score product is an exact-input fp32 dot
        rounded = attention(q, k, v, bias, scale, "ieee", p_dtype=torch.bfloat16)
        kept = attention(q, k, v, bias, scale, "tf32")
        errs = [rel(torch_bf16, ref), rel(rounded.to(torch.bfloat16), ref),
                rel(kept.to(torch.bfloat16), ref)]
        lines.append(f"| {name} | " + " | ".join(f"{e:.1e}" for e in errs)
                     + f" | {errs[1] / errs[0]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("float32 dot precision, max |error| / max |reference| (fp64 reference):\n")
    print(fp32_table())
    print("\nbfloat16 attention, max |error| / max |reference| (fp64 reference), output in "
          "bf16:\n")
    print(bf16_table())
