// gemm.cpp — GEMM driver (cache blocking, threads, ISA dispatch), weight packing, the fused
// residual MLP, and the portable generic block kernel.
// Reference: levit_kernels/ops/reference.py::linear / ::mlp.
//
//   out = act(x·Wᵀ + bias) + residual          (gemm_packed)
//   out = x + hswish(x·W1ᵀ + b1)·W2ᵀ + b2        (mlp_packed)
//
// Blocking (BLIS order, A left unpacked because its rows are already contiguous):
//   K is split into blocks of <= kKc so a kc×NR strip of packed W fits in L1 (32 KB for the
//   AVX-512 14×32 tile); m is split into blocks of MC rows (an MC×kc block of x lives in L2);
//   n into blocks of NC columns. One thread task = one (row block, column block) pair, all
//   K blocks in order, so the epilogue runs exactly once, on the last K block.
#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "gemm_bf16.h"
#include "thread_pool.h"
#include "simd.h"

#ifndef LEVIT_WEIGHT_L2
#define LEVIT_WEIGHT_L2 (1536 * 1024)
#endif

namespace levit {
namespace {

constexpr int64_t kKc = 256;  // max K block
constexpr int64_t kNc = kGemmColumnBlock;
constexpr int64_t kWeightL2 = LEVIT_WEIGHT_L2;  // see gemm_packed

// ---- generic path: plain loops over a 4×16 tile; the compiler vectorises the 16-wide inner
// loops with the baseline ISA (SSE2 on x86-64). ----
constexpr int kGenMr = 4;

void generic_block(const GemmBlock& g) {
  for (int64_t j = 0; j < g.n; j += kPanel) {
    const int64_t nc = std::min<int64_t>(kPanel, g.n - j);
    const float* b = g.b + (j / kPanel) * g.panel_stride;
    for (int64_t i = 0; i < g.m; i += kGenMr) {
      const int64_t mr = std::min<int64_t>(kGenMr, g.m - i);
      float acc[kGenMr][kPanel] = {};
      for (int64_t s = 0; s < g.nseg; ++s)
        for (int64_t k = 0; k < g.kc; ++k) {
          const float* bk = b + (s * g.kc + k) * kPanel;
          for (int64_t r = 0; r < mr; ++r) {
            const float ar = g.a[s * g.seg_stride + (i + r) * g.lda + k];
            for (int c = 0; c < kPanel; ++c) acc[r][c] += ar * bk[c];
          }
        }
      for (int64_t r = 0; r < mr; ++r) {
        float* cp = g.c + (i + r) * g.ldc + j;
        for (int64_t c = 0; c < nc; ++c) {
          float x = acc[r][c];
          if (!g.first) x += cp[c];
          if (g.last) {
            if (g.bias) x += g.bias[j + c];
            if (g.act == kActHardswish) x = hardswish_scalar(x);
            if (g.residual) x += g.residual[(i + r) * g.ldr + j + c];
          }
          cp[c] = x;
        }
      }
    }
  }
}

GemmKernel select_kernel() {
  switch (active_isa()) {
    case Isa::amx_bf16:     // float32 runs the AVX-512 kernel there
    case Isa::avx512_bf16:
    case Isa::avx512: return gemm_kernel_avx512();
    case Isa::avx2: return gemm_kernel_avx2();
    default: return gemm_kernel_generic();
  }
}

// Even K blocks of at most kKc (e.g. K=384 -> 2×192 rather than 256 + 128).
int64_t k_block(int64_t k) {
  const int64_t nb = (k + kKc - 1) / kKc;
  return (k + nb - 1) / nb;
}

// Row strides that are a multiple of 4 KiB put every row of a micro-tile's A rows in the same
// L1 set (64 sets × 64 B): 14 rows compete for 8 ways and thrash. Such A blocks are copied
// into a thread-local buffer with a padded stride first (cheap: the block is reused by every
// column strip of the block).
constexpr int64_t kAliasFloats = 1024;  // 4 KiB

bool aliasing_stride(int64_t ld) { return ld % kAliasFloats == 0; }

// C[0:m, 0:n] = epilogue(A·B) for one row block and one column block, all K blocks.
void gemm_rows(const GemmKernel& kern, const float* a, int64_t lda, int64_t m, int64_t k,
               const float* packed, int64_t j0, int64_t n, const float* bias,
               const float* residual, int64_t ldr, int act, float* c, int64_t ldc) {
  const int64_t kc = k_block(k);
  // A residual that is the output itself (allowed, see gemm.h) would be overwritten by the
  // first K block before the last block's epilogue adds it: keep a copy of this tile of it.
  const float* res_tile = residual ? residual + j0 : nullptr;
  if (residual && residual == c && k > kc) {
    thread_local std::vector<float> r_copy;
    if (static_cast<int64_t>(r_copy.size()) < m * n) r_copy.resize(m * n);
    for (int64_t i = 0; i < m; ++i)
      std::copy(res_tile + i * ldr, res_tile + i * ldr + n, r_copy.data() + i * n);
    res_tile = r_copy.data();
    ldr = n;
  }
  const bool copy_a = aliasing_stride(lda) && m > 1;
  thread_local std::vector<float> a_copy;
  const int64_t lda_copy = padded_stride(kc);
  if (copy_a && static_cast<int64_t>(a_copy.size()) < m * lda_copy) a_copy.resize(m * lda_copy);
  for (int64_t k0 = 0; k0 < k; k0 += kc) {
    GemmBlock g;
    g.kc = std::min(kc, k - k0);
    if (copy_a) {
      for (int64_t i = 0; i < m; ++i)
        std::copy(a + i * lda + k0, a + i * lda + k0 + g.kc, a_copy.data() + i * lda_copy);
      g.a = a_copy.data();
      g.lda = lda_copy;
    } else {
      g.a = a + k0;
      g.lda = lda;
    }
    g.m = m;
    g.nseg = 1, g.seg_stride = 0;
    g.b = packed + (j0 / kPanel) * k * kPanel + k0 * kPanel;
    g.panel_stride = k * kPanel;
    g.n = n;
    g.c = c + j0;
    g.ldc = ldc;
    g.bias = bias ? bias + j0 : nullptr;
    g.residual = res_tile;
    g.ldr = ldr;
    g.act = act;
    g.first = k0 == 0;
    g.last = k0 + g.kc >= k;
    kern.block(g);
  }
}

}  // namespace

// A row stride for a scratch matrix of `cols` floats per row that never aliases.
int64_t padded_stride(int64_t cols) {
  int64_t ld = (cols + kPanel - 1) / kPanel * kPanel;
  return ld % 256 == 0 ? ld + kPanel : ld;
}

const char* float32_path() {
  switch (active_isa()) {
    case Isa::amx_bf16: return "amx_bf16: AVX-512 FMA (the avx512 float32 kernels)";
    case Isa::avx512_bf16: return "avx512_bf16: AVX-512 FMA (the avx512 float32 kernels)";
    case Isa::avx512: return "avx512: AVX-512 FMA";
    case Isa::avx2: return "avx2: AVX2 FMA";
    default: return "generic: portable C++";
  }
}

template <>
GemmTile gemm_tile<float>() {
  const GemmKernel kern = select_kernel();
  return {kern.mr, kern.nr};
}

void gemm_rows_cols(const float* a, int64_t lda, int64_t m, int64_t k, const float* packed,
                    int64_t j0, int64_t n, const float* bias, const float* residual,
                    int64_t ldr, int act, float* c, int64_t ldc) {
  gemm_rows(select_kernel(), a, lda, m, k, packed, j0, n, bias, residual, ldr, act, c, ldc);
}

void gemm_rows_all(const float* a, int64_t lda, int64_t m, int64_t k, const float* packed,
                   int64_t n, const float* bias, int act, float* c, int64_t ldc) {
  const GemmKernel kern = select_kernel();
  for (int64_t j0 = 0; j0 < n; j0 += kNc)
    gemm_rows(kern, a, lda, m, k, packed, j0, std::min(kNc, n - j0), bias, nullptr, 0, act, c,
              ldc);
}

void gemm_rows_segments(const float* a, int64_t seg_stride, int64_t nseg, int64_t seg_k,
                        int64_t lda, int64_t m, const float* packed, int64_t n,
                        const float* bias, int act, float* c, int64_t ldc) {
  const GemmKernel kern = select_kernel();
  const int64_t k = nseg * seg_k, kc = k_block(seg_k);
  // Segments that each fit one K block go to the kernel together (summed in registers);
  // longer ones block by block, their partial sums through C.
  const bool together = kc >= seg_k;
  for (int64_t j0 = 0; j0 < n; j0 += kNc) {
    GemmBlock g;
    g.lda = lda, g.m = m, g.panel_stride = k * kPanel, g.n = std::min(kNc, n - j0);
    g.c = c + j0, g.ldc = ldc, g.bias = bias ? bias + j0 : nullptr;
    g.residual = nullptr, g.ldr = 0, g.act = act;
    g.nseg = together ? nseg : 1, g.seg_stride = seg_stride;
    for (int64_t s = 0; s < nseg; s += g.nseg)
      for (int64_t k0 = 0; k0 < seg_k; k0 += kc) {
        g.kc = std::min(kc, seg_k - k0);
        g.a = a + s * seg_stride + k0;
        g.b = packed + (j0 / kPanel) * k * kPanel + (s * seg_k + k0) * kPanel;
        g.first = s == 0 && k0 == 0;
        g.last = s + g.nseg >= nseg && k0 + g.kc >= seg_k;
        kern.block(g);
      }
  }
}

GemmKernel gemm_kernel_generic() { return {&generic_block, kGenMr, static_cast<int>(kPanel)}; }

void pack_weight(const float* w, int64_t n, int64_t k, int64_t ldw, float* packed, int nthreads) {
  const int64_t panels = (n + kPanel - 1) / kPanel;
  parallel_for(panels, nthreads, [&](int64_t p) {
    float* dst = packed + p * k * kPanel;
    const int64_t rows = std::min<int64_t>(kPanel, n - p * kPanel);
    // 16 source rows are read in step (contiguous runs), one 64-byte panel row written per k.
    for (int64_t k0 = 0; k0 < k; k0 += 64) {
      const int64_t k1 = std::min<int64_t>(k, k0 + 64);
      for (int64_t c = 0; c < kPanel; ++c) {
        const float* src = w + (p * kPanel + c) * ldw;
        for (int64_t kk = k0; kk < k1; ++kk) dst[kk * kPanel + c] = c < rows ? src[kk] : 0.0f;
      }
    }
    for (int64_t c = rows; c < kPanel; ++c) std::memcpy(dst + c, &kColumnPadMark, 4);
  });
}

int64_t packed_out_features(const float* packed, int64_t panels, int64_t panel_numel) {
  const float* row = packed + (panels - 1) * panel_numel;
  int64_t c = kPanel;
  for (uint32_t bits; c > 0; --c) {
    std::memcpy(&bits, row + c - 1, 4);
    if (bits != kColumnPadMark) break;
  }
  return (panels - 1) * kPanel + c;
}

namespace {

// The threaded drivers, for float and bf16 alike: only the block kernels and the element
// size differ (gemm_rows_cols overloads, gemm_tile<T>).
template <class T>
void gemm_packed_t(const T* x, int64_t m, int64_t k, int64_t ldx, const T* packed, int64_t n,
                   const T* bias, const T* residual, int64_t ldr, int act, T* out, int64_t ldo,
                   int nthreads) {
  const GemmTile tile = gemm_tile<T>();
  const int64_t mc = gemm_row_block<T>();
  const int64_t nbm = (m + mc - 1) / mc;
  // Column blocks of kNc, or narrower (down to one micro-tile) when there would not be a few
  // tasks per thread: a batch-1 stage-3 layer (16 tokens) is a single row block.
  int64_t nc = kNc;
  while (nthreads > 1 && nc > tile.nr && nbm * ((n + nc - 1) / nc) < 4 * nthreads) nc /= 2;
  const int64_t nbn = (n + nc - 1) / nc;
  // Task order decides what stays in L2 between consecutive tasks of a thread. When the whole
  // packed W fits comfortably (<= kWeightL2 bytes), column blocks vary fastest: a row block
  // of x (mc × K) is read from memory once and W stays in L2. Otherwise row blocks vary
  // fastest and one K × NC slab of W stays in L2 while x streams past it.
  const bool w_in_l2 = n * k * static_cast<int64_t>(sizeof(T)) <= kWeightL2;
  parallel_for(nbm * nbn, nthreads, [&](int64_t t) {
    const int64_t ib = w_in_l2 ? t / nbn : t % nbm, jb = w_in_l2 ? t % nbn : t / nbm;
    const int64_t i0 = ib * mc, j0 = jb * nc;
    gemm_rows_cols(x + i0 * ldx, ldx, std::min(mc, m - i0), k, packed, j0,
                   std::min(nc, n - j0), bias, residual ? residual + i0 * ldr : nullptr, ldr,
                   act, out + i0 * ldo, ldo);
  });
}

template <class T>
void mlp_packed_t(const T* x, int64_t m, int64_t c, int64_t ldx, const T* w1p, const T* b1,
                  int64_t ch, const T* w2p, const T* b2, T* out, int nthreads) {
  const int64_t mr = gemm_tile<T>().mr;
  // Row block: a few micro-tiles, so the hidden block (mb × ch values, <= 56×1024×4 = 224 KB)
  // stays in L2 between the two GEMMs and W1/W2 strips are reused across its rows.
  const int64_t mb = mr * std::max<int64_t>(1, 48 / mr);
  const int64_t nbm = (m + mb - 1) / mb;
  // The hidden rows get a padded stride so they never alias in L1 (see aliasing_stride).
  // In bf16 they are rounded to bf16, as the second GEMM's input of any bf16 model is.
  const int64_t ldh = padded_stride(ch);
  if (nthreads > 1 && nbm < 4 * nthreads) {
    // Too few row blocks to share out evenly (batch 1: 196 tokens make 5 blocks, 49 tokens a
    // full one and a 7-row one): two GEMMs, each split over column blocks, through a hidden
    // buffer of all the rows (small, since m is).
    thread_local std::vector<T> hidden;
    if (static_cast<int64_t>(hidden.size()) < m * ldh) hidden.resize(m * ldh);
    gemm_packed_t<T>(x, m, c, ldx, w1p, ch, b1, nullptr, 0, kActHardswish, hidden.data(), ldh,
                  nthreads);
    gemm_packed_t<T>(hidden.data(), m, ch, ldh, w2p, c, b2, x, ldx, kActNone, out, c, nthreads);
    return;
  }
  parallel_for(nbm, nthreads, [&](int64_t ib) {
    thread_local std::vector<T> hidden;
    if (static_cast<int64_t>(hidden.size()) < mb * ldh) hidden.resize(mb * ldh);
    const int64_t i0 = ib * mb, rows = std::min(mb, m - i0);
    const T* xb = x + i0 * ldx;
    gemm_rows_cols(xb, ldx, rows, c, w1p, 0, ch, b1, nullptr, 0, kActHardswish, hidden.data(),
                   ldh);
    gemm_rows_cols(hidden.data(), ldh, rows, ch, w2p, 0, c, b2, xb, ldx, kActNone,
                   out + i0 * c, c);
  });
}

}  // namespace

void gemm_packed(const float* x, int64_t m, int64_t k, int64_t ldx, const float* packed, int64_t n,
                 const float* bias, const float* residual, int64_t ldr, int act, float* out,
                 int64_t ldo, int nthreads) {
  gemm_packed_t(x, m, k, ldx, packed, n, bias, residual, ldr, act, out, ldo, nthreads);
}

void gemm_packed(const bf16* x, int64_t m, int64_t k, int64_t ldx, const bf16* packed, int64_t n,
                 const bf16* bias, const bf16* residual, int64_t ldr, int act, bf16* out,
                 int64_t ldo, int nthreads) {
  gemm_packed_t(x, m, k, ldx, packed, n, bias, residual, ldr, act, out, ldo, nthreads);
}

void mlp_packed(const float* x, int64_t m, int64_t c, int64_t ldx, const float* w1p,
                const float* b1, int64_t ch, const float* w2p, const float* b2, float* out,
                int nthreads) {
  mlp_packed_t(x, m, c, ldx, w1p, b1, ch, w2p, b2, out, nthreads);
}

void mlp_packed(const bf16* x, int64_t m, int64_t c, int64_t ldx, const bf16* w1p,
                const bf16* b1, int64_t ch, const bf16* w2p, const bf16* b2, bf16* out,
                int nthreads) {
  mlp_packed_t(x, m, c, ldx, w1p, b1, ch, w2p, b2, out, nthreads);
}

}  // namespace levit
