// gemm_amxbf16.cpp — bf16 GEMM block kernel on AMX tiles (AMX-TILE + AMX-BF16: tdpbf16ps;
// compiled with the AVX512_BF16 file's flags plus -mamx-tile -mamx-bf16; only called where
// CPUID reports AMX-BF16 and Linux granted the process its tile state, cpu_features.cpp).
//
//   C[16×16] += A[16 rows × 32 k] · W[32 k × 16 columns]      one tdpbf16ps (8192 products)
//
// Operands straight from memory, no repacking:
//   A tile: 16 rows of A, 32 consecutive k of each (64 bytes), rows lda apart — A as it lies.
//   B tile: 16 pair rows of one packed panel (gemm_bf16.h): pair row q holds
//           (W[2q, c], W[2q+1, c]) for its 16 columns c, 64 bytes, rows 64 bytes apart — the
//           pair-interleaved layout tdpbf16ps reads, the same as vdpbf16ps'.
// A group of up to 32 rows × 32 columns keeps 4 C tiles (tiles 0-3) for the whole K block, with
// 2 A tiles (4-5) and 2 B tiles (6-7) loaded per 32 k: 4 tdpbf16ps per 4 tile loads.
//
// What the tiles cannot read in place, so that nothing outside A's runs or W's block is read:
//   K: the chunks past a run's last whole 32 values (all of an odd run's end, whose lone last
//      value pairs with the padding slot) come from a zero-padded copy of those A values, and
//      a last partial chunk of W's pair rows from a zero-padded copy; the padding slot's
//      kRunPadBits then meets A's 0 (0·finite = 0). A convolution's kernel rows (nseg runs,
//      whose pair rows follow one another in the packed weight) are copied one after the
//      other into that buffer, a 3×3 RGB patch's 27 values into one chunk instead of three.
//   rows: the last m % 16 rows run in tiles configured with that many rows, which load and
//      store no others.
//   columns: a tile's 16 columns are a whole panel (columns past n are zero weights); only
//      the valid ones are stored.
// Sums leave the tiles through a 32×32 float32 scratch, where gemm_kernel_bf16.h's
// finish_vector adds earlier K blocks' partial sums or applies the epilogue and rounds to
// bf16 — the same code as the register-tiled kernels.
//
// tdpbf16ps, like vdpbf16ps, treats denormal inputs as zero and flushes denormal results;
// rounding of the outputs as in gemm_avx512bf16.cpp. Reference:
// levit_kernels/ops/reference.py::linear.
#include <vector>

#include "gemm_kernel_bf16.h"

#if defined(LEVIT_EMULATE_AVX512)
#include "amx_emulation.h"  // test builds: the tile instructions in plain C++
#else
namespace levit {
namespace {
namespace amx {
// The intrinsics take the tile number as an immediate: one instantiation per tile.
struct Config {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
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
constexpr int64_t kChunkW = kTileRows * kPairWidth;  // values of one panel's chunk of W

// C tiles 0-3 and A tiles 4-5 of `rows` rows (16, or a row tail), B tiles 6-7 of 16 pair
// rows, all 64 bytes wide (palette 1). Loaded at the start of every block, as other code on
// this thread (oneDNN inside PyTorch, say) may have configured the tiles its own way.
void configure_tiles(int rows) {
  amx::Config cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = kTileBytes;
    cfg.rows[t] = t < 6 ? rows : kTileRows;
  }
  amx::configure(cfg);
}

// The block's K as chunks of 32 values: the first `in_place` of them read from A where it
// lies, the rest from `copy` (zero-padded, ldcopy values a row); W's chunks in place but for
// a last partial one, copied zero-padded per panel into `w_tail`.
struct Operands {
  int64_t chunks, in_place, w_in_place;
  std::vector<bf16> copy, w_tail;
  int64_t ldcopy;
};

// Copies n values (masked 64-byte moves: nothing past src + n is read), or zeroes n values.
inline __mmask32 first_of_32(int64_t n) {
  return n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1;
}
inline void copy_values(bf16* dst, const bf16* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 32) {
    const __mmask32 m = first_of_32(n - i);
    _mm512_mask_storeu_epi16(dst + i, m, _mm512_maskz_loadu_epi16(m, src + i));
  }
}
inline void zero_values(bf16* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += 32)
    _mm512_mask_storeu_epi16(dst + i, first_of_32(n - i), _mm512_setzero_si512());
}

void prepare(const GemmBlockBf16& g, int64_t panels, Operands& op) {
  const int64_t run_pairs = (g.kc + 1) / 2, pairs = g.nseg * run_pairs;
  op.chunks = (pairs + kTileRows - 1) / kTileRows;
  op.in_place = g.nseg == 1 ? g.kc / kTileK : 0;
  op.w_in_place = pairs / kTileRows;
  op.ldcopy = (op.chunks - op.in_place) * kTileK;
  if (op.ldcopy > 0) {
    if (static_cast<int64_t>(op.copy.size()) < g.m * op.ldcopy) op.copy.resize(g.m * op.ldcopy);
    // Row i: each run's values not read in place, its odd end's padding slot zeroed, then
    // zeros to the end of the last chunk.
    const int64_t skip = op.in_place * kTileK, values = g.kc - skip, filled = 2 * pairs - skip;
    for (int64_t i = 0; i < g.m; ++i) {
      bf16* row = op.copy.data() + i * op.ldcopy;
      for (int64_t s = 0; s < g.nseg; ++s) {
        bf16* run = row + 2 * s * run_pairs;
        copy_values(run, g.a + s * g.seg_stride + i * g.lda + skip, values);
        if (values % 2) run[values] = bf16{0};
      }
      zero_values(row + filled, op.ldcopy - filled);
    }
  }
  if (op.w_in_place < op.chunks) {
    const int64_t tail = (pairs - op.w_in_place * kTileRows) * kPairWidth;
    if (static_cast<int64_t>(op.w_tail.size()) < panels * kChunkW) op.w_tail.resize(panels * kChunkW);
    for (int64_t p = 0; p < panels; ++p) {
      bf16* dst = op.w_tail.data() + p * kChunkW;
      copy_values(dst, g.b + p * g.panel_stride + op.w_in_place * kChunkW, tail);
      zero_values(dst + tail, kChunkW - tail);
    }
  }
}

// Rows i..i+rows (at most 16·NA), panels p..p+NB of the block: every chunk into the C
// tiles, then the epilogue on the valid columns.
template <int NA, int NB>
void group(const GemmBlockBf16& g, int64_t i, int rows, int64_t p, const Operands& op) {
  amx::zero<0>();
  if constexpr (NB == 2) amx::zero<1>();
  if constexpr (NA == 2) amx::zero<2>();
  if constexpr (NA == 2 && NB == 2) amx::zero<3>();
  for (int64_t q = 0; q < op.chunks; ++q) {
    const bool a_here = q < op.in_place;
    const bf16* a = a_here ? g.a + i * g.lda + q * kTileK
                           : op.copy.data() + i * op.ldcopy + (q - op.in_place) * kTileK;
    const int64_t lda = a_here ? g.lda : op.ldcopy;  // values
    const bool w_here = q < op.w_in_place;
    const bf16* b = w_here ? g.b + p * g.panel_stride + q * kChunkW : op.w_tail.data() + p * kChunkW;
    const int64_t panel = w_here ? g.panel_stride : kChunkW;
    amx::load<4>(a, 2 * lda);
    amx::load<6>(b, kTileBytes);
    if constexpr (NB == 2) amx::load<7>(b + panel, kTileBytes);
    amx::dot<0, 4, 6>();
    if constexpr (NB == 2) amx::dot<1, 4, 7>();
    if constexpr (NA == 2) {
      amx::load<5>(a + kTileRows * lda, 2 * lda);
      amx::dot<2, 5, 6>();
      if constexpr (NB == 2) amx::dot<3, 5, 7>();
    }
  }
  alignas(64) float sums[2 * kTileRows][2 * kPanel];
  constexpr int64_t ld = sizeof(sums[0]);
  amx::store<0>(&sums[0][0], ld);
  if constexpr (NB == 2) amx::store<1>(&sums[0][kPanel], ld);
  if constexpr (NA == 2) amx::store<2>(&sums[kTileRows][0], ld);
  if constexpr (NA == 2 && NB == 2) amx::store<3>(&sums[kTileRows][kPanel], ld);
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NB; ++v) {
      const int64_t col = (p + v) * kPanel, valid = g.n - col;
      if (valid > 0)
        finish_vector<Avx512Bf16>(g, i + r, col, Avx512Bf16::load(&sums[r][v * kPanel]),
                                  valid >= kPanel, valid);
    }
}

// Rows i.. of the block in groups of `rows` (32: two A tiles; 16 or fewer: one), every panel.
template <int NA>
void row_groups(const GemmBlockBf16& g, int64_t i, int64_t end, int rows, int64_t panels,
                const Operands& op) {
  for (; i + rows <= end; i += rows)
    for (int64_t p = 0; p < panels; p += 2) {
      if (p + 1 < panels) group<NA, 2>(g, i, rows, p, op);
      else group<NA, 1>(g, i, rows, p, op);
    }
}

void amx_block(const GemmBlockBf16& g) {
  const int64_t panels = (g.n + kPanel - 1) / kPanel;
  thread_local Operands op;
  prepare(g, panels, op);
  // Panels inner: the rows' A tiles are reloaded from L1 for each pair of panels, W's strips
  // (kc/2 pair rows × 16 columns each, <= 16 KiB) from L2.
  const int64_t pairs = g.m / (2 * kTileRows) * (2 * kTileRows);
  const int tail = static_cast<int>(g.m % kTileRows);
  configure_tiles(kTileRows);
  row_groups<2>(g, 0, pairs, 2 * kTileRows, panels, op);
  row_groups<1>(g, pairs, g.m - tail, kTileRows, panels, op);
  if (tail) {
    configure_tiles(tail);
    row_groups<1>(g, g.m - tail, g.m, tail, panels, op);
  }
}

}  // namespace

GemmKernelBf16 gemm_kernel_bf16_amx() {
  return {&amx_block, 2 * kTileRows, 2 * kPanel, false,
          "AMX tiles (tdpbf16ps, float32 accumulation; row tails on vdpbf16ps)"};
}

}  // namespace levit
