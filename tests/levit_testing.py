"""Helpers shared by the tests: random weights, the original release's key names, and the
CPU kernel paths / thread counts to run kernel tests on."""
import contextlib
import re

import pytest
import torch

from levit_kernels import cpu


def randomize_(model, generator=None):
    """Random weights everywhere, BatchNorm statistics and attention biases included.

    LeViT initialises some BN gains and every bias table to zero, which would hide mistakes in
    how those are loaded, folded or gathered; this fills them with values of realistic size.
    As in a trained LeViT, each residual branch ends in a small BN gain, so activations stay
    O(1) through the depth and float32 rounding is not amplified: the plain model in float32
    agrees with itself in float64 to ~1e-6, which leaves room to test kernels at 1e-5.
    """
    g = generator or torch.Generator().manual_seed(torch.seed() % 2**31)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("attention_biases"):
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.ndim >= 2:                         # conv/linear weights: keep activations O(1)
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("bn.weight"):
                branch_end = ".proj.ln.bn" in name or ".ln2.bn" in name
                gain = 0.2 if branch_end else 1.0
                t.copy_(gain * (1 + 0.2 * torch.randn(t.shape, generator=g)))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model


def timm_to_original(state, depth):
    """Rename a timm-style LeViT state dict to the original release's flat naming.

    Written independently of levit_kernels.checkpoint (regexes and index arithmetic over the
    original list layout) so that the two can check each other.
    """
    def flat_index(stage, block, part):
        # the original `blocks` list: per stage, [subsample, its MLP] if stage > 0, then
        # [attention, MLP] per block.
        start = sum(2 * d + (2 if s > 0 else 0) for s, d in enumerate(depth[:stage]))
        return start + (2 if stage > 0 else 0) + 2 * block + part

    out = {}
    leaf_of = {"linear": "c", "bn": "bn"}
    for key, value in state.items():
        if key.endswith("attention_bias_idxs"):
            continue
        m = re.fullmatch(r"stem\.conv(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            out[f"patch_embed.{2 * (int(m[1]) - 1)}.{leaf_of[m[2]]}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.attn\.(qkv|proj\.ln)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = "qkv" if m[3] == "qkv" else "proj.1"
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 0)}.m.{sub}.{leaf_of[m[4]]}.{m[5]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.attn\.attention_biases", key)
        if m:
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 0)}.m.attention_biases"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.ln(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = 0 if m[3] == "1" else 2
            out[f"blocks.{flat_index(int(m[1]), int(m[2]), 1)}.m.{sub}.{leaf_of[m[4]]}.{m[5]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.attn_downsample\.(kv|q\.ln|proj\.ln)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = {"kv": "kv", "q.ln": "q.1", "proj.ln": "proj.1"}[m[2]]
            idx = flat_index(int(m[1]), 0, 0) - 2
            out[f"blocks.{idx}.{sub}.{leaf_of[m[3]]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.attn_downsample\.attention_biases", key)
        if m:
            out[f"blocks.{flat_index(int(m[1]), 0, 0) - 2}.attention_biases"] = value
            continue
        m = re.fullmatch(r"stages\.(\d+)\.downsample\.mlp\.ln(\d)\.(linear|bn)\.(\w+)", key)
        if m:
            sub = 0 if m[2] == "1" else 2
            out[f"blocks.{flat_index(int(m[1]), 0, 0) - 1}.m.{sub}.{leaf_of[m[3]]}.{m[4]}"] = value
            continue
        m = re.fullmatch(r"(head|head_dist)\.(linear|bn)\.(\w+)", key)
        if m:
            out[f"{m[1]}.{'l' if m[2] == 'linear' else 'bn'}.{m[3]}"] = value
            continue
        raise KeyError(f"no original-release name for {key}")
    return out


# ---- CPU kernel paths and thread counts: fixtures for the kernel test files -----------------
# Import them into a test module (`from levit_testing import isa, threads`) to run each test on
# every ISA path the CPU has (levit_kernels.cpu.set_isa) and with 1 and 2 threads.
CPU_ISAS = cpu.available_isas() if cpu.is_available() else []


@contextlib.contextmanager
def using_isa(name):
    """Run the CPU kernels on one ISA path, restoring the previous one afterwards."""
    old = cpu.isa()
    cpu.set_isa(name)
    try:
        yield name
    finally:
        cpu.set_isa(old)


@contextlib.contextmanager
def using_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    with using_isa(request.param):
        yield request.param


# Every path the package has, for tests that must say which ones this machine cannot run:
# a path the CPU lacks is skipped with the reason, never silently left out.
ALL_ISAS = ("generic", "avx2", "avx512", "avx512_bf16")


@pytest.fixture(params=ALL_ISAS)
def every_isa(request):
    if request.param not in CPU_ISAS:
        pytest.skip(f"this CPU (or OS) lacks the {request.param} path (CPUID/XGETBV; paths "
                    f"here: {', '.join(CPU_ISAS) or 'none, extension not built'})")
    with using_isa(request.param):
        yield request.param


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    with using_threads(request.param):
        yield request.param


def assert_close(out, expected, rel=1e-5):
    """max|out - expected| <= rel · max|expected|: the float32 kernels' tolerance (see
    test_cpu_kernels.py's docstring for why the bound is relative to the output's scale)."""
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert torch.isfinite(out).all(), "non-finite output (a NaN guard or gap was read?)"
    err = (out.double() - expected.double()).abs().max().item() if out.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    assert err <= rel * max(scale, 1e-30), f"max err {err:.3e} vs {rel:.0e}·{scale:.3e}"


def op_calls(seed=0, tokens=16, channels=32, heads=2, key_dim=8):
    """{name: zero-argument call} of every levit_kernels.ops op on fixed small CPU inputs
    shaped like a LeViT block (q/k/v are strided views of one packed projection)."""
    from levit_kernels import ops

    g = torch.Generator().manual_seed(seed)
    n, c, h, dk, dv = tokens, channels, heads, key_dim, 2 * key_dim
    qkv = torch.randn(2, n, h, 2 * dk + dv, generator=g).permute(0, 2, 1, 3)
    q, k, v = qkv[..., :dk], qkv[..., dk:2 * dk], qkv[..., 2 * dk:]
    bias = torch.randn(h, n, n, generator=g)
    x = torch.randn(2, n, c, generator=g)
    w1, b1 = torch.randn(2 * c, c, generator=g) / c ** 0.5, torch.randn(2 * c, generator=g)
    w2, b2 = torch.randn(c, 2 * c, generator=g) / (2 * c) ** 0.5, torch.randn(c, generator=g)
    residual = torch.randn(2, n, 2 * c, generator=g)
    w1p, w2p = cpu.pack_weight(w1), cpu.pack_weight(w2)
    return {
        "attention": lambda: ops.attention(q, k, v, bias, dk ** -0.5, True),
        "attention_probs": lambda: ops.attention_probs(q, k, bias, dk ** -0.5),
        "linear": lambda: ops.linear(x, w1, b1, residual, "hardswish"),
        "mlp": lambda: ops.mlp(x, w1, b1, w2, b2),
        "linear_packed": lambda: ops.linear_packed(x, w1p, 2 * c, b1, residual, "hardswish"),
        "mlp_packed": lambda: ops.mlp_packed(x, w1p, b1, w2p, b2),
    }


# ---- bf16 inputs shared by tests/test_bf16_*.py ---------------------------------------------
def randn_bf16(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


def qkv_bf16(b, h, n_q, n_k, dk, dv):
    """q, k, v as strided views of packed bf16 projections, as LeViT makes them."""
    kv = randn_bf16(b, n_k, h, dk + dv).permute(0, 2, 1, 3)
    q = randn_bf16(b, n_q, h, dk + 3).permute(0, 2, 1, 3)[..., :dk]
    return q, kv[..., :dk], kv[..., dk:]
