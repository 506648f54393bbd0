# LeViT attention in Triton: out = act(softmax(scale * q @ k^T + bias) @ v), heads side by side.
#
#   q (B,H,Nq,Dk), k (B,H,Nk,Dk), v (B,H,Nk,Dv): any strides, unit stride on the last dim (views
#   of the packed qkv projection, read in place); bias (H,Nq,Nk); out (B, Nq, H*Dv) contiguous.
#   Math: levit_kernels/ops/reference.py::attention / attention_probs (the oracle); the CPU
#   kernel of the same op is csrc/attention_kernel.h.
#
# Memory plan. One program owns a (batch, head, BLOCK_M queries) tile, or TILES_PER_PROG of them
# in a row when LeViT's N is tiny (16 tokens at stage 3: a 16-row tile is little work, so one
# program walks several). Its q tile stays in registers for the whole tile; k, v and the bias
# are streamed once per key block; the scores, probabilities and the fp32 output accumulator
# never leave registers. Every input byte is read once per tile and the output written once,
# straight into the (B, Nq, H*Dv) layout the next projection reads (no transpose pass).
#
# Key blocks. Keys are walked in BLOCK_N = 64 blocks (float32: 32, or 16 with Dv > 64; see
# key_blocks) with an online (running max / sum) softmax, then one masked tail block of
# TAIL_N = next_pow2(Nk % BLOCK_N) keys: Nk = 196 computes 3*64 + 16 = 208 keys (6% padding),
# where one 256-wide block computed 23% padding and, with Dv = 64-128, needed more than 255
# registers per thread (spills in every config). Full blocks carry no key mask.
#
# Registers. Tiles index in 32 bits from 64-bit per-head base pointers. The bias is the one
# (BLOCK_M, BLOCK_N) gather per key block: with a row stride that is not a multiple of 16
# elements (Nk = 196) Triton cannot prove its rows aligned, loads it element by element with a
# 64-bit address each (~100 registers per thread more: spills), so the fused plan pads its
# bias rows to a multiple of 16 (model/plan.py, FusedAttention). Any stride works, slower.
#
# Softmax. Base 2: log2(e) is folded into the scale and into the bias as it is loaded, so the
# exponentials are exp2. Padding keys get -inf before the max; a running max that is still -inf
# is replaced by 0 before subtracting, so padding never makes a NaN. A row whose real keys are
# all -inf (the bias masks them all) ends with sum 0 and is divided by it: NaN, exactly what the
# reference's torch.softmax gives for such a row. NaN/inf in q, k, v or the bias propagate
# through the same IEEE arithmetic as in the reference.
#
# Precision. Dots accumulate in fp32. float32 inputs use PRECISION (common.dot_precision: 3xTF32
# by default). The probabilities are rounded to the input dtype before the AV product, as
# PyTorch's own half-precision softmax @ v does; for bfloat16 that rounding is measured in
# benchmarks/README.md ("GPU: precision") and stays within the flash-attention bound.
#
# Configs. BLOCK_M / TILES_PER_PROG / warps are picked per shape class by tuning.py (pruned by
# the query count, so 16- and 49-token stages never try 128-row tiles); D_K / D_V are
# constexprs (no head-dim masks when they are powers of two, as in LeViT).
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from .common import (GPU_DEVICES, LAUNCHERS, RUNTIME, check_out, dot, dot_precision,
                     gpu_dtypes, hardswish, load_tile)
from .tuning import Config, Tuner, pow2

LOG2E = 1.4426950408889634
KEY_BLOCK = 64


@triton.jit
def _scores(q, k_ptr, b_ptr, offs_m, mask_m, start_n, N_K, stride_kn, stride_bq, qk_scale,
            BLOCK_N: tl.constexpr, D_K: tl.constexpr, BLOCK_DK: tl.constexpr,
            MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """log2-domain scores of one (BLOCK_M, BLOCK_N) tile; with MASK_N, keys past Nk are -inf."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_DK)
    mask_n = offs_n < N_K
    # k^T tile (BLOCK_DK, BLOCK_N), read in place through k's row stride.
    kt = load_tile(k_ptr + offs_n[None, :] * stride_kn + offs_d[:, None], offs_d < D_K, mask_n,
                   D_K < BLOCK_DK, MASK_N)
    s = dot(q, kt, PRECISION) * qk_scale
    bias = load_tile(b_ptr + offs_m[:, None] * stride_bq + offs_n[None, :], mask_m, mask_n,
                     True, MASK_N)
    s = s + bias.to(tl.float32) * 1.4426950408889634
    if MASK_N:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    return s


@triton.jit
def _attend(acc, m_i, l_i, q, k_ptr, v_ptr, b_ptr, offs_m, mask_m, start_n, N_K, stride_kn,
            stride_vn, stride_bq, qk_scale, BLOCK_N: tl.constexpr, D_K: tl.constexpr,
            D_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
            MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One key block of the online softmax: updated (acc, running max, running sum)."""
    s = _scores(q, k_ptr, b_ptr, offs_m, mask_m, start_n, N_K, stride_kn, stride_bq, qk_scale,
                BLOCK_N, D_K, BLOCK_DK, MASK_N, PRECISION)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_dv = tl.arange(0, BLOCK_DV)
    v = load_tile(v_ptr + offs_n[:, None] * stride_vn + offs_dv[None, :], offs_n < N_K,
                  offs_dv < D_V, MASK_N, D_V < BLOCK_DV)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attention_kernel(Q, K, V, Bias, Out,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_bh, stride_bq,
                      H, N_Q, N_K, BH, qk_scale,
                      HARDSWISH: tl.constexpr, PRECISION: tl.constexpr,
                      D_K: tl.constexpr, D_V: tl.constexpr,
                      BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr,
                      BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                      BLOCK_M: tl.constexpr, TILES_PER_PROG: tl.constexpr):
    m_blocks = tl.cdiv(N_Q, BLOCK_M)
    num_tiles = BH * m_blocks
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    for t in range(TILES_PER_PROG):
        tile = tl.program_id(0) * TILES_PER_PROG + t
        live = tile < num_tiles              # the last program may own fewer tiles
        tile = tl.minimum(tile, num_tiles - 1)
        # Tile order (b, h, m-block): neighbouring programs share k/v of one head in L2.
        m_blk = tile % m_blocks
        bh = tile // m_blocks
        off_h = bh % H
        off_b = (bh // H).to(tl.int64)       # batch offsets can pass 2**31 elements
        q_ptr = Q + off_b * stride_qb + off_h * stride_qh
        k_ptr = K + off_b * stride_kb + off_h * stride_kh
        v_ptr = V + off_b * stride_vb + off_h * stride_vh
        b_ptr = Bias + off_h * stride_bh
        offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N_Q
        q = load_tile(q_ptr + offs_m[:, None] * stride_qn + offs_dk[None, :], mask_m,
                      offs_dk < D_K, True, D_K < BLOCK_DK)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for start_n in range(0, n_full, BLOCK_N):
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_ptr, v_ptr, b_ptr, offs_m, mask_m,
                                    start_n, N_K, stride_kn, stride_vn, stride_bq, qk_scale,
                                    BLOCK_N, D_K, D_V, BLOCK_DK, BLOCK_DV, False, PRECISION)
        if TAIL_N > 0:
            acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_ptr, v_ptr, b_ptr, offs_m, mask_m,
                                    n_full, N_K, stride_kn, stride_vn, stride_bq, qk_scale,
                                    TAIL_N, D_K, D_V, BLOCK_DK, BLOCK_DV, True, PRECISION)
        # l_i == 0 only when Nk == 0 (empty sum: 0, as the reference's empty matmul) or when
        # every key of the row is -inf (0/0 = NaN, as torch.softmax gives).
        acc = acc / tl.where((l_i == 0.0) & (N_K == 0), 1.0, l_i)[:, None]
        if HARDSWISH:
            acc = hardswish(acc)
        # out[b, m, h*Dv + d] of the contiguous (B, Nq, H*Dv) output.
        row = H * D_V
        o_ptr = Out + off_b * N_Q * row + off_h * D_V
        tl.store(o_ptr + offs_m[:, None] * row + offs_dv[None, :], acc.to(Out.dtype.element_ty),
                 mask=live & mask_m[:, None] & (offs_dv[None, :] < D_V))


@triton.jit
def _attention_probs_kernel(Q, K, Bias, Out,
                            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                            stride_bh, stride_bq, H, N_Q, N_K, qk_scale,
                            PRECISION: tl.constexpr, D_K: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                            BLOCK_M: tl.constexpr):
    # Two passes over masked BLOCK_N key blocks: running max/sum, then normalised
    # probabilities. Recomputing q.k^T is cheaper than an (Nq, Nk) buffer.
    m_blocks = tl.cdiv(N_Q, BLOCK_M)
    pid = tl.program_id(0)
    m_blk = pid % m_blocks
    bh = pid // m_blocks
    off_h = bh % H
    off_b = (bh // H).to(tl.int64)
    k_ptr = K + off_b * stride_kb + off_h * stride_kh
    b_ptr = Bias + off_h * stride_bh
    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N_Q
    offs_dk = tl.arange(0, BLOCK_DK)
    q = load_tile(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn
                  + offs_dk[None, :], mask_m, offs_dk < D_K, True, D_K < BLOCK_DK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        s = _scores(q, k_ptr, b_ptr, offs_m, mask_m, start_n, N_K, stride_kn, stride_bq,
                    qk_scale, BLOCK_N, D_K, BLOCK_DK, True, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = 1.0 / l_i      # rows of all -inf keys: 0 * inf = NaN, as torch.softmax gives
    o_ptr = Out + (off_b * H + off_h) * N_Q * N_K
    for start_n in range(0, N_K, BLOCK_N):
        s = _scores(q, k_ptr, b_ptr, offs_m, mask_m, start_n, N_K, stride_kn, stride_bq,
                    qk_scale, BLOCK_N, D_K, BLOCK_DK, True, PRECISION)
        p = tl.exp2(s - m_safe[:, None]) * inv_l[:, None]
        offs_n = start_n + tl.arange(0, BLOCK_N)
        tl.store(o_ptr + offs_m[:, None] * N_K + offs_n[None, :], p.to(Out.dtype.element_ty),
                 mask=mask_m[:, None] & (offs_n[None, :] < N_K))


# ------------------------------------------------------------------------------- launchers
def _prune_attention(configs, shape, arch):
    """No tile taller than the query count rounded up (16/49-token stages never try 128 rows);
    several tiles per program only where one tile covers every query. Register budget (each
    rule is what tools/gpu_static.py measured to spill otherwise): 2-warp 16-row tiles only
    with Dv <= 64; float32 keeps 16-row tiles on 4 warps (its k/v operand tiles are 2x, and
    with 3xTF32 4x, the registers of a 16-bit tile)."""
    rows = pow2(shape["N_Q"])
    wide = shape["dtype"].itemsize > 2

    def ok(c):
        bm, tiles, warps = c.kwargs["BLOCK_M"], c.kwargs.get("TILES_PER_PROG", 1), c.num_warps
        if bm > rows or (tiles > 1 and bm < shape["N_Q"]):
            return False
        if wide:
            return bm == 16 and warps == 4
        return not (bm == 16 and warps == 2 and shape.get("D_V", 0) > 64)

    keep = [c for c in configs if ok(c)]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]


def _attention_configs():
    # Most likely first (the pick when tuning is off or a CUDA graph is being captured).
    return [Config(dict(BLOCK_M=bm, TILES_PER_PROG=t), num_warps=w, num_stages=s)
            for bm, t, w, s in [(64, 1, 4, 1), (32, 1, 4, 1), (16, 1, 4, 1), (16, 1, 2, 1),
                                (16, 4, 4, 1), (16, 4, 2, 1), (32, 2, 4, 1), (64, 1, 4, 2),
                                (128, 1, 8, 1)]]


_ATTENTION = Tuner("attention", _attention_kernel, _attention_configs(), _prune_attention,
                   key=("dtype", "precision", "N_Q", "N_K", "D_K", "D_V", "HARDSWISH"),
                   bucket="BH", interpret=lambda shape: Config(dict(BLOCK_M=16, TILES_PER_PROG=2)))
_PROBS = Tuner("attention_probs", _attention_probs_kernel,
               [Config(dict(BLOCK_M=bm), num_warps=w) for bm, w in [(64, 4), (32, 4), (16, 4)]],
               _prune_attention, key=("dtype", "precision", "N_Q", "N_K", "D_K"), bucket="BH",
               interpret=lambda shape: Config(dict(BLOCK_M=16)))


def key_blocks(n_k: int, d_v: int, dtype: torch.dtype):
    """(BLOCK_N, TAIL_N): full key blocks of BLOCK_N, then one masked tail of TAIL_N (0: none).
    float32 takes 32-key blocks (16 with Dv > 64): its v operand tile takes twice the registers
    of a 16-bit one, four times with 3xTF32's split operands (tools/gpu_static.py measured the
    spills of larger blocks)."""
    key_block = KEY_BLOCK if dtype.itemsize <= 2 else 32 if d_v <= 64 else 16
    block = key_block if n_k > key_block else pow2(n_k)
    rest = n_k % block
    return block, (pow2(rest) if rest else 0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              scale: float, hardswish: bool, *, out: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """act(softmax(scale * q @ k^T + bias) @ v) -> (B, Nq, H*Dv) contiguous.

    q/k/v are read through their strides (never copied). `out`, if given, must be a
    contiguous (B, Nq, H*Dv) tensor of q's dtype and device; it is returned."""
    inputs = (("q", q), ("k", k), ("v", v), ("bias", bias))
    checks.check_untracked(inputs + (("out", out),), LAUNCHERS)
    batch, heads, n_q, _, _, d_v = checks.check_attention(
        q, k, v, bias, allowed=gpu_dtypes(), devices=GPU_DEVICES)
    scale = checks.check_scale(scale)
    out = check_out(out, (batch, n_q, heads * d_v), q, inputs)
    if out.numel() == 0:
        return out
    return launch_attention(q, k, v, bias, scale, checks.check_flag(hardswish, "hardswish"), out)


def launch_attention(q, k, v, bias, scale: float, hardswish: bool, out: torch.Tensor):
    """attention() without the checks: for callers that validated these shapes once (the
    fused model's plan). Bias must have unit stride on its last dim, out be contiguous."""
    batch, heads, n_q, d_k = q.shape
    n_k, d_v = v.shape[2], v.shape[3]
    block_n, tail_n = key_blocks(n_k, d_v, q.dtype)
    args = (q, k, v, bias, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *bias.stride()[:2], heads, n_q, n_k, batch * heads, scale * LOG2E)
    consts = dict(HARDSWISH=hardswish, PRECISION=dot_precision(q.dtype), D_K=d_k, D_V=d_v,
                  BLOCK_N=block_n, TAIL_N=tail_n, BLOCK_DK=pow2(d_k), BLOCK_DV=pow2(d_v))
    shape = dict(dtype=q.dtype, precision=consts["PRECISION"], N_Q=n_q, N_K=n_k, D_K=d_k,
                 D_V=d_v, HARDSWISH=hardswish, BH=batch * heads)
    bh = batch * heads

    def grid(cfg):
        return (triton.cdiv(bh * triton.cdiv(n_q, cfg.kwargs["BLOCK_M"]),
                            cfg.kwargs["TILES_PER_PROG"]),)

    RUNTIME.launch_tuned(_ATTENTION, shape, grid, args, consts, RUNTIME.device_of(q))
    return out


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float, *,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias) -> (B, H, Nq, Nk) contiguous (`out` as in attention)."""
    inputs = (("q", q), ("k", k), ("bias", bias))
    checks.check_untracked(inputs + (("out", out),), LAUNCHERS)
    batch, heads, n_q, n_k, d_k, _ = checks.check_attention(
        q, k, None, bias, probs=True, allowed=gpu_dtypes(), devices=GPU_DEVICES)
    scale = checks.check_scale(scale)
    out = check_out(out, (batch, heads, n_q, n_k), q, inputs)
    if out.numel() == 0:
        return out
    return launch_attention_probs(q, k, bias, scale, out)


def launch_attention_probs(q, k, bias, scale: float, out: torch.Tensor):
    """attention_probs() without the checks (as launch_attention)."""
    batch, heads, n_q, d_k = q.shape
    n_k = k.shape[2]
    args = (q, k, bias, out, *q.stride()[:3], *k.stride()[:3], *bias.stride()[:2],
            heads, n_q, n_k, scale * LOG2E)
    consts = dict(PRECISION=dot_precision(q.dtype), D_K=d_k,
                  BLOCK_N=key_blocks(n_k, 0, q.dtype)[0], BLOCK_DK=pow2(d_k))
    shape = dict(dtype=q.dtype, precision=consts["PRECISION"], N_Q=n_q, N_K=n_k, D_K=d_k,
                 BH=batch * heads)
    bh = batch * heads
    RUNTIME.launch_tuned(_PROBS, shape,
                         lambda cfg: (bh * triton.cdiv(n_q, cfg.kwargs["BLOCK_M"]),),
                         args, consts, RUNTIME.device_of(q))
    return out
