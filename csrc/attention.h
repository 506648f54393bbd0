// attention.h — LeViT attention with a per-head additive bias, fused into one pass:
//   out[b, i, h*Dv : (h+1)*Dv] = act( softmax_j(scale · q[b,h,i]·k[b,h,j] + bias[h,i,j]) · v[b,h] )
// and the probabilities-only variant (out = softmax(...) as (B, H, Nq, Nk)).
// Reference: levit_kernels/ops/reference.py::attention / ::attention_probs; the GPU kernel of
// the same op: levit_kernels/ops/gpu/attention.py.
//
// q/k/v are addressed through batch/head/token strides with unit stride on the feature dim,
// so they can be views of a packed qkv projection (B, N, H, Dk+Dk+Dv) without any copy.
//
// T is float or bf16 (bf16.h) for q, k, v, bias and out alike. bf16 inputs are widened to
// float32 as they are copied into the kernel's buffers (Kᵀ, packed V, the q block), scores,
// softmax and P·V run in float32 as for float inputs, and each output is rounded to bf16 once.
// On the avx512_bf16 path the scores and P·V multiply bf16 pairs instead (vdpbf16ps, float32
// accumulation), the unnormalised probabilities rounded to bf16 for it, as PyTorch's bf16
// softmax rounds its output.
#pragma once

#include <cstdint>

#include "bf16.h"

namespace levit {

template <class T>
struct AttnArgsT {
  const T* q;
  const T* k;
  const T* v;      // unused for probabilities
  const T* bias;   // (H, Nq, Nk) contiguous
  int64_t batch, heads, nq, nk, dk, dv;
  int64_t q_sb, q_sh, q_sn;  // strides (elements) over batch, head, token
  int64_t k_sb, k_sh, k_sn;
  int64_t v_sb, v_sh, v_sn;
  float scale;
  bool hardswish;
  bool probs;          // true: write softmax probabilities (B, H, Nq, Nk) instead
  T* out;          // (B, Nq, H*Dv) or (B, H, Nq, Nk), contiguous
};
using AttnArgs = AttnArgsT<float>;

// Runs the whole op on up to nthreads threads (tasks = batch × head × query chunk).
void attention(const AttnArgsT<float>& args, int nthreads);
void attention(const AttnArgsT<bf16>& args, int nthreads);

// ---- per-ISA task kernels (attention.cpp: generic; attention_avx2.cpp; attention_avx512.cpp)
// One task: batch b, head h, query rows [i0, i1). `next` (or null) is the task this thread
// will probably run next: its q/k/v rows are prefetched into L2 while this one computes
// (rows of a packed qkv tensor are too far apart for the hardware prefetchers).
struct AttnTask {
  int64_t b, h, i0, i1;
};

template <class T>
struct AttnKernelT {
  void (*task)(const AttnArgsT<T>&, const AttnTask& cur, const AttnTask* next);
  int rows;  // query rows processed together; chunks are multiples of this
};
using AttnKernel = AttnKernelT<float>;

AttnKernel attention_kernel_generic();
AttnKernel attention_kernel_avx2();
AttnKernel attention_kernel_avx512();
// bf16: float32 FMAs on widened inputs (the amx_bf16 path too: see attention.cpp), except on
// the avx512_bf16 path, whose scores and P·V are vdpbf16ps dot products
// (attention_avx512bf16.cpp)
AttnKernelT<bf16> attention_kernel_bf16_generic();
AttnKernelT<bf16> attention_kernel_bf16_avx2();
AttnKernelT<bf16> attention_kernel_bf16_avx512();
AttnKernelT<bf16> attention_kernel_bf16_avx512bf16();
AttnKernelT<bf16> attention_kernel_bf16_amx();  // Q·Kᵀ and P·V on AMX tiles

}  // namespace levit
