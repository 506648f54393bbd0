"""CUDA-graph replay of the fused GPU forward (levit_kernels/model/cuda_graphs.py).

Without a GPU the graph API is faked (capture runs the function, replay re-runs it into the
same output buffer, as a real graph rewrites its static output), which checks the
bookkeeping: one capture per input shape, inputs copied into the static buffer, fresh
outputs, graphs dropped with the plan. With CUDA the real thing runs: graphs and
torch.compile(mode="reduce-overhead") against the eager fused forward.
"""
import pytest
import torch

import levit_kernels
from levit_kernels.model.cuda_graphs import GraphedForward

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class FakeGraphs:
    def __init__(self):
        self.captures = self.replays = self.warmups = 0

    def capture(self, fn, device):
        for _ in range(2):
            fn()
            self.warmups += 1
        self.captures += 1
        out = fn()
        return (fn, out), out

    def replay(self, graph):
        fn, out = graph
        self.replays += 1
        out.copy_(fn())


class DoubleBackend:
    def __init__(self):
        self.runs = []

    def run(self, plan, images):
        self.runs.append(images)
        return images * 2 + 1


class Plan:
    device = torch.device("cpu")


def test_one_capture_per_shape_fresh_outputs():
    graphs, backend = FakeGraphs(), DoubleBackend()
    graphed = GraphedForward(graphs)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    out_a = graphed(backend, Plan(), a)
    out_b = graphed(backend, Plan(), b)
    assert graphs.captures == 1 and graphs.replays == 2 and graphs.warmups == 2
    torch.testing.assert_close(out_a, a * 2 + 1)
    torch.testing.assert_close(out_b, b * 2 + 1)      # a's result was not overwritten
    assert all(x.data_ptr() == backend.runs[0].data_ptr() for x in backend.runs)  # static in
    assert not any(x.data_ptr() == a.data_ptr() for x in backend.runs)
    graphed(backend, Plan(), torch.randn(4, 3))
    graphed(backend, Plan(), torch.randn(2, 3).t())    # same shape, other strides
    assert graphs.captures == 3


def test_cpu_models_ignore_the_switch():
    torch.manual_seed(0)
    model = levit_kernels.LeViT("LeViT-128S", img_size=64, num_classes=10, fused=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert model.use_cuda_graphs() is model
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert model._plan.graphs is None


@requires_cuda
@pytest.mark.parametrize("batch", [1, 16])
def test_cuda_graph_forward_matches_eager(batch):
    torch.manual_seed(0)
    model = levit_kernels.LeViT("LeViT-256", fused=True).eval().cuda().half()
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.no_grad():
        eager = model(x)
        model.use_cuda_graphs()
        first, second = model(x), model(x * 0.5)
        third = model(x)
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(third, eager, rtol=0, atol=0)
    assert not torch.equal(second, first)
    assert len(model._plan.graphs.captured) == 1
    model.head.linear.weight.data.add_(0)      # any parameter edit rebuilds plan and graphs
    model.refresh_fused()
    assert model._plan is None or model._plan.graphs is None


@requires_cuda
def test_torch_compile_reduce_overhead():
    torch.manual_seed(0)
    model = levit_kernels.LeViT("LeViT-128S", fused=True).eval().cuda().half()
    x = torch.randn(8, 3, 224, 224, device="cuda", dtype=torch.half)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):          # warm-up, record, replay
            out = compiled(x).clone()
    # Under torch.compile the stem is cuDNN + Hardswish (traced), eagerly the Triton implicit
    # GEMM: two float16 summation orders, so not bit-equal.
    assert (out - eager).abs().max() <= 1e-2 * eager.abs().max()
