"""bfloat16 on CPU, the kernels: every fused op against float64, on every ISA path, with guards.

Tolerance rule (bf16), the flash-attention habit STYLE.md names: on the same bf16 inputs,
    max|kernel - exact| <= 2 · max|torch_bf16 - exact| + 2^-8 · max|exact| + 2^-9 · max|via|
where `exact` is the reference op (levit_kernels.reference) in float64 on the bf16 values,
`torch_bf16` the same reference run by PyTorch in bfloat16, and `via` what an intermediate
the kernel rounds to bf16 contributes to each output (the MLP's hidden layer: |h|·|W2|ᵀ;
nothing for the other ops, which round only their outputs). Why: a bf16 output carries up to
half a bf16 ulp (2^-9 relative) of rounding whatever computes it, so the fair yardstick is
what PyTorch's own bf16 math gives on these inputs; the kernels (float32 accumulation,
float32 epilogues, one rounding per output) should do no worse, 2x allowing for another
summation order and roundings landing on the other side. The floor is what the kernel's own
roundings can cost whatever PyTorch gets: one ulp at the output's scale, and half an ulp of a
rounded intermediate's contribution, which does not shrink when an output cancels to ~0.
Without it a handful of outputs fail by luck: a 1-output MLP measured up to 15x PyTorch's
error (PyTorch exact by chance), at most 0.75 of this bound over 2000 draws. A wrong index,
a dropped pair or a read past a tail gives errors of the order of the outputs, far above the
bound. Rounding itself is checked bit for bit (test_rounding_is_nearest_even_and_keeps_nan).

The registered ops, the one-call forward and the model in bf16: tests/test_bf16_model.py.

Every kernel test runs on every ISA path: paths this CPU lacks (avx512, avx512_bf16 on an
AVX2 machine) are skipped saying so (levit_testing.every_isa). The AVX512_BF16 block kernel
reads the packed pairs as vdpbf16ps does; `test_packed_pairs_model_vdpbf16ps` checks that
access pattern with a scalar model of the instruction on any machine.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from levit_kernels import cpu, reference as ref
from levit_testing import every_isa, qkv_bf16 as qkv, randn_bf16 as randn, threads  # noqa: F401

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
BF16 = torch.bfloat16


def assert_bf16_close(out, fn, *args, via=None):
    """The rule above; `via`: the float64 contributions of an intermediate rounded to bf16."""
    exact = fn(*[a.double() if torch.is_tensor(a) else a for a in args])
    # PyTorch's yardstick on contiguous copies (same values): on an AMX CPU, torch 2.14.1's
    # bf16 F.linear of a row-strided input reads past its rows (NaN from the guard gaps seen
    # for a 37×45 input of row stride 48, 2026-12-01).
    torch_bf16 = fn(*[a.contiguous() if torch.is_tensor(a) else a for a in args])
    assert out.dtype == BF16 and out.shape == exact.shape, (out.dtype, out.shape, exact.shape)
    err = (out.double() - exact).abs().max().item()
    err_torch = (torch_bf16.double() - exact).abs().max().item()
    scale = exact.abs().max().item()
    via = 0.0 if via is None else via.abs().max().item()
    assert math.isfinite(err), "non-finite output"
    bound = 2 * err_torch + 2 ** -8 * scale + 2 ** -9 * via
    assert err <= bound, (f"bf16 error {err:.3e} > 2·torch's {err_torch:.3e} + 2^-8·{scale:.3e} "
                          f"+ 2^-9·{via:.3e}")


def hidden_via(x, w1, b1, w2):
    """|h|·|W2|ᵀ: what the MLP's hidden layer h (rounded to bf16) contributes to each output."""
    h = ref.linear(x.double(), w1.double(), b1.double(), activation="hardswish")
    return h.abs() @ w2.double().abs().T


# ---------------------------------------------------------------- linear / packing
LINEAR = [(1, 1, 1), (3, 17, 63), (17, 63, 3), (63, 197, 17), (197, 3, 197), (49, 600, 45),
          (16, 1100, 33), (33, 96, 640)]            # (M, K, N): odd K, K over one 512 block


@pytest.mark.linear
@pytest.mark.parametrize("mkn", LINEAR, ids=str)
def test_linear(mkn, every_isa, threads):
    m, k, n = mkn
    x, w = randn(m, k), randn(n, k, scale=k ** -0.5)
    b, r = randn(n), randn(m, n)
    packed = cpu.pack_weight(w)
    for bias, res, act in ((None, None, "none"), (b, None, "hardswish"), (b, r, "none"),
                           (b, r, "hardswish")):
        assert_bf16_close(cpu.linear_packed(x, packed, n, bias, res, act), ref.linear, x, w,
                          bias, res, act)
    assert_bf16_close(cpu.linear(x.t().contiguous().t(), w, b, r, "hardswish"), ref.linear,
                      x, w, b, r, "hardswish")


@pytest.mark.linear
def test_rounding_is_nearest_even_and_keeps_nan(every_isa):
    """K = 1, W = 1: the float32 result x + b is exact, so the output must be exactly torch's
    float32 -> bf16 rounding of it (ties to even), with inf and NaN kept."""
    x = randn(4096, 1)
    b = torch.full((1,), 1.0, dtype=BF16)
    x[:4, 0] = torch.tensor([float("inf"), float("-inf"), float("nan"), 3.0e38])
    out = cpu.linear(x, torch.ones(1, 1, dtype=BF16), b)
    expected = (x.float() + b.float()).to(BF16)
    same = (out.view(torch.int16) == expected.view(torch.int16)) | (out.isnan() & expected.isnan())
    assert same.all(), (out[~same][:5], expected[~same][:5])
    assert out[2].isnan().all() and out[0].isinf().all()


@pytest.mark.linear
def test_denormal_results(every_isa):
    """bf16 denormals (below 1.18e-38) through a K = 1 linear (x·1): kept bit for bit where
    the kernels widen to float32; zero on avx512_bf16 and amx_bf16, whose vdpbf16ps /
    tdpbf16ps read them as zero and whose vcvtneps2bf16 store flushes them (csrc/simd.h,
    Avx512Bf16). Normal values next to them are exact on every path."""
    values = torch.tensor([1e-39, -1e-39, 5e-40, -9.2e-41, 1.1e-38, 2e-38, -3.0], dtype=BF16)
    x = values.repeat(37).reshape(-1, 1)
    out = cpu.linear(x, torch.ones(1, 1, dtype=BF16))
    denormal = x.float().abs() < torch.finfo(torch.float32).tiny
    assert denormal.sum() == 5 * 37 and torch.equal(out[~denormal], x[~denormal])
    if every_isa in ("avx512_bf16", "amx_bf16"):
        assert (out[denormal] == 0).all(), out[denormal][:5]
    else:
        assert torch.equal(out.view(torch.int16), x.view(torch.int16))


def _packed_reference(w, segments):
    """pack_weight's bf16 layout written from gemm_bf16.h's formula, independently: an odd
    run's padding slot (every column) holds kRunPadBits, 0x7F7F, the largest finite bf16, and
    so does the first pair's even slot of every column past N (kColumnPadBits)."""
    n, k = w.shape
    run = k // segments
    pairs = (run + 1) // 2
    out = torch.zeros(-(-n // 16), segments * pairs, 16, 2, dtype=w.dtype)
    out[-1, 0, n % 16 if n % 16 else 16:, 0] = torch.finfo(torch.bfloat16).max
    if run % 2:
        out[:, pairs - 1::pairs, :, 1] = torch.finfo(torch.bfloat16).max
    for col in range(n):
        for kk in range(k):
            s, t = divmod(kk, run)
            out[col // 16, s * pairs + t // 2, col % 16, t % 2] = w[col, kk]
    # several runs (a conv's kernel rows) show as their own dimension: the same memory
    return out if segments == 1 else out.view(out.shape[0], segments, pairs, 16, 2)


@pytest.mark.linear
@pytest.mark.parametrize("n,k,segments", [(1, 1, 1), (17, 5, 1), (33, 18, 2), (16, 27, 3),
                                          (40, 32, 4)])
@pytest.mark.linear
def test_pack_weight_layout(n, k, segments):
    w = randn(n, k)
    packed = cpu.pack_weight(w, segments=segments)
    assert torch.equal(packed, _packed_reference(w, segments))
    old = cpu.isa()          # the same layout on every path
    try:
        for name in cpu.available_isas():
            cpu.set_isa(name)
            assert torch.equal(cpu.pack_weight(w, segments=segments), packed)
    finally:
        cpu.set_isa(old)


def vdpbf16ps_model(a, packed, k):
    """A bit-level scalar model of the AVX512_BF16 block kernel (gemm_avx512bf16.cpp): A's
    pair (a[2q], a[2q+1]) read as one little-endian 32-bit lane (high half 0 for an odd K's
    last k), each 32-bit lane of a packed pair row likewise; vdpbf16ps multiplies the low
    halves and the high halves and adds both products. Returns float64 (m, padded columns)."""
    def halves(lanes):      # int32 lanes -> float64 (low, high) bf16 values
        low = (lanes << 16).view(torch.float32)
        high = (lanes & -65536).view(torch.float32)
        return low.double(), high.double()

    m, pairs = a.shape[0], packed.shape[1]
    a_bits = torch.zeros(m, 2 * pairs, dtype=torch.int16)
    a_bits[:, :k] = a.view(torch.int16)
    a_low, a_high = halves(a_bits.view(torch.int32))                  # (m, pairs)
    w_low, w_high = halves(packed.contiguous().view(torch.int16).view(torch.int32).view(
        packed.shape[0], pairs, 16))                                   # (panels, pairs, 16)
    out = (torch.einsum("iq,pqc->ipc", a_low, w_low) + torch.einsum("iq,pqc->ipc", a_high, w_high))
    return out.reshape(m, -1)


@pytest.mark.linear
@pytest.mark.parametrize("m,k,n", [(3, 1, 5), (7, 9, 33), (5, 64, 16), (2, 77, 40)])
def test_packed_pairs_model_vdpbf16ps(m, k, n):
    """The native kernel's indexing, checked where it cannot run: the modelled instruction
    over pack_weight's pairs gives x·Wᵀ (exactly, in float64, up to the sum's order)."""
    x, w = randn(m, k), randn(n, k)
    got = vdpbf16ps_model(x, cpu.pack_weight(w), k)[:, :n]
    torch.testing.assert_close(got, x.double() @ w.double().T, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- mlp
MLP = [(1, 7, 13), (17, 64, 128), (197, 48, 96), (63, 100, 300), (16, 33, 1030)]   # (M, C, Ch)


@pytest.mark.mlp
@pytest.mark.parametrize("mch", MLP, ids=str)
def test_mlp(mch, every_isa, threads):
    m, c, ch = mch
    x = randn(2, m, c)
    w1, b1 = randn(ch, c, scale=c ** -0.5), randn(ch)
    w2, b2 = randn(c, ch, scale=ch ** -0.5), randn(c)
    out = cpu.mlp_packed(x, cpu.pack_weight(w1), b1, cpu.pack_weight(w2), b2)
    assert_bf16_close(out, ref.mlp, x, w1, b1, w2, b2, via=hidden_via(x, w1, b1, w2))
    assert torch.equal(cpu.mlp(x, w1, b1, w2, b2), out)


# ---------------------------------------------------------------- attention
ATTN = [(196, 196, 16, 32, 4), (49, 196, 32, 128, 2), (16, 16, 32, 64, 3), (1, 1, 1, 1, 1),
        (7, 37, 5, 13, 2), (37, 7, 16, 33, 1), (197, 197, 16, 17, 1)]   # (Nq, Nk, Dk, Dv, H)


@pytest.mark.attention
@pytest.mark.parametrize("shape", ATTN, ids=str)
def test_attention(shape, every_isa, threads):
    n_q, n_k, dk, dv, h = shape
    q, k, v = qkv(2, h, n_q, n_k, dk, dv)
    bias = randn(h, n_q, n_k, scale=2.0)
    scale = dk ** -0.5
    for hs in (True, False):
        assert_bf16_close(cpu.attention(q, k, v, bias, scale, hs), ref.attention, q, k, v, bias,
                          scale, hs)
    assert_bf16_close(cpu.attention_probs(q, k, bias, scale), ref.attention_probs, q, k, bias,
                      scale)


# ---------------------------------------------------------------- conv (the stem)
CONV = [(2, 3, 17, 15, 16, 3, 2, 1), (1, 16, 13, 7, 33, 3, 2, 1), (1, 5, 9, 11, 7, 3, 1, 1),
        (1, 3, 6, 6, 4, 1, 1, 0), (1, 1, 1, 1, 1, 3, 2, 1)]   # (B, Cin, H, W, Cout, k, s, p)


def conv_ref(x_nhwc, weight, bias, stride, pad, act):
    y = F.conv2d(x_nhwc.permute(0, 3, 1, 2), weight, bias, stride, pad)
    return (F.hardswish(y) if act == "hardswish" else y).permute(0, 2, 3, 1)


@pytest.mark.conv2d
@pytest.mark.parametrize("shape", CONV, ids=str)
def test_conv2d(shape, every_isa, threads):
    batch, cin, h, w, cout, kernel, stride, pad = shape
    x = randn(batch, cin, h, w)
    weight, bias = randn(cout, cin, kernel, kernel, scale=(cin * kernel ** 2) ** -0.5), randn(cout)
    packed = cpu.pack_conv_weight(weight)
    for layout in (x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1).contiguous()):
        for act in ("none", "hardswish"):
            out = cpu.conv2d_packed(layout, packed, cout, kernel, stride, pad, bias, act)
            assert_bf16_close(out, conv_ref, layout, weight, bias, stride, pad, act)


# ---------------------------------------------------------------- guard regions
def in_poison(shape, row_gap=0, fill=None):
    """A (rows, cols) bf16 view with `row_gap` NaN elements after each row, inside a NaN
    buffer with 17 NaN guards on each side (tests/test_guards.py's Poisoned, in bf16)."""
    rows, cols = shape
    ld = cols + row_gap
    buf = torch.full((2 * 17 + (rows - 1) * ld + cols,), float("nan"), dtype=BF16)
    view = buf.as_strided(shape, (ld, 1), 17)
    mine = torch.zeros_like(buf, dtype=torch.bool)
    mine.as_strided(shape, (ld, 1), 17).fill_(True)
    if fill is not None:
        view.copy_(fill)
    return buf, view, mine


def assert_untouched(buf, mine, what):
    assert buf[~mine].isnan().all(), f"{what} wrote outside its output"


# (M, N, K) around the tiles (5×16 AVX2, 12×32 AVX-512, 14×32 AVX512_BF16, 4×16 generic), odd
# K (a half pair), K over a 512 block
GUARD_GEMM = [(1, 1, 1), (5, 17, 3), (7, 33, 9), (13, 16, 31), (15, 47, 64), (29, 31, 515)]


@pytest.mark.linear
@pytest.mark.mlp
def test_gemm_and_mlp_write_only_their_outputs(every_isa):
    from levit_kernels.ops import _C
    for m, n, k in GUARD_GEMM:
        _, x, _ = in_poison((m, k), 3, randn(m, k))          # NaN between x's rows
        w, b = randn(n, k, scale=k ** -0.5), randn(n)
        _, res, _ = in_poison((m, n), 5, randn(m, n))
        packed = cpu.pack_weight(w)     # kept in a name: the kernel reads its address
        for act in ("none", "hardswish"):
            buf, out, mine = in_poison((m, n), 7)
            _C.gemm_packed(x=x.data_ptr(), m=m, k=k, ldx=k + 3, packed=packed.data_ptr(),
                           n=n, bias=b.data_ptr(), residual=res.data_ptr(), ldr=n + 5,
                           act=_C.ACTIVATIONS[act], out=out.data_ptr(), ldo=n + 7, nthreads=2,
                           dtype="bfloat16")
            assert_untouched(buf, mine, f"gemm_packed{(m, n, k)}")
            assert_bf16_close(out, ref.linear, x, w, b, res, act)
        c, ch = n, k
        w1, b1, w2, b2 = randn(ch, c, scale=c ** -0.5), randn(ch), randn(c, ch), randn(c)
        _, xm, _ = in_poison((m, c), 2, randn(m, c))
        buf, out, mine = in_poison((m, c))
        w1p, w2p = cpu.pack_weight(w1), cpu.pack_weight(w2)
        _C.mlp_packed(x=xm.data_ptr(), m=m, c=c, ldx=c + 2, w1p=w1p.data_ptr(),
                      b1=b1.data_ptr(), ch=ch, w2p=w2p.data_ptr(), b2=b2.data_ptr(),
                      out=out.data_ptr(), nthreads=2, dtype="bfloat16")
        assert_untouched(buf, mine, f"mlp_packed{(m, c, ch)}")
        assert_bf16_close(out, ref.mlp, xm, w1, b1, w2, b2, via=hidden_via(xm, w1, b1, w2))


@pytest.mark.attention
@pytest.mark.conv2d
def test_attention_and_conv_write_only_their_outputs(every_isa):
    from levit_kernels.ops import _C
    for n_q, n_k, dk, dv in [(1, 1, 1, 1), (7, 9, 5, 17), (13, 33, 16, 31), (6, 70, 3, 64)]:
        h = 2
        kvbuf = torch.full((2, n_k, h, dk + 1 + dv + 1), float("nan"), dtype=BF16)  # NaN gaps
        kvbuf[..., :dk] = randn(2, n_k, h, dk)
        kvbuf[..., dk + 1:dk + 1 + dv] = randn(2, n_k, h, dv)
        k = kvbuf[..., :dk].permute(0, 2, 1, 3)
        v = kvbuf[..., dk + 1:dk + 1 + dv].permute(0, 2, 1, 3)
        q = randn(2, n_q, h, dk).permute(0, 2, 1, 3)
        bias = randn(h, n_q, n_k)
        buf, out, mine = in_poison((2 * n_q, h * dv))
        _C.attention(q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), bias=bias.data_ptr(),
                     out=out.data_ptr(), batch=2, heads=h, nq=n_q, nk=n_k, dk=dk, dv=dv,
                     q_strides=q.stride()[:3], k_strides=k.stride()[:3],
                     v_strides=v.stride()[:3], scale=0.4, hardswish=True, probs=False,
                     nthreads=2, dtype="bfloat16")
        assert_untouched(buf, mine, f"attention{(n_q, n_k, dk, dv)}")
        assert_bf16_close(out.view(2, n_q, h * dv), ref.attention, q, k, v, bias, 0.4, True)
    for cin, size, cout in [(3, 7, 5), (1, 4, 33), (5, 9, 16)]:
        x = randn(1, size, size, cin)
        weight, cbias = randn(cout, cin, 3, 3), randn(cout)
        ho = (size + 2 - 3) // 2 + 1
        buf, out, mine = in_poison((ho * ho, cout))
        packed = cpu.pack_conv_weight(weight)
        _C.conv2d_packed(x=x.data_ptr(), batch=1, height=size, width=size, channels=cin,
                         nhwc_strides=x.stride(), kernel_h=3, kernel_w=3, stride=2, pad=1,
                         packed=packed.data_ptr(), cout=cout,
                         bias=cbias.data_ptr(), act=_C.ACTIVATIONS["hardswish"],
                         out=out.data_ptr(), nthreads=2, dtype="bfloat16")
        assert_untouched(buf, mine, f"conv2d_packed{(cin, size, cout)}")
        assert_bf16_close(out.view(1, ho, ho, cout), conv_ref, x, weight, cbias, 2, 1,
                          "hardswish")
