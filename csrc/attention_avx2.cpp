// attention_avx2.cpp — fused attention, AVX2 + FMA (compiled with -mavx2 -mfma).
//
// 6 query rows at a time, the GEMM's 6×16 tile: scores 6 rows × 2 key vectors (12 YMM
// accumulators) and P·V 6 rows × 2 value vectors, leaving room for the two loaded K/V vectors
// and the broadcast within the 16 YMM registers. It beat 4 rows × 3 vectors at every LeViT
// shape, most on the 49- and 16-token ones (Dv = 64 splits into 2+2+2+2 vectors, not 3+3+2);
// the measurement is in benchmarks/README.md.
// Algorithm and memory plan: attention_kernel.h.
#include "attention_kernel.h"

namespace levit {

AttnKernel attention_kernel_avx2() { return {&attention_task<Avx2, float, 6, 2, 2>, 6}; }
AttnKernelT<bf16> attention_kernel_bf16_avx2() { return {&attention_task<Avx2, bf16, 6, 2, 2>, 6}; }

}  // namespace levit
