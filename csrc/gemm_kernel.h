// gemm_kernel.h — the register-blocked GEMM micro-kernel, templated on a vector traits struct
// (simd.h). Included only by gemm_avx2.cpp (V = Avx2, 6×16 tile) and gemm_avx512.cpp
// (V = Avx512, 14×32 tile); see simd.h for why everything sits in an anonymous namespace.
// Reference: levit_kernels/ops/reference.py::linear.
//
// Tile MR×(NV·W): MR·NV accumulators live in registers for the whole K block. Per k it loads
// NV vectors of packed W (contiguous, 64-128 bytes) and broadcasts one element of each of the
// MR rows of A straight from memory (vbroadcastss / embedded broadcast; A is not packed, its
// rows are contiguous). The epilogue (C accumulate, bias, Hardswish, residual) runs on the
// registers before the single store; masked loads/stores handle the column tail, so nothing
// past column n is ever read from bias/residual or written to C. Row tails use a smaller MR.
#pragma once

#include <algorithm>

#include "gemm.h"
#include "simd.h"

namespace levit {
namespace {

// `next`/`next_panels`: the panels of the strip after this one, fetched into L2 one cache
// line (one k row of a panel) per k while the first tile row of this strip runs (null: none).
template <class V, int MR, int NV>
inline void micro_tile(const GemmBlock& g, const float* a, const float* b, float* c,
                       const float* bias, const float* res, int64_t ncols,
                       const float* next = nullptr, int next_panels = 0) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();

  // The residual rows are read only by the epilogue, once: start fetching them now so the
  // loads at the end hit L1 instead of waiting on memory (they are usually not cached).
  if (g.last && res) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const char* rp = reinterpret_cast<const char*>(res + r * g.ldr);
      _mm_prefetch(rp, _MM_HINT_T0);
      _mm_prefetch(rp + 4 * ncols - 1, _MM_HINT_T0);
    }
  }
  // Column vector v lives in panel (v·W)/16 at offset (v·W)%16.
  const float* bp[NV];
  for (int v = 0; v < NV; ++v) bp[v] = b + (v * W / kPanel) * g.panel_stride + (v * W) % kPanel;
  const int64_t lda = g.lda;
  const auto step = [&](int64_t k) {
    vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(bp[v] + k * kPanel);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const vec av = V::set1(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(av, bv[v], acc[r][v]);
    }
  };
  // Two loops, not one with the prefetch inside: the prefetch's own loop kept GCC from
  // unrolling k, and the AVX2 tile then spent 27 instructions per 12 FMAs. Unrolled by 4 it
  // issues fewer per FMA. On the Zen 3 VM that made GEMMs 20-35% faster in the VM's slow
  // phases (likely another tenant on the core's SMT sibling; it has no counters to tell) and
  // 0-2% in its fast ones (benchmarks/README.md, "The GEMM loop unrolled").
  if (next_panels == 0) {
    for (int64_t s = 0; s < g.nseg; ++s) {  // K segments (GemmBlock): one, except in the stem
#pragma GCC unroll 4
      for (int64_t k = 0; k < g.kc; ++k) step(k);
      a += g.seg_stride;
      for (int v = 0; v < NV; ++v) bp[v] += g.kc * kPanel;
    }
  } else {  // only with nseg == 1 (strip)
    for (int64_t k = 0; k < g.kc; ++k) {
      for (int p = 0; p < next_panels; ++p)
        _mm_prefetch(reinterpret_cast<const char*>(next + p * g.panel_stride + k * kPanel),
                     _MM_HINT_T1);
      step(k);
    }
  }

  typename V::mask m[NV];
  for (int v = 0; v < NV; ++v) m[v] = V::tail(ncols - v * W);
  const bool full = ncols == NV * W;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* cp = c + r * g.ldc + v * W;
      vec x = acc[r][v];
      if (!g.first) x = V::add(x, full ? V::load(cp) : V::load(cp, m[v]));
      if (g.last) {
        if (bias) x = V::add(x, full ? V::load(bias + v * W) : V::load(bias + v * W, m[v]));
        if (g.act == kActHardswish) x = hardswish<V>(x);
        if (res) {
          const float* rp = res + r * g.ldr + v * W;
          x = V::add(x, full ? V::load(rp) : V::load(rp, m[v]));
        }
      }
      if (full) V::store(cp, x);
      else V::store(cp, x, m[v]);
    }
  }
}

// Runs the tile for the last `rows` (< MR) rows of a strip with an exactly-sized template.
template <class V, int MR, int NV>
inline void row_tail(int rows, const GemmBlock& g, const float* a, const float* b, float* c,
                     const float* bias, const float* res, int64_t ncols) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) micro_tile<V, MR - 1, NV>(g, a, b, c, bias, res, ncols);
    else row_tail<V, MR - 1, NV>(rows, g, a, b, c, bias, res, ncols);
  }
}

// With few rows (batch-1 layers: 16-49 tokens) a strip is over before the hardware
// prefetchers ramp up on the next strip's panels, which come from memory (a LeViT's weights
// do not fit in cache): the first tile row prefetches them explicitly.
template <class V, int MR, int NV>
inline void strip(const GemmBlock& g, int64_t j, int64_t ncols) {
  const float* b = g.b + (j / kPanel) * g.panel_stride;
  const float* bias = g.bias ? g.bias + j : nullptr;
  constexpr int64_t NR = NV * V::W;
  const int64_t next_cols = std::min<int64_t>(NR, g.n - j - NR);
  // (Not for segmented blocks: the stem's weights are small and stay cached.)
  const int next_panels = next_cols > 0 && g.nseg == 1
                              ? static_cast<int>((next_cols + kPanel - 1) / kPanel) : 0;
  const float* next = b + (NR / kPanel) * g.panel_stride;
  int64_t i = 0;
  for (; i + MR <= g.m; i += MR)
    micro_tile<V, MR, NV>(g, g.a + i * g.lda, b, g.c + i * g.ldc + j, bias,
                          g.residual ? g.residual + i * g.ldr + j : nullptr, ncols, next,
                          i == 0 ? next_panels : 0);
  if (i < g.m)
    row_tail<V, MR, NV>(static_cast<int>(g.m - i), g, g.a + i * g.lda, b, g.c + i * g.ldc + j,
                        bias, g.residual ? g.residual + i * g.ldr + j : nullptr, ncols);
}

// Column strips outer, rows inner: the strip of packed W (kc × NR) stays in L1 while the rows
// of A (the m × kc block, sized for L2 by the driver) stream past it.
template <class V, int MR, int NV>
void gemm_block(const GemmBlock& g) {
  constexpr int64_t NR = NV * V::W;
  int64_t j = 0;
  for (; j + NR <= g.n; j += NR) strip<V, MR, NV>(g, j, NR);
  if (j < g.n) {
    const int64_t rest = g.n - j;
    // A narrower tile when the last panel pair is not there (never read past the packed data).
    constexpr int NV1 = kPanel / V::W;
    if (NV > NV1 && rest <= kPanel) strip<V, MR, NV1>(g, j, rest);
    else strip<V, MR, NV>(g, j, rest);
  }
}

}  // namespace
}  // namespace levit
