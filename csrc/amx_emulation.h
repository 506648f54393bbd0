// amx_emulation.h — TEST BUILDS ONLY: the AMX tile operations gemm_amxbf16.cpp uses, in plain
// C++ on a thread's own eight 1 KiB tiles, so the AMX path's logic (chunking, K tails, row
// tails, column validity, partial sums) runs on CPUs without AMX under the emulated build
// (avx512_emulation.h, CMake LEVIT_EMULATE_AVX512).
//
// What it does not check: speed, and the real instructions' details beyond the ones named
// here. tdpbf16ps: C[m][n] += A[m][2k]·B[k][2n] + A[m][2k+1]·B[k][2n+1] over the configured
// k, in float32; denormals are kept where the instruction flushes them. Tile rows are read
// and written only for the configured rows and bytes, as the hardware does.
#pragma once

#include <cstdint>
#include <cstring>

#include "bf16.h"

namespace levit {
namespace {
namespace amx {

// Config: amx_tiles.h, which includes this file.
struct Tiles {
  alignas(64) unsigned char data[8][16][64];
  Config cfg;
};
inline Tiles& tiles() {
  thread_local Tiles t;
  return t;
}

inline void configure(const Config& cfg) {
  tiles().cfg = cfg;
  std::memset(tiles().data, 0, sizeof(tiles().data));  // as ldtilecfg zeroes the tiles
}
template <int T> inline void zero() { std::memset(tiles().data[T], 0, sizeof(tiles().data[T])); }
template <int T> inline void load(const void* p, int64_t stride) {
  const Config& c = tiles().cfg;
  for (int r = 0; r < c.rows[T]; ++r)
    std::memcpy(tiles().data[T][r], static_cast<const char*>(p) + r * stride, c.colsb[T]);
}
template <int T> inline void store(void* p, int64_t stride) {
  const Config& c = tiles().cfg;
  for (int r = 0; r < c.rows[T]; ++r)
    std::memcpy(static_cast<char*>(p) + r * stride, tiles().data[T][r], c.colsb[T]);
}
template <int C, int A, int B> inline void dot() {
  const Config& cfg = tiles().cfg;
  for (int m = 0; m < cfg.rows[C]; ++m)
    for (int n = 0; n < cfg.colsb[C] / 4; ++n) {
      float c;
      std::memcpy(&c, tiles().data[C][m] + 4 * n, 4);
      for (int k = 0; k < cfg.colsb[A] / 4; ++k)
        for (int e = 0; e < 2; ++e) {
          bf16 a, b;
          std::memcpy(&a, tiles().data[A][m] + 4 * k + 2 * e, 2);
          std::memcpy(&b, tiles().data[B][k] + 4 * n + 2 * e, 2);
          c += to_float(a) * to_float(b);
        }
      std::memcpy(tiles().data[C][m] + 4 * n, &c, 4);
    }
}

}  // namespace amx
}  // namespace
}  // namespace levit
