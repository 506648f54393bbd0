// gemm_bf16_avx512.cpp — bf16 GEMM block kernel for AVX-512 without AVX512_BF16 (compiled with
// -mavx512f/dq/bw/vl -mfma): bf16 widened to float32, 12×32 tile (24 ZMM accumulators). Loop
// and memory plan: gemm_kernel_bf16.h.
//
// Why 12 rows where the float32 kernel has 14: as on AVX2 (gemm_bf16_avx2.cpp), the widened
// loop's odd-element mask is one register more, and with 28 accumulators GCC 12 kept ~14 of
// them on the stack, reloaded every pair step (the disassembly's main loop: 29 stack accesses
// per 56 FMAs); 13 rows still spilled, 12 do not. Measured on AVX2 only (the same cause there
// cost 1.20-1.26x); no AVX-512 CPU without AVX512_BF16 was at hand.
#include "gemm_kernel_bf16.h"

namespace levit {

GemmKernelBf16 gemm_kernel_bf16_avx512() {
  return {&gemm_block_bf16<Avx512, Widened, 12, 2>, 12, 32, true,
          "bf16 widened to float32, AVX-512 FMA (the CPU lacks AVX512_BF16)"};
}

}  // namespace levit
