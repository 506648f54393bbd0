"""The C++ CPU kernels (levit_kernels.cpu) against the pure-PyTorch oracle (reference.py).

Run pinned to one core: `taskset -c 1 python -m pytest tests/test_cpu_kernels.py -q`.

Tolerance (float32): max|out - ref| <= 1e-5 · max|ref|, i.e. a 1e-5 error relative to the
output's scale (for test_linear, of the larger of that and the summed terms' magnitudes,
as its (1, 1, 1) case is a single sum that can cancel). The kernels reassociate sums (register-blocked dot products, FMA, a polynomial
exp), so element-wise bit equality is not expected; but a relative-to-max bound rather than
torch.testing's per-element rtol is used because outputs that cancel to ~0 (Hardswish near
-3, residual sums) carry absolute, not relative, rounding error. Where float32 itself is
ill-conditioned (logits ~±80) the kernel is judged against a float64 reference and allowed 2×
the error of the float32 reference, as flash-attention does for low precision.

Every test runs on every ISA path the CPU has (set_isa) and with 1 and 2 threads; inputs are
fresh random tensors each run.
"""
import math

import pytest
import torch

from levit_kernels import cpu, reference as ref
from levit_testing import CPU_ISAS, assert_close, isa, qkv_views, threads  # noqa: F401

C = pytest.importorskip("levit_kernels.ops._C")  # test_build.py fails loudly if it is missing

# (Nq, Nk, Dk, Dv, H): LeViT stage shapes (Dv = 2·Dk) and shrinking blocks (Dv = 4·Dk)
LEVIT_ATTN = [(n, n, dk, 2 * dk, 4) for n in (196, 49, 16) for dk in (16, 32)] + \
             [(49, 196, dk, 4 * dk, 8) for dk in (16, 32)] + [(16, 49, dk, 4 * dk, 6) for dk in (16, 32)]
ODD_ATTN = [(1, 1, 1, 1, 1), (7, 7, 5, 13, 3), (37, 37, 13, 5, 2), (197, 197, 16, 32, 2),
            (1, 37, 7, 7, 2), (37, 1, 16, 33, 1), (7, 197, 37, 197, 1), (197, 7, 32, 17, 3)]


@pytest.mark.attention
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shape", LEVIT_ATTN + ODD_ATTN, ids=str)
def test_attention(shape, batch, isa, threads):
    n_q, n_k, dk, dv, h = shape
    q, k, v = qkv_views(batch, h, n_q, n_k, dk, dv)
    bias = torch.randn(h, n_q, n_k) * 3
    scale = dk ** -0.5
    for hs in (True, False):
        assert_close(cpu.attention(q, k, v, bias, scale, hs), ref.attention(q, k, v, bias, scale, hs))
    assert_close(cpu.attention_probs(q, k, bias, scale), ref.attention_probs(q, k, bias, scale))


@pytest.mark.attention
def test_attention_does_not_copy_or_modify_inputs(isa):
    q, k, v = qkv_views(2, 4, 49, 49, 16, 32)
    bias = torch.randn(4, 49, 49)
    before = [t.clone() for t in (q, k, v, bias)]
    cpu.attention(q, k, v, bias, 0.25, True)
    for t, b in zip((q, k, v, bias), before):
        assert torch.equal(t, b)


@pytest.mark.attention
def test_softmax_large_logits_and_negative_bias(isa, threads):
    """scale·q·k up to ~±80 and biases down to -20: no overflow, float32-accurate."""
    b, h, n, dk = 2, 3, 49, 16
    q = torch.randn(b, h, n, dk)
    k = torch.randn(b, h, n, dk)
    qk = (q @ k.transpose(-1, -2)).abs().max().item()
    scale = 80.0 / qk
    bias = -20.0 * torch.rand(h, n, n)
    v = torch.randn(b, h, n, 32)
    for fn, args in ((cpu.attention_probs, (q, k, bias, scale)),
                     (cpu.attention, (q, k, v, bias, scale, False))):
        rfn = getattr(ref, fn.__name__)
        exact = rfn(*[a.double() if torch.is_tensor(a) else a for a in args]).float()
        err32 = (rfn(*args) - exact).abs().max().item()
        out = fn(*args)
        assert torch.isfinite(out).all()
        err = (out - exact).abs().max().item()
        assert err <= max(1e-5 * exact.abs().max().item(), 2 * err32), (err, err32)


@pytest.mark.attention
def test_exp_accuracy_elementwise(isa):
    """With q = 0 the probabilities are exp(bias - max)/sum: check each one to a few ulp."""
    n = 203
    bias = torch.empty(1, 4, n).uniform_(-20, 0)
    bias[0, 1, ::3] = -90.0                   # exp(-90) is below float32's normal range
    bias[0, 2] = torch.linspace(-20, 60, n)   # large positive logits must not overflow
    bias[0, 3, 5:] = -float("inf")            # fully masked keys give exactly 0
    q = torch.zeros(1, 1, 4, 8)
    k = torch.randn(1, 1, n, 8)
    probs = cpu.attention_probs(q, k, bias.view(1, 4, n), 1.0)[0, 0]
    exact = torch.softmax(bias.view(4, n).double(), -1)
    nz = exact >= 1.2e-38                     # float32's normal range
    # Relative error per element, worst per row: <= 2e-6 (~16 float32 ulp: exp ~1 ulp, plus
    # the 203-term sum and the divide), or twice float32 torch.softmax's own worst error where
    # rounding `bias - max` (|x| up to 80) dominates.
    def worst_rel(p):
        rel = torch.where(nz, (p.double() - exact).abs() / exact.clamp_min(1e-300), 0.0)
        return rel.max(dim=-1).values
    ours, torch32 = worst_rel(probs), worst_rel(torch.softmax(bias.view(4, n), -1))
    assert (ours <= torch.clamp(2 * torch32, min=2e-6)).all(), (ours, torch32)
    assert (probs[~nz] <= 1.2e-38).all()     # below it: flushed to 0 (or a denormal)
    assert (probs[3, 5:] == 0).all() and torch.isfinite(probs).all()


# ---------------------------------------------------------------- linear
LIN_SHAPES = [(1, 1, 1), (3, 17, 63), (17, 63, 3), (63, 197, 17), (197, 3, 197), (197, 600, 45),
              (64, 513, 33), (16, 512, 1024), (49, 256, 1280)]
EPILOGUES = [(bias, res, act) for bias in (False, True) for res in (False, True)
             for act in ("none", "hardswish")]


@pytest.mark.linear
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("mkn", LIN_SHAPES, ids=str)
def test_linear(mkn, packed, isa, threads):
    m, k, n = mkn
    x = torch.randn(m, k)
    w = torch.randn(n, k) / math.sqrt(k)
    for use_bias, use_res, act in EPILOGUES:
        b = torch.randn(n) if use_bias else None
        r = torch.randn(m, n) if use_res else None
        expected = ref.linear(x, w, b, r, act)
        # |act(z)| <= |z|: each output sums at most these magnitudes. A (1, 1, 1) output is
        # one such sum and may cancel to ~0, leaving float32's rounding of its terms
        # (seen: 1.2e-7 at |out| = 4.4e-3, the float32 reference's own error size).
        terms = ref.linear(x.abs().double(), w.abs().double(),
                           b.abs().double() if b is not None else None,
                           r.abs().double() if r is not None else None)
        if packed:
            out = cpu.linear_packed(x, cpu.pack_weight(w), n, b, r, act)
        else:
            out = cpu.linear(x, w, b, r, act)
        assert_close(out, expected, terms=terms)


@pytest.mark.linear
def test_linear_batched_and_noncontiguous(isa):
    x = torch.randn(3, 5, 40)[:, :, ::2]  # (3, 5, 20), non-unit last stride: copied in cpu.py
    w = torch.randn(24, 40)[:, ::2]       # non-contiguous weight
    r = torch.randn(24, 3, 5).permute(1, 2, 0)
    assert_close(cpu.linear(x, w, None, r, "hardswish"), ref.linear(x, w, None, r, "hardswish"))


@pytest.mark.linear
@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (32, 3), (50, 70)])
def test_pack_weight_layout(n, k):
    """gemm.h's float32 layout, written independently: W[16p + c][k] at [p, k, c]; past N
    zeros, except the first row of each padding column, which holds the largest float
    (kColumnPadMark: it tells N from another N of as many panels)."""
    w = torch.randn(n, k)
    expected = torch.zeros(-(-n // 16), k, 16)
    expected[-1, 0, n % 16 if n % 16 else 16:] = torch.finfo(torch.float32).max
    for col in range(n):
        expected[col // 16, :, col % 16] = w[col]
    assert torch.equal(cpu.pack_weight(w), expected)


@pytest.mark.linear
def test_packed_weight_is_isa_independent():
    w = torch.randn(50, 70)
    x = torch.randn(33, 70)
    packed = cpu.pack_weight(w)
    old = cpu.isa()
    try:
        for name in CPU_ISAS:
            cpu.set_isa(name)
            assert torch.equal(cpu.pack_weight(w), packed)
            assert_close(cpu.linear_packed(x, packed, 50), ref.linear(x, w))
    finally:
        cpu.set_isa(old)


@pytest.mark.linear
@pytest.mark.parametrize("mkn", [(1, 5, 3), (13, 64, 33), (40, 300, 17), (29, 17, 100)], ids=str)
def test_gemm_writes_only_its_output(mkn, isa, threads):
    """Output and residual as strided views inside NaN guards: nothing outside is touched."""
    m, k, n = mkn
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    b = torch.randn(n)
    pad = 7
    res_buf = torch.full((m + 2, n + pad), float("nan"))
    res = res_buf[1:m + 1, :n]
    res.copy_(torch.randn(m, n))
    out_buf = torch.full((m + 2, n + pad), float("nan"))
    out = out_buf[1:m + 1, :n]
    packed = cpu.pack_weight(w)
    C.gemm_packed(x=x.data_ptr(), m=m, k=k, ldx=k, packed=packed.data_ptr(), n=n,
                  bias=b.data_ptr(), residual=res.data_ptr(), ldr=n + pad,
                  act=C.ACTIVATIONS["hardswish"], out=out.data_ptr(), ldo=n + pad,
                  nthreads=torch.get_num_threads())
    assert_close(out, ref.linear(x, w, b, res, "hardswish"))
    guard = torch.ones_like(out_buf, dtype=torch.bool)
    guard[1:m + 1, :n] = False
    assert out_buf[guard].isnan().all()


@pytest.mark.attention
@pytest.mark.parametrize("shape", [(7, 7, 5, 13, 3), (49, 196, 16, 64, 2), (16, 16, 32, 64, 4)], ids=str)
def test_attention_writes_only_its_output(shape, isa, threads):
    n_q, n_k, dk, dv, h = shape
    b = 2
    q, k, v = qkv_views(b, h, n_q, n_k, dk, dv)
    bias = torch.randn(h, n_q, n_k)
    size = b * n_q * h * dv
    buf = torch.full((size + 64,), float("nan"))
    out = buf[32:32 + size]
    C.attention(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), bias=bias.data_ptr(),
                out=out.data_ptr(), batch=b, heads=h, nq=n_q, nk=n_k, dk=dk, dv=dv,
                q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3],
                scale=0.3, hardswish=True, probs=False, nthreads=torch.get_num_threads())
    assert_close(out.view(b, n_q, h * dv), ref.attention(q, k, v, bias, 0.3, True))
    assert buf[:32].isnan().all() and buf[32 + size:].isnan().all()


# ---------------------------------------------------------------- mlp
MLP_SHAPES = [(1, 7, 13), (17, 64, 128), (197, 256, 512), (63, 100, 300), (16, 512, 1024)]


@pytest.mark.mlp
@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("mch", MLP_SHAPES, ids=str)
def test_mlp(mch, packed, isa, threads):
    m, c, ch = mch
    x = torch.randn(2, m, c)
    w1, b1 = torch.randn(ch, c) / math.sqrt(c), torch.randn(ch)
    w2, b2 = torch.randn(c, ch) / math.sqrt(ch), torch.randn(c)
    expected = ref.mlp(x, w1, b1, w2, b2)
    if packed:
        out = cpu.mlp_packed(x, cpu.pack_weight(w1), b1, cpu.pack_weight(w2), b2)
    else:
        out = cpu.mlp(x, w1, b1, w2, b2)
    assert_close(out, expected)


@pytest.mark.mlp
def test_mlp_takes_any_strides_like_linear():
    """cpu.linear copies a weight of any strides; cpu.mlp refused a transposed one."""
    x = torch.randn(5, 12)
    w1, w2 = torch.randn(12, 24).t() / 4, torch.randn(24, 12).t() / 5    # (24, 12), (12, 24)
    b1, b2 = torch.randn(48)[::2], torch.randn(12)                          # b1: a step of 2
    assert not w1.is_contiguous() and not w2.is_contiguous()
    assert_close(cpu.mlp(x.t().contiguous().t(), w1, b1, w2, b2), ref.mlp(x, w1, b1, w2, b2))


# ---------------------------------------------------------------- conv (the stem)
# (B, Cin, H, W, Cout, kernel, stride, padding): LeViT's stem convolutions (3x3, stride 2,
# padding 1 at 224 and odd sizes) and other geometries, on NHWC and NCHW-strided inputs.
CONV_SHAPES = [(2, 3, 32, 32, 16, 3, 2, 1), (1, 16, 13, 7, 33, 3, 2, 1), (1, 64, 28, 28, 128, 3, 2, 1),
               (3, 5, 9, 11, 7, 3, 1, 1), (1, 4, 5, 5, 3, 1, 1, 0), (2, 6, 8, 9, 17, (3, 2), 3, 2),
               (1, 1, 1, 1, 1, 3, 2, 1)]


@pytest.mark.conv2d
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv2d(shape, isa, threads):
    batch, cin, h, w, cout, kernel, stride, pad = shape
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(batch, cin, h, w)
    weight, bias = torch.randn(cout, cin, kh, kw), torch.randn(cout)
    packed = cpu.pack_conv_weight(weight)
    for act in ("none", "hardswish"):
        expected = torch.nn.functional.conv2d(x, weight, bias, stride, pad)
        if act == "hardswish":
            expected = torch.nn.functional.hardswish(expected)
        expected = expected.permute(0, 2, 3, 1)
        for layout in (x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1).contiguous()):
            assert_close(cpu.conv2d_packed(layout, packed, cout, kernel, stride, pad, bias, act),
                         expected)


@pytest.mark.conv2d
def test_conv2d_validation():
    x = torch.randn(1, 8, 8, 3)
    packed = cpu.pack_conv_weight(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="packed"):
        cpu.conv2d_packed(torch.randn(1, 8, 8, 2), packed, 4, 3, 2, 1)
    with pytest.raises(ValueError, match="stride"):
        cpu.conv2d_packed(x, packed, 4, 3, 0, 1)
    with pytest.raises(ValueError, match="padding"):
        cpu.conv2d_packed(x, packed, 4, 3, 1, -1)
    with pytest.raises(ValueError, match="smaller than"):
        cpu.conv2d_packed(torch.randn(1, 1, 1, 3), packed, 4, 3, 1, 0)
    with pytest.raises(ValueError, match="bias"):
        cpu.conv2d_packed(x, packed, 4, 3, 2, 1, torch.randn(5))


@pytest.mark.conv2d
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel_size", [(5, 3), (1, 15), (15, 1)])
def test_conv2d_refuses_another_kernel_of_the_same_size(kernel_size, dtype):
    """A 3x5 kernel packed: 5x3 and 1x15 have the same K = kh·kw·Cin, which the flat packed
    K did not tell apart (float32 ran them, wrongly); the packed shape keeps the kernel rows."""
    x = torch.randn(1, 16, 16, 3, dtype=dtype)
    packed = cpu.pack_conv_weight(torch.randn(6, 3, 3, 5, dtype=dtype))
    with pytest.raises(ValueError, match=rf"^packed: .*\(6, 3, {kernel_size[0]}, "
                                         rf"{kernel_size[1]}\) weight packed by "
                                         rf"levit_kernels.cpu.pack_conv_weight"):
        cpu.conv2d_packed(x, packed, 6, kernel_size, 1, 1)


# ---------------------------------------------------------------- validation
@pytest.mark.attention
def test_attention_validation():
    q, k, v = qkv_views(1, 2, 7, 7, 4, 8)
    bias = torch.randn(2, 7, 7)
    with pytest.raises(TypeError, match="q"):
        cpu.attention(q.double(), k, v, bias, 0.5, True)
    with pytest.raises(TypeError, match="k"):
        cpu.attention(q, k.tolist(), v, bias, 0.5, True)
    with pytest.raises(ValueError, match="q"):
        cpu.attention(q[0], k, v, bias, 0.5, True)
    with pytest.raises(ValueError, match="k"):
        cpu.attention(q, k[..., :3], v, bias, 0.5, True)
    with pytest.raises(ValueError, match="v"):
        cpu.attention(q, k, v[:, :, :5], bias, 0.5, True)
    with pytest.raises(ValueError, match="bias"):
        cpu.attention(q, k, v, bias[:, :6], 0.5, True)
    strided = torch.randn(1, 2, 7, 8)[..., ::2]
    with pytest.raises(ValueError, match="unit stride"):
        cpu.attention(strided, k, v, bias, 0.5, True)
    with pytest.raises(ValueError, match="unit stride"):
        cpu.attention_probs(q, strided, bias, 0.5)


@pytest.mark.linear
def test_linear_validation():
    x, w = torch.randn(5, 8), torch.randn(3, 8)
    with pytest.raises(TypeError, match="x"):
        cpu.linear(x.half(), w)
    with pytest.raises(TypeError, match="weight"):
        cpu.linear(x, w.double())
    with pytest.raises(ValueError, match="weight"):
        cpu.linear(x, torch.randn(3, 7))
    with pytest.raises(ValueError, match="weight"):
        cpu.linear(x, torch.randn(3, 8, 1))
    with pytest.raises(ValueError, match="bias"):
        cpu.linear(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="residual"):
        cpu.linear(x, w, None, torch.randn(5, 4))
    with pytest.raises(ValueError, match="activation"):
        cpu.linear(x, w, activation="relu")
    packed = cpu.pack_weight(w)
    with pytest.raises(ValueError, match="packed"):
        cpu.linear_packed(torch.randn(5, 9), packed, 3)
    with pytest.raises(ValueError, match="packed"):
        cpu.linear_packed(x, packed, 17)
    with pytest.raises(ValueError, match="w2"):
        cpu.mlp(x, torch.randn(16, 8), torch.randn(16), torch.randn(8, 15), torch.randn(8))
    with pytest.raises(ValueError, match="b2"):
        cpu.mlp_packed(x, cpu.pack_weight(torch.randn(16, 8)), torch.randn(16),
                       cpu.pack_weight(torch.randn(8, 16)), torch.randn(9))


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError):
        cpu.set_isa("neon")
