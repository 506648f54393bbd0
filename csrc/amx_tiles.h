// amx_tiles.h — AMX tile operations shared by the AMX kernels (gemm_amxbf16.cpp,
// attention_amxbf16.cpp): the tile configuration they all use and one tile product,
//   C (NA×NB tiles of 16×16 float32) = Σ over chunks q of A_q (NA tiles of 16 rows × 32 bf16)
//                                                   · B_q (NB tiles of 16 pair rows × 16 columns)
// with tiles 0-3 for C, 4-5 for A and 6-7 for B (4 tdpbf16ps per 4 tile loads for 2×2).
// Included only by files compiled with -mamx-tile -mamx-bf16, or in test builds, which
// replace the instructions by amx_emulation.h.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace levit {
namespace {
namespace amx {
// The 64-byte operand of ldtilecfg: palette 1, then each tile's bytes per row and rows.
struct Config {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
}  // namespace amx
}  // namespace
}  // namespace levit

#if defined(LEVIT_EMULATE_AVX512)
#include "amx_emulation.h"  // test builds: the tile instructions in plain C++
#else
namespace levit {
namespace {
namespace amx {
inline void configure(const Config& cfg) { _tile_loadconfig(&cfg); }
// GCC's tile intrinsics paste their tile number into the assembly text, so each needs a
// literal: one specialization per tile (and per product) the kernel uses.
template <int T> void zero();
template <int T> void load(const void* p, int64_t stride);
template <int T> void store(void* p, int64_t stride);
template <int C, int A, int B> void dot();
#define LEVIT_AMX_TILE(T)                                                                  \
  template <> inline void zero<T>() { _tile_zero(T); }                                     \
  template <> inline void load<T>(const void* p, int64_t stride) { _tile_loadd(T, p, stride); } \
  template <> inline void store<T>(void* p, int64_t stride) { _tile_stored(T, p, stride); }
LEVIT_AMX_TILE(0)
LEVIT_AMX_TILE(1)
LEVIT_AMX_TILE(2)
LEVIT_AMX_TILE(3)
LEVIT_AMX_TILE(4)
LEVIT_AMX_TILE(5)
LEVIT_AMX_TILE(6)
LEVIT_AMX_TILE(7)
#undef LEVIT_AMX_TILE
template <> inline void dot<0, 4, 6>() { _tile_dpbf16ps(0, 4, 6); }
template <> inline void dot<1, 4, 7>() { _tile_dpbf16ps(1, 4, 7); }
template <> inline void dot<2, 5, 6>() { _tile_dpbf16ps(2, 5, 6); }
template <> inline void dot<3, 5, 7>() { _tile_dpbf16ps(3, 5, 7); }
}  // namespace amx
}  // namespace
}  // namespace levit
#endif

namespace levit {
namespace {

constexpr int kTileRows = 16;      // rows of an A or C tile, pair rows of a B tile
constexpr int64_t kTileK = 32;     // k of one tdpbf16ps: 16 pairs, a 64-byte A tile row
constexpr int64_t kTileBytes = 64;
constexpr int64_t kTileCols = 16;  // float32 columns of a C tile, pair columns of a B tile

// C tiles 0-3 and A tiles 4-5 of `rows` rows (16, or a row tail), B tiles 6-7 of 16 pair
// rows, all 64 bytes wide (palette 1). Kernels load it at the start of every call, as other
// code on the thread (oneDNN inside PyTorch, say) may have configured the tiles its own way.
inline void configure_tiles(int rows) {
  amx::Config cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = kTileBytes;
    cfg.rows[t] = t < 6 ? rows : kTileRows;
  }
  amx::configure(cfg);
}

// `buf` grown to hold n values from its first 64-byte boundary on (tile rows loaded from a
// copy then never straddle cache lines); returns that boundary.
template <class T>
T* aligned_64(std::vector<T>& buf, int64_t n) {
  const size_t need = static_cast<size_t>(n) + 64 / sizeof(T);
  if (buf.size() < need) buf.resize(need);
  const auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + (64 - addr % 64) % 64 / sizeof(T);
}

// A chunk's operand: its first tile's rows at `p`, `stride` bytes apart; `next` bytes from
// there to the second tile (A: 16 rows further; B: the next panel).
struct TileOperand {
  const void* p;
  int64_t stride, next;
};

// The product above for chunks q = 0..chunks-1 (a(q), b(q): their operands), stored to `out`
// (float32, ld bytes a row): C tile (r, c) at rows 16r.., columns 16c...
template <int NA, int NB, class AOf, class BOf>
[[gnu::always_inline]] inline void tile_product(int64_t chunks, AOf a, BOf b, float* out,
                                                int64_t ld) {
  amx::zero<0>();
  if constexpr (NB == 2) amx::zero<1>();
  if constexpr (NA == 2) amx::zero<2>();
  if constexpr (NA == 2 && NB == 2) amx::zero<3>();
  for (int64_t q = 0; q < chunks; ++q) {
    const TileOperand ta = a(q), tb = b(q);
    amx::load<4>(ta.p, ta.stride);
    amx::load<6>(tb.p, tb.stride);
    if constexpr (NB == 2) amx::load<7>(static_cast<const char*>(tb.p) + tb.next, tb.stride);
    amx::dot<0, 4, 6>();
    if constexpr (NB == 2) amx::dot<1, 4, 7>();
    if constexpr (NA == 2) {
      amx::load<5>(static_cast<const char*>(ta.p) + ta.next, ta.stride);
      amx::dot<2, 5, 6>();
      if constexpr (NB == 2) amx::dot<3, 5, 7>();
    }
  }
  char* o = reinterpret_cast<char*>(out);
  constexpr int64_t half = kTileRows;  // rows of one C tile
  amx::store<0>(o, ld);
  if constexpr (NB == 2) amx::store<1>(o + kTileCols * sizeof(float), ld);
  if constexpr (NA == 2) amx::store<2>(o + half * ld, ld);
  if constexpr (NA == 2 && NB == 2) amx::store<3>(o + half * ld + kTileCols * sizeof(float), ld);
}

}  // namespace
}  // namespace levit
