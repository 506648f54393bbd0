// attention_amxbf16.cpp — bf16 attention with its two products on AMX tiles (compiled with the
// AVX512_BF16 flags plus -mamx-tile -mamx-bf16; only called on the amx_bf16 path).
//
// One task (batch b, head h, query rows [i0, i1)), in blocks of up to 32 query rows:
//   scores  S = Q·Kᵀ          A tiles: the block's q rows, copied zero-padded to Dk' (Dk
//                             rounded up to 32); B tiles: Kᵀ as pairs, word [p][j] =
//                             (k[j, 2p], k[j, 2p+1]) for 16 keys a tile row, 0 past Dk and Nk
//   softmax                   s = scale·S + bias (-inf past Nk), e = exp(s - max) rounded to
//                             bf16 and summed as rounded (attention_kernel.h softmax_row, as
//                             the vdpbf16ps kernel does), 1/sum kept for the epilogue
//   P·V     O = e·V           A tiles: the block's e rows (Nk' = Nk rounded up to 32, zeros
//                             past Nk); B tiles: V as pairs of keys per 16 channels, word
//                             [m][d] = (v[2m, d], v[2m+1, d]), 0 past Nk and Dv
//   epilogue                  O·(1/sum), Hardswish, rounded once to bf16 (vcvtneps2bf16),
//                             only the block's rows and Dv's columns stored.
// The tile products are amx_tiles.h's; everything between them is AVX-512 on float32, as
// in the vdpbf16ps kernel, whose numbers this one reproduces up to the order of the sums.
// Probabilities only (attention_probs, no P·V), or at most 16 keys: the AVX-512 kernel.
// Reference: levit_kernels/ops/reference.py::attention.
#include <algorithm>
#include <vector>

#include "amx_tiles.h"
#include "attention_kernel.h"

namespace levit {
namespace {

using V = Avx512Bf16;
constexpr int64_t kBlockRows = 2 * kTileRows;

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// 64-byte aligned scratch of a task, reused across tasks on the thread.
struct Scratch {
  std::vector<char> bytes;
  char* next;
  void reserve(int64_t n) { next = aligned_64(bytes, n); }
  template <class T>
  T* take(int64_t count) {  // count·sizeof(T) is a multiple of 64 for every caller
    T* p = reinterpret_cast<T*>(next);
    next += count * static_cast<int64_t>(sizeof(T));
    return p;
  }
};

// Block rows [0, rows) (rows16 = rows rounded up to 16) × panels of 16 columns: C = A·B by
// pairs of row tiles and pairs of panels, each C group stored to out (ldo floats a row).
template <class AOf, class BOf>
void product(int64_t rows16, int64_t panels, int64_t chunks, AOf a, BOf b, float* out,
             int64_t ldo) {
  for (int64_t i = 0; i < rows16; i += kBlockRows)
    for (int64_t p = 0; p < panels; p += 2) {
      float* o = out + i * ldo + p * kTileCols;
      const int64_t ld = ldo * sizeof(float);
      auto ai = [&](int64_t q) { return a(i, q); };
      auto bp = [&](int64_t q) { return b(p, q); };
      const bool two_rows = i + kTileRows < rows16, two_panels = p + 1 < panels;
      if (two_rows && two_panels) tile_product<2, 2>(chunks, ai, bp, o, ld);
      else if (two_rows) tile_product<2, 1>(chunks, ai, bp, o, ld);
      else if (two_panels) tile_product<1, 2>(chunks, ai, bp, o, ld);
      else tile_product<1, 1>(chunks, ai, bp, o, ld);
    }
}

void task(const AttnArgsT<bf16>& a, const AttnTask& cur, const AttnTask* next) {
  // Probabilities only, or keys that fill a single tile column (LeViT's last stage: 16):
  // the AVX-512 kernel, 1.15x faster there (16 keys, 8 heads, batch 16; the AMX Xeon).
  if (a.probs || a.nk <= kTileCols) return attention_kernel_bf16_avx512().task(a, cur, next);
  const int64_t b = cur.b, h = cur.h;
  const int64_t dkp = round_up(a.dk, kTileK), nkp = round_up(a.nk, kTileCols);
  const int64_t nk32 = round_up(a.nk, kTileK), dvp = round_up(a.dv, kTileCols);
  const int64_t v_panels = dvp / kTileCols, k_panels = nkp / kTileCols;

  thread_local Scratch scratch;
  scratch.reserve(4 * (dkp / 2 * nkp + v_panels * nk32 / 2 * kTileCols + kBlockRows * nkp +
                       kBlockRows * dvp) +
                  2 * (kBlockRows * dkp + kBlockRows * nk32));
  float* kt = scratch.take<float>(dkp / 2 * nkp);                 // pair words
  float* vp = scratch.take<float>(v_panels * nk32 / 2 * kTileCols);  // pair words
  float* s = scratch.take<float>(kBlockRows * nkp);     // scores, then e as float32
  float* o = scratch.take<float>(kBlockRows * dvp);     // P·V sums
  bf16* qc = scratch.take<bf16>(kBlockRows * dkp);      // q rows, zero-padded
  bf16* e = scratch.take<bf16>(kBlockRows * nk32);      // e rounded to bf16, zero-padded

  // Kᵀ: Dk'/2 pair rows of Nk' keys; V: panels of 16 channels, Nk32/2 pair rows each.
  pack_k_pairs(a.k + b * a.k_sb + h * a.k_sh, a.k_sn, a.nk, a.dk, dkp / 2, nkp, kt);
  pack_v_pairs(a.v + b * a.v_sb + h * a.v_sh, a.v_sn, a.nk, a.dv, dvp, kTileCols, nk32 / 2, vp);
  std::fill(qc, qc + kBlockRows * dkp, bf16{0});
  std::fill(e, e + kBlockRows * nk32, bf16{0});
  configure_tiles(kTileRows);
  const auto scale = V::set1(a.scale);
  float inv[kBlockRows];

  for (int64_t i = cur.i0; i < cur.i1; i += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, cur.i1 - i), rows16 = round_up(rows, kTileRows);
    const bf16* q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
    for (int64_t r = 0; r < rows; ++r) std::copy(q + r * a.q_sn, q + r * a.q_sn + a.dk, qc + r * dkp);
    // Rows past `rows` (a short last block) keep the previous block's values: their sums
    // are computed and never stored.
    product(
        rows16, k_panels, dkp / kTileK,
        [&](int64_t r0, int64_t c) -> TileOperand {
          return {qc + r0 * dkp + c * kTileK, 2 * dkp, kTileRows * 2 * dkp};
        },
        [&](int64_t p, int64_t c) -> TileOperand {
          return {kt + c * kTileRows * nkp + p * kTileCols, 4 * nkp, 4 * kTileCols};
        },
        s, nkp);
    const bf16* bias = a.bias + (h * a.nq + i) * a.nk;
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * nkp;
      for (int64_t j = 0; j < nkp; j += kTileCols)
        V::store(sr + j, scaled_score<V>(V::load(sr + j), scale, bias + r * a.nk + j, a.nk - j));
      softmax_row<V, bf16>(sr, nkp, a.nk, inv + r, nullptr, e + r * nk32);
    }
    product(
        rows16, v_panels, nk32 / kTileK,
        [&](int64_t r0, int64_t c) -> TileOperand {
          return {e + r0 * nk32 + c * kTileK, 2 * nk32, kTileRows * 2 * nk32};
        },
        [&](int64_t p, int64_t c) -> TileOperand {
          return {vp + (p * nk32 / 2 + c * kTileRows) * kTileCols, kTileBytes,
                  4 * nk32 / 2 * kTileCols};
        },
        o, dvp);
    bf16* out = a.out + (b * a.nq + i) * a.heads * a.dv + h * a.dv;
    const int64_t ldo = a.heads * a.dv;
    for (int64_t r = 0; r < rows; ++r) {
      const auto iv = V::set1(inv[r]);
      for (int64_t d = 0; d < a.dv; d += kTileCols)
        store_output<V>(out + r * ldo + d, V::load(o + r * dvp + d), iv, a.hardswish, a.dv - d);
    }
  }
}

}  // namespace

AttnKernelT<bf16> attention_kernel_bf16_amx() { return {&task, kTileRows}; }

}  // namespace levit
