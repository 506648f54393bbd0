"""The oracle itself, against naive float64 loops over odd shapes."""
import math

import pytest
import torch

from levit_kernels import reference


def naive_attention(q, k, v, bias, scale, hardswish):
    q, k, v, bias = q.double(), k.double(), v.double(), bias.double()
    batch, heads, n_q, _ = q.shape
    out = torch.zeros(batch, n_q, heads * v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q):
                logits = [scale * float(q[b, h, i] @ k[b, h, j]) + float(bias[h, i, j])
                          for j in range(k.shape[2])]
                top = max(logits)
                weights = [math.exp(l - top) for l in logits]
                total = sum(weights)
                row = sum(w / total * v[b, h, j].double() for j, w in enumerate(weights))
                if hardswish:
                    row = row * (row + 3).clamp(0, 6) / 6
                out[b, i, h * v.shape[-1]:(h + 1) * v.shape[-1]] = row
    return out


@pytest.mark.attention
@pytest.mark.parametrize("batch,heads,n_q,n_k,d_k,d_v", [
    (1, 1, 1, 1, 1, 1), (3, 2, 7, 7, 5, 9), (1, 3, 4, 13, 8, 16), (2, 2, 16, 49, 3, 4)])
@pytest.mark.parametrize("hardswish", [False, True])
def test_attention_matches_naive(batch, heads, n_q, n_k, d_k, d_v, hardswish):
    q, k = torch.randn(batch, heads, n_q, d_k), torch.randn(batch, heads, n_k, d_k)
    v, bias = torch.randn(batch, heads, n_k, d_v), torch.randn(heads, n_q, n_k) * 3
    scale = d_k ** -0.5
    out = reference.attention(q.double(), k.double(), v.double(), bias.double(), scale, hardswish)
    torch.testing.assert_close(out, naive_attention(q, k, v, bias, scale, hardswish))
    probs = reference.attention_probs(q.double(), k.double(), bias.double(), scale)
    torch.testing.assert_close(probs.sum(-1), torch.ones(batch, heads, n_q, dtype=torch.float64))


@pytest.mark.linear
@pytest.mark.mlp
@pytest.mark.parametrize("shape,k_in,n_out", [((1,), 1, 1), ((3, 7), 5, 9), ((2, 49), 17, 33)])
@pytest.mark.parametrize("activation", ["none", "hardswish"])
@pytest.mark.parametrize("with_bias,with_residual", [(False, False), (True, True), (True, False)])
def test_linear_and_mlp_match_naive(shape, k_in, n_out, activation, with_bias, with_residual):
    x = torch.randn(*shape, k_in, dtype=torch.float64)
    w = torch.randn(n_out, k_in, dtype=torch.float64)
    b = torch.randn(n_out, dtype=torch.float64) if with_bias else None
    r = torch.randn(*shape, n_out, dtype=torch.float64) if with_residual else None
    rows = x.reshape(-1, k_in)
    expected = torch.stack([torch.stack([sum(rows[m, j] * w[n, j] for j in range(k_in))
                                         for n in range(n_out)]) for m in range(rows.shape[0])])
    if b is not None:
        expected = expected + b
    if activation == "hardswish":
        expected = expected * (expected + 3).clamp(0, 6) / 6
    expected = expected.reshape(*shape, n_out)
    if r is not None:
        expected = expected + r
    torch.testing.assert_close(reference.linear(x, w, b, r, activation), expected)


@pytest.mark.mlp
def test_mlp_is_residual_hardswish_mlp():
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    w1, b1 = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    w2, b2 = torch.randn(6, 12, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    hidden = x @ w1.T + b1
    hidden = hidden * (hidden + 3).clamp(0, 6) / 6
    torch.testing.assert_close(reference.mlp(x, w1, b1, w2, b2), x + hidden @ w2.T + b2)


@pytest.mark.linear
def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        reference.linear(torch.randn(2, 3), torch.randn(4, 3), activation="gelu")
