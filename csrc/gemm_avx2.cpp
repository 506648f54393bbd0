// gemm_avx2.cpp — AVX2 + FMA GEMM block kernel (compiled with -mavx2 -mfma).
//
// Micro-tile 6×16: 12 YMM accumulators + 2 for the packed-W row + 1 broadcast = 15 of the 16
// registers (the classic BLIS Haswell shape). See gemm_kernel.h for the loop and memory plan.
#include "gemm_kernel.h"

namespace levit {

GemmKernel gemm_kernel_avx2() { return {&gemm_block<Avx2, 6, 2>, 6, 16}; }

}  // namespace levit
