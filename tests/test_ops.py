"""The registered `levit::*` ops: opcheck (schema, fake impl, autograd registration) and
torch.compile over them, on CPU (and CUDA when present)."""
import pytest
import torch

from levit_kernels import cpu, ops, reference

from levit_testing import op_params, qkv_views

needs_extension = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
CUDA_SAMPLES = op_params("cuda") if torch.cuda.is_available() else []


@needs_extension
@pytest.mark.parametrize("op, args", op_params("cpu"))
def test_opcheck_cpu(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.skipif(not CUDA_SAMPLES, reason="no CUDA device")
@pytest.mark.parametrize("op, args", CUDA_SAMPLES or [pytest.param(None, None, id="none")])
def test_opcheck_cuda(op, args):
    torch.library.opcheck(op, args)


@needs_extension
@pytest.mark.attention
@pytest.mark.mlp
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_ops_match_reference(device):
    q, k, v = qkv_views(2, 3, 49, 49, 16, 32, device=device)
    bias = torch.randn(3, 49, 49, device=device)
    torch.testing.assert_close(ops.attention(q, k, v, bias, 0.25, True),
                               reference.attention(q, k, v, bias, 0.25, True),
                               rtol=1e-5, atol=1e-5)
    x = torch.randn(3, 17, 64, device=device)
    w1, b1 = torch.randn(128, 64, device=device) / 8, torch.randn(128, device=device)
    w2, b2 = torch.randn(64, 128, device=device) / 11, torch.randn(64, device=device)
    torch.testing.assert_close(ops.mlp(x, w1, b1, w2, b2), reference.mlp(x, w1, b1, w2, b2),
                               rtol=1e-5, atol=1e-5)


@needs_extension
@pytest.mark.attention
@pytest.mark.linear
def test_compile_fullgraph_over_ops():
    q, k, v = qkv_views(2, 4, 16, 16, 16, 32)
    bias = torch.randn(4, 16, 16)
    w, b = torch.randn(48, 128) / 11, torch.randn(48)
    packed = cpu.pack_weight(w)

    def block(q, k, v, bias):
        a = ops.attention(q, k, v, bias, 0.25, True)
        return ops.linear_packed(a, packed, 48, b, None, "hardswish") * 2

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, bias), block(q, k, v, bias), rtol=0, atol=0)


@pytest.mark.attention
@pytest.mark.linear
@pytest.mark.mlp
def test_fake_impls_give_shapes_without_kernels():
    with torch.device("meta"):
        q, k, v = qkv_views(2, 3, 10, 10, 8, 12, device="meta")
        bias = torch.empty(3, 10, 10)
        assert ops.attention(q, k, v, bias, 1.0).shape == (2, 10, 36)
        assert ops.attention_probs(q, k, bias, 1.0).shape == (2, 3, 10, 10)
        x = torch.empty(4, 5, 6)
        assert ops.linear(x, torch.empty(7, 6)).shape == (4, 5, 7)
        assert ops.mlp(x, torch.empty(9, 6), torch.empty(9), torch.empty(6, 9),
                       torch.empty(6)).shape == (4, 5, 6)
