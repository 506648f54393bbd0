"""The registered `levit::*` ops: opcheck (schema, fake impl, autograd registration) and
torch.compile over them, on CPU (and CUDA when present)."""
import pytest
import torch

from levit_kernels import cpu, ops, reference

from levit_testing import op_params, op_samples, qkv_views

needs_extension = pytest.mark.skipif(not cpu.is_available(), reason="CPU extension not built")
CUDA_SAMPLES = op_params("cuda") if torch.cuda.is_available() else []


@needs_extension
@pytest.mark.parametrize("op, args", op_params("cpu"))
def test_opcheck_cpu(op, args):
    torch.library.opcheck(op, args)


DIFFERENTIABLE = ("attention", "attention_probs", "linear", "mlp")


def _requiring_grad(args):
    """The sample's tensors as leaves that require grad (strided views become copies)."""
    return tuple(a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a
                 for a in args)


def _grad_samples():
    return [pytest.param(op, _requiring_grad(args), id=name)
            for name, op, args in op_samples("cpu")
            if op.name().split("::")[1] in DIFFERENTIABLE]


@needs_extension
@pytest.mark.parametrize("op, args", _grad_samples())
def test_opcheck_cpu_with_inputs_that_require_grad(op, args):
    """The kernels compute values; the registered backward differentiates the reference."""
    torch.library.opcheck(op, args)


@needs_extension
@pytest.mark.parametrize("op, args", _grad_samples())
def test_gradients_are_the_references(op, args):
    oracle = getattr(reference, op.name().split("::")[1])
    inputs = [a for a in args if isinstance(a, torch.Tensor)]
    out = op(*args)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(oracle(*args), inputs, grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _wrapper_samples():
    """The differentiable samples as (public wrapper, its reference, args)."""
    return [pytest.param(getattr(ops, op.name().split("::")[1]),
                         getattr(reference, op.name().split("::")[1]), args, id=name)
            for name, op, args in op_samples("cpu")
            if op.name().split("::")[1] in DIFFERENTIABLE]


@needs_extension
@pytest.mark.parametrize("wrapper, oracle, args", _wrapper_samples())
def test_wrappers_under_torch_func_give_the_references_values_and_gradients(wrapper, oracle,
                                                                             args):
    """torch.func cannot run a custom op's registered backward (PyTorch's generated
    autograd.Function has no setup_context): the public wrappers compute with the reference
    under torch.func transforms, so grad, jacrev, jvp and vmap give the ops' definition."""
    first = 0       # q or x
    args = list(args)

    def f(t):
        return wrapper(*args[:first], t, *args[first + 1:])

    def g(t):
        return oracle(*args[:first], t, *args[first + 1:])
    t = args[first].detach().clone()
    cotangent = torch.randn_like(f(t))

    def loss(fn):
        return lambda t: (fn(t) * cotangent).sum()
    assert torch.equal(torch.func.grad(loss(f))(t), torch.func.grad(loss(g))(t))
    assert torch.equal(torch.func.jvp(f, (t,), (torch.ones_like(t),))[1],
                       torch.func.jvp(g, (t,), (torch.ones_like(t),))[1])
    batched = torch.stack([t, 2 * t])
    torch.testing.assert_close(torch.func.vmap(f)(batched), torch.stack([f(t), f(2 * t)]),
                               rtol=1e-5, atol=1e-5)   # kernels outside vmap, reference inside


@needs_extension
def test_wrappers_under_torch_func_keep_the_ops_checks():
    x, w = torch.randn(3, 8), torch.randn(6, 7)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(N, K=8\)"):
        torch.func.grad(lambda t: ops.linear(t, w).sum())(x)
    with pytest.raises(TypeError, match=r"^x: expected dtype in"):
        torch.func.grad(lambda t: ops.linear(t, w.double()).sum())(torch.randn(3, 7).double())


@needs_extension
def test_second_derivatives_are_the_references():
    """Also with x passed twice (as the residual): each use is its own partial."""
    x, w, b = torch.randn(5, 8), torch.randn(8, 8), torch.randn(8)
    results = []
    for fn in (ops.linear, reference.linear):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        gx, = torch.autograd.grad(fn(xr, wr, b, xr, "hardswish").pow(2).sum(), xr,
                                  create_graph=True)
        gx.pow(2).sum().backward()
        results.append((gx.detach(), xr.grad, wr.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_extension
def test_packed_ops_backward_says_what_to_use():
    x, w = torch.randn(5, 8, requires_grad=True), torch.randn(6, 8)
    out = ops.linear_packed(x, cpu.pack_weight(w), 6)
    with pytest.raises(RuntimeError, match="levit::linear_packed has no backward .* use "
                                           "levit::linear"):
        out.sum().backward()


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
