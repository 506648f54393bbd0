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
# Softmax. Base 2: log2(e) is folded into the scale and into the bias as it is loaded, so the
# exponentials are exp2. Keys are walked in BLOCK_N blocks with an online (running max / sum)
# softmax, so any Nk works; LeViT's Nk <= 196 fits one block (BLOCK_N = next_pow2(Nk)), which
# makes the loop a single iteration. Padding keys (past Nk) get -inf before the max; a running
# max that is still -inf is replaced by 0 before subtracting, so padding never makes a NaN. A
# row whose real keys are all -inf (the bias masks them all) ends with sum 0 and is divided by
# it: NaN, exactly what the reference's torch.softmax gives for such a row. NaN/inf in q, k, v
# or the bias propagate through the same IEEE arithmetic as in the reference.
#
# Blocks. BLOCK_DK / BLOCK_DV are Dk / Dv rounded up to a power of two (>= 16, tl.dot's minimum)
# with masked padding, so Dk 16/32/64 run unpadded and odd head dims still work. BLOCK_M and
# TILES_PER_PROG are autotuned per shape on GPUs; under TRITON_INTERPRET=1 one small fixed
# config is used (autotuning in the interpreter costs minutes). float32 dots use
# input_precision="ieee" so fp32 matches the reference to ~1e-6, not TF32's ~1e-3.
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import checks
from .common import GPU_DEVICES, check_out, dot, gpu_dtypes, interpreting

LOG2E = 1.4426950408889634


@triton.jit
def _scores(q, K, Bias, k_base, b_base, offs_m, start_n, stride_kn, stride_bq, stride_bk,
            N_Q, N_K, D_K, qk_scale,
            BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, IEEE: tl.constexpr):
    """log2-domain scores of one (BLOCK_M, BLOCK_N) tile; keys past Nk are -inf."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_DK)
    mask_n = offs_n < N_K
    # k^T tile (BLOCK_DK, BLOCK_N), read in place through k's strides.
    kt = tl.load(K + k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                 mask=mask_n[None, :] & (offs_d[:, None] < D_K), other=0.0)
    s = dot(q, kt, IEEE) * qk_scale
    bias = tl.load(Bias + b_base + offs_m[:, None] * stride_bq + offs_n[None, :] * stride_bk,
                   mask=(offs_m[:, None] < N_Q) & mask_n[None, :], other=0.0)
    s = s + bias.to(tl.float32) * 1.4426950408889634
    return tl.where(mask_n[None, :], s, float("-inf"))


@triton.jit
def _attention_kernel(Q, K, V, Bias, Out,
                      stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                      stride_vb, stride_vh, stride_vn, stride_bh, stride_bq, stride_bk,
                      H, N_Q, N_K, D_K, D_V, BH, qk_scale,
                      HARDSWISH: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                      BLOCK_M: tl.constexpr, TILES_PER_PROG: tl.constexpr):
    m_blocks = tl.cdiv(N_Q, BLOCK_M)
    num_tiles = BH * m_blocks
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    for t in range(TILES_PER_PROG):
        tile = tl.program_id(0) * TILES_PER_PROG + t
        live = tile < num_tiles              # the last program may own fewer tiles
        tile = tl.minimum(tile, num_tiles - 1)
        # Tile order (b, h, m-block): neighbouring programs share k/v of one head in L2.
        m_blk = tile % m_blocks
        bh = tile // m_blocks
        off_h = bh % H
        off_b = (bh // H).to(tl.int64)       # batch offsets can pass 2**31 elements
        offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N_Q
        q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn
                    + offs_dk[None, :],
                    mask=mask_m[:, None] & (offs_dk[None, :] < D_K), other=0.0)
        k_base = off_b * stride_kb + off_h * stride_kh
        v_base = off_b * stride_vb + off_h * stride_vh
        b_base = off_h * stride_bh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for start_n in range(0, N_K, BLOCK_N):
            s = _scores(q, K, Bias, k_base, b_base, offs_m, start_n, stride_kn, stride_bq,
                        stride_bk, N_Q, N_K, D_K, qk_scale, BLOCK_N, BLOCK_DK, IEEE)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            offs_n = start_n + tl.arange(0, BLOCK_N)
            v = tl.load(V + v_base + offs_n[:, None] * stride_vn + offs_dv[None, :],
                        mask=(offs_n[:, None] < N_K) & (offs_dv[None, :] < D_V), other=0.0)
            acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
        # l_i == 0 only when Nk == 0 (empty sum: 0, as the reference's empty matmul) or when
        # every key of the row is -inf (0/0 = NaN, as torch.softmax gives).
        acc = acc / tl.where((l_i == 0.0) & (N_K == 0), 1.0, l_i)[:, None]
        if HARDSWISH:
            acc = acc * tl.minimum(tl.maximum(acc + 3.0, 0.0), 6.0) / 6.0
        # out[b, m, h*Dv + d] of the contiguous (B, Nq, H*Dv) output.
        row = H * D_V
        o_ptrs = Out + off_b * N_Q * row + offs_m[:, None] * row + off_h * D_V + offs_dv[None, :]
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty),
                 mask=live & mask_m[:, None] & (offs_dv[None, :] < D_V))


@triton.jit
def _attention_probs_kernel(Q, K, Bias, Out,
                            stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                            stride_bh, stride_bq, stride_bk,
                            H, N_Q, N_K, D_K, qk_scale,
                            IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                            BLOCK_M: tl.constexpr):
    # Two passes over the keys: running max/sum, then normalised probabilities. With Nk in one
    # block both are a single iteration; recomputing q.k^T is cheaper than a (Nq, Nk) buffer.
    m_blocks = tl.cdiv(N_Q, BLOCK_M)
    pid = tl.program_id(0)
    m_blk = pid % m_blocks
    bh = pid // m_blocks
    off_h = bh % H
    off_b = (bh // H).to(tl.int64)
    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N_Q
    offs_dk = tl.arange(0, BLOCK_DK)
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn
                + offs_dk[None, :],
                mask=mask_m[:, None] & (offs_dk[None, :] < D_K), other=0.0)
    k_base = off_b * stride_kb + off_h * stride_kh
    b_base = off_h * stride_bh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        s = _scores(q, K, Bias, k_base, b_base, offs_m, start_n, stride_kn, stride_bq,
                    stride_bk, N_Q, N_K, D_K, qk_scale, BLOCK_N, BLOCK_DK, IEEE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = 1.0 / l_i      # rows of all -inf keys: 0 * inf = NaN, as torch.softmax gives
    out_base = (off_b * H + off_h) * N_Q * N_K
    for start_n in range(0, N_K, BLOCK_N):
        s = _scores(q, K, Bias, k_base, b_base, offs_m, start_n, stride_kn, stride_bq,
                    stride_bk, N_Q, N_K, D_K, qk_scale, BLOCK_N, BLOCK_DK, IEEE)
        p = tl.exp2(s - m_safe[:, None]) * inv_l[:, None]
        offs_n = start_n + tl.arange(0, BLOCK_N)
        tl.store(Out + out_base + offs_m[:, None] * N_K + offs_n[None, :],
                 p.to(Out.dtype.element_ty), mask=mask_m[:, None] & (offs_n[None, :] < N_K))


# ------------------------------------------------------------------------------- launchers
# GPU configs: BLOCK_M from one LeViT stage-3 tile (16 queries) to the 196-query stage-1 tile;
# several tiles per program only pay off for the small ones.
_ATTN_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "TILES_PER_PROG": t}, num_warps=w, num_stages=s)
    for bm, t, w, s in [(16, 1, 2, 1), (16, 2, 2, 1), (16, 4, 2, 1), (32, 1, 4, 1),
                        (32, 2, 4, 1), (64, 1, 4, 1), (64, 1, 8, 1), (128, 1, 8, 1),
                        (64, 1, 4, 2)]
]
_ATTN_KEY = ["BH", "H", "N_Q", "N_K", "D_K", "D_V"]
_attention_tuned = triton.autotune(configs=_ATTN_CONFIGS, key=_ATTN_KEY)(_attention_kernel)
_PROBS_CONFIGS = [triton.Config({"BLOCK_M": bm}, num_warps=w)
                  for bm, w in [(16, 2), (32, 4), (64, 4), (64, 8)]]
_probs_tuned = triton.autotune(configs=_PROBS_CONFIGS,
                               key=["H", "N_Q", "N_K", "D_K"])(_attention_probs_kernel)

# Under the interpreter: small tiles, and two tiles per program so the tail masking of the
# multi-tile path is exercised by the CPU tests as well.
_INTERPRET_ATTN = {"BLOCK_M": 16, "TILES_PER_PROG": 2}
_INTERPRET_PROBS = {"BLOCK_M": 16}


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _key_block(n_k: int) -> int:
    # All keys in one block up to 256 (LeViT's 196 included); longer rows loop over 128s.
    return _pow2(n_k) if n_k <= 256 else 128


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              scale: float, hardswish: bool, *, out: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """act(softmax(scale * q @ k^T + bias) @ v) -> (B, Nq, H*Dv) contiguous.

    q/k/v are read through their strides (never copied). `out`, if given, must be a
    contiguous (B, Nq, H*Dv) tensor of q's dtype and device; it is returned."""
    batch, heads, n_q, n_k, d_k, d_v = checks.check_attention(
        q, k, v, bias, allowed=gpu_dtypes(), devices=GPU_DEVICES)
    scale = checks.check_scale(scale)
    out = check_out(out, (batch, n_q, heads * d_v), q)
    if out.numel() == 0:
        return out
    args = (q, k, v, bias, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *bias.stride(), heads, n_q, n_k, d_k, d_v, batch * heads, scale * LOG2E)
    consts = dict(HARDSWISH=bool(hardswish), IEEE=q.dtype == torch.float32,
                  BLOCK_N=_key_block(n_k), BLOCK_DK=_pow2(d_k), BLOCK_DV=_pow2(d_v))
    bh = batch * heads
    if interpreting():
        _attention_kernel[_attn_grid(bh, n_q, _INTERPRET_ATTN)](*args, **consts, **_INTERPRET_ATTN)
    else:
        _attention_tuned[lambda meta: _attn_grid(bh, n_q, meta)](*args, **consts)
    return out


def _attn_grid(bh: int, n_q: int, meta):
    return (triton.cdiv(bh * triton.cdiv(n_q, meta["BLOCK_M"]), meta["TILES_PER_PROG"]),)


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, scale: float, *,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias) -> (B, H, Nq, Nk) contiguous (`out` as in attention)."""
    batch, heads, n_q, n_k, d_k, _ = checks.check_attention(
        q, k, None, bias, probs=True, allowed=gpu_dtypes(), devices=GPU_DEVICES)
    scale = checks.check_scale(scale)
    out = check_out(out, (batch, heads, n_q, n_k), q)
    if out.numel() == 0:
        return out
    args = (q, k, bias, out, *q.stride()[:3], *k.stride()[:3], *bias.stride(),
            heads, n_q, n_k, d_k, scale * LOG2E)
    consts = dict(IEEE=q.dtype == torch.float32, BLOCK_N=_key_block(n_k), BLOCK_DK=_pow2(d_k))
    bh = batch * heads
    if interpreting():
        grid = (bh * triton.cdiv(n_q, _INTERPRET_PROBS["BLOCK_M"]),)
        _attention_probs_kernel[grid](*args, **consts, **_INTERPRET_PROBS)
    else:
        _probs_tuned[lambda meta: (bh * triton.cdiv(n_q, meta["BLOCK_M"]),)](*args, **consts)
    return out
