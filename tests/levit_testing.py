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
ALL_ISAS = ("generic", "avx2", "avx512", "avx512_bf16", "amx_bf16")


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


def assert_close(out, expected, rel=1e-5, terms=None):
    """max|out - expected| <= rel · max|expected|: the float32 kernels' tolerance (see
    test_cpu_kernels.py's docstring for why the bound is relative to the output's scale).
    `terms`: the magnitudes summed into each output (e.g. |x|·|W|ᵀ + |b| + |r|), for outputs
    that may all cancel (a single one): the scale is then the larger of the two."""
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert torch.isfinite(out).all(), "non-finite output (a NaN guard or gap was read?)"
    err = (out.double() - expected.double()).abs().max().item() if out.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    if terms is not None and terms.numel():
        scale = max(scale, terms.abs().max().item())
    assert err <= rel * max(scale, 1e-30), f"max err {err:.3e} vs {rel:.0e}·{scale:.3e}"


# ---- the ops' sample inputs: one table for every test that runs "each op once" --------------
def qkv_views(batch, heads, n_q, n_k, d_k, d_v, *, generator=None, dtype=torch.float32,
              device="cpu"):
    """q, k, v (B, H, N, D) as LeViT's forward makes them: strided views of its projections,
    split with the model's own layout (levit.split_heads). Nq == Nk: self-attention, one
    [q | k | v] projection; otherwise shrinking attention, a [k | v] projection and q's own."""
    from levit_kernels.model.levit import split_heads

    def projection(n, parts):
        t = torch.randn(batch, n, heads * sum(parts.values()), generator=generator, dtype=dtype)
        return split_heads(t.to(device), heads, parts)

    if n_q == n_k:
        return projection(n_k, {"q": d_k, "k": d_k, "v": d_v})
    (q,) = projection(n_q, {"q": d_k})
    return (q,) + projection(n_k, {"k": d_k, "v": d_v})


OP_FAMILY = {"attention": "attention", "attention_probs": "attention", "linear": "linear",
             "linear_packed": "linear", "mlp": "mlp", "mlp_packed": "mlp",
             "conv2d_packed": "conv2d", "pack_weight": "linear"}   # -> marker (pyproject.toml)


def op_samples(device="cpu", seed=0, tokens=16, channels=32, heads=2, key_dim=8,
               dtype=torch.float32):
    """[(id, op overload, args)] calling every `levit::*` op on small inputs shaped like a
    LeViT block (q/k/v strided views of one packed projection; an odd channel count for the
    convolution), in `dtype`. The CPU-only packed ops are left out on other devices."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, dk, dv = tokens, channels, heads, key_dim, 2 * key_dim

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    q, k, v = qkv_views(2, h, n, n, dk, dv, generator=g, dtype=dtype, device=device)
    bias = randn(h, n, n)
    x = randn(2, n, c)
    w1, b1 = randn(2 * c, c, scale=c ** -0.5), randn(2 * c)
    w2, b2 = randn(c, 2 * c, scale=(2 * c) ** -0.5), randn(c)
    residual = randn(2, n, 2 * c)
    levit = torch.ops.levit
    samples = [
        ("attention", levit.attention.default, (q, k, v, bias, dk ** -0.5, True)),
        ("attention-no-act", levit.attention.default, (q, k, v, bias, dk ** -0.5, False)),
        ("attention_probs", levit.attention_probs.default, (q, k, bias, dk ** -0.5)),
        ("linear", levit.linear.default, (x, w1, b1, residual, "hardswish")),
        ("linear-plain", levit.linear.default, (x, w1, None, None, "none")),
        ("mlp", levit.mlp.default, (x, w1, b1, w2, b2)),
    ]
    if device == "cpu":
        w1p, w2p = cpu.pack_weight(w1), cpu.pack_weight(w2)
        conv_w, conv_b = randn(17, 3, 3, 3, scale=0.2), randn(17)
        images = randn(2, 9, 11, 3)                                     # NHWC
        samples += [
            ("linear_packed", levit.linear_packed.default,
             (x, w1p, 2 * c, b1, residual, "hardswish")),
            ("mlp_packed", levit.mlp_packed.default, (x, w1p, b1, w2p, b2)),
            ("conv2d_packed", levit.conv2d_packed.default,
             (images, cpu.pack_conv_weight(conv_w), 17, 3, 2, 1, conv_b, "hardswish")),
        ]
    return samples


def op_params(device="cpu", **sizes):
    """op_samples as pytest params, each id'd by its case and marked with its op's marker,
    so `pytest -m attention` selects them."""
    return [pytest.param(op, args, id=name, marks=getattr(pytest.mark, op_family(op)))
            for name, op, args in op_samples(device, **sizes)]


def op_family(op) -> str:
    """The pytest marker of a levit::* op overload (levit::attention.default -> attention)."""
    return OP_FAMILY[op.name().split("::")[1]]


def op_calls(**sizes):
    """{id: zero-argument call} of every op sample on the CPU."""
    return {name: (lambda op=op, args=args: op(*args)) for name, op, args in op_samples(**sizes)}


def assert_usage_error(argv, message, capsys):
    """`levit-kernels argv` run in-process ends with exit code 2 and, last on stderr, one
    `levit-kernels ...: error: ...` line that contains `message`."""
    from levit_kernels.tools.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:      # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1], err
    assert "error:" in err[-1] and err[-1].startswith("levit-kernels")


# ---- bf16 inputs shared by tests/test_bf16_*.py ---------------------------------------------
def randn_bf16(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


def qkv_bf16(*sizes):
    """qkv_views in bfloat16."""
    return qkv_views(*sizes, dtype=torch.bfloat16)
