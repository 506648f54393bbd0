// attention_avx2.cpp — fused attention, AVX2 + FMA (compiled with -mavx2 -mfma).
//
// 4 query rows at a time; scores 4 rows × 3 key vectors (12 YMM accumulators) and P·V
// 4 rows × 3 value vectors, leaving room for the loaded K/V vectors and the broadcast within
// the 16 YMM registers. Algorithm and memory plan: attention_kernel.h.
#include "attention_kernel.h"

namespace levit {

AttnKernel attention_kernel_avx2() { return {&attention_task<Avx2, 4, 3, 3>, 4}; }

}  // namespace levit
