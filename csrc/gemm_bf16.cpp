// gemm_bf16.cpp — the bf16 GEMM's kernel table, weight packing, the per-task driver (K blocks,
// A widening, float32 partial sums) and the portable generic block kernel. Formulas, layout
// and rounding: gemm_bf16.h; the threaded gemm_packed / mlp_packed share gemm.cpp's task split.
// Reference: levit_kernels/ops/reference.py::linear / ::mlp.
//
// Memory plan of one task (a row block × a column block, as in gemm.cpp): K is walked run by
// run in blocks of at most kKc values (even, so pairs never straddle a block); each A block is
// widened to float32 once into a thread-local buffer (for kernels with widened_a; native
// kernels read bf16 A in place, copied only when its row stride aliases in L1) and reused by
// every column strip; partial sums between K blocks sit in a thread-local float32 tile.
#include "gemm_bf16.h"

#include <algorithm>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "simd.h"
#include "thread_pool.h"

namespace levit {
namespace {

constexpr int64_t kKc = 512;  // max K block: a 32-column strip of it is 16 KiB of bf16 pairs

// ---- generic path: plain loops over a 4×16 tile on widened A, compiled with baseline flags.
constexpr int kGenMr = 4;

void generic_block(const GemmBlockBf16& g) {
  for (int64_t j = 0; j < g.n; j += kPanel) {
    const int64_t nc = std::min<int64_t>(kPanel, g.n - j);
    const bf16* b = g.b + (j / kPanel) * g.panel_stride;
    for (int64_t i = 0; i < g.m; i += kGenMr) {
      const int64_t mr = std::min<int64_t>(kGenMr, g.m - i);
      float acc[kGenMr][kPanel] = {};
      for (int64_t k = 0; k < g.kc; ++k) {
        const bf16* bk = b + (k / 2) * kPairWidth + k % 2;
        for (int64_t r = 0; r < mr; ++r) {
          const float ar = g.af[(i + r) * g.lda + k];
          for (int c = 0; c < kPanel; ++c) acc[r][c] += ar * to_float(bk[2 * c]);
        }
      }
      for (int64_t r = 0; r < mr; ++r) {
        float* ap = g.acc + (i + r) * g.ldacc + j;
        for (int64_t c = 0; c < nc; ++c) {
          float x = acc[r][c];
          if (!g.first) x += ap[c];
          if (!g.last) {
            ap[c] = x;
            continue;
          }
          if (g.bias) x += to_float(g.bias[j + c]);
          if (g.act == kActHardswish) x = hardswish_scalar(x);
          if (g.residual) x += to_float(g.residual[(i + r) * g.ldr + j + c]);
          g.c[(i + r) * g.ldc + j + c] = from_float<bf16>(x);
        }
      }
    }
  }
}

// Even K blocks of at most kKc (a run of 600 -> 2 × 300, not 512 + 88).
int64_t k_block(int64_t run) {
  const int64_t nb = (run + kKc - 1) / kKc;
  const int64_t kc = (run + nb - 1) / nb;
  return kc + kc % 2;
}

// A 4 KiB multiple as row stride puts every A row of a tile in one L1 set (see gemm.cpp).
bool aliasing_stride(int64_t ld) { return ld % 2048 == 0; }

// A's runs of one row block widened to float32 one after the other, each padded to whole
// pairs with a 0 (the packed weight's pair rows follow the same runs), for the kernels that
// multiply float32: one K block of nseg·run_stride values. (vdpbf16ps reads runs in place.)
// kRun > 0: runs of exactly kRun values, a length known at compile time (see widen_runs).
template <int64_t kRun>
void widen_runs_of(const bf16* a, int64_t seg_stride, int64_t nseg, int64_t seg_k, int64_t lda,
                   int64_t m, int64_t run_stride, float* dst, int64_t ld) {
  const int64_t run = kRun > 0 ? kRun : seg_k;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t s = 0; s < nseg; ++s) {
      const bf16* src = a + s * seg_stride + i * lda;
      float* d = dst + i * ld + s * run_stride;
      for (int64_t k = 0; k < run; ++k) d[k] = to_float(src[k]);
      if (run_stride > run) d[run] = 0.0f;
    }
}

// An RGB image's 3x3 convolution has runs of 9 values, which a loop of runtime length copies
// with more set-up than copying; at that length the copy is fixed-size, unrolled code: the
// first stem convolution 1.22-1.26x faster in bf16 on AVX2 (Zen 3, in-process A/B;
// benchmarks/results/zen3_2026-12-01/pad_rgb/runs.txt).
void widen_runs(const bf16* a, int64_t seg_stride, int64_t nseg, int64_t seg_k, int64_t lda,
                int64_t m, int64_t run_stride, float* dst, int64_t ld) {
  if (seg_k == 9) widen_runs_of<9>(a, seg_stride, nseg, seg_k, lda, m, run_stride, dst, ld);
  else widen_runs_of<0>(a, seg_stride, nseg, seg_k, lda, m, run_stride, dst, ld);
}

// C[0:m, j0:j0+n] for one task: A as `nseg` runs of seg_k values (a + s·seg_stride, row
// stride lda).
void gemm_task(const GemmKernelBf16& kern, const bf16* a, int64_t seg_stride, int64_t nseg,
               int64_t seg_k, int64_t lda, int64_t m, const bf16* packed, int64_t j0, int64_t n,
               const bf16* bias, const bf16* residual, int64_t ldr, int act, bf16* c,
               int64_t ldc) {
  const int64_t seg_pairs = (seg_k + 1) / 2, run_stride = 2 * seg_pairs;
  const int64_t panel_stride = nseg * seg_pairs * kPairWidth;
  // A convolution's short kernel rows (the stem's first: 9 values) go to the kernel as one
  // K block when they fit, so it sums them in registers and stores once, instead of passing
  // float32 partial sums through `acc` after every row: kernels that multiply float32 get
  // them widened and copied one after the other; vdpbf16ps reads them in place (nseg).
  const bool merged = nseg > 1 && nseg * run_stride <= kKc;
  const int64_t kc = merged ? nseg * run_stride : k_block(seg_k);
  const bool one_block = merged || (nseg == 1 && kc >= seg_k);
  thread_local std::vector<float> acc, widened;
  thread_local std::vector<bf16> a_copy;
  const int64_t ldacc = padded_stride(n), lda_copy = padded_stride(kc);
  if (!one_block && static_cast<int64_t>(acc.size()) < m * ldacc) acc.resize(m * ldacc);
  const bool copy_a = !kern.widened_a && !merged && aliasing_stride(lda) && m > 1;
  if (kern.widened_a && static_cast<int64_t>(widened.size()) < m * lda_copy)
    widened.resize(m * lda_copy);
  if (copy_a && static_cast<int64_t>(a_copy.size()) < m * lda_copy) a_copy.resize(m * lda_copy);

  GemmBlockBf16 g{};
  g.m = m, g.panel_stride = panel_stride, g.n = n;
  g.acc = acc.data(), g.ldacc = ldacc, g.c = c + j0, g.ldc = ldc;
  g.bias = bias ? bias + j0 : nullptr, g.residual = residual ? residual + j0 : nullptr;
  g.ldr = ldr, g.act = act, g.nseg = 1, g.seg_stride = 0;
  if (merged) {
    if (kern.widened_a) {
      widen_runs(a, seg_stride, nseg, seg_k, lda, m, run_stride, widened.data(), lda_copy);
      g.af = widened.data(), g.a = nullptr, g.lda = lda_copy, g.kc = kc;
    } else {
      g.a = a, g.af = nullptr, g.lda = lda, g.kc = seg_k;
      g.nseg = nseg, g.seg_stride = seg_stride;
    }
    g.b = packed + (j0 / kPanel) * panel_stride;
    g.first = g.last = true;
    kern.block(g);
    return;
  }
  for (int64_t s = 0; s < nseg; ++s) {
    for (int64_t k0 = 0; k0 < seg_k; k0 += kc) {
      g.kc = std::min(kc, seg_k - k0);
      const bf16* src = a + s * seg_stride + k0;
      if (kern.widened_a) {
        for (int64_t i = 0; i < m; ++i)
          for (int64_t k = 0; k < g.kc; ++k)
            widened[i * lda_copy + k] = to_float(src[i * lda + k]);
        g.af = widened.data(), g.a = nullptr, g.lda = lda_copy;
      } else if (copy_a) {
        for (int64_t i = 0; i < m; ++i)
          std::copy(src + i * lda, src + i * lda + g.kc, a_copy.data() + i * lda_copy);
        g.a = a_copy.data(), g.af = nullptr, g.lda = lda_copy;
      } else {
        g.a = src, g.af = nullptr, g.lda = lda;
      }
      g.b = packed + (j0 / kPanel) * panel_stride + (s * seg_pairs + k0 / 2) * kPairWidth;
      g.first = s == 0 && k0 == 0;
      g.last = s == nseg - 1 && k0 + g.kc >= seg_k;
      kern.block(g);
    }
  }
}

}  // namespace

GemmKernelBf16 gemm_kernel_bf16_generic() {
  return {&generic_block, kGenMr, static_cast<int>(kPanel), true,
          "bf16 widened to float32, portable C++"};
}

GemmKernelBf16 gemm_kernel_bf16() {
  switch (active_isa()) {
    case Isa::amx_bf16: return gemm_kernel_bf16_amx();
    case Isa::avx512_bf16: return gemm_kernel_bf16_avx512bf16();
    case Isa::avx512: return gemm_kernel_bf16_avx512();
    case Isa::avx2: return gemm_kernel_bf16_avx2();
    default: return gemm_kernel_bf16_generic();
  }
}

const char* bf16_path() {
  thread_local std::string text;
  text = std::string(isa_name(active_isa())) + ": " + gemm_kernel_bf16().how;
  return text.c_str();
}

template <>
GemmTile gemm_tile<bf16>() {
  const GemmKernelBf16 kern = gemm_kernel_bf16();
  return {kern.mr, kern.nr};
}

void pack_weight(const bf16* w, int64_t n, int64_t k, int64_t ldw, int64_t segments,
                 bf16* packed, int nthreads) {
  const int64_t panels = (n + kPanel - 1) / kPanel, pairs = packed_pairs(k, segments);
  const int64_t run = k / segments, run_pairs = (run + 1) / 2;
  parallel_for(panels, nthreads, [&](int64_t p) {
    bf16* dst = packed + p * pairs * kPairWidth;
    const int64_t rows = std::min<int64_t>(kPanel, n - p * kPanel);
    for (int64_t c = 0; c < kPanel; ++c) {
      const bf16* src = w + (p * kPanel + c) * ldw;
      for (int64_t s = 0; s < segments; ++s)
        for (int64_t q = 0; q < run_pairs; ++q)
          for (int64_t e = 0; e < 2; ++e) {
            const int64_t kk = 2 * q + e;  // inside the run
            bf16 v{0};
            if (kk == run) v.bits = kRunPadBits;     // an odd run's padding, every column
            else if (c < rows) v = src[s * run + kk];
            else if (s == 0 && q == 0 && e == 0) v.bits = kColumnPadBits;  // past N
            dst[((s * run_pairs + q) * kPanel + c) * 2 + e] = v;
          }
    }
  });
}

int64_t packed_out_features(const bf16* packed, int64_t panels, int64_t panel_numel) {
  const bf16* row = packed + (panels - 1) * panel_numel;
  int64_t c = kPanel;
  while (c > 0 && row[(c - 1) * 2].bits == kColumnPadBits) --c;
  return (panels - 1) * kPanel + c;
}

bool run_padding_matches(const bf16* packed, int64_t k, int64_t segments) {
  const int64_t run = k / segments, run_pairs = (run + 1) / 2;
  bool marked = true;  // every slot where an odd run's padding would be holds the marker
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t c = 0; c < kPanel; ++c)
      marked = marked && packed[((s * run_pairs + run_pairs - 1) * kPanel + c) * 2 + 1].bits ==
                             kRunPadBits;
  return marked == (run % 2 == 1);
}

void gemm_rows_cols(const bf16* a, int64_t lda, int64_t m, int64_t k, const bf16* packed,
                    int64_t j0, int64_t n, const bf16* bias, const bf16* residual, int64_t ldr,
                    int act, bf16* c, int64_t ldc) {
  gemm_task(gemm_kernel_bf16(), a, 0, 1, k, lda, m, packed, j0, n, bias, residual, ldr, act, c,
            ldc);
}

void gemm_rows_all(const bf16* a, int64_t lda, int64_t m, int64_t k, const bf16* packed,
                   int64_t n, const bf16* bias, int act, bf16* c, int64_t ldc) {
  gemm_rows_segments(a, 0, 1, k, lda, m, packed, n, bias, act, c, ldc);
}

void gemm_rows_segments(const bf16* a, int64_t seg_stride, int64_t nseg, int64_t seg_k,
                        int64_t lda, int64_t m, const bf16* packed, int64_t n, const bf16* bias,
                        int act, bf16* c, int64_t ldc) {
  const GemmKernelBf16 kern = gemm_kernel_bf16();
  for (int64_t j0 = 0; j0 < n; j0 += kGemmColumnBlock)
    gemm_task(kern, a, seg_stride, nseg, seg_k, lda, m, packed, j0,
              std::min(kGemmColumnBlock, n - j0), bias, nullptr, 0, act, c, ldc);
}

}  // namespace levit
