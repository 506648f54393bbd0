// gemm_avx512.cpp — AVX-512 GEMM block kernel (compiled with -mavx512f/dq/bw/vl -mfma).
//
// Micro-tile 14×32: 28 ZMM accumulators + 2 for the packed-W row (two 16-wide panels) = 30 of
// 32 registers; A is broadcast from memory inside the FMA. See gemm_kernel.h.
#include "gemm_kernel.h"

namespace levit {

GemmKernel gemm_kernel_avx512() { return {&gemm_block<Avx512, 14, 2>, 14, 32}; }

}  // namespace levit
