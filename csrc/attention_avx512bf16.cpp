// attention_avx512bf16.cpp — bf16 attention on AVX512_BF16's vdpbf16ps (compiled with
// -mavx512f/dq/bw/vl -mfma -mavx512bf16; only called where CPUID reports AVX512_BF16).
//
// The AVX-512 kernel's tiles and memory plan (attention_kernel.h), with DotProducts in place
// of float32 FMAs on widened copies:
//   scores  S[r, j] += q[r, 2p]·k[j, 2p] + q[r, 2p+1]·k[j, 2p+1]   one vdpbf16ps per 16 keys
//           (q's pair broadcast from its bf16 row; Kᵀ packed as pairs, [p][j] 32-bit words);
//   P·V     O[r, d] += e[r, 2m]·v[2m, d] + e[r, 2m+1]·v[2m+1, d]     one per 16 channels
//           (e = exp(s - max) rounded to bf16 by the softmax, whose 1/sum is then taken over
//           the rounded values; V packed as pairs of rows, [m][d] words, per column block).
// Twice the products per instruction, and half the bytes of Kᵀ and V to copy and stream.
// Accumulation, the softmax and the epilogue stay float32; the output is rounded once, by
// vcvtneps2bf16 (simd.h Avx512Bf16: denormals to zero, as vdpbf16ps reads them anyway).
// The one extra rounding, of e, is the rounding PyTorch's own bf16 attention does (its
// softmax returns bf16), within the bf16 error rule of tests/test_bf16_kernels.py.
#include <cstring>

#include "attention_kernel.h"

namespace levit {
namespace {

inline __m512 dot_pairs(__m512 acc, uint32_t a_pair, __m512i b_pairs) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(a_pair)),
                          (__m512bh)b_pairs);
}

struct DotProducts {
  static constexpr bool kMultipliesBf16 = true;  // see WidenedProducts
  static int64_t k_floats(int64_t dk, int64_t nkp) { return (dk + 1) / 2 * nkp; }
  static int64_t v_floats(int64_t nk, int64_t dvp) { return (nk + 1) / 2 * dvp; }
  static const float* v_slab(const float* vp, int64_t d0, int64_t nk) {
    return vp + d0 * ((nk + 1) / 2);
  }

  // attention_kernel.h's pair layouts: ⌈Dk/2⌉ rows of Kᵀ pairs, ⌈Nk/2⌉ of V pairs.
  static void pack_k(const bf16* kb, int64_t k_sn, int64_t nk, int64_t dk, int64_t nkp,
                     float* kt) {
    pack_k_pairs(kb, k_sn, nk, dk, (dk + 1) / 2, nkp, kt);
  }
  static void pack_v(const bf16* vb, int64_t v_sn, int64_t nk, int64_t dv, int64_t dvp,
                     int64_t block, float* vp) {
    pack_v_pairs(vb, v_sn, nk, dv, dvp, block, (nk + 1) / 2, vp);
  }

  // always_inline: GCC 12 otherwise leaves some tail tiles (3×4, 4×3, 5×2) out of line, their
  // accumulators passed through memory.
  template <class V, class T, int R, int JB>
  [[gnu::always_inline]] static void scores(__m512 (&acc)[R][JB], const AttnArgsT<bf16>& a,
                                            const Rows<bf16>& rw, const float* kt, int64_t j0) {
    // One step per pair of Dk; q's pair for row r comes from pair_of(r).
    auto step = [&](int64_t p, auto pair_of) {
      __m512i kv[JB];
#pragma GCC unroll 8
      for (int c = 0; c < JB; ++c) kv[c] = _mm512_loadu_si512(kt + p * rw.nkp + j0 + c * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const uint32_t pair = pair_of(r);
#pragma GCC unroll 8
        for (int c = 0; c < JB; ++c) acc[r][c] = dot_pairs(acc[r][c], pair, kv[c]);
      }
    };
    const int64_t full = a.dk / 2;
    for (int64_t p = 0; p < full; ++p)
      step(p, [&](int r) {
        uint32_t pair;
        std::memcpy(&pair, rw.qt + r * rw.qt_sn + 2 * p, 4);
        return pair;
      });
    if (a.dk % 2)  // the last q value alone, its partner 0 (as in the packed Kᵀ)
      step(full, [&](int r) { return uint32_t{rw.qt[r * rw.qt_sn + 2 * full].bits}; });
  }

  template <class V, class T, int R, int DB>
  [[gnu::always_inline]] static void pv(__m512 (&acc)[R][DB], const AttnArgsT<bf16>& a,
                                        const Rows<bf16>& rw, const float* vp) {
    // rw.p rows hold Nk' (a multiple of 16) rounded e values, 0 past Nk: every pair is whole.
    for (int64_t m = 0; m < (a.nk + 1) / 2; ++m) {
      __m512i vv[DB];
#pragma GCC unroll 8
      for (int c = 0; c < DB; ++c) vv[c] = _mm512_loadu_si512(vp + m * DB * 16 + c * 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        uint32_t pair;
        std::memcpy(&pair, rw.p + r * rw.nkp + 2 * m, 4);
#pragma GCC unroll 8
        for (int c = 0; c < DB; ++c) acc[r][c] = dot_pairs(acc[r][c], pair, vv[c]);
      }
    }
  }
};

}  // namespace

AttnKernelT<bf16> attention_kernel_bf16_avx512bf16() {
  return {&attention_task<Avx512Bf16, bf16, 6, 4, 4, DotProducts>, 6};
}

}  // namespace levit
