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
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "attention.h"
#include "simd.h"

namespace levit {
namespace {

struct Rows {  // the R query rows being processed
  const float* q;     // q[b, h, i0]
  int64_t q_sn;
  const float* bias;  // bias[h, i0, 0]
  float* s;           // scores/probabilities, R × nkp
  int64_t nkp;
  float inv[8];       // 1 / row sum
};

// S[r, j0 : j0 + JB·W] for R rows.
template <class V, int R, int JB>
inline void score_block(const AttnArgs& a, const Rows& rw, const float* kt, int64_t j0) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  vec acc[R][JB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < JB; ++c) acc[r][c] = V::zero();
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
  const vec scale = V::set1(a.scale), ninf = V::set1(-std::numeric_limits<float>::infinity());
#pragma GCC unroll 8
  for (int c = 0; c < JB; ++c) {
    const int64_t j = j0 + c * W, valid = a.nk - j;
    const auto m = V::tail(valid);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* bp = rw.bias + r * a.nk + j;
      vec x = V::fma(acc[r][c], scale, valid >= W ? V::load(bp) : V::load(bp, m));
      if (valid < W) x = V::select(m, x, ninf);
      V::store(rw.s + r * rw.nkp + j, x);
    }
  }
}

template <class V, int R, int JB>
inline void score_tail(int nvec, const AttnArgs& a, const Rows& rw, const float* kt, int64_t j0) {
  if constexpr (JB > 1) {
    if (nvec == JB - 1) score_block<V, R, JB - 1>(a, rw, kt, j0);
    else score_tail<V, R, JB - 1>(nvec, a, rw, kt, j0);
  }
}

// O[r, d0 : d0 + DB·W] = Σ_j P[r, j] · V[j, d0 : ...], then ·1/sum, Hardswish, store.
template <class V, int R, int DB>
inline void pv_block(const AttnArgs& a, const Rows& rw, const float* vp, float* out,
                     int64_t ldo, int64_t d0) {
  using vec = typename V::vec;
  constexpr int W = V::W;
  typename V::mask m[DB];
#pragma GCC unroll 8
  for (int c = 0; c < DB; ++c) m[c] = V::tail(a.dv - d0 - c * W);
  const bool full = d0 + DB * W <= a.dv;
  vec acc[R][DB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < DB; ++c) acc[r][c] = V::zero();
  // vp: this column block of the packed V, rows of DB·W floats (zero-padded past Dv).
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
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const vec inv = V::set1(rw.inv[r]);
#pragma GCC unroll 8
    for (int c = 0; c < DB; ++c) {
      vec x = V::mul(acc[r][c], inv);
      if (a.hardswish) x = hardswish_fast<V>(x);
      float* op = out + r * ldo + d0 + c * W;
      if (full) V::store(op, x);
      else V::store(op, x, m[c]);
    }
  }
}

template <class V, int R, int DB>
inline void pv_tail(int nvec, const AttnArgs& a, const Rows& rw, const float* vp, float* out,
                    int64_t ldo, int64_t d0) {
  if constexpr (DB > 1) {
    if (nvec == DB - 1) pv_block<V, R, DB - 1>(a, rw, vp, out, ldo, d0);
    else pv_tail<V, R, DB - 1>(nvec, a, rw, vp, out, ldo, d0);
  }
}

template <class V, int R, int JB, int DB>
void rows_pass(const AttnArgs& a, Rows& rw, const float* kt, const float* vp, float* out,
               int64_t ldo) {
  constexpr int W = V::W;
  const int64_t nvec = rw.nkp / W;
  int64_t c = 0;
  for (; c + JB <= nvec; c += JB) score_block<V, R, JB>(a, rw, kt, c * W);
  if (c < nvec) score_tail<V, R, JB>(static_cast<int>(nvec - c), a, rw, kt, c * W);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* s = rw.s + r * rw.nkp;
    auto mx = V::load(s);
    for (int64_t j = W; j < rw.nkp; j += W) mx = V::max(mx, V::load(s + j));
    const auto mxv = V::set1(V::hmax(mx));
    auto sum = V::zero();
    for (int64_t j = 0; j < rw.nkp; j += W) {
      const auto e = V::exp(V::sub(V::load(s + j), mxv));
      sum = V::add(sum, e);
      V::store(s + j, e);
    }
    rw.inv[r] = 1.0f / V::hsum(sum);
    if (a.probs) {  // out row (b, h, i, :) gets the normalised probabilities
      const auto inv = V::set1(rw.inv[r]);
      float* op = out + r * ldo;
      for (int64_t j = 0; j < a.nk; j += W) {
        const auto x = V::mul(V::load(s + j), inv);
        if (j + W <= a.nk) V::store(op + j, x);
        else V::store(op + j, x, V::tail(a.nk - j));
      }
    }
  }
  if (a.probs) return;

  const int64_t dvec = (a.dv + W - 1) / W;
  int64_t d = 0;
  for (; d + DB <= dvec; d += DB) pv_block<V, R, DB>(a, rw, vp + d * W * a.nk, out, ldo, d * W);
  if (d < dvec)
    pv_tail<V, R, DB>(static_cast<int>(dvec - d), a, rw, vp + d * W * a.nk, out, ldo, d * W);
}

template <class V, int R, int JB, int DB>
void rows_dispatch(int rows, const AttnArgs& a, Rows& rw, const float* kt, const float* vp,
                   float* out, int64_t ldo) {
  if (rows == R) rows_pass<V, R, JB, DB>(a, rw, kt, vp, out, ldo);
  else if constexpr (R > 1) rows_dispatch<V, R - 1, JB, DB>(rows, a, rw, kt, vp, out, ldo);
}

// Prefetch (to L2) rows [r0, r1) of a (rows × width floats, row stride ld) matrix.
inline void prefetch_rows(const float* base, int64_t ld, int64_t width, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const char* p = reinterpret_cast<const char*>(base + r * ld);
    for (int64_t off = 0; off < width * 4; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
    _mm_prefetch(p + width * 4 - 1, _MM_HINT_T1);
  }
}

template <class V, int R, int JB, int DB>
void attention_task(const AttnArgs& a, const AttnTask& cur, const AttnTask* next) {
  const int64_t b = cur.b, h = cur.h, i0 = cur.i0, i1 = cur.i1;
  static_assert(R <= 8, "Rows::inv holds 8 rows");
  constexpr int W = V::W;
  const int64_t nkp = (a.nk + W - 1) / W * W;
  const int64_t dvp = a.probs ? 0 : (a.dv + W - 1) / W * W;
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(a.dk * nkp + R * nkp + a.nk * dvp);
  if (buf.size() < need) buf.resize(need);
  float* kt = buf.data();
  float* vp = kt + a.dk * nkp + R * nkp;

  // Kᵀ with zero columns past Nk (their scores are replaced by -inf anyway).
  const float* kb = a.k + b * a.k_sb + h * a.k_sh;
  for (int64_t d = 0; d < a.dk; ++d) std::fill(kt + d * nkp + a.nk, kt + (d + 1) * nkp, 0.0f);
  for (int64_t j = 0; j < a.nk; ++j)
    for (int64_t d = 0; d < a.dk; ++d) kt[d * nkp + j] = kb[j * a.k_sn + d];

  // V copied once into column blocks of DB·W floats, [block][j][DB·W], zero-padded past Dv:
  // each P·V pass then streams one contiguous Nk × DB·W slab (hardware-prefetch friendly;
  // rows of a packed qkv tensor are 2-6 KB apart, beyond the L1 stride prefetcher's reach).
  // A tail block narrower than DB·W uses its own width, matching pv_tail's smaller DB.
  if (!a.probs) {
    const float* vb = a.v + b * a.v_sb + h * a.v_sh;
    for (int64_t d0 = 0; d0 < dvp; d0 += DB * W) {
      const int64_t width = std::min<int64_t>(DB * W, dvp - d0);
      const int64_t valid = std::min(width, a.dv - d0);
      float* dst = vp + d0 * a.nk;
      for (int64_t j = 0; j < a.nk; ++j) {
        const float* src = vb + j * a.v_sn + d0;
        std::copy(src, src + valid, dst + j * width);
        std::fill(dst + j * width + valid, dst + (j + 1) * width, 0.0f);
      }
    }
  }

  Rows rw;
  rw.q_sn = a.q_sn;
  rw.s = kt + a.dk * nkp;
  rw.nkp = nkp;
  // The next task's q/k/v rows are prefetched a slice per row group, spread over this task.
  const int64_t groups = (i1 - i0 + R - 1) / R;
  const bool same_kv = next && next->b == b && next->h == h;
  const int64_t kv_per = next && !same_kv ? (a.nk + groups - 1) / groups : 0;
  const int64_t q_per = next ? (next->i1 - next->i0 + groups - 1) / groups : 0;
  for (int64_t i = i0, g = 0; i < i1; i += R, ++g) {
    if (kv_per) {
      const int64_t r0 = std::min(a.nk, g * kv_per), r1 = std::min(a.nk, r0 + kv_per);
      prefetch_rows(a.k + next->b * a.k_sb + next->h * a.k_sh, a.k_sn, a.dk, r0, r1);
      if (!a.probs) prefetch_rows(a.v + next->b * a.v_sb + next->h * a.v_sh, a.v_sn, a.dv, r0, r1);
    }
    if (q_per) {
      const int64_t r0 = std::min(next->i1, next->i0 + g * q_per), r1 = std::min(next->i1, r0 + q_per);
      prefetch_rows(a.q + next->b * a.q_sb + next->h * a.q_sh, a.q_sn, a.dk, r0, r1);
    }
    rw.q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
    rw.bias = a.bias + (h * a.nq + i) * a.nk;
    float* out;
    int64_t ldo;
    if (a.probs) {
      out = a.out + ((b * a.heads + h) * a.nq + i) * a.nk;
      ldo = a.nk;
    } else {
      out = a.out + (b * a.nq + i) * a.heads * a.dv + h * a.dv;
      ldo = a.heads * a.dv;
    }
    rows_dispatch<V, R, JB, DB>(static_cast<int>(std::min<int64_t>(R, i1 - i)), a, rw, kt, vp,
                                out, ldo);
  }
}

}  // namespace
}  // namespace levit
