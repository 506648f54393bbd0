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
//   columns: a tile's 16 columns are a whole panel; columns past n (zeros and one marker
//      value, gemm_bf16.h) get sums that are never stored: only the valid ones are.
// Sums leave the tiles through a 32×32 float32 scratch, where gemm_kernel_bf16.h's
// finish_vector adds earlier K blocks' partial sums or applies the epilogue and rounds to
// bf16 — the same code as the register-tiled kernels.
//
// tdpbf16ps, like vdpbf16ps, treats denormal inputs as zero and flushes denormal results;
// rounding of the outputs as in gemm_avx512bf16.cpp. Reference:
// levit_kernels/ops/reference.py::linear.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "amx_tiles.h"
#include "gemm_kernel_bf16.h"

namespace levit {
namespace {

constexpr int64_t kChunkW = kTileRows * kPairWidth;  // values of one panel's chunk of W

// Where a copied row's values come from: per 64-byte piece of the row, the masked loads
// that fill it, each selecting the lanes of one run (lanes outside a run are neither read nor
// faulted on) from the row's start in A plus `offset` bytes. The same for every row of a
// block, so worked out once per block; a row is then assembled piece by piece in a register
// and stored whole: a masked store per run at its odd offsets made the first stem
// convolution (runs of 9 values) take 1.15x as long (in-process A/B against the avx512 path,
// the AMX Xeon of this file's numbers).
struct RowLoad {
  __mmask32 lanes;
  int64_t offset;  // bytes from the row's first value in A (negative before it)
  bool last;       // the piece's last load: store it
};

// The block's K as chunks of 32 values: the first `in_place` of them read from A where it
// lies, the rest from `copy` (zero-padded, ldcopy values a row, rows 64-byte aligned); W's
// chunks in place but for a last partial one, copied zero-padded per panel into `w_tail`.
struct Operands {
  int64_t chunks, in_place, w_in_place;
  std::vector<bf16> copy_buffer, w_tail;
  std::vector<RowLoad> row_loads;  // how each copied row is assembled
  bf16* copy;
  int64_t ldcopy;
};

inline __mmask32 lanes(int64_t lo, int64_t hi) {  // bits [lo, hi) of 32, 0 <= lo <= hi <= 32
  const uint64_t below_hi = (uint64_t{1} << hi) - 1, below_lo = (uint64_t{1} << lo) - 1;
  return static_cast<__mmask32>(below_hi & ~below_lo);
}

// `runs` runs of n values, run s at a + s·seg_stride, to row offset 2·s·stride (stride: the
// run's pair count), zeros elsewhere, in pieces of 32 values.
void plan_row_loads(int64_t pieces, int64_t seg_stride, int64_t runs, int64_t n, int64_t stride,
                    std::vector<RowLoad>& loads) {
  loads.clear();
  for (int64_t c = 0; c < pieces; ++c) {
    const int64_t first = 32 * c;
    const size_t before = loads.size();
    for (int64_t s = 0; s < runs; ++s) {
      const int64_t at = 2 * s * stride;  // the run's first lane in the row
      const int64_t lo = std::max(at, first), hi = std::min(at + n, first + 32);
      if (lo < hi)  // lane L of the piece holds run s's value first + L - at
        loads.push_back({lanes(lo - first, hi - first), 2 * (s * seg_stride + first - at), false});
    }
    if (loads.size() == before) loads.push_back({0, 0, false});  // a piece of zeros only
    loads.back().last = true;
  }
}

inline void gather_row(bf16* dst, const bf16* a, const std::vector<RowLoad>& loads) {
  const char* base = reinterpret_cast<const char*>(a);
  __m512i v = _mm512_setzero_si512();
  for (const RowLoad& l : loads) {
    v = _mm512_mask_loadu_epi16(v, l.lanes, base + l.offset);
    if (l.last) {
      _mm512_storeu_si512(dst, v);
      dst += kTileK;
      v = _mm512_setzero_si512();
    }
  }
}

void prepare(const GemmBlockBf16& g, int64_t panels, Operands& op) {
  const int64_t run_pairs = (g.kc + 1) / 2, pairs = g.nseg * run_pairs;
  op.chunks = (pairs + kTileRows - 1) / kTileRows;
  op.in_place = g.nseg == 1 ? g.kc / kTileK : 0;
  op.w_in_place = pairs / kTileRows;
  op.ldcopy = (op.chunks - op.in_place) * kTileK;
  if (op.ldcopy > 0) {
    op.copy = aligned_64(op.copy_buffer, g.m * op.ldcopy);
    // Row i: the values of each run not read in place (nseg == 1: past the whole chunks).
    const int64_t skip = op.in_place * kTileK, pieces = op.ldcopy / kTileK;
    plan_row_loads(pieces, g.seg_stride, g.nseg, g.kc - skip, run_pairs, op.row_loads);
    for (int64_t i = 0; i < g.m; ++i)
      gather_row(op.copy + i * op.ldcopy, g.a + i * g.lda + skip, op.row_loads);
  }
  if (op.w_in_place < op.chunks) {
    const int64_t tail = pairs - op.w_in_place * kTileRows;  // pair rows
    if (static_cast<int64_t>(op.w_tail.size()) < panels * kChunkW) op.w_tail.resize(panels * kChunkW);
    for (int64_t p = 0; p < panels; ++p) {
      const bf16* src = g.b + p * g.panel_stride + op.w_in_place * kChunkW;
      bf16* dst = op.w_tail.data() + p * kChunkW;
      std::copy(src, src + tail * kPairWidth, dst);
      std::fill(dst + tail * kPairWidth, dst + kChunkW, bf16{0});
    }
  }
}

// Rows i..i+rows (at most 16·NA), panels p..p+NB of the block: every chunk into the C
// tiles, then the epilogue on the valid columns.
template <int NA, int NB>
void group(const GemmBlockBf16& g, int64_t i, int rows, int64_t p, const Operands& op) {
  alignas(64) float sums[2 * kTileRows][2 * kPanel];
  tile_product<NA, NB>(
      op.chunks,
      [&](int64_t q) -> TileOperand {
        if (q < op.in_place) return {g.a + i * g.lda + q * kTileK, 2 * g.lda, kTileRows * 2 * g.lda};
        return {op.copy + i * op.ldcopy + (q - op.in_place) * kTileK, 2 * op.ldcopy,
                kTileRows * 2 * op.ldcopy};
      },
      [&](int64_t q) -> TileOperand {
        if (q < op.w_in_place)
          return {g.b + p * g.panel_stride + q * kChunkW, kTileBytes, 2 * g.panel_stride};
        return {op.w_tail.data() + p * kChunkW, kTileBytes, 2 * kChunkW};
      },
      &sums[0][0], sizeof(sums[0]));
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
          "AMX tiles (tdpbf16ps, float32 accumulation) for the GEMMs, convolutions and "
          "attention"};
}

}  // namespace levit
