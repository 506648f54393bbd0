// gemm.h — C = act(A·Wᵀ + bias) + residual with pre-packed weights, and LeViT's residual MLP.
// Reference: levit_kernels/ops/reference.py::linear / ::mlp; the GPU kernels of the same ops:
// levit_kernels/ops/gpu/linear.py.
//
// Packed weight layout (ISA-independent, so a weight packed under one ISA is valid under every
// other): W (N,K) row-major becomes ceil(N/16) panels of shape (K, 16), padded past N:
//   packed[p*K*16 + k*16 + c] = W[p*16 + c][k]   (p*16 + c < N)
//                             = kColumnPadMark     (p*16 + c >= N, k = 0), else 0.
// A micro-kernel reads one or two panels row by row (16 or 32 contiguous floats per k).
#pragma once

#include <cstdint>

#include "bf16.h"

namespace levit {

constexpr int64_t kPanel = 16;  // packed panel width

enum Act : int { kActNone = 0, kActHardswish = 1 };

inline int64_t packed_numel(int64_t n, int64_t k) { return (n + kPanel - 1) / kPanel * kPanel * k; }

// The first K row of every padding column (past N, in the last panel) holds this finite value
// (the largest float) rather than 0: N and any N' with the same number of panels give the
// same packed shape, and the marks tell them apart (packed_out_features), so a packed op told
// the wrong number of output features refuses instead of dropping columns or adding zero
// ones. The kernels compute padding columns but never store them: the value changes nothing.
constexpr uint32_t kColumnPadMark = 0x7F7FFFFFu;  // float32 bits; bf16: kColumnPadBits

// w: (n, k) with row stride ldw; packed: packed_numel(n, k) floats.
void pack_weight(const float* w, int64_t n, int64_t k, int64_t ldw, float* packed, int nthreads);

// N of a weight packed by pack_weight, from the marks of its padding columns: panels·16 less
// the marked columns at the end of the last panel's first row. `panel_numel`: values per
// panel. (A real weight of exactly the mark's value in the last real column of that row
// would read as padding.)
int64_t packed_out_features(const float* packed, int64_t panels, int64_t panel_numel);

// out (m, n; row stride ldo) = act(x·Wᵀ + bias) + residual.
// x: (m, k), row stride ldx. bias: (n) or null. residual: (m, n), row stride ldr, or null.
// out must not overlap x or the packed weight (it may alias residual when ldr == ldo).
void gemm_packed(const float* x, int64_t m, int64_t k, int64_t ldx, const float* packed, int64_t n,
                 const float* bias, const float* residual, int64_t ldr, int act, float* out,
                 int64_t ldo, int nthreads);

// out (m, c) = x + (hardswish(x·W1ᵀ + b1))·W2ᵀ + b2, W1 (ch, c) and W2 (c, ch) packed.
// x has row stride ldx, out is contiguous. Row blocks of x are processed independently; the
// hidden block never leaves the thread's cache-resident scratch buffer.
void mlp_packed(const float* x, int64_t m, int64_t c, int64_t ldx, const float* w1p,
                const float* b1, int64_t ch, const float* w2p, const float* b2, float* out,
                int nthreads);

// out (B, Ho, Wo, cout), NHWC contiguous = act(conv2d(x) + bias) for x (B, H, W, cin) given by
// any strides (NHWC or NCHW memory alike), a kh×kw kernel, one stride and zero padding on all
// sides: Ho = (H + 2·pad - kh) / stride + 1. The weight (cout, cin, kh, kw) is packed as the
// (cout, kh·kw·cin) matrix of its (cout, kh, kw, cin) permutation (bf16: in kh runs of kw·cin,
// gemm_bf16.h). An implicit GEMM: each thread gathers the patches of a block of output pixels
// into a cache-resident buffer and multiplies it by the packed weight (conv.cpp).
// T is float or bf16 (bf16.h) for x, the weight, the bias and out alike.
template <class T>
struct ConvArgsT {
  const T* x;
  int64_t batch, h, w, cin;
  int64_t sb, sh, sw, sc;  // strides of x (elements) over batch, row, column, channel
  int64_t kh, kw, stride, pad;
  const T* packed;
  int64_t cout;
  const T* bias;  // (cout) or null
  int act;
  T* out;
};
using ConvArgs = ConvArgsT<float>;
void conv2d_packed(const ConvArgsT<float>& args, int nthreads);
void conv2d_packed(const ConvArgsT<bf16>& args, int nthreads);

// The stem inside a forward Program (forward.h): the same convolution on NHWC input that is
// already zero-padded, so no patch is ever gathered. For one output row and kernel row ky, the
// kw·cin patch values of consecutive output pixels are one contiguous run of the padded input
// row, `stride`·cin values apart: a strided matrix the GEMM block kernels read in place, one
// K segment per kernel row (gemm_rows_segments).
template <class T>
struct PaddedConvArgsT {
  const T* x;  // (batch, hp, wp, cin) NHWC, contiguous, borders of the conv's padding zero
  int64_t batch, hp, wp, cin, kernel, stride;
  const T* packed;  // as for conv2d_packed
  int64_t cout;
  const T* bias;  // (cout) or null
  int act;
  T* out;           // (batch, ho + 2·out_pad, wo + 2·out_pad, cout), ho = (hp - kernel)/stride + 1
  int64_t out_pad;  // a zero border for the next convolution (written here)
};
using PaddedConvArgs = PaddedConvArgsT<float>;
void conv2d_padded(const PaddedConvArgsT<float>& args, int nthreads);
void conv2d_padded(const PaddedConvArgsT<bf16>& args, int nthreads);

// out (B, h + 2·pad, w + 2·pad, c) contiguous with a zero border = x (B, h, w, c) given by any
// element strides (NCHW images in place).
template <class T>
void pad_nhwc(const T* x, int64_t batch, int64_t h, int64_t w, int64_t c, int64_t sb, int64_t sh,
              int64_t sw, int64_t sc, int64_t pad, T* out, int nthreads);

// Building blocks shared by the GEMM drivers (gemm.cpp, gemm_bf16.cpp, conv.cpp), for
// T = float and T = bf16 (gemm_bf16.h has the bf16 overloads).
struct GemmTile {
  int mr, nr;  // the active path's micro-tile
};
template <class T>
GemmTile gemm_tile();
constexpr int64_t kGemmColumnBlock = 128;  // columns of one task (a multiple of every nr)
template <class T>
int64_t gemm_row_block() {  // rows per thread task (a multiple of the tile height), ~96-112
  const int64_t mr = gemm_tile<T>().mr;
  return mr * (96 / mr > 1 ? 96 / mr : 1);
}
int64_t padded_stride(int64_t cols);   // a scratch row stride >= cols that never aliases in L1
// "<isa>: <what runs>" of the active float32 path (levit_kernels.info(); bf16: bf16_path()).
const char* float32_path();
// C[0:m, j0:j0+n] = act(A·W + bias) + residual for one block of rows, single-threaded (c,
// bias and residual point at column 0).
void gemm_rows_cols(const float* a, int64_t lda, int64_t m, int64_t k, const float* packed,
                    int64_t j0, int64_t n, const float* bias, const float* residual,
                    int64_t ldr, int act, float* c, int64_t ldc);
// C[0:m, 0:n] = act(A·W + bias) for one block of rows, single-threaded.
void gemm_rows_all(const float* a, int64_t lda, int64_t m, int64_t k, const float* packed,
                   int64_t n, const float* bias, int act, float* c, int64_t ldc);
// The same with K in `nseg` segments of seg_k: segment s is the (m × seg_k) matrix at
// a + s·seg_stride (row stride lda), times rows [s·seg_k, (s+1)·seg_k) of the packed weight
// (K = nseg·seg_k): the kernel rows of a convolution, read in place from its padded input.
void gemm_rows_segments(const float* a, int64_t seg_stride, int64_t nseg, int64_t seg_k,
                        int64_t lda, int64_t m, const float* packed, int64_t n,
                        const float* bias, int act, float* c, int64_t ldc);

// ---- per-ISA block kernels (gemm.cpp: generic, gemm_avx2.cpp, gemm_avx512.cpp) ----
// Computes C[0:m, 0:n] (+)= A[0:m, 0:kc]·B for one K block. `b` points at row k0 of the first
// panel of the column block; panels are `panel_stride` floats apart. first: C is overwritten
// (else accumulated). last: apply the epilogue (bias[0:n], hardswish, residual rows with
// stride ldr), each pointer already offset to the block's origin; null = absent.
// nseg > 1: the block is nseg K segments of kc each, segment s's A at a + s·seg_stride and
// its B rows after segment s - 1's, all summed in registers before one store (a convolution's
// kernel rows: the stem's first one has 9 values a row, too few to pay for a C round trip
// per row). nseg = 1: one plain K block.
struct GemmBlock {
  const float* a;
  int64_t lda, m, kc;
  int64_t nseg, seg_stride;
  const float* b;
  int64_t panel_stride, n;
  float* c;
  int64_t ldc;
  const float* bias;
  const float* residual;
  int64_t ldr;
  int act;
  bool first, last;
};

struct GemmKernel {
  void (*block)(const GemmBlock&);
  int mr;  // micro-tile rows: blocks of m are multiples of this
  int nr;  // micro-tile columns (a multiple of kPanel)
};

GemmKernel gemm_kernel_generic();
GemmKernel gemm_kernel_avx2();
GemmKernel gemm_kernel_avx512();

}  // namespace levit
