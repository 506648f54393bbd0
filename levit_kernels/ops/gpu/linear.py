# LeViT linear layers in Triton: one tiled GEMM with the whole epilogue fused.
#
#   linear: out = act(x @ W^T + b) + residual, act in {none, hardswish}; x (..., K), W (N, K).
#   mlp:    out = x + hardswish(x @ W1^T + b1) @ W2^T + b2            (LeViT's residual MLP)
#   Math: levit_kernels/ops/reference.py::linear / mlp (the oracle); the CPU kernels of the
#   same ops are csrc/gemm_kernel.h and csrc/gemm.cpp (mlp_packed).
#
# Memory plan (linear). x's rows are read in place through up to three leading strides: row m
# = (i0, i1, i2) sits at i0*s0 + i1*s1 + i2*s2, so a subsampled token grid (the shrinking
# attention's queries, x[:, ::2, ::2] of a (B, R, R, C) view) is read where it is, without the
# copy a reshape would make. A program owns a (BLOCK_M, BLOCK_N) output tile: it streams
# BLOCK_K slices of x and W through SRAM into an fp32 register accumulator, then applies bias,
# Hardswish and the residual on that accumulator and writes the tile once, in x's dtype, to the
# contiguous (M, N) output. A LeViT "Linear + BN (folded) + Hardswish" or "projection +
# residual" is one pass. Programs are ordered in GROUP_M-row bands so the W tiles they share
# stay in L2.
#
# Memory plan (mlp). When C <= 128 (LeViT-128S/128 stage 1) the whole (BLOCK_M, C) row block of
# x fits in registers: the hidden activation is produced BLOCK_H columns at a time, Hardswish'd,
# rounded to x's dtype (as the reference does) and immediately multiplied into the (BLOCK_M, C)
# output accumulator, so the 2C-wide hidden tensor never touches memory. Wider C would need a
# (BLOCK_M, C) accumulator too large for registers; there the MLP is two GEMM launches (the
# first with the Hardswish epilogue, the second with bias + residual).
#
# Configs: picked per (N, K) and bucketed M by tuning.py, pruned by the shape and by the shared
# memory the arch has; one small fixed config under TRITON_INTERPRET=1. float32 dots use
# common.dot_precision (3xTF32 by default). Offsets are 32-bit: checks.MAX_NUMEL bounds every
# tensor's span.
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from .common import (GPU_DEVICES, LAUNCHERS, RUNTIME, check_out, dot, dot_precision,
                     gpu_dtypes, grouped_tile, hardswish)
from .tuning import Config, Tuner, gemm_interpret, interpret_tile, pow2

# Dynamic shared memory one block may use (bytes): sm_80 163 KB, sm_86/89 99 KB, sm_90 227 KB.
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
MLP_FUSED_MAX_C = 128


@triton.jit
def _linear_kernel(X, W, Bias, Res, Out, M, N, K, D1, D2, stride_x0, stride_x1, stride_x2,
                   stride_wn, stride_rm,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HARDSWISH: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # row m -> (i0, i1, i2); D1 = D2 = 1 (plain rows) is specialised away by Triton.
    i2 = offs_m % D2
    i01 = offs_m // D2
    x_rows = (i01 // D1) * stride_x0 + (i01 % D1) * stride_x1 + i2 * stride_x2
    x_ptrs = X + x_rows[:, None] + offs_k[None, :]
    w_ptrs = W + offs_n[None, :] * stride_wn + offs_k[:, None]      # W^T tile (BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc += dot(x, w, PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HARDSWISH:
        acc = hardswish(acc)
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        acc += tl.load(Res + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(Out + offs_m[:, None] * N + offs_n[None, :], acc.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _mlp_fused_kernel(X, W1, B1, W2, B2, Out, M, C, CH, stride_xm, stride_w1, stride_w2,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
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
        hid = dot(x, w1t, PRECISION)
        hid += tl.load(B1 + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
        hid = hardswish(hid)       # padded hidden columns are hardswish(0) = 0
        w2t = tl.load(W2 + offs_c[None, :] * stride_w2 + offs_h[:, None],
                      mask=mask_h[:, None] & mask_c[None, :], other=0.0)      # (BLOCK_H, BLOCK_C)
        acc += dot(hid.to(x.dtype), w2t, PRECISION)
    tl.store(Out + offs_m[:, None] * C + offs_c[None, :], acc.to(Out.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------- configs
def _fits(shape, arch, stages, *tiles):
    """The pipelined operand tiles (elements) in the arch's shared memory."""
    size = shape["dtype"].itemsize
    return stages * sum(tiles) * size <= SMEM_LIMIT.get(arch, min(SMEM_LIMIT.values()))


def prune_gemm(configs, shape, arch):
    """The (M, N, K) GEMM kernels' configs (linear, conv2d) worth trying for a shape:
    registers first (every rule is what tools/gpu_static.py measured to spill otherwise):
    float32 at most 512 accumulator elements per warp and 32-wide K slices (3xTF32's split
    operands take 4x a 16-bit tile's registers), IEEE (FMA-only) at most 32-row tiles; then
    tiles no larger than the problem (rounded up) and operand tiles that fit the arch's shared
    memory. When no tile is small enough, the smallest that keeps the register rules."""
    m, n, k = pow2(shape["M"]), pow2(shape["N"]), pow2(shape["K"])
    wide, ieee = shape["dtype"].itemsize > 2, shape["precision"] == "ieee"

    def registers_ok(c):
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        return not wide or (bm * bn <= 512 * c.num_warps and bk <= 32 and (bm <= 32 or not ieee))

    def fits(c):
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        return (bm <= m and bn <= n and bk <= k
                and _fits(shape, arch, c.num_stages, bm * bk, bk * bn))

    allowed = [c for c in configs if registers_ok(c)]
    return [c for c in allowed if fits(c)] or [
        min(allowed, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


def _prune_mlp(configs, shape, arch):
    """Row blocks no taller than the rows; float32 at most 32 rows x 32 hidden columns per
    step (the (rows, C) accumulator and x tile stay in registers for the whole hidden loop:
    larger fp32 blocks of C = 128 spill)."""
    m = pow2(shape["M"])
    wide = shape["dtype"].itemsize > 2
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= m
            and (not wide or (c.kwargs["BLOCK_M"] <= 32 and c.kwargs["BLOCK_H"] <= 32))]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]


_LINEAR = Tuner(
    "linear", _linear_kernel,
    [Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8), num_warps=w, num_stages=s)
     for bm, bn, bk, w, s in [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                              (64, 64, 32, 4, 4), (64, 64, 32, 8, 3),
                              (32, 128, 32, 8, 3), (32, 64, 32, 4, 4), (16, 64, 64, 4, 3),
                              (16, 64, 32, 4, 4)]],
    prune_gemm, key=("dtype", "precision", "N", "K", "HAS_BIAS", "HAS_RES", "HARDSWISH"),
    bucket="M", interpret=gemm_interpret)
_MLP = Tuner(
    "mlp", _mlp_fused_kernel,
    [Config(dict(BLOCK_M=bm, BLOCK_H=bh), num_warps=w, num_stages=s)
     for bm, bh, w, s in [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (32, 64, 4, 2),
                          (128, 32, 8, 3), (32, 32, 4, 2)]],
    _prune_mlp, key=("dtype", "precision", "C", "CH"), bucket="M",
    interpret=lambda shape: Config(dict(BLOCK_M=interpret_tile(shape["M"]),
                                        BLOCK_H=interpret_tile(shape["CH"]))))


# ------------------------------------------------------------------------------- launchers
def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K) view when strides allow (a copy otherwise), unit last stride."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[-1] > 1 and t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def _row_grid(x: torch.Tensor):
    """x (..., K) as rows of at most three leading dims read in place: ((D1, D2), (s0, s1, s2)),
    or None when it needs a copy (more than three unmergeable dims)."""
    dims = [(n, s) for n, s in zip(x.shape[:-1], x.stride()[:-1]) if n != 1]
    merged = []
    for n, s in dims:               # merge (n0, s0)(n1, s1) when s0 == n1 * s1
        if merged and merged[-1][1] == n * s:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    if len(merged) > 3:
        return None
    # padded with size-1 dims on the inside: D1 = D2 = 1 for plain rows, which Triton
    # specialises (the row split below is then free)
    merged = merged + [(1, 0)] * (3 - len(merged))
    return (merged[1][0], merged[2][0]), tuple(s for _, s in merged)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, activation: str = "none", *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(x @ weight^T + bias) + residual -> (..., N) contiguous, in x's dtype.

    `out`, if given, must be a contiguous (..., N) tensor of x's dtype and device."""
    inputs = (("x", x), ("weight", weight), ("bias", bias), ("residual", residual))
    checks.check_untracked(inputs + (("out", out),), LAUNCHERS)
    k_in, n_out = checks.check_linear(x, weight, bias, residual, activation,
                                      allowed=gpu_dtypes(), devices=GPU_DEVICES)
    out = check_out(out, tuple(x.shape[:-1]) + (n_out,), x, inputs, same_place=residual)
    if out.numel() == 0:
        return out
    if k_in == 0:  # empty reduction: act(b) + residual, as the reference gives
        out.copy_(torch.nn.functional.linear(x, weight, bias) if activation == "none" else
                  torch.nn.functional.hardswish(torch.nn.functional.linear(x, weight, bias)))
        if residual is not None:
            out += residual
        return out
    return launch_linear(x, weight, bias, residual, activation, out)


def launch_linear(x, weight, bias, residual, activation: str, out: torch.Tensor):
    """linear() without the checks: for callers that validated these shapes once (the fused
    model's plan). K >= 1, weight rows of unit stride, out contiguous."""
    grid_rows = _row_grid(x)
    if grid_rows is None:
        x = _rows(x)
        grid_rows = _row_grid(x)
    (d1, d2), strides = grid_rows
    n_out, k_in = weight.shape
    m = out.numel() // n_out
    res2 = _rows(residual) if residual is not None else None
    args = (x, weight, bias if bias is not None else x, res2 if res2 is not None else x, out,
            m, n_out, k_in, d1, d2, *strides, weight.stride(0),
            res2.stride(0) if res2 is not None else 0)
    flags = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                 HARDSWISH=activation == "hardswish")
    precision = dot_precision(x.dtype)
    shape = dict(flags, dtype=x.dtype, precision=precision, M=m, N=n_out, K=k_in)

    def grid(cfg):
        return (triton.cdiv(m, cfg.kwargs["BLOCK_M"]) * triton.cdiv(n_out, cfg.kwargs["BLOCK_N"]),)

    RUNTIME.launch_tuned(_LINEAR, shape, grid, args,
                         dict(flags, PRECISION=precision), RUNTIME.device_of(x))
    return out


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
        b2: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x + hardswish(x @ w1^T + b1) @ w2^T + b2 -> (..., C) contiguous, in x's dtype."""
    inputs = (("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))
    checks.check_untracked(inputs + (("out", out),), LAUNCHERS)
    channels, hidden = checks.check_mlp(x, w1, b1, w2, b2, allowed=gpu_dtypes(),
                                        devices=GPU_DEVICES)
    if channels > MLP_FUSED_MAX_C or hidden == 0 or channels == 0:
        hid = linear(x, w1, b1, activation="hardswish")
        return linear(hid, w2, b2, residual=x, out=out)
    # x is also the residual: read at each output element just before it is written
    out = check_out(out, tuple(x.shape), x, inputs, same_place=x)
    if out.numel() == 0:
        return out
    return launch_mlp(x, w1, b1, w2, b2, out)


def launch_mlp(x, w1, b1, w2, b2, out: Optional[torch.Tensor] = None):
    """mlp() without the checks (as launch_linear); C, Ch >= 1."""
    channels, hidden = x.shape[-1], w1.shape[0]
    if channels > MLP_FUSED_MAX_C:
        hid = launch_linear(x, w1, b1, None, "hardswish",
                            torch.empty(x.shape[:-1] + (hidden,), device=x.device, dtype=x.dtype))
        if out is None:
            out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        return launch_linear(hid, w2, b2, x, "none", out)
    if out is None:
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    x2 = _rows(x)
    m = x2.shape[0]
    args = (x2, w1, b1, w2, b2, out, m, channels, hidden, x2.stride(0), w1.stride(0),
            w2.stride(0))
    consts = dict(PRECISION=dot_precision(x.dtype), BLOCK_C=pow2(channels))
    shape = dict(dtype=x.dtype, precision=consts["PRECISION"], M=m, C=channels, CH=hidden)
    RUNTIME.launch_tuned(_MLP, shape, lambda cfg: (triton.cdiv(m, cfg.kwargs["BLOCK_M"]),),
                         args, consts, RUNTIME.device_of(x))
    return out
