// attention_avx512.cpp — fused attention, AVX-512 (compiled with -mavx512f/dq/bw/vl -mfma).
//
// 6 query rows at a time; scores 6 rows × 4 key vectors (24 ZMM accumulators, 64 keys) and
// P·V 6 rows × 4 value vectors (64 channels: LeViT's Dv = 64 in one pass, 128 in two), within
// the 32 ZMM registers. Algorithm and memory plan: attention_kernel.h.
#include "attention_kernel.h"

namespace levit {

AttnKernel attention_kernel_avx512() { return {&attention_task<Avx512, float, 6, 4, 4>, 6}; }
AttnKernelT<bf16> attention_kernel_bf16_avx512() {
  return {&attention_task<Avx512, bf16, 6, 4, 4>, 6};
}

}  // namespace levit
