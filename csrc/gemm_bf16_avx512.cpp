// gemm_bf16_avx512.cpp — bf16 GEMM block kernel for AVX-512 without AVX512_BF16 (compiled with
// -mavx512f/dq/bw/vl -mfma): bf16 widened to float32, 14×32 tile (28 ZMM accumulators), the
// float32 kernel's shape. Loop and memory plan: gemm_kernel_bf16.h.
#include "gemm_kernel_bf16.h"

namespace levit {

GemmKernelBf16 gemm_kernel_bf16_avx512() {
  return {&gemm_block_bf16<Avx512, Widened, 14, 2>, 14, 32, true,
          "bf16 widened to float32, AVX-512 FMA (the CPU lacks AVX512_BF16)"};
}

}  // namespace levit
