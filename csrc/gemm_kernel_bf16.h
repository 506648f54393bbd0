// gemm_kernel_bf16.h — the register-blocked bf16 GEMM micro-kernel (gemm_bf16.h), templated on
// the vector traits (simd.h) and on how a tile's products are accumulated:
//   Widened (this file): A arrives widened to float32 (the driver converts each A block once;
//     it is reused by every column strip); per pair row of the packed weight, NV loads of W
//     pairs split into the even and the odd element's float32 values (a shift, an and) and
//     2·MR·NV FMAs. Included by gemm_bf16_avx2.cpp (5×16 tile) and gemm_bf16_avx512.cpp
//     (12×32 tile): a row fewer than float32's tiles, for the split's mask register.
//   Native (gemm_avx512bf16.cpp): vdpbf16ps on A pairs broadcast as 32-bit lanes.
// Reference: levit_kernels/ops/reference.py::linear.
//
// Memory plan as in gemm_kernel.h: MR·NV float32 accumulators stay in registers for the K
// block; the packed W strip (kc/2 pair rows × NV·W columns, ≤ 16 KiB) stays in L1 while rows
// of A stream past. Between K blocks partial sums live in the driver's float32 `acc` tile;
// the epilogue (bias, Hardswish, residual, all widened to float32) runs on the registers of
// the last K block, which round once to bf16 on the store. Column tails use partial loads and
// stores (nothing past column n is read or written); row tails a smaller MR. Odd kc (the end
// of a run) takes the last pair's even element only, so nothing past A's run is read.
#pragma once

#include <algorithm>

#include "gemm_bf16.h"
#include "simd.h"

namespace levit {
namespace {

// W pairs for vector v of a tile: panel (v·W)/16, column (v·W)%16 inside it.
template <class V>
inline const bf16* pair_column(const GemmBlockBf16& g, const bf16* b, int v) {
  return b + (v * V::W / kPanel) * g.panel_stride + (v * V::W) % kPanel * 2;
}

// acc[r][v] += Σ_k A[r, k]·W[k, col v], A widened to float32.
struct Widened {
  template <class V, int MR, int NV>
  static void accumulate(typename V::vec (&acc)[MR][NV], const GemmBlockBf16& g, int64_t i,
                         const bf16* b) {
    using vec = typename V::vec;
    const float* a = g.af + i * g.lda;
    const int64_t lda = g.lda, pairs = g.kc / 2;
    const bf16* bp[NV];
    for (int v = 0; v < NV; ++v) bp[v] = pair_column<V>(g, b, v);
    for (int64_t q = 0; q < pairs; ++q) {
      // Even elements, then odd ones: each W vector is re-read from L1 rather than kept,
      // which leaves the registers to the MR·NV accumulators.
      vec bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = V::even(V::load_pairs(bp[v] + q * kPairWidth));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const vec av = V::set1(a[r * lda + 2 * q]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, bv[v], acc[r][v]);
      }
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = V::odd(V::load_pairs(bp[v] + q * kPairWidth));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const vec av = V::set1(a[r * lda + 2 * q + 1]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, bv[v], acc[r][v]);
      }
    }
    if (g.kc % 2) {  // the run's last k: its pair's odd slot is padding
      vec bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = V::even(V::load_pairs(bp[v] + pairs * kPairWidth));
      for (int r = 0; r < MR; ++r) {
        const vec av = V::set1(a[r * lda + 2 * pairs]);
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, bv[v], acc[r][v]);
      }
    }
  }
};

// One vector x of a tile's sums, C[row, col:col+W] (`whole`, else its first `valid` columns):
// add the partial sums of earlier K blocks, then keep the total for the next block (not last)
// or apply the epilogue and round to bf16 (last). Shared by the register tiles below and the
// AMX kernel, which stores its tiles to memory first.
template <class V>
[[gnu::always_inline]] inline void finish_vector(const GemmBlockBf16& g, int64_t row, int64_t col,
                                                 typename V::vec x, bool whole, int64_t valid) {
  float* ap = g.acc + row * g.ldacc + col;
  if (!g.first) x = V::add(x, whole ? V::load(ap) : V::load(ap, V::tail(valid)));
  if (!g.last) {
    if (whole) V::store(ap, x);
    else V::store(ap, x, V::tail(valid));
    return;
  }
  if (g.bias) x = V::add(x, whole ? V::load_bf16(g.bias + col) : V::load_bf16(g.bias + col, valid));
  if (g.act == kActHardswish) x = hardswish<V>(x);
  if (g.residual) {
    const bf16* rp = g.residual + row * g.ldr + col;
    x = V::add(x, whole ? V::load_bf16(rp) : V::load_bf16(rp, valid));
  }
  bf16* cp = g.c + row * g.ldc + col;
  if (whole) V::store_bf16(cp, x);
  else V::store_bf16(cp, x, valid);
}

template <class V, class K, int MR, int NV>
inline void tile_bf16(const GemmBlockBf16& g, int64_t i, int64_t j, const bf16* b,
                      int64_t ncols) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  K::template accumulate<V, MR, NV>(acc, g, i, b);

  const bool full = ncols == NV * W;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t valid = ncols - v * W;
      if (valid <= 0) continue;
      finish_vector<V>(g, i + r, j + v * W, acc[r][v], full || valid >= W, valid);
    }
  }
}

template <class V, class K, int MR, int NV>
inline void row_tail_bf16(int rows, const GemmBlockBf16& g, int64_t i, int64_t j,
                          const bf16* b, int64_t ncols) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) tile_bf16<V, K, MR - 1, NV>(g, i, j, b, ncols);
    else row_tail_bf16<V, K, MR - 1, NV>(rows, g, i, j, b, ncols);
  }
}

template <class V, class K, int MR, int NV>
inline void strip_bf16(const GemmBlockBf16& g, int64_t j, int64_t ncols) {
  const bf16* b = g.b + (j / kPanel) * g.panel_stride;
  int64_t i = 0;
  for (; i + MR <= g.m; i += MR) tile_bf16<V, K, MR, NV>(g, i, j, b, ncols);
  if (i < g.m) row_tail_bf16<V, K, MR, NV>(static_cast<int>(g.m - i), g, i, j, b, ncols);
}

// Column strips outer, rows inner (see gemm_kernel.h).
template <class V, class K, int MR, int NV>
void gemm_block_bf16(const GemmBlockBf16& g) {
  constexpr int64_t NR = NV * V::W;
  int64_t j = 0;
  for (; j + NR <= g.n; j += NR) strip_bf16<V, K, MR, NV>(g, j, NR);
  if (j < g.n) {
    const int64_t rest = g.n - j;
    constexpr int NV1 = kPanel / V::W;  // never read a panel that is not there
    if (NV > NV1 && rest <= kPanel) strip_bf16<V, K, MR, NV1>(g, j, rest);
    else strip_bf16<V, K, MR, NV>(g, j, rest);
  }
}

}  // namespace
}  // namespace levit
