// attention_kernel.h — fused attention for one (batch, head, query chunk), templated on the
// vector traits (simd.h). Included by attention_avx2.cpp and attention_avx512.cpp only.
//
// Memory plan for one task:
//   1. Kᵀ (Dk × Nk', Nk' = Nk rounded up to the vector width) is built once in a thread-local
//      buffer (≤ 32×208 floats = 26 KB, L1/L2) so scores vectorise over keys; reused by every
//      query row of the chunk.
//   2. For each group of R query rows: scores S (R × Nk', ≤ 6×208 floats = 5 KB, L1) are
//      accumulated in registers (R × JB vectors) over Dk, finished as scale·acc + bias with
//      one FMA and stored; key columns past Nk are set to -inf.
//   3. Numerically stable softmax in place: row max, e = exp(s - max) (vectorised exp, 0 for
//      the -inf tail), row sum; the 1/sum is applied later to the R × Dv output instead of
//      the R × Nk probabilities.
//   4. O = P·V with R × DB output vectors in registers; each V row (contiguous Dv floats,
//      strided between tokens) is read once per group and column block. Epilogue: ·1/sum,
//      Hardswish, masked store straight into out[b, i, h·Dv + d] (B, Nq, H·Dv).
// Nothing past Nk (bias, scores) or Dv (v, out) is touched: tails use masked loads/stores.
// bf16 inputs (T = bf16) are widened where they are copied anyway (Kᵀ, packed V; the q rows
// of a block into a small float32 buffer) and where bias is loaded; outputs are rounded once
// on the store. How steps 1, 2 and 4 form their products is the policy K: WidenedProducts
// (below: float32 FMAs, every ISA) or the AVX512_BF16 path's DotProducts (bf16 pairs,
// vdpbf16ps; attention_avx512bf16.cpp). Reference: levit_kernels/ops/reference.py::attention
// / ::attention_probs.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "simd.h"

namespace levit {
namespace {

template <class T>
struct Rows {  // a run of query rows: a block, or one group of R rows inside it
  const float* q;     // q[b, h, i0] as float32 (bf16 q rows widened per block; Widened only)
  int64_t q_sn;
  const T* qt;        // the same rows as stored (DotProducts reads bf16 pairs from them)
  int64_t qt_sn;
  const T* bias;      // bias[h, i0, 0]
  float* s;           // scores/probabilities, one row of nkp floats per query
  int64_t nkp;
  float* inv;         // 1 / row sum, one per query
  bf16* p;            // DotProducts: e = exp(s - max) rounded to bf16, nkp per row; else null

  Rows from(int64_t r0, int64_t nk) const {  // the rows starting r0 rows further on
    return {q ? q + r0 * q_sn : nullptr, q_sn, qt + r0 * qt_sn, qt_sn, bias + r0 * nk,
            s + r0 * nkp, nkp, inv + r0, p ? p + r0 * nkp : nullptr};
  }
};

// How the scores and P·V form their products. WidenedProducts: float32 FMAs on float32
// copies — Kᵀ (Dk × Nk') and V in column blocks — with bf16 widened as it is copied; every
// ISA, and float32. The AVX512_BF16 path's DotProducts (attention_avx512bf16.cpp) multiplies
// bf16 pairs with vdpbf16ps instead. Buffer sizes are in floats (4-byte slots).
struct WidenedProducts {
  // false: multiplies float32 — q rows widened per block, P·V reads the float32 e = exp(s - max).
  // true (DotProducts): multiplies bf16 as stored — q read in place, e rounded to bf16.
  static constexpr bool kMultipliesBf16 = false;
  static int64_t k_floats(int64_t dk, int64_t nkp) { return dk * nkp; }
  static int64_t v_floats(int64_t nk, int64_t dvp) { return nk * dvp; }
  // The packed V's column block starting at column d0 (blocks of width·Nk floats).
  static const float* v_slab(const float* vp, int64_t d0, int64_t nk) { return vp + d0 * nk; }

  // Kᵀ with zero columns past Nk (their scores are replaced by -inf anyway).
  template <class T>
  static void pack_k(const T* kb, int64_t k_sn, int64_t nk, int64_t dk, int64_t nkp, float* kt) {
    for (int64_t d = 0; d < dk; ++d) std::fill(kt + d * nkp + nk, kt + (d + 1) * nkp, 0.0f);
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t d = 0; d < dk; ++d) kt[d * nkp + j] = to_float(kb[j * k_sn + d]);
  }

  // V copied once into column blocks of `block` floats, [block][j][block], zero-padded past
  // Dv: each P·V pass then streams one contiguous Nk × block slab (hardware-prefetch
  // friendly; rows of a packed qkv tensor are 2-6 KB apart, beyond the L1 stride
  // prefetcher's reach). A tail block narrower than `block` uses its own width, matching the
  // smaller DB of block_pass.
  template <class T>
  static void pack_v(const T* vb, int64_t v_sn, int64_t nk, int64_t dv, int64_t dvp,
                     int64_t block, float* vp) {
    for (int64_t d0 = 0; d0 < dvp; d0 += block) {
      const int64_t width = std::min<int64_t>(block, dvp - d0);
      const int64_t valid = std::min(width, dv - d0);
      float* dst = vp + d0 * nk;
      for (int64_t j = 0; j < nk; ++j) {
        const T* src = vb + j * v_sn + d0;
        std::transform(src, src + valid, dst + j * width, [](T x) { return to_float(x); });
        std::fill(dst + j * width + valid, dst + (j + 1) * width, 0.0f);
      }
    }
  }

  // acc[r][c] = Σ_d q[r, d]·Kᵀ[d, j0 + c·W + lane]
  template <class V, class T, int R, int JB>
  static void scores(typename V::vec (&acc)[R][JB], const AttnArgsT<T>& a, const Rows<T>& rw,
                     const float* kt, int64_t j0) {
    using vec = typename V::vec;
    constexpr int W = V::W;
    for (int64_t d = 0; d < a.dk; ++d) {
      vec kv[JB];
#pragma GCC unroll 8
      for (int c = 0; c < JB; ++c) kv[c] = V::load(kt + d * rw.nkp + j0 + c * W);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const vec qa = V::set1(rw.q[r * rw.q_sn + d]);
#pragma GCC unroll 8
        for (int c = 0; c < JB; ++c) acc[r][c] = V::fma(qa, kv[c], acc[r][c]);
      }
    }
  }

  // acc[r][c] = Σ_j e[r, j]·V[j, c·W + lane] over one slab (rows of DB·W floats).
  template <class V, class T, int R, int DB>
  static void pv(typename V::vec (&acc)[R][DB], const AttnArgsT<T>& a, const Rows<T>& rw,
                 const float* vp) {
    using vec = typename V::vec;
    constexpr int W = V::W;
    for (int64_t j = 0; j < a.nk; ++j) {
      vec vv[DB];
#pragma GCC unroll 8
      for (int c = 0; c < DB; ++c) vv[c] = V::load(vp + j * DB * W + c * W);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const vec p = V::set1(rw.s[r * rw.nkp + j]);
#pragma GCC unroll 8
        for (int c = 0; c < DB; ++c) acc[r][c] = V::fma(p, vv[c], acc[r][c]);
      }
    }
  }
};

// bf16 pairs for the kernels that multiply them (vdpbf16ps: attention_avx512bf16.cpp; AMX
// tiles: attention_amxbf16.cpp), in the 4-byte slots of float buffers, written by memcpy.
// The 32-bit word (lo, hi) of two bf16 values: what both instructions read as one pair.
inline uint32_t pair_word(bf16 lo, bf16 hi) {
  return static_cast<uint32_t>(lo.bits) | (static_cast<uint32_t>(hi.bits) << 16);
}

inline void put_word(float* slot, uint32_t word) { std::memcpy(slot, &word, 4); }

// Kᵀ as pairs: word [p][j] = (k[j, 2p], k[j, 2p+1]) for p < pair_rows (>= ⌈Dk/2⌉), j < nkp;
// 0 past Dk (odd Dk, and rows past ⌈Dk/2⌉) and past Nk.
inline void pack_k_pairs(const bf16* kb, int64_t k_sn, int64_t nk, int64_t dk,
                         int64_t pair_rows, int64_t nkp, float* kt) {
  const int64_t pairs = (dk + 1) / 2;
  for (int64_t p = 0; p < pair_rows; ++p)
    std::fill(kt + p * nkp + (p < pairs ? nk : 0), kt + (p + 1) * nkp, 0.0f);
  for (int64_t j = 0; j < nk; ++j) {
    const bf16* row = kb + j * k_sn;
    for (int64_t p = 0; p < pairs; ++p)
      put_word(kt + p * nkp + j, pair_word(row[2 * p], 2 * p + 1 < dk ? row[2 * p + 1] : bf16{0}));
  }
}

// V as pairs of rows, in column blocks of `block` channels ([block][m][width] words, m <
// pair_rows (>= ⌈Nk/2⌉), word = (v[2m, d], v[2m+1, d])); 0 past Dv and past Nk.
inline void pack_v_pairs(const bf16* vb, int64_t v_sn, int64_t nk, int64_t dv, int64_t dvp,
                         int64_t block, int64_t pair_rows, float* vp) {
  for (int64_t d0 = 0; d0 < dvp; d0 += block) {
    const int64_t width = std::min<int64_t>(block, dvp - d0);
    const int64_t valid = std::max<int64_t>(0, std::min(width, dv - d0));
    float* dst = vp + d0 * pair_rows;
    for (int64_t m = 0; m < pair_rows; ++m) {
      const bf16* even = 2 * m < nk ? vb + 2 * m * v_sn + d0 : nullptr;
      const bf16* odd = 2 * m + 1 < nk ? even + v_sn : nullptr;
      const int64_t filled = even ? valid : 0;
      for (int64_t d = 0; d < filled; ++d)
        put_word(dst + m * width + d, pair_word(even[d], odd ? odd[d] : bf16{0}));
      std::fill(dst + m * width + filled, dst + (m + 1) * width, 0.0f);
    }
  }
}

// Calls f(std::integral_constant<int, n>{}) for a run-time n in [1, N], so that register
// tiles can be sized at compile time for tails (fewer rows, fewer vectors).
template <int N, class F>
inline void with_count(int64_t n, F&& f) {
  if (n == N) f(std::integral_constant<int, N>{});
  else if constexpr (N > 1) with_count<N - 1>(n, f);
}

// A vector of scores finished: scale·x + bias (keys j..j+W of a bias row; the first `valid`
// of them, -inf past Nk when fewer than W).
template <class V, class T>
[[gnu::always_inline]] inline typename V::vec scaled_score(typename V::vec x, typename V::vec scale,
                                                           const T* bias, int64_t valid) {
  if (valid >= V::W) return V::fma(x, scale, load_as_float<V>(bias));
  const auto ninf = V::set1(-std::numeric_limits<float>::infinity());
  return V::select(V::tail(valid), V::fma(x, scale, load_as_float<V>(bias, valid)), ninf);
}

// A vector of P·V sums finished: ·1/sum, Hardswish if asked, stored to out (its first
// `valid` channels when fewer than W).
template <class V, class T>
[[gnu::always_inline]] inline void store_output(T* out, typename V::vec x, typename V::vec inv,
                                                bool hswish, int64_t valid) {
  x = V::mul(x, inv);
  if (hswish) x = hardswish<V>(x);
  if (valid >= V::W) store_from_float<V>(out, x);
  else store_from_float<V>(out, x, valid);
}

// S[r, j0 : j0 + JB·W] for R rows.
template <class V, class T, class K, int R, int JB>
inline void score_block(const AttnArgsT<T>& a, const Rows<T>& rw, const float* kt, int64_t j0) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[R][JB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < JB; ++c) acc[r][c] = V::zero();
  K::template scores<V, T, R, JB>(acc, a, rw, kt, j0);
  const vec scale = V::set1(a.scale);
#pragma GCC unroll 8
  for (int c = 0; c < JB; ++c) {
    const int64_t j = j0 + c * W, valid = a.nk - j;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      V::store(rw.s + r * rw.nkp + j,
               scaled_score<V>(acc[r][c], scale, rw.bias + r * a.nk + j, valid));
  }
}

// O[r, d0 : d0 + DB·W] = Σ_j P[r, j] · V[j, d0 : ...], then ·1/sum, Hardswish, store.
template <class V, class T, class K, int R, int DB>
inline void pv_block(const AttnArgsT<T>& a, const Rows<T>& rw, const float* vp, T* out,
                     int64_t ldo, int64_t d0) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[R][DB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < DB; ++c) acc[r][c] = V::zero();
  K::template pv<V, T, R, DB>(acc, a, rw, vp);  // vp: this column block of the packed V
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const vec inv = V::set1(rw.inv[r]);
#pragma GCC unroll 8
    for (int c = 0; c < DB; ++c)
      store_output<V>(out + r * ldo + d0 + c * W, acc[r][c], inv, a.hardswish, a.dv - d0 - c * W);
  }
}

// Softmax of one score row in place: e = exp(s - max) (0 for the -inf tail), *inv = 1/Σe;
// with `probs` set, the normalised row is also written there (Nk floats). With `rounded`
// set (DotProducts), e is rounded to bf16 into it (Nk' values) and the sum is of the
// rounded values, so the weights P·V multiplies by still sum to exactly 1 after ·inv.
template <class V, class T>
inline void softmax_row(float* s, int64_t nkp, int64_t nk, float* inv, T* probs,
                        bf16* rounded = nullptr) {
  constexpr int W = V::W;
  auto mx = V::load(s);
  for (int64_t j = W; j < nkp; j += W) mx = V::max(mx, V::load(s + j));
  const auto mxv = V::set1(V::hmax(mx));
  auto sum = V::zero();
  for (int64_t j = 0; j < nkp; j += W) {
    auto e = exp<V>(V::sub(V::load(s + j), mxv));
    if (rounded) {  // P·V reads the rounded e only (and never with probs)
      V::store_bf16(rounded + j, e);
      e = V::load_bf16(rounded + j);
    } else {
      V::store(s + j, e);
    }
    sum = V::add(sum, e);
  }
  *inv = 1.0f / V::hsum(sum);
  if (probs) {
    const auto iv = V::set1(*inv);
    for (int64_t j = 0; j < nk; j += W) {
      const auto x = V::mul(V::load(s + j), iv);
      if (j + W <= nk) store_from_float<V>(probs + j, x);
      else store_from_float<V>(probs + j, x, nk - j);
    }
  }
}

// One block of `rows` query rows (a few groups of R): scores of the whole block, softmax per
// row, then P·V. Loop order is for L1: each Kᵀ strip (Dk × JB·W) is used by every row group
// of the block before the next strip is touched, and likewise each V slab (Nk × DB·W), so
// they are read from L2 once per block instead of once per R rows.
template <class V, class T, class K, int R, int JB, int DB>
void block_pass(const AttnArgsT<T>& a, const Rows<T>& blk, int64_t rows, const float* kt,
                const float* vp, T* out, int64_t ldo) {
  constexpr int W = V::W;
  const int64_t nvec = blk.nkp / W;
  for (int64_t c = 0; c < nvec; c += JB) {
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const Rows<T> g = blk.from(r0, a.nk);
      with_count<R>(std::min<int64_t>(R, rows - r0), [&](auto rc) {
        with_count<JB>(std::min<int64_t>(JB, nvec - c), [&](auto jc) {
          score_block<V, T, K, decltype(rc)::value, decltype(jc)::value>(a, g, kt, c * W);
        });
      });
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    softmax_row<V, T>(blk.s + r * blk.nkp, blk.nkp, a.nk, blk.inv + r,
                      a.probs ? out + r * ldo : nullptr, blk.p ? blk.p + r * blk.nkp : nullptr);
  if (a.probs) return;

  const int64_t dvec = (a.dv + W - 1) / W;
  for (int64_t d = 0; d < dvec; d += DB) {
    const float* slab = K::v_slab(vp, d * W, a.nk);
    for (int64_t r0 = 0; r0 < rows; r0 += R) {
      const Rows<T> g = blk.from(r0, a.nk);
      with_count<R>(std::min<int64_t>(R, rows - r0), [&](auto rc) {
        with_count<DB>(std::min<int64_t>(DB, dvec - d), [&](auto dc) {
          pv_block<V, T, K, decltype(rc)::value, decltype(dc)::value>(a, g, slab,
                                                                       out + r0 * ldo, ldo, d * W);
        });
      });
    }
  }
}

// Prefetch (to L2) rows [r0, r1) of a (rows × width values, row stride ld) matrix.
template <class T>
inline void prefetch_rows(const T* base, int64_t ld, int64_t width, int64_t r0, int64_t r1) {
  const int64_t bytes = width * static_cast<int64_t>(sizeof(T));
  for (int64_t r = r0; r < r1; ++r) {
    const char* p = reinterpret_cast<const char*>(base + r * ld);
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
    _mm_prefetch(p + bytes - 1, _MM_HINT_T1);
  }
}

// The q rows [i, i + rows) of (b, h) as float32 rows: float q in place, bf16 q widened into
// `buf` (rows × dk).
inline const float* q_rows(const AttnArgsT<float>& a, int64_t b, int64_t h, int64_t i,
                           int64_t, float*, int64_t* q_sn) {
  *q_sn = a.q_sn;
  return a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
}

inline const float* q_rows(const AttnArgsT<bf16>& a, int64_t b, int64_t h, int64_t i,
                           int64_t rows, float* buf, int64_t* q_sn) {
  const bf16* q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < a.dk; ++d) buf[r * a.dk + d] = to_float(q[r * a.q_sn + d]);
  *q_sn = a.dk;
  return buf;
}

template <class V, class T, int R, int JB, int DB, class K = WidenedProducts>
void attention_task(const AttnArgsT<T>& a, const AttnTask& cur, const AttnTask* next) {
  const int64_t b = cur.b, h = cur.h, i0 = cur.i0, i1 = cur.i1;
  constexpr int W = V::W;
  const int64_t nkp = (a.nk + W - 1) / W * W;
  const int64_t dvp = a.probs ? 0 : (a.dv + W - 1) / W * W;
  // Block of rb rows: its scores (rb × nkp floats) take at most ~12 KB, so they and one V
  // slab (Nk × DB·W) share L1.
  constexpr int64_t kMaxGroups = 8;
  const int64_t rb = R * std::clamp<int64_t>(12 * 1024 / (R * nkp * 4), 1, kMaxGroups);
  const bool round_p = K::kMultipliesBf16 && !a.probs;
  float inv[R * kMaxGroups];
  thread_local std::vector<float> buf;
  const int64_t k_size = K::k_floats(a.dk, nkp), v_size = a.probs ? 0 : K::v_floats(a.nk, dvp);
  const int64_t q_size = K::kMultipliesBf16 ? 0 : rb * a.dk;  // q rows widened (bf16 only)
  const int64_t p_size = round_p ? rb * nkp / 2 : 0;  // rb × nkp bf16 (nkp is even)
  const size_t need = static_cast<size_t>(k_size + rb * nkp + v_size + q_size + p_size);
  if (buf.size() < need) buf.resize(need);
  float* kt = buf.data();
  float* vp = kt + k_size + rb * nkp;
  float* qbuf = vp + v_size;
  bf16* pbuf = round_p ? reinterpret_cast<bf16*>(qbuf + q_size) : nullptr;

  K::pack_k(a.k + b * a.k_sb + h * a.k_sh, a.k_sn, a.nk, a.dk, nkp, kt);
  if (!a.probs) K::pack_v(a.v + b * a.v_sb + h * a.v_sh, a.v_sn, a.nk, a.dv, dvp, DB * W, vp);

  Rows<T> blk;
  blk.s = kt + k_size;
  blk.nkp = nkp;
  blk.inv = inv;
  blk.p = pbuf;
  // The next task's q/k/v rows are prefetched a slice per block, spread over this task.
  const int64_t groups = (i1 - i0 + rb - 1) / rb;
  const bool same_kv = next && next->b == b && next->h == h;
  const int64_t kv_per = next && !same_kv ? (a.nk + groups - 1) / groups : 0;
  const int64_t q_per = next ? (next->i1 - next->i0 + groups - 1) / groups : 0;
  for (int64_t i = i0, g = 0; i < i1; i += rb, ++g) {
    if (kv_per) {
      const int64_t r0 = std::min(a.nk, g * kv_per), r1 = std::min(a.nk, r0 + kv_per);
      prefetch_rows(a.k + next->b * a.k_sb + next->h * a.k_sh, a.k_sn, a.dk, r0, r1);
      if (!a.probs) prefetch_rows(a.v + next->b * a.v_sb + next->h * a.v_sh, a.v_sn, a.dv, r0, r1);
    }
    if (q_per) {
      const int64_t r0 = std::min(next->i1, next->i0 + g * q_per), r1 = std::min(next->i1, r0 + q_per);
      prefetch_rows(a.q + next->b * a.q_sb + next->h * a.q_sh, a.q_sn, a.dk, r0, r1);
    }
    blk.qt = a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
    blk.qt_sn = a.q_sn;
    blk.q = K::kMultipliesBf16 ? nullptr
                               : q_rows(a, b, h, i, std::min(rb, i1 - i), qbuf, &blk.q_sn);
    blk.bias = a.bias + (h * a.nq + i) * a.nk;
    T* out;
    int64_t ldo;
    if (a.probs) {
      out = a.out + ((b * a.heads + h) * a.nq + i) * a.nk;
      ldo = a.nk;
    } else {
      out = a.out + (b * a.nq + i) * a.heads * a.dv + h * a.dv;
      ldo = a.heads * a.dv;
    }
    block_pass<V, T, K, R, JB, DB>(a, blk, std::min(rb, i1 - i), kt, vp, out, ldo);
  }
}

}  // namespace
}  // namespace levit
