"""The registered `levit::*` ops: opcheck (schema, fake impl, autograd registration) and
torch.compile over them, on CPU (and CUDA when present)."""
import pytest
import torch

from levit_kernels import cpu, ops, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_extension = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")


def qkv_views(batch, heads, n, d_k, d_v, device):
    """q, k, v as strided views of one packed (B, N, H, 2Dk+Dv) projection, like LeViT's."""
    packed = torch.randn(batch, n, heads, 2 * d_k + d_v, device=device)
    packed = packed.permute(0, 2, 1, 3)
    return packed[..., :d_k], packed[..., d_k:2 * d_k], packed[..., 2 * d_k:]


def op_samples(device):
    q, k, v = qkv_views(2, 3, 16, 8, 12, device)
    bias = torch.randn(3, 16, 16, device=device)
    x = torch.randn(2, 7, 24, device=device)
    w, b = torch.randn(40, 24, device=device), torch.randn(40, device=device)
    w2, b2 = torch.randn(24, 40, device=device), torch.randn(24, device=device)
    residual = torch.randn(2, 7, 40, device=device)
    samples = [
        (torch.ops.levit.attention.default, (q, k, v, bias, 0.35, True)),
        (torch.ops.levit.attention.default, (q, k, v, bias, 0.35, False)),
        (torch.ops.levit.attention_probs.default, (q, k, bias, 0.35)),
        (torch.ops.levit.linear.default, (x, w, b, residual, "hardswish")),
        (torch.ops.levit.linear.default, (x, w, None, None, "none")),
        (torch.ops.levit.mlp.default, (x, w, b, w2, b2)),
    ]
    if device == "cpu":
        packed, packed2 = cpu.pack_weight(w), cpu.pack_weight(w2)
        samples += [
            (torch.ops.levit.linear_packed.default, (x, packed, 40, b, residual, "hardswish")),
            (torch.ops.levit.mlp_packed.default, (x, packed, b, packed2, b2)),
        ]
        image = torch.randn(2, 9, 11, 3)  # NHWC
        conv_w, conv_b = torch.randn(17, 3, 3, 3), torch.randn(17)
        samples += [(torch.ops.levit.conv2d_packed.default,
                     (image, cpu.pack_conv_weight(conv_w), 17, 3, 2, 1, conv_b, "hardswish"))]
    return samples


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in op_samples(device):
        torch.library.opcheck(op, args)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_ops_match_reference(device):
    q, k, v = qkv_views(2, 3, 49, 16, 32, device)
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
def test_compile_fullgraph_over_ops():
    q, k, v = qkv_views(2, 4, 16, 16, 32, "cpu")
    bias = torch.randn(4, 16, 16)
    w, b = torch.randn(48, 128) / 11, torch.randn(48)
    packed = cpu.pack_weight(w)

    def block(q, k, v, bias):
        a = ops.attention(q, k, v, bias, 0.25, True)
        return ops.linear_packed(a, packed, 48, b, None, "hardswish") * 2

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, bias), block(q, k, v, bias), rtol=0, atol=0)


def test_fake_impls_give_shapes_without_kernels():
    with torch.device("meta"):
        q, k, v = qkv_views(2, 3, 10, 8, 12, "meta")
        bias = torch.empty(3, 10, 10)
        assert ops.attention(q, k, v, bias, 1.0).shape == (2, 10, 36)
        assert ops.attention_probs(q, k, bias, 1.0).shape == (2, 3, 10, 10)
        x = torch.empty(4, 5, 6)
        assert ops.linear(x, torch.empty(7, 6)).shape == (4, 5, 7)
        assert ops.mlp(x, torch.empty(9, 6), torch.empty(9), torch.empty(6, 9),
                       torch.empty(6)).shape == (4, 5, 6)
