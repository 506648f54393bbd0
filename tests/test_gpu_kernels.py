"""The Triton kernels (levit_kernels.gpu) against levit_kernels.reference.

Without CUDA the launchers run on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py
before triton is imported): small shapes, float32 (and float16; the interpreter has no
bfloat16 arithmetic, triton-lang/triton#11584), every output buffer poisoned with NaN so an
element the kernel fails to write fails the test. With CUDA the same small-shape tests run on
the GPU, plus every dtype at every LeViT shape.

Tolerances: float32 within 1e-4 of a float64 reference, relative to the output's largest
magnitude (the kernels accumulate in fp32; measured ~1e-6). float16/bfloat16 judged as
flash-attention does: the kernel's error against the float32 reference may be at most twice
PyTorch's own error when it runs the reference in the same low precision (plus a few ulps of
slack for outputs that PyTorch happens to get exactly right).
"""
import os

import pytest
import torch

from levit_kernels import gpu, reference
from levit_kernels.model.config import VARIANTS
from levit_testing import qkv_views

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
pytestmark = pytest.mark.skipif(
    not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no CUDA and TRITON_INTERPRET is not 1 (set it before triton is imported)")

FP32_RTOL = 1e-4


@pytest.fixture(autouse=True)
def _seeded():
    """The same random inputs on every run, whatever ran before: a failure reproduces."""
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- helpers
def poisoned(shape, dtype=torch.float32, device=DEVICE):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    assert not out.isnan().any(), "output has NaN (an element was not written?)"
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def f64(*ts):
    return [None if t is None else t.double() for t in ts]


def assert_low_precision(out, run_ref, inputs):
    """flash-attention's rule: |kernel - ref32| <= 2 |torch_lowp - ref32| (+ slack)."""
    ref32 = run_ref(*[None if t is None else t.float() for t in inputs])
    ref_lowp = run_ref(*inputs).float()
    assert not out.isnan().any()
    err = (out.float() - ref32).abs().max().item()
    torch_err = (ref_lowp - ref32).abs().max().item()
    slack = 4 * torch.finfo(out.dtype).eps * ref32.abs().max().item()
    assert err <= 2 * torch_err + slack, (err, torch_err)


# ---------------------------------------------------------------- attention, small shapes
# (B, H, Nq, Nk, Dk, Dv): N = 1, 7, 16, 49, shrinking 16 x 49, odd Dk (padded), Nk > 256
# (the online-softmax loop over key blocks).
SMALL_ATTN = [
    (1, 2, 1, 1, 16, 32),
    (2, 3, 7, 7, 16, 32),
    (1, 2, 16, 16, 32, 64),
    (2, 2, 49, 49, 16, 32),
    (1, 3, 49, 49, 32, 64),
    (2, 2, 16, 49, 16, 64),
    (1, 1, 5, 5, 20, 24),
    (1, 1, 9, 300, 16, 32),
]


@pytest.mark.attention
@pytest.mark.parametrize("hardswish", [False, True])
@pytest.mark.parametrize("shape", SMALL_ATTN, ids=lambda s: "x".join(map(str, s)))
def test_attention_fp32(shape, hardswish):
    batch, heads, n_q, n_k, d_k, d_v = shape
    q, k, v = qkv_views(*shape, device=DEVICE)
    bias = torch.randn(heads, n_q, n_k, device=DEVICE)
    scale = d_k ** -0.5
    out = poisoned((batch, n_q, heads * d_v))
    got = gpu.attention(q, k, v, bias, scale, hardswish, out=out)
    assert got is out
    ref = reference.attention(*f64(q, k, v, bias), scale, hardswish)
    assert rel_err(out, ref) <= FP32_RTOL


@pytest.mark.attention
@pytest.mark.parametrize("shape", SMALL_ATTN, ids=lambda s: "x".join(map(str, s)))
def test_attention_probs_fp32(shape):
    batch, heads, n_q, n_k, d_k, d_v = shape
    q, k, _ = qkv_views(*shape, device=DEVICE)
    bias = torch.randn(heads, n_q, n_k, device=DEVICE)
    out = poisoned((batch, heads, n_q, n_k))
    gpu.attention_probs(q, k, bias, d_k ** -0.5, out=out)
    ref = reference.attention_probs(*f64(q, k, bias), d_k ** -0.5)
    assert rel_err(out, ref) <= FP32_RTOL
    # Each row sums to 1 within float32 rounding: every stored probability is off by at most
    # half an ulp of itself (eps/2 over the row) plus the normalisation's own rounding.
    torch.testing.assert_close(out.double().sum(-1), torch.ones_like(ref[..., 0]), rtol=0,
                               atol=4 * torch.finfo(torch.float32).eps)


@pytest.mark.attention
def test_attention_default_output_and_large_bias():
    # No out=: a fresh contiguous buffer. A bias of -1e4 on all but one key per row pushes
    # the softmax to one-hot without overflow or NaN.
    q, k, v = qkv_views(2, 2, 7, 7, 16, 32, device=DEVICE)
    bias = torch.full((2, 7, 7), -1e4, device=DEVICE)
    bias[:, torch.arange(7), torch.arange(7)] = 0
    out = gpu.attention(q, k, v, bias, 0.25, False)
    assert out.shape == (2, 7, 64) and out.is_contiguous()
    assert rel_err(out, reference.attention(*f64(q, k, v, bias), 0.25, False)) <= FP32_RTOL


@pytest.mark.attention
@pytest.mark.parametrize("shape", [(2, 2, 49, 49, 16, 32), (1, 2, 16, 49, 32, 64)])
def test_attention_fp16(shape):
    batch, heads, n_q, n_k, d_k, d_v = shape
    q, k, v = qkv_views(*shape, dtype=torch.float16, device=DEVICE)
    bias = torch.randn(heads, n_q, n_k, device=DEVICE, dtype=torch.float16)
    out = gpu.attention(q, k, v, bias, d_k ** -0.5, True, out=poisoned(
        (batch, n_q, heads * d_v), torch.float16))
    assert out.dtype == torch.float16
    assert_low_precision(out, lambda *t: reference.attention(*t, d_k ** -0.5, True),
                         (q, k, v, bias))


# ---------------------------------------------------------------- linear / mlp, small shapes
LINEAR_SHAPES = [(1, 16, 8), (7, 20, 24), (33, 16, 24), (33, 20, 8)]   # (M, K, N)
EPILOGUES = [(False, False, "none"), (True, False, "hardswish"), (True, True, "none"),
             (False, True, "hardswish")]                             # (bias, residual, act)


@pytest.mark.linear
@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: f"b{e[0]:d}r{e[1]:d}-{e[2]}")
@pytest.mark.parametrize("mkn", LINEAR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_fp32(mkn, epilogue):
    m, k_in, n_out = mkn
    has_bias, has_res, act = epilogue
    x = torch.randn(m, k_in, device=DEVICE)
    w = torch.randn(n_out, k_in, device=DEVICE)
    b = torch.randn(n_out, device=DEVICE) if has_bias else None
    r = torch.randn(m, n_out, device=DEVICE) if has_res else None
    out = poisoned((m, n_out))
    gpu.linear(x, w, b, r, act, out=out)
    assert rel_err(out, reference.linear(*f64(x, w, b, r), act)) <= FP32_RTOL


@pytest.mark.linear
def test_linear_leading_dims_and_strided_views():
    # x (2, 3, K) as a column slice of a wider tensor (row stride != K), weight a row slice,
    # residual a non-contiguous view: all read in place or reshaped, never wrong.
    big = torch.randn(2, 3, 40, device=DEVICE)
    x = big[..., 5:25]
    w = torch.randn(30, 20, device=DEVICE)[:24]
    b = torch.randn(24, device=DEVICE)
    r = torch.randn(3, 2, 24, device=DEVICE).transpose(0, 1)
    out = gpu.linear(x, w, b, r, "hardswish")
    assert out.shape == (2, 3, 24) and out.is_contiguous()
    assert rel_err(out, reference.linear(*f64(x, w, b, r), "hardswish")) <= FP32_RTOL
    one = gpu.linear(x[0, 0], w, b)                      # 1-D x -> 1-D output
    assert one.shape == (24,)
    assert rel_err(one, reference.linear(*f64(x[0, 0], w, b))) <= FP32_RTOL


# C <= 128 runs the fused kernel (hidden never stored); C = 136 chains two GEMM launches.
@pytest.mark.mlp
@pytest.mark.parametrize("lead,channels,hidden", [((1,), 16, 32), ((7,), 20, 40),
                                                  ((2, 17), 16, 24), ((3,), 136, 272)])
def test_mlp_fp32(lead, channels, hidden):
    x = torch.randn(*lead, channels, device=DEVICE)
    w1 = torch.randn(hidden, channels, device=DEVICE) / channels ** 0.5
    b1 = torch.randn(hidden, device=DEVICE)
    w2 = torch.randn(channels, hidden, device=DEVICE) / hidden ** 0.5
    b2 = torch.randn(channels, device=DEVICE)
    out = poisoned(x.shape)
    gpu.mlp(x, w1, b1, w2, b2, out=out)
    assert rel_err(out, reference.mlp(*f64(x, w1, b1, w2, b2))) <= FP32_RTOL


@pytest.mark.linear
@pytest.mark.mlp
def test_linear_mlp_fp16():
    h = torch.float16
    x = torch.randn(33, 20, device=DEVICE, dtype=h)
    w = (torch.randn(24, 20, device=DEVICE) / 20 ** 0.5).to(h)
    b = torch.randn(24, device=DEVICE, dtype=h)
    r = torch.randn(33, 24, device=DEVICE, dtype=h)
    out = gpu.linear(x, w, b, r, "hardswish")
    assert_low_precision(out, lambda *t: reference.linear(*t, "hardswish"), (x, w, b, r))
    w1 = (torch.randn(40, 20, device=DEVICE) / 20 ** 0.5).to(h)
    w2 = (torch.randn(20, 40, device=DEVICE) / 40 ** 0.5).to(h)
    b1, b2 = torch.randn(40, device=DEVICE, dtype=h), torch.randn(20, device=DEVICE, dtype=h)
    out = gpu.mlp(x, w1, b1, w2, b2)
    assert_low_precision(out, reference.mlp, (x, w1, b1, w2, b2))


# ------------------------------------------------- linear on a strided row grid, stem conv
@pytest.mark.linear
@pytest.mark.parametrize("res", [7, 14])
def test_linear_reads_a_subsampled_token_grid_in_place(res):
    # The shrinking attention's query input: x[:, ::2, ::2] of a (B, R, R, C) token grid,
    # read through its strides (7 -> 4x4: three unmergeable row dims; 14 -> 7x7: two).
    grid = torch.randn(2, res, res, 24, device=DEVICE)
    x = grid[:, ::2, ::2]
    w, b = torch.randn(40, 24, device=DEVICE), torch.randn(40, device=DEVICE)
    out = gpu.linear(x, w, b, None, "hardswish", out=poisoned(tuple(x.shape[:-1]) + (40,)))
    expected = reference.linear(*f64(x.contiguous(), w, b), None, "hardswish")
    assert rel_err(out, expected) <= FP32_RTOL
    five = torch.randn(2, 3, 4, 5, 24, device=DEVICE)[:, ::2, :, ::2]   # > 3 dims: copied
    assert rel_err(gpu.linear(five, w, b), reference.linear(*f64(five, w, b))) <= FP32_RTOL


# (B, H, W, Cin, Cout, stride, padding): odd sizes, LeViT's 3x3/2/1 and a stride-1 case
CONV_SHAPES = [(2, 9, 7, 3, 8, 2, 1), (1, 16, 16, 8, 24, 2, 1), (1, 5, 6, 4, 16, 1, 0),
               (2, 4, 4, 20, 36, 2, 1)]


@pytest.mark.conv2d
@pytest.mark.parametrize("act", ["none", "hardswish"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_fp32(shape, act):
    batch, h, w, cin, cout, stride, pad = shape
    images = torch.randn(batch, cin, h, w, device=DEVICE)     # NCHW, read in place as NHWC
    weight = torch.randn(cout, cin, 3, 3, device=DEVICE) / (9 * cin) ** 0.5
    bias = torch.randn(cout, device=DEVICE)
    x = images.permute(0, 2, 3, 1)
    expected = reference.conv2d(*f64(x, weight, bias), stride, pad, act)
    out = gpu.conv2d(x, weight, bias, stride, pad, act,
                     out=poisoned(tuple(expected.shape)))
    assert rel_err(out, expected) <= FP32_RTOL
    nhwc = gpu.conv2d(x.contiguous(), weight, None, stride, pad, act)
    assert rel_err(nhwc, reference.conv2d(*f64(x, weight), None, stride, pad, act)) <= FP32_RTOL


@pytest.mark.conv2d
def test_conv2d_fp16_and_cast_on_load():
    h = torch.float16
    images = torch.randn(2, 3, 9, 7, device=DEVICE)
    weight = (torch.randn(16, 3, 3, 3, device=DEVICE) / 27 ** 0.5).to(h)
    bias = torch.randn(16, device=DEVICE, dtype=h)
    x16 = images.half().permute(0, 2, 3, 1)
    out = gpu.conv2d(x16, weight, bias, 2, 1, "hardswish")
    assert_low_precision(out, lambda *t: reference.conv2d(*t, 2, 1, "hardswish"),
                         (x16, weight, bias))
    # The fused stem reads float32 images into a float16 plan: the cast happens on load, so
    # the result is the conv of the rounded images, exactly.
    cast = gpu.launch_conv2d(images.permute(0, 2, 3, 1), gpu.conv_weight_matrix(weight), bias,
                             (3, 3), 2, 1, "hardswish", torch.empty_like(out))
    torch.testing.assert_close(cast, out, rtol=0, atol=0)


@pytest.mark.conv2d
def test_conv2d_rejects():
    x = torch.randn(1, 8, 8, 3, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="^weight:"):
        gpu.conv2d(x, w[:, :2], None, 2, 1)
    with pytest.raises(ValueError, match="^stride:"):
        gpu.conv2d(x, w, None, 0, 1)
    with pytest.raises(ValueError, match="^x:"):
        gpu.conv2d(x[:, :1, :1], w, None, 2, 0)
    with pytest.raises(TypeError, match="^weight:"):
        gpu.conv2d(x, w.double(), None, 2, 1)
    with pytest.raises(ValueError, match="^activation:"):
        gpu.conv2d(x, w, None, 2, 1, "relu")
    # an empty kernel returned the bias everywhere (the reference refuses it)
    for empty in (w[:, :, :0, :0], w[:, :, :0]):
        with pytest.raises(ValueError, match="^weight: expected a kernel of at least 1x1"):
            gpu.conv2d(x, empty, None, 1, 0)
    with pytest.raises(ValueError, match="^x: expected at least 1 channel"):
        gpu.conv2d(x[..., :0], w[:, :0], None, 1, 0)


# ---------------------------------------------------------------------- input validation
def _attn_inputs(dtype=torch.float32):
    q, k, v = qkv_views(1, 2, 7, 7, 16, 32, dtype=dtype, device=DEVICE)
    return q, k, v, torch.randn(2, 7, 7, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("case,exc,name", [
    ("float64", TypeError, "q"),
    ("int", TypeError, "q"),
    ("mixed_dtype", TypeError, "bias"),
    ("q_rank", ValueError, "q"),
    ("k_dim", ValueError, "k"),
    ("v_tokens", ValueError, "v"),
    ("bias_shape", ValueError, "bias"),
    ("last_stride", ValueError, "k"),
    ("out_shape", ValueError, "out"),
    ("not_tensor", TypeError, "v"),
])
@pytest.mark.attention
def test_attention_rejects(case, exc, name):
    q, k, v, bias = _attn_inputs()
    kwargs = {}
    if case == "float64":
        q, k, v, bias = (t.double() for t in (q, k, v, bias))
    elif case == "int":
        q = q.to(torch.int32)
    elif case == "mixed_dtype":
        bias = bias.half()
    elif case == "q_rank":
        q = q[0]
    elif case == "k_dim":
        k = torch.randn(1, 2, 7, 32, device=DEVICE)
    elif case == "v_tokens":
        v = v[:, :, :5]
    elif case == "bias_shape":
        bias = bias[:, :, :6]
    elif case == "last_stride":
        k = torch.randn(1, 2, 7, 32, device=DEVICE)[..., ::2]
    elif case == "out_shape":
        kwargs["out"] = poisoned((1, 7, 63))
    elif case == "not_tensor":
        v = v.tolist()
    with pytest.raises(exc, match=f"^{name}:"):
        gpu.attention(q, k, v, bias, 0.25, False, **kwargs)


@pytest.mark.attention
def test_attention_probs_rejects():
    q, k, _, bias = _attn_inputs()
    with pytest.raises(ValueError, match="^bias:"):
        gpu.attention_probs(q, k, bias[:1], 0.25)
    with pytest.raises(TypeError, match="^k:"):
        gpu.attention_probs(q, k.double(), bias, 0.25)


@pytest.mark.parametrize("case,exc,name", [
    ("float64", TypeError, "x"),
    ("x_rank", ValueError, "x"),
    ("weight_k", ValueError, "weight"),
    ("weight_rank", ValueError, "weight"),
    ("bias_shape", ValueError, "bias"),
    ("residual_shape", ValueError, "residual"),
    ("residual_dtype", TypeError, "residual"),
    ("activation", ValueError, "activation"),
])
@pytest.mark.linear
def test_linear_rejects(case, exc, name):
    x = torch.randn(5, 16, device=DEVICE)
    w = torch.randn(8, 16, device=DEVICE)
    b = torch.randn(8, device=DEVICE)
    r = torch.randn(5, 8, device=DEVICE)
    act = "none"
    if case == "float64":
        x, w, b, r = (t.double() for t in (x, w, b, r))
    elif case == "x_rank":
        x = torch.tensor(1.0, device=DEVICE)
    elif case == "weight_k":
        w = torch.randn(8, 15, device=DEVICE)
    elif case == "weight_rank":
        w = w[None]
    elif case == "bias_shape":
        b = b[:7]
    elif case == "residual_shape":
        r = r[:4]
    elif case == "residual_dtype":
        r = r.half()
    elif case == "activation":
        act = "relu"
    with pytest.raises(exc, match=f"^{name}:"):
        gpu.linear(x, w, b, r, act)


@pytest.mark.attention
@pytest.mark.linear
@pytest.mark.mlp
@pytest.mark.conv2d
def test_out_may_not_share_memory_with_an_input():
    """Output blocks are written while other blocks still read the inputs: out=x gave a
    linear layer 75% relative error. Only the residual (read at the element then written)
    may be the output itself."""
    x, w, b = (torch.randn(70, 40, device=DEVICE), torch.randn(40, 40, device=DEVICE) / 6,
               torch.randn(40, device=DEVICE))
    buf = torch.randn(71, 40, device=DEVICE)
    for inp, out, name in ((x, x, "x"), (x[:40], w, "weight"), (buf[:-1], buf[1:], "x")):
        with pytest.raises(ValueError, match=f"^out: shares memory with {name}"):
            gpu.linear(inp, w, b, out=out)
    q, k, v, bias = _attn_inputs()
    with pytest.raises(ValueError, match="^out: shares memory with q"):
        gpu.attention(q, k, v, bias, 0.5, False, out=q._base.view(-1)[:448].view(1, 7, 64))
    with pytest.raises(ValueError, match="^out: shares memory with bias"):
        gpu.attention_probs(q, k, bias, 0.5, out=bias.view(1, 2, 7, 7))
    img = torch.randn(1, 8, 8, 4, device=DEVICE)
    with pytest.raises(ValueError, match="^out: shares memory with x"):
        gpu.conv2d(img, torch.randn(4, 4, 1, 1, device=DEVICE), None, 1, 0, out=img)
    # the residual in place, and an MLP writing over its input (also its residual): exact
    r = torch.randn(70, 40, device=DEVICE)
    want = reference.linear(x, w, b, r.clone())
    torch.testing.assert_close(gpu.linear(x, w, b, r, out=r), want, rtol=1e-4, atol=1e-4)
    w1, b1 = torch.randn(24, 40, device=DEVICE) / 6, torch.randn(24, device=DEVICE)
    w2, b2 = torch.randn(40, 24, device=DEVICE) / 5, torch.randn(40, device=DEVICE)
    want = reference.mlp(x, w1, b1, w2, b2)
    torch.testing.assert_close(gpu.mlp(x, w1, b1, w2, b2, out=x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.mlp
def test_mlp_rejects():
    x = torch.randn(5, 16, device=DEVICE)
    w1, b1 = torch.randn(32, 16, device=DEVICE), torch.randn(32, device=DEVICE)
    w2, b2 = torch.randn(16, 32, device=DEVICE), torch.randn(16, device=DEVICE)
    with pytest.raises(ValueError, match="^w2:"):
        gpu.mlp(x, w1, b1, w2[:, :31], b2)
    with pytest.raises(ValueError, match="^b2:"):
        gpu.mlp(x, w1, b1, w2, b2[:15])
    with pytest.raises(TypeError, match="^w1:"):
        gpu.mlp(x, w1.half(), b1, w2, b2)


@pytest.mark.attention
@pytest.mark.linear
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    # The launchers read TRITON_INTERPRET at each call: CPU tensors without it are refused.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    with pytest.raises(ValueError, match="^x:"):
        gpu.linear(x, w)
    q, k, v = qkv_views(1, 1, 4, 4, 16, 16, device="cpu")
    with pytest.raises(ValueError, match="^q:"):
        gpu.attention(q, k, v, torch.randn(1, 4, 4), 0.25, False)


def test_import_does_not_touch_cuda():
    import subprocess
    import sys
    code = ("import torch, levit_kernels.gpu as g; "
            "assert not torch.cuda.is_initialized(); print(sorted(g.__all__))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "['attention', 'attention_probs', 'linear', 'mlp']" in res.stdout


# ------------------------------------------------------------ CUDA: every LeViT shape/dtype
def levit_attention_shapes():
    """(H, Nq, Nk, Dk, Dv) of every attention in the five LeViT variants at 224 pixels."""
    shapes = set()
    for name in ("LeViT-128S", "LeViT-128", "LeViT-192", "LeViT-256", "LeViT-384"):
        cfg = VARIANTS[name]
        tokens = [r[0] * r[1] for r in cfg.resolutions(224)]
        d_k = cfg.key_dim
        for i, n in enumerate(tokens):
            shapes.add((cfg.num_heads[i], n, n, d_k, int(cfg.attn_ratio * d_k)))
            if i > 0:
                shapes.add((cfg.down_heads(i), n, tokens[i - 1], d_k,
                            int(cfg.down_attn_ratio * d_k)))
    return sorted(shapes)


LEVIT_ATTN = levit_attention_shapes()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.attention
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("shape", LEVIT_ATTN, ids=lambda s: "x".join(map(str, s)))
def test_attention_levit_shapes_cuda(shape, batch, dtype):
    heads, n_q, n_k, d_k, d_v = shape
    q, k, v = qkv_views(batch, heads, n_q, n_k, d_k, d_v, dtype=dtype, device=DEVICE)
    bias = torch.randn(heads, n_q, n_k, device=DEVICE, dtype=dtype)
    scale = d_k ** -0.5
    out = gpu.attention(q, k, v, bias, scale, True,
                        out=poisoned((batch, n_q, heads * d_v), dtype))
    probs = gpu.attention_probs(q, k, bias, scale)
    if dtype == torch.float32:
        assert rel_err(out, reference.attention(*f64(q, k, v, bias), scale, True)) <= FP32_RTOL
        assert rel_err(probs, reference.attention_probs(*f64(q, k, bias), scale)) <= FP32_RTOL
    else:
        assert_low_precision(out, lambda *t: reference.attention(*t, scale, True),
                             (q, k, v, bias))
        assert_low_precision(probs, lambda *t: reference.attention_probs(*t, scale),
                             (q, k, bias))


def levit256_linear_shapes():
    """(tokens, K, N, activation/residual kind) of LeViT-256's linears and MLPs."""
    cfg = VARIANTS["LeViT-256"]
    tokens = [r[0] * r[1] for r in cfg.resolutions(224)]
    shapes = []
    for i, (c, h) in enumerate(zip(cfg.embed_dim, cfg.num_heads)):
        d_k, d_v = cfg.key_dim, int(cfg.attn_ratio * cfg.key_dim)
        shapes.append((tokens[i], c, h * (2 * d_k + d_v)))          # qkv projection
        shapes.append((tokens[i], h * d_v, c))                      # output projection
    return shapes


@pytest.mark.linear
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("shape", levit256_linear_shapes(), ids=lambda s: "x".join(map(str, s)))
def test_linear_levit256_cuda(shape, batch, dtype):
    tokens, k_in, n_out = shape
    x = torch.randn(batch, tokens, k_in, device=DEVICE, dtype=dtype)
    w = (torch.randn(n_out, k_in, device=DEVICE) / k_in ** 0.5).to(dtype)
    b = torch.randn(n_out, device=DEVICE, dtype=dtype)
    r = torch.randn(batch, tokens, n_out, device=DEVICE, dtype=dtype)
    for act, res in (("hardswish", None), ("none", r)):
        out = gpu.linear(x, w, b, res, act, out=poisoned((batch, tokens, n_out), dtype))
        if dtype == torch.float32:
            assert rel_err(out, reference.linear(*f64(x, w, b, res), act)) <= FP32_RTOL
        else:
            assert_low_precision(out, lambda *t: reference.linear(*t, act), (x, w, b, res))


@pytest.mark.mlp
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("channels", [128, 256, 384, 512])   # 128: the fused-hidden kernel
def test_mlp_levit_cuda(channels, batch, dtype):
    tokens = {128: 196, 256: 196, 384: 49, 512: 16}[channels]
    x = torch.randn(batch, tokens, channels, device=DEVICE, dtype=dtype)
    w1 = (torch.randn(2 * channels, channels, device=DEVICE) / channels ** 0.5).to(dtype)
    w2 = (torch.randn(channels, 2 * channels, device=DEVICE) / (2 * channels) ** 0.5).to(dtype)
    b1 = torch.randn(2 * channels, device=DEVICE, dtype=dtype)
    b2 = torch.randn(channels, device=DEVICE, dtype=dtype)
    out = gpu.mlp(x, w1, b1, w2, b2, out=poisoned(x.shape, dtype))
    if dtype == torch.float32:
        assert rel_err(out, reference.mlp(*f64(x, w1, b1, w2, b2))) <= FP32_RTOL
    else:
        assert_low_precision(out, reference.mlp, (x, w1, b1, w2, b2))
