// gemm_bf16_avx2.cpp — bf16 GEMM block kernel for AVX2 + FMA (compiled with -mavx2 -mfma):
// bf16 widened to float32, 6×16 tile (12 YMM accumulators, two W vectors and a broadcast),
// the float32 kernel's shape. Loop and memory plan: gemm_kernel_bf16.h.
#include "gemm_kernel_bf16.h"

namespace levit {

GemmKernelBf16 gemm_kernel_bf16_avx2() {
  return {&gemm_block_bf16<Avx2, Widened, 6, 2>, 6, 16, true,
          "bf16 widened to float32, AVX2 FMA (no bf16 dot-product instruction on this path)"};
}

}  // namespace levit
