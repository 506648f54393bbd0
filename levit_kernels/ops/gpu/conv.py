# LeViT's stem convolutions in Triton: an implicit GEMM with the bias and Hardswish fused.
#
#   out[b, oy, ox, co] = act(bias[co] + sum_{ky, kx, ci} x[b, oy*s - p + ky, ox*s - p + kx, ci]
#                                                    * W[co, ci, ky, kx])
#   x (B, H, W, Cin) NHWC-indexed with any strides (NCHW images are read in place through
#   images.permute(0, 2, 3, 1)); out (B, Ho, Wo, Cout) contiguous. Math:
#   levit_kernels/ops/reference.py::conv2d (the oracle); the CPU kernel of the same layer is
#   csrc/conv.cpp (conv2d_packed), which takes the same (Cout, kh*kw*Cin) weight matrix.
#
# Memory plan. The GEMM is (M = B*Ho*Wo) x (N = Cout) x (K = kh*kw*Cin) with the weight as a
# (Cout, kh*kw*Cin) matrix (made once per plan: conv_weight_matrix). A program owns a
# (BLOCK_M, BLOCK_N) tile of output pixels x channels: for each BLOCK_K slice of the
# reduction it gathers the input patch elements straight from x (zero outside the image:
# the padding is a load mask, never materialised), loads the weight slice, and accumulates in
# fp32 registers. Bias and Hardswish are applied on the accumulator and the tile is written
# once, in NHWC: the last stem conv's output *is* the (B, N, C) token layout the first block
# reads, so neither im2col, a separate Hardswish pass nor the NCHW -> tokens transpose exists.
# x may be of a different float dtype than W (float32 images into a float16 plan): the cast
# happens on load, which saves the images.to(dtype) pass.
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from .common import (GPU_DEVICES, LAUNCHERS, RUNTIME, check_out, dot, dot_precision,
                     gpu_dtypes, grouped_tile, hardswish)
from .linear import prune_gemm
from .tuning import Config, Tuner, gemm_interpret


@triton.jit
def _conv2d_kernel(X, W, Bias, Out, M, N, H, W_IN, HO, WO, CIN,
                   stride_xb, stride_xh, stride_xw, stride_xc,
                   KH: tl.constexpr, KW: tl.constexpr,
                   STRIDE: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HARDSWISH: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # Cin is a runtime value (one compiled kernel serves every stem layer): the (ky, kx, ci)
    # split below divides BLOCK_K indices per step, negligible beside the tile's dot.
    K = KH * KW * CIN
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # output pixel m -> (b, oy, ox) and the top-left input pixel of its patch
    ox = offs_m % WO
    oy = (offs_m // WO) % HO
    b = offs_m // (WO * HO)
    iy0 = oy * STRIDE - PAD
    ix0 = ox * STRIDE - PAD
    x_base = b * stride_xb + iy0 * stride_xh + ix0 * stride_xw
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # reduction index k -> (ky, kx, ci), ci fastest (the weight matrix's column order)
        k = k0 + tl.arange(0, BLOCK_K)
        ci = k % CIN
        kx = (k // CIN) % KW
        ky = k // (CIN * KW)
        iy = iy0[:, None] + ky[None, :]
        ix = ix0[:, None] + kx[None, :]
        inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W_IN)
        k_off = ky * stride_xh + kx * stride_xw + ci * stride_xc
        x = tl.load(X + x_base[:, None] + k_off[None, :],
                    mask=mask_m[:, None] & (k < K)[None, :] & inside, other=0.0)
        w = tl.load(W + offs_n[None, :] * K + k[:, None], mask=(k < K)[:, None] & mask_n[None, :],
                    other=0.0)
        acc += dot(x.to(W.dtype.element_ty), w, PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HARDSWISH:
        acc = hardswish(acc)
    tl.store(Out + offs_m[:, None] * N + offs_n[None, :], acc.to(Out.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


_CONV = Tuner(
    "conv2d", _conv2d_kernel,
    [Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8), num_warps=w, num_stages=s)
     # 128-row tiles on 8 warps: on 4 the patch gather's per-element addresses spill
     for bm, bn, bk, w, s in [(128, 64, 32, 8, 3), (128, 128, 32, 8, 3), (64, 64, 32, 4, 3),
                              (128, 32, 32, 8, 3), (64, 32, 32, 4, 2), (32, 64, 32, 4, 2),
                              (32, 32, 32, 4, 3)]],
    prune_gemm, key=("dtype", "precision", "N", "K", "CIN", "STRIDE", "HARDSWISH"),
    bucket="M", interpret=gemm_interpret)


def conv_weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, kh, kw) -> the (Cout, kh*kw*Cin) matrix the kernel reads (ci fastest)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
           padding: int, activation: str = "none", *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(conv2d(x, weight, bias, stride, padding)) in NHWC: x (B, H, W, Cin), any strides ->
    (B, Ho, Wo, Cout) contiguous. Equals F.conv2d on x.permute(0, 3, 1, 2), permuted back."""
    inputs = (("x", x), ("weight", weight), ("bias", bias))
    checks.check_untracked(inputs + (("out", out),), LAUNCHERS)
    checks.check_activation(activation)
    checks.check_tensor(x, "x", ndim=4, unit_last_stride=False)
    checks.check_tensor(weight, "weight", ndim=4, unit_last_stride=False)
    for name, value, low in (("stride", stride, 1), ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    batch, h, w, cin = x.shape
    cout, wcin, kh, kw = weight.shape
    if cin < 1:
        raise ValueError(f"x: expected at least 1 channel (NHWC, the last dimension), got "
                         f"shape {tuple(x.shape)}")
    if wcin != cin:
        raise ValueError(f"weight: expected shape (Cout, Cin={cin}, kh, kw) to match x's "
                         f"channels (NHWC), got {tuple(weight.shape)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"weight: expected a kernel of at least 1x1, got shape "
                         f"{tuple(weight.shape)}")
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"x: NHWC {tuple(x.shape)} is smaller than the {kh}x{kw} kernel with "
                         f"padding {padding}")
    checks.check_bias(bias, cout)
    checks.check_same(inputs, gpu_dtypes(), GPU_DEVICES)
    checks.check_numel((batch, ho, wo, cout), "x, weight", "the output (B, Ho, Wo, Cout) =")
    out = check_out(out, (batch, ho, wo, cout), x, inputs)
    if out.numel() == 0:
        return out
    return launch_conv2d(x, conv_weight_matrix(weight), bias, (kh, kw), stride, padding,
                         activation, out)


def launch_conv2d(x, weight_matrix, bias, kernel_size, stride: int, padding: int,
                  activation: str, out: torch.Tensor):
    """conv2d() without the checks, on a weight from conv_weight_matrix; x may be of another
    float dtype than the weight (cast on load). For the fused model's plan."""
    batch, h, w, cin = x.shape
    _, ho, wo, cout = out.shape
    kh, kw = kernel_size
    m = batch * ho * wo
    args = (x, weight_matrix, bias if bias is not None else weight_matrix, out, m, cout, h, w,
            ho, wo, cin, *x.stride())
    consts = dict(KH=kh, KW=kw, STRIDE=stride, PAD=padding, HAS_BIAS=bias is not None,
                  HARDSWISH=activation == "hardswish",
                  PRECISION=dot_precision(weight_matrix.dtype))
    shape = dict(dtype=weight_matrix.dtype, precision=consts["PRECISION"], M=m, N=cout,
                 K=kh * kw * cin, CIN=cin, STRIDE=stride, HARDSWISH=activation == "hardswish")

    def grid(cfg):
        return (triton.cdiv(m, cfg.kwargs["BLOCK_M"]) * triton.cdiv(cout, cfg.kwargs["BLOCK_N"]),)

    RUNTIME.launch_tuned(_CONV, shape, grid, args, consts, RUNTIME.device_of(x))
    return out
