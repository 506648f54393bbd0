# LeViT linear layers in Triton: one tiled GEMM with the whole epilogue fused.
#
#   linear: out = act(x @ W^T + b) + residual, act in {none, hardswish}; x (..., K), W (N, K).
#   mlp:    out = x + hardswish(x @ W1^T + b1) @ W2^T + b2            (LeViT's residual MLP)
#   Math: levit_kernels/ops/reference.py::linear / mlp (the oracle); the CPU kernels of the
#   same ops are csrc/gemm_kernel.h and csrc/gemm.cpp (mlp_packed).
#
# Memory plan (linear). x is viewed as (M, K) with M = all leading dims. A program owns a
# (BLOCK_M, BLOCK_N) output tile: it streams BLOCK_K slices of x and W through SRAM into an
# fp32 register accumulator, then applies bias, Hardswish and the residual on that accumulator
# and writes the tile once, in x's dtype. Nothing but the output goes back to memory, so a
# LeViT "Linear + BN (folded) + Hardswish" or "projection + residual" is one pass. Programs are
# ordered in GROUP_M-row bands so the W tiles they share stay in L2.
#
# Memory plan (mlp). When C <= 128 (LeViT-128S/128 stage 1) the whole (BLOCK_M, C) row block of
# x fits in registers: the hidden activation is produced BLOCK_H columns at a time, Hardswish'd,
# rounded to x's dtype (as the reference does) and immediately multiplied into the (BLOCK_M, C)
# output accumulator, so the 2C-wide hidden tensor never touches memory. Wider C would need a
# (BLOCK_M, C) accumulator too large for registers; there the MLP is two GEMM launches (the
# first with the Hardswish epilogue, the second with bias + residual).
#
# Blocks: autotuned per (M, N, K) on GPUs (LeViT has M = tokens*batch large, N, K <= 1024);
# one small fixed config under TRITON_INTERPRET=1. float32 dots use input_precision="ieee".
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from .common import GPU_DEVICES, check_out, dot, gpu_dtypes, interpreting


@triton.jit
def _hardswish(x):
    return x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def _linear_kernel(X, W, Bias, Res, Out, M, N, K, stride_xm, stride_wn, stride_rm,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HARDSWISH: tl.constexpr,
                   IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    band = GROUP_M * num_n
    first_m = (pid // band) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % group_rows
    pid_n = (pid % band) // group_rows
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = W + offs_n[None, :] * stride_wn + offs_k[:, None]      # W^T tile (BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc += dot(x, w, IEEE)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HARDSWISH:
        acc = _hardswish(acc)
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        acc += tl.load(Res + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(Out + offs_m[:, None] * N + offs_n[None, :], acc.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _mlp_fused_kernel(X, W1, B1, W2, B2, Out, M, C, CH, stride_xm, stride_w1, stride_w2,
                      IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    mask = mask_m[:, None] & mask_c[None, :]
    x = tl.load(X + offs_m[:, None] * stride_xm + offs_c[None, :], mask=mask, other=0.0)
    # residual + second bias start the accumulator
    acc = x.to(tl.float32) + tl.load(B2 + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    for h0 in range(0, CH, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < CH
        w1t = tl.load(W1 + offs_h[None, :] * stride_w1 + offs_c[:, None],
                      mask=mask_c[:, None] & mask_h[None, :], other=0.0)      # (BLOCK_C, BLOCK_H)
        hid = dot(x, w1t, IEEE)
        hid += tl.load(B1 + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
        hid = _hardswish(hid)       # padded hidden columns are hardswish(0) = 0
        w2t = tl.load(W2 + offs_c[None, :] * stride_w2 + offs_h[:, None],
                      mask=mask_h[:, None] & mask_c[None, :], other=0.0)      # (BLOCK_H, BLOCK_C)
        acc += dot(hid.to(x.dtype), w2t, IEEE)
    tl.store(Out + offs_m[:, None] * C + offs_c[None, :], acc.to(Out.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------- launchers
_LINEAR_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                  num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [(128, 128, 32, 4, 4), (128, 128, 64, 8, 3), (128, 64, 32, 4, 4),
                             (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (128, 256, 32, 8, 3),
                             (64, 64, 64, 4, 3), (32, 64, 32, 4, 4), (16, 64, 64, 4, 3)]
]
_linear_tuned = triton.autotune(configs=_LINEAR_CONFIGS, key=["M", "N", "K"])(_linear_kernel)
_MLP_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_H": bh}, num_warps=w, num_stages=s)
                for bm, bh, w, s in [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2),
                                     (32, 64, 4, 2), (128, 32, 8, 3)]]
_mlp_tuned = triton.autotune(configs=_MLP_CONFIGS, key=["M", "C", "CH"])(_mlp_fused_kernel)

_INTERPRET_LINEAR = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
_INTERPRET_MLP = {"BLOCK_M": 16, "BLOCK_H": 16}
MLP_FUSED_MAX_C = 128


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K) view when strides allow (a copy otherwise), unit last stride."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[-1] > 1 and t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: str = "none", *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(x @ weight^T + bias) + residual -> (..., N) contiguous, in x's dtype.

    `out`, if given, must be a contiguous (..., N) tensor of x's dtype and device."""
    k_in, n_out = checks.check_linear(x, weight, bias, residual, activation,
                                      allowed=gpu_dtypes(), devices=GPU_DEVICES)
    out = check_out(out, tuple(x.shape[:-1]) + (n_out,), x)
    if out.numel() == 0:
        return out
    if k_in == 0:  # empty reduction: act(b) + residual, as the reference gives
        out.copy_(torch.nn.functional.linear(x, weight, bias) if activation == "none" else
                  torch.nn.functional.hardswish(torch.nn.functional.linear(x, weight, bias)))
        if residual is not None:
            out += residual
        return out
    x2 = _rows(x)
    m = x2.shape[0]
    res2 = _rows(residual) if residual is not None else None
    args = (x2, weight, bias if bias is not None else x2, res2 if res2 is not None else x2, out,
            m, n_out, k_in, x2.stride(0), weight.stride(0),
            res2.stride(0) if res2 is not None else 0)
    consts = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                  HARDSWISH=activation == "hardswish", IEEE=x.dtype == torch.float32)
    if interpreting():
        cfg = _INTERPRET_LINEAR
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n_out, cfg["BLOCK_N"]),)
        _linear_kernel[grid](*args, **consts, **cfg)
    else:
        _linear_tuned[lambda meta: (triton.cdiv(m, meta["BLOCK_M"])
                                    * triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **consts)
    return out


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
        b2: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x + hardswish(x @ w1^T + b1) @ w2^T + b2 -> (..., C) contiguous, in x's dtype."""
    channels, hidden = checks.check_mlp(x, w1, b1, w2, b2, allowed=gpu_dtypes(),
                                        devices=GPU_DEVICES)
    if channels > MLP_FUSED_MAX_C or hidden == 0 or channels == 0:
        hid = linear(x, w1, b1, activation="hardswish")
        return linear(hid, w2, b2, residual=x, out=out)
    out = check_out(out, tuple(x.shape), x)
    if out.numel() == 0:
        return out
    x2 = _rows(x)
    m = x2.shape[0]
    args = (x2, w1, b1, w2, b2, out, m, channels, hidden, x2.stride(0), w1.stride(0),
            w2.stride(0))
    consts = dict(IEEE=x.dtype == torch.float32, BLOCK_C=max(16, triton.next_power_of_2(channels)))
    if interpreting():
        cfg = _INTERPRET_MLP
        _mlp_fused_kernel[(triton.cdiv(m, cfg["BLOCK_M"]),)](*args, **consts, **cfg)
    else:
        _mlp_tuned[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](*args, **consts)
    return out
