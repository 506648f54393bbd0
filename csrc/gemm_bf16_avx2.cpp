// gemm_bf16_avx2.cpp — bf16 GEMM block kernel for AVX2 + FMA (compiled with -mavx2 -mfma):
// bf16 widened to float32, 5×16 tile. Loop and memory plan: gemm_kernel_bf16.h.
//
// Why 5 rows where the float32 kernel has 6: the widened loop needs one register more than
// float32's, the mask that splits off the odd elements, and 12 accumulators + 2 W vectors +
// the mask + a broadcast is all 16 YMM registers with none to spare. GCC 12 then kept 4 of
// the 6×16 tile's accumulators on the stack, stored and reloaded every pair step (seen in the
// disassembly). 10 accumulators fit: 1.20-1.26x the 6×16 tile's GFLOP/s on LeViT's GEMM
// shapes (Zen 3, 1 thread, in-process A/B; benchmarks/README.md), bit-identical results.
#include "gemm_kernel_bf16.h"

namespace levit {

GemmKernelBf16 gemm_kernel_bf16_avx2() {
  return {&gemm_block_bf16<Avx2, Widened, 5, 2>, 5, 16, true,
          "bf16 widened to float32, AVX2 FMA (no bf16 dot-product instruction on this path)"};
}

}  // namespace levit
