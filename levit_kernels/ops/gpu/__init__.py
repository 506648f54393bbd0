"""GPU launchers: the levit_kernels op signatures on top of Triton kernels, one file per op.

    attention(q, k, v, bias, scale, hardswish)   -> (B, Nq, H*Dv)     gpu/attention.py
    attention_probs(q, k, bias, scale)           -> (B, H, Nq, Nk)    gpu/attention.py
    linear(x, weight, bias, residual, activation) -> (..., N)         gpu/linear.py
    mlp(x, w1, b1, w2, b2)                       -> (..., C)          gpu/linear.py
    conv2d(x, weight, bias, stride, padding, activation) NHWC (stem)  gpu/conv.py

Each has a `launch_*` twin without the input checks, for the fused model's plan, which
validates its shapes once (tuning.py picks the launch configs; common.py launches them on the
tensors' device).

They take CUDA tensors (float16, bfloat16, float32), or CPU tensors when TRITON_INTERPRET=1 was
set before triton was imported (how CI without a GPU runs them). Each also accepts an optional
keyword `out=` (a contiguous output buffer). Importing this package compiles nothing and does
not touch CUDA; kernels are compiled (and autotuned, on GPUs) at their first call per shape.
"""
try:
    import triton  # noqa: F401  (imported here first so that a missing Triton says what to do)
except ImportError as _exc:
    raise ImportError(
        f"levit_kernels.gpu needs Triton, which cannot be imported ({_exc}). Install it with "
        "`pip install triton` (torch's CUDA wheels ship it); without it only the CPU kernels "
        "and the plain PyTorch path are available.") from _exc

from .attention import attention, attention_probs, launch_attention, launch_attention_probs
from .conv import conv2d, conv_weight_matrix, launch_conv2d
from .linear import launch_linear, launch_mlp, linear, mlp

__all__ = ["attention", "attention_probs", "linear", "mlp"]
