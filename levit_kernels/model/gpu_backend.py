"""The eager backend of "gpu" plans: every layer of the fused forward on the Triton launchers.

One LeViT forward launches

    4 stem convolutions      implicit GEMM, bias + Hardswish in the epilogue, NHWC output; the
                             first reads the NCHW images in place and casts them on load, the
                             last one's output *is* the (B, N, C) token tensor (a view)
    per attention block      qkv linear, attention (+Hardswish, heads side by side),
                             projection (+residual); a shrinking block's query projection reads
                             the subsampled token grid through its strides (no copy)
    per MLP                  one fused kernel (C <= 128) or two GEMMs with fused epilogues
    the token mean (torch) and the classifier linear.

Host overhead. The inputs of every launch are validated (ops/checks.py: shapes, dtypes,
devices, 32-bit sizes) on the first forward of each input shape only. Later forwards of that
shape call the unchecked `launch_*` launchers: the plan made the weights (contiguous, on its
device, in its dtype) and every activation is the output of the launch before it, so nothing
a check looks at can differ. For fixed shapes, cuda_graphs.py replays the whole forward as one
CUDA graph. Triton is imported when the first such backend is made, never at package import.
"""
from __future__ import annotations

import torch

from ..ops import checks
from .plan import FusedConv, FusedLinear, FusedMlp, FusedPlan, LayerByLayer


class GpuLaunchers(LayerByLayer):
    """Runs a "gpu" plan (kept on the plan as plan.backend: it remembers which input shapes
    were validated). The first forward of a shape goes through a checking twin, so concurrent
    forwards never share a checking flag. The forward itself is plan.py's layer-by-layer one:
    NHWC stem (the first conv reads the NCHW images in place and casts them on load)."""

    casts_on_load = True

    @staticmethod
    def nhwc_stem(plan: FusedPlan) -> bool:
        return True

    def __init__(self, checking: bool = False):
        from ..ops import gpu           # imports Triton
        from ..ops.gpu.common import GPU_DEVICES, gpu_dtypes
        self.gpu, self._devices, self._dtypes = gpu, GPU_DEVICES, gpu_dtypes
        self.checking = checking
        self.validated = set()
        self._checker = None

    def run(self, plan: FusedPlan, images: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), images.dtype, images.device)
        if key in self.validated:
            return self.forward(plan, images)
        if self._checker is None:
            self._checker = GpuLaunchers(checking=True)
        checks.check_tensor(images, "images", ndim=4, unit_last_stride=False)
        out = self._checker.forward(plan, images)
        self.validated.add(key)
        return out

    def forward(self, plan: FusedPlan, images: torch.Tensor) -> torch.Tensor:
        """The forward without the per-shape bookkeeping (tools/gpu_static.py records the
        launches on meta tensors this way)."""
        return LayerByLayer.run(self, plan, images)

    def _empty(self, like: torch.Tensor, shape, what: str, names: str) -> torch.Tensor:
        if self.checking:
            checks.check_numel(shape, names, what)
        return torch.empty(shape, device=like.device, dtype=like.dtype)

    def conv(self, layer: FusedConv, x, activation):
        batch, h, w, _ = x.shape
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        if self.checking:
            checks.check_tensor(x, "x", ndim=4, unit_last_stride=False)
            checks.check_same([("weight", layer.weight), ("bias", layer.bias)], self._dtypes(),
                              self._devices)
        shape = (batch, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, layer.out_channels)
        out = self._empty(layer.weight, shape, "the output (B, Ho, Wo, Cout) =", "x, weight")
        return self.gpu.launch_conv2d(x, layer.matrix, layer.bias, (k, k), s, p, activation, out)

    def linear(self, layer: FusedLinear, x, residual=None, activation="none"):
        if self.checking:
            checks.check_linear(x, layer.weight, layer.bias, residual, activation,
                                allowed=self._dtypes(), devices=self._devices)
        out = self._empty(x, tuple(x.shape[:-1]) + (layer.out_features,),
                          "the output (..., N) =", "x, weight")
        return self.gpu.launch_linear(x, layer.weight, layer.bias, residual, activation, out)

    def mlp(self, layer: FusedMlp, x):
        fc1, fc2 = layer.fc1, layer.fc2
        if self.checking:
            checks.check_mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                             allowed=self._dtypes(), devices=self._devices)
        return self.gpu.launch_mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                                   torch.empty_like(x, memory_format=torch.contiguous_format))

    def attention(self, q, k, v, bias, scale, hardswish):
        if self.checking:
            checks.check_attention(q, k, v, bias, allowed=self._dtypes(), devices=self._devices)
        batch, heads, n_q, _ = q.shape
        out = self._empty(q, (batch, n_q, heads * v.shape[-1]), "the output (B, Nq, H*Dv) =",
                          "q, v")
        return self.gpu.launch_attention(q, k, v, bias, scale, hardswish, out)
