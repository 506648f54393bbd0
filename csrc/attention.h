// attention.h — LeViT attention with a per-head additive bias, fused into one pass:
//   out[b, i, h*Dv : (h+1)*Dv] = act( softmax_j(scale · q[b,h,i]·k[b,h,j] + bias[h,i,j]) · v[b,h] )
// and the probabilities-only variant (out = softmax(...) as (B, H, Nq, Nk)).
//
// q/k/v are addressed through batch/head/token strides with unit stride on the feature dim,
// so they can be views of a packed qkv projection (B, N, H, Dk+Dk+Dv) without any copy.
#pragma once

#include <cstdint>

namespace levit {

struct AttnArgs {
  const float* q;
  const float* k;
  const float* v;      // unused for probabilities
  const float* bias;   // (H, Nq, Nk) contiguous
  int64_t batch, heads, nq, nk, dk, dv;
  int64_t q_sb, q_sh, q_sn;  // strides (elements) over batch, head, token
  int64_t k_sb, k_sh, k_sn;
  int64_t v_sb, v_sh, v_sn;
  float scale;
  bool hardswish;
  bool probs;          // true: write softmax probabilities (B, H, Nq, Nk) instead
  float* out;          // (B, Nq, H*Dv) or (B, H, Nq, Nk), contiguous
};

// Runs the whole op on up to nthreads threads (tasks = batch × head × query chunk).
void attention(const AttnArgs& args, int nthreads);

// ---- per-ISA task kernels (attention.cpp: generic; attention_avx2.cpp; attention_avx512.cpp)
// One task: batch b, head h, query rows [i0, i1). `next` (or null) is the task this thread
// will probably run next: its q/k/v rows are prefetched into L2 while this one computes
// (rows of a packed qkv tensor are too far apart for the hardware prefetchers).
struct AttnTask {
  int64_t b, h, i0, i1;
};

struct AttnKernel {
  void (*task)(const AttnArgs&, const AttnTask& cur, const AttnTask* next);
  int rows;  // query rows processed together; chunks are multiples of this
};

AttnKernel attention_kernel_generic();
AttnKernel attention_kernel_avx2();
AttnKernel attention_kernel_avx512();

}  // namespace levit
