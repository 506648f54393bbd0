// attention.cpp — fused attention driver (task split, threads, ISA dispatch) and the portable
// generic kernel.
//
//   out[b, i, h·Dv + :] = act( Σ_j softmax_j(scale·q_i·k_j + bias[h,i,j]) · v_j )
//
// Work is split into tasks of (batch, head, query chunk); each task keeps its scores in a
// small per-thread buffer (one query row here, R rows in the SIMD kernels) and writes its
// slice of the output directly, so no intermediate (B,H,Nq,Nk) tensor ever exists. The
// generic path is plain C++: loops over keys/channels the compiler vectorises with baseline
// flags, std::exp for the softmax. Float32 and bf16 inputs share the code (T); bf16 values
// are widened as they are read and outputs rounded once (bf16.h).
// Reference: levit_kernels/ops/reference.py::attention / ::attention_probs.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_features.h"
#include "simd.h"
#include "thread_pool.h"

namespace levit {
namespace {

template <class T>
void generic_task(const AttnArgsT<T>& a, const AttnTask& cur, const AttnTask*) {
  const int64_t b = cur.b, h = cur.h, i0 = cur.i0, i1 = cur.i1;
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < a.nk + a.dv) buf.resize(a.nk + a.dv);
  float* s = buf.data();
  float* o = s + a.nk;
  const T* kb = a.k + b * a.k_sb + h * a.k_sh;
  const T* vb = a.probs ? nullptr : a.v + b * a.v_sb + h * a.v_sh;
  for (int64_t i = i0; i < i1; ++i) {
    const T* q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_sn;
    const T* bias = a.bias + (h * a.nq + i) * a.nk;
    float mx = -INFINITY;
    for (int64_t j = 0; j < a.nk; ++j) {
      const T* k = kb + j * a.k_sn;
      float dot = 0.0f;
      for (int64_t d = 0; d < a.dk; ++d) dot += to_float(q[d]) * to_float(k[d]);
      s[j] = dot * a.scale + to_float(bias[j]);
      mx = std::max(mx, s[j]);
    }
    double sum = 0.0;  // a sequential float sum over ~200 terms would lose ~1e-6
    for (int64_t j = 0; j < a.nk; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    if (a.probs) {
      T* out = a.out + ((b * a.heads + h) * a.nq + i) * a.nk;
      for (int64_t j = 0; j < a.nk; ++j) out[j] = from_float<T>(s[j] * inv);
      continue;
    }
    std::fill(o, o + a.dv, 0.0f);
    for (int64_t j = 0; j < a.nk; ++j) {
      const T* v = vb + j * a.v_sn;
      const float p = s[j];
      for (int64_t d = 0; d < a.dv; ++d) o[d] += p * to_float(v[d]);
    }
    T* out = a.out + (b * a.nq + i) * a.heads * a.dv + h * a.dv;
    for (int64_t d = 0; d < a.dv; ++d) {
      const float x = o[d] * inv;
      out[d] = from_float<T>(a.hardswish ? hardswish_scalar(x) : x);
    }
  }
}

AttnKernel select_kernel(const AttnArgsT<float>&) {
  switch (active_isa()) {
    case Isa::amx_bf16:
    case Isa::avx512_bf16:
    case Isa::avx512: return attention_kernel_avx512();
    case Isa::avx2: return attention_kernel_avx2();
    default: return attention_kernel_generic();
  }
}

// The bf16 entries of the per-dtype kernel table (gemm_bf16.cpp has the GEMM's).
AttnKernelT<bf16> select_kernel(const AttnArgsT<bf16>&) {
  switch (active_isa()) {
    case Isa::amx_bf16: return attention_kernel_bf16_amx();
    case Isa::avx512_bf16: return attention_kernel_bf16_avx512bf16();
    case Isa::avx512: return attention_kernel_bf16_avx512();
    case Isa::avx2: return attention_kernel_bf16_avx2();
    default: return attention_kernel_bf16_generic();
  }
}

template <class T>
void attention_t(const AttnArgsT<T>& args, int nthreads) {
  const AttnKernelT<T> kern = select_kernel(args);
  const int64_t bh = args.batch * args.heads;
  // Split the queries only when (batch, head) pairs alone cannot keep every thread busy
  // (batch 1 with 4 heads on many threads); each extra chunk re-builds Kᵀ, a small cost.
  const int64_t groups = (args.nq + kern.rows - 1) / kern.rows;
  int64_t split = 1;
  if (nthreads > 1 && bh < 4 * nthreads)
    split = std::min<int64_t>(groups, (4 * nthreads + bh - 1) / bh);
  const int64_t chunk = (groups + split - 1) / split * kern.rows;
  split = (args.nq + chunk - 1) / chunk;
  auto task_of = [&](int64_t t) {
    const int64_t c = t % split, h = (t / split) % args.heads, b = t / (split * args.heads);
    return AttnTask{b, h, c * chunk, std::min(args.nq, (c + 1) * chunk)};
  };
  const int64_t ntasks = bh * split;
  parallel_for(ntasks, nthreads, [&](int64_t t) {
    const AttnTask cur = task_of(t);
    // Tasks are handed out in order, so t + 1 is this thread's next one when it runs alone
    // (and a neighbour's otherwise: a wasted prefetch, no harm).
    const AttnTask next = task_of(t + 1);
    kern.task(args, cur, t + 1 < ntasks ? &next : nullptr);
  });
}

}  // namespace

AttnKernel attention_kernel_generic() { return {&generic_task<float>, 1}; }
AttnKernelT<bf16> attention_kernel_bf16_generic() { return {&generic_task<bf16>, 1}; }

void attention(const AttnArgsT<float>& args, int nthreads) { attention_t(args, nthreads); }
void attention(const AttnArgsT<bf16>& args, int nthreads) { attention_t(args, nthreads); }

}  // namespace levit
