// gemm_bf16.h — the bf16 GEMM, MLP and their packed weights: gemm.h's operations with bf16
// inputs, weights, biases, residuals and outputs, products accumulated in float32, the
// epilogue (bias, Hardswish, residual) in float32 and each output rounded to bf16 once
// (bf16.h). Reference: levit_kernels/ops/reference.py::linear / ::mlp.
//
// Packed bf16 weight layout — the pairs AVX512_BF16's vdpbf16ps multiplies, and the same for
// every ISA path (a packed weight stays valid after set_isa): W (N, K) row-major, K made of
// `segments` equal runs (1 for a linear layer; the kernel rows of a convolution, whose patches
// are read one kernel row at a time), each run padded with a zero to an even length; then
// ceil(N/16) panels of Kp = packed_pairs(K, segments) pair rows of 16 columns × 2:
//   packed[((p·Kp + kp)·16 + c)·2 + e] = W[16p + c][k]   for k = s·run + 2·q + e, kp = s·⌈run/2⌉ + q
//   (0 past N, except kColumnPadBits in a padding column's first pair's even element, as
//   gemm.h's kColumnPadMark; kRunPadBits in a run's padding, below).
// A pair row of a panel is 64 bytes, one cache line, like a float32 panel row.
#pragma once

#include <cstdint>

#include "bf16.h"
#include "gemm.h"

namespace levit {

constexpr int64_t kPairWidth = kPanel * 2;  // bf16 values in one pair row of a panel

// Pair rows of a (·, k) weight packed in `segments` runs (k must be a multiple of segments).
inline int64_t packed_pairs(int64_t k, int64_t segments) {
  return segments * ((k / segments + 1) / 2);
}
inline int64_t packed_numel_bf16(int64_t n, int64_t k, int64_t segments) {
  return (n + kPanel - 1) / kPanel * packed_pairs(k, segments) * kPairWidth;
}

// The padding slot of an odd run (the odd element of its last pair, every column) holds this
// finite value rather than 0. The kernels never multiply it by anything but the 0 that pads
// the input's run, so results do not change; it tells a weight packed for an odd run from
// one packed for the next even run, which have the same packed shape (run_padding_matches).
constexpr uint16_t kRunPadBits = 0x7F7F;  // 3.39e38, the largest finite bf16
// The mark of a padding column (past N; gemm.h kColumnPadMark), in its first pair row's even
// element: the same value, in another slot.
constexpr uint16_t kColumnPadBits = 0x7F7F;

// w: (n, k) with row stride ldw; packed: packed_numel_bf16(n, k, segments) values.
void pack_weight(const bf16* w, int64_t n, int64_t k, int64_t ldw, int64_t segments,
                 bf16* packed, int nthreads);

// Whether `packed` was packed for K = k in `segments` runs rather than for a K that differs
// by one per run (same shape): an odd run's padding slots hold kRunPadBits (all 16 columns
// of the first panel are read), an even run has none.
bool run_padding_matches(const bf16* packed, int64_t k, int64_t segments);

// gemm.h's packed_out_features for a bf16 packed weight (`panel_numel` bf16 values a panel).
int64_t packed_out_features(const bf16* packed, int64_t panels, int64_t panel_numel);

// gemm.h's gemm_packed / mlp_packed / gemm_rows_* in bf16 (weights packed with segments = 1,
// except gemm_rows_segments: one per segment, a convolution's kernel rows).
void gemm_packed(const bf16* x, int64_t m, int64_t k, int64_t ldx, const bf16* packed, int64_t n,
                 const bf16* bias, const bf16* residual, int64_t ldr, int act, bf16* out,
                 int64_t ldo, int nthreads);
void mlp_packed(const bf16* x, int64_t m, int64_t c, int64_t ldx, const bf16* w1p,
                const bf16* b1, int64_t ch, const bf16* w2p, const bf16* b2, bf16* out,
                int nthreads);
void gemm_rows_cols(const bf16* a, int64_t lda, int64_t m, int64_t k, const bf16* packed,
                    int64_t j0, int64_t n, const bf16* bias, const bf16* residual, int64_t ldr,
                    int act, bf16* c, int64_t ldc);
void gemm_rows_all(const bf16* a, int64_t lda, int64_t m, int64_t k, const bf16* packed,
                   int64_t n, const bf16* bias, int act, bf16* c, int64_t ldc);
void gemm_rows_segments(const bf16* a, int64_t seg_stride, int64_t nseg, int64_t seg_k,
                        int64_t lda, int64_t m, const bf16* packed, int64_t n, const bf16* bias,
                        int act, bf16* c, int64_t ldc);

// ---- per-ISA block kernels: the bf16 kernel table (gemm_bf16.cpp) ----
// C[0:m, 0:n] for one K block of kc values of k (even, except at the end of a run), like
// GemmBlock. Partial sums of all but the last K block go to `acc` (float32, row stride ldacc);
// first: start from zero (else from acc); last: apply the epilogue and store bf16 to c.
// A is `a` (bf16) for native kernels, or `af`, the same block widened to float32 by the
// driver, for kernels with widened_a (the multiply then is plain float32 FMA). `b` points at
// the block's first pair row of the column block's first panel, panels panel_stride apart.
// nseg > 1 (native kernels only: a convolution's kernel rows read in place): the block is
// nseg runs of kc values, run s's A at a + s·seg_stride and its ⌈kc/2⌉ pair rows after run
// s - 1's, all summed in registers.
struct GemmBlockBf16 {
  const bf16* a;
  const float* af;
  int64_t lda, m, kc;  // lda: row stride of a or af, whichever the kernel reads
  int64_t nseg, seg_stride;
  const bf16* b;
  int64_t panel_stride, n;
  float* acc;
  int64_t ldacc;
  bf16* c;
  int64_t ldc;
  const bf16* bias;
  const bf16* residual;
  int64_t ldr;
  int act;
  bool first, last;
};

struct GemmKernelBf16 {
  void (*block)(const GemmBlockBf16&);
  int mr;           // micro-tile rows
  int nr;           // micro-tile columns (a multiple of kPanel)
  bool widened_a;   // the driver passes A widened to float32 (af)
  const char* how;  // what this path does, for levit_kernels.info()
};

// The kernel table, one entry per ISA path; callers only ever call gemm_kernel_bf16().
GemmKernelBf16 gemm_kernel_bf16_generic();
GemmKernelBf16 gemm_kernel_bf16_avx2();
GemmKernelBf16 gemm_kernel_bf16_avx512();
GemmKernelBf16 gemm_kernel_bf16_avx512bf16();
GemmKernelBf16 gemm_kernel_bf16_amx();
GemmKernelBf16 gemm_kernel_bf16();  // the active ISA's entry
// "<isa>: <how>" of the active bf16 path (levit_kernels.info()).
const char* bf16_path();

}  // namespace levit
