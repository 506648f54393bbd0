// gemm_avx512bf16.cpp — bf16 GEMM block kernel on AVX512_BF16's vdpbf16ps (compiled with
// -mavx512f/dq/bw/vl -mfma -mavx512bf16; only called where CPUID reports AVX512_BF16).
//
//   acc[i] += A[r, 2q]·W[2q, c_i] + A[r, 2q+1]·W[2q+1, c_i]     one vdpbf16ps per 16 columns
//
// A's pair (A[r, 2q], A[r, 2q+1]) is one 32-bit value, broadcast to all 16 lanes; the packed
// weight's pair row holds (W[2q, c], W[2q+1, c]) per column c (gemm_bf16.h), so a 64-byte
// load is one operand; a convolution's kernel rows (runs) are read where they are, each a
// run of pairs (an odd run's last value alone). 14×32 tile: 28 ZMM accumulators + 2 W
// vectors + the broadcast. Twice the float32 kernel's products per instruction, and half
// its weight and activation bytes.
// Epilogue, strips and row tails: gemm_kernel_bf16.h. Reference:
// levit_kernels/ops/reference.py::linear.
//
// vdpbf16ps treats denormal inputs as zero and flushes denormal results (DAZ/FTZ, whatever
// MXCSR says), and the stores round with vcvtneps2bf16 (simd.h Avx512Bf16), which flushes
// too: values below 1.2e-38 may differ from the widened paths, and a NaN output keeps its
// sign and payload rather than becoming 0x7FC0; nothing else differs beyond the order of the
// additions.
#include <cstring>

#include "gemm_kernel_bf16.h"

namespace levit {
namespace {

struct Native {
  template <class V, int MR, int NV>
  static void accumulate(__m512 (&acc)[MR][NV], const GemmBlockBf16& g, int64_t i,
                         const bf16* b) {
    const int64_t lda = g.lda, pairs = g.kc / 2, run_pairs = (g.kc + 1) / 2;
    const bf16* bp[NV];
    for (int v = 0; v < NV; ++v) bp[v] = pair_column<V>(g, b, v);
    for (int64_t s = 0; s < g.nseg; ++s) {  // runs: one, except a convolution's kernel rows
      run<V, MR, NV>(acc, g.a + s * g.seg_stride + i * lda, lda, pairs, g.kc % 2, bp);
      for (int v = 0; v < NV; ++v) bp[v] += run_pairs * kPairWidth;
    }
  }

  // One run of 2·pairs (+ 1 if odd) values of A's rows: its pair rows bp[v] onwards.
  // always_inline: the accumulators must stay in registers across the call.
  template <class V, int MR, int NV>
  [[gnu::always_inline]] static void run(__m512 (&acc)[MR][NV], const bf16* a, int64_t lda,
                                         int64_t pairs, bool odd, const bf16* const (&bp)[NV]) {
    for (int64_t q = 0; q < pairs; ++q) {
      __m512i bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp[v] + q * kPairWidth);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        int32_t pair;  // A[r, 2q] in the low half, A[r, 2q+1] in the high half
        std::memcpy(&pair, a + r * lda + 2 * q, 4);
        const __m512i av = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
    if (odd) {  // the run's last k alone: the high half (padding in W) must be 0 in A too
      __m512i bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp[v] + pairs * kPairWidth);
      for (int r = 0; r < MR; ++r) {
        const __m512i av = _mm512_set1_epi32(static_cast<int32_t>(a[r * lda + 2 * pairs].bits));
        for (int v = 0; v < NV; ++v)
          acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
      }
    }
  }
};

}  // namespace

GemmKernelBf16 gemm_kernel_bf16_avx512bf16() {
  return {&gemm_block_bf16<Avx512Bf16, Native, 14, 2>, 14, 32, false,
          "vdpbf16ps (AVX512_BF16 dot products, float32 accumulation)"};
}

}  // namespace levit
