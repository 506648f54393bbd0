"""CUDA-graph replay of a whole fused GPU forward, one graph per input shape.

A LeViT forward is ~80 kernel launches; at small batches the GPU finishes each one faster
than Python issues the next, so the forward is bound by host overhead. Captured once per input
shape, dtype and device, it becomes one graph launch: the images are copied into the graph's
static input, the graph is replayed, and its static output is cloned (a result stays valid
after the next call, unlike torch.compile's reduce-overhead outputs).

Capture follows torch.cuda.graphs' protocol: two warm-up forwards on a side stream first,
which here also validate the shapes (gpu_backend.py) and pick every launch config (tuning
times kernels and synchronises, which a capture forbids), then the capture itself into a
memory pool the plan's graphs share. The graphs belong to the plan (plan.graphs): whatever
drops the plan (a weight edit, `.to()`, `train()`) drops them and the buffers they point at.

`CudaGraphs` is the torch.cuda side; tests replace it with a fake that re-runs the captured
function, to check the bookkeeping without a GPU.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch


class CudaGraphs:
    """capture(fn, device) -> (graph, fn's output) and replay(graph), on torch.cuda."""

    def __init__(self):
        self.pool = None

    def capture(self, fn: Callable[[], torch.Tensor], device: torch.device):
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = fn()
        return graph, out

    @staticmethod
    def replay(graph) -> None:
        graph.replay()


class GraphedForward:
    """backend.run(plan, images) replayed from a graph captured per input shape."""

    def __init__(self, graphs=None):
        self.graphs = graphs if graphs is not None else CudaGraphs()
        self.captured: Dict[Tuple, Tuple] = {}

    def __call__(self, backend, plan, images: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), images.stride(), images.dtype, images.device)
        entry = self.captured.get(key)
        if entry is None:
            static_in = images.clone()
            graph, static_out = self.graphs.capture(lambda: backend.run(plan, static_in),
                                                    plan.device)
            entry = self.captured[key] = (static_in, graph, static_out)
        static_in, graph, static_out = entry
        static_in.copy_(images)
        self.graphs.replay(graph)
        return static_out.clone()
