// forward.h — a whole fused LeViT forward (eval mode, CPU) as one call.
//
// The stem convolutions, every attention and MLP layer, the mean over tokens and the
// classifier run back to back on the kernels of gemm.h and attention.h, with all activations
// in one workspace the caller provides. Why one call: at batch 1 a forward is ~50 short
// kernel calls, and driving them from Python (views, checks, allocations) was a large part
// of a batch-1 forward (benchmarks/README.md has the measurement).
// Reference: the plain model, levit_kernels/model/levit.py::LeViT (eval mode), layer by layer
// as levit_kernels/model/plan.py folds it.
//
// A Program holds raw pointers to packed weights and biases that the caller keeps alive (the
// Python FusedPlan owns the tensors). Building one checks that the layers chain (widths, token
// grid); running it trusts its arguments, like every kernel here.
//
// ProgramT<T> runs in one element type T: float (Program), or bf16 (bf16.h), where images,
// weights, biases and every activation between layers are bf16 (half the workspace and
// memory traffic), each GEMM and the attention accumulate in float32 and round their outputs
// to bf16 once (gemm_bf16.h), and the mean over tokens is summed in double.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "bf16.h"

namespace levit {

// A convolution of the stem (NHWC; the first one reads the images through their strides).
template <class T>
struct ConvLayerT {
  const T* packed;  // pack_weight of the (cout, kernel·kernel·cin) matrix (bf16: kernel runs)
  const T* bias;    // (cout)
  int64_t cin, cout, kernel, stride, pad;
  int act;
};
using ConvLayer = ConvLayerT<float>;

// Self-attention with a residual (no q weights, subsample == 1):
//   qkv = x·Wqkvᵀ + b, heads side by side, each head's slot of `head_width` channels holding
//   q (dk), k (dk) and v (dv) at q_offset, k_offset, v_offset;
//   x  += proj(hardswish(attention(q, k, v, bias)))
// or shrinking attention (q weights given; subsample >= 1), which changes the token grid and
// the width: kv = x·Wkvᵀ + b with k and v in each head's slot (q_offset unused); q (heads ×
// dk) from the tokens on every subsample-th grid row and column; x = proj(hardswish(...)).
// The slot layout is the model's (levit_kernels/model/levit.py, qkv_layout): the caller passes
// it, this file does not assume an order.
template <class T>
struct AttentionLayerT {
  int64_t channels, out_channels, heads, dk, dv, subsample;
  int64_t head_width, q_offset, k_offset, v_offset;
  float scale;
  const T* bias;                       // (heads, nq, nk) contiguous
  const T* qkv_packed;                 // self: qkv; shrinking: kv
  const T* qkv_bias;
  const T* q_packed;                   // shrinking only (null: self-attention)
  const T* q_bias;
  const T* proj_packed;
  const T* proj_bias;
};
using AttentionLayer = AttentionLayerT<float>;

// x = x + hardswish(x·W1ᵀ + b1)·W2ᵀ + b2.
template <class T>
struct MlpLayerT {
  int64_t channels, hidden;
  const T *w1_packed, *b1, *w2_packed, *b2;
};
using MlpLayer = MlpLayerT<float>;

// One step of a profiled run (ProgramT::run's `steps`): its name, its kind ("convolution",
// "gemm", "attention", "mlp" or "copy": the kernel that ran), its floating-point operations
// (2 per multiply-add; 0 for copies and the mean) and the seconds it took, each summed over
// the images and chunks of the batch.
struct StepTime {
  std::string name;
  const char* kind;
  double flops = 0, seconds = 0;
};

class StepClock;  // forward.cpp: times the steps of a profiled run

template <class T>
class ProgramT {
 public:
  // Images (B, in_channels, height, width).
  ProgramT(int64_t in_channels, int64_t height, int64_t width);

  // Layers in forward order: every convolution before the first token layer, the head
  // last. Each throws std::invalid_argument when it does not chain onto the layers before it.
  void add_conv(const ConvLayerT<T>& layer);
  void add_attention(const AttentionLayerT<T>& layer);
  void add_mlp(const MlpLayerT<T>& layer);
  // The classifier (packed (classes, in_features) weight and its bias), reading the mean
  // token: in_features must be the last layer's width. Without one the program's output is
  // the mean token.
  void set_head(const T* packed, const T* bias, int64_t in_features, int64_t classes);

  // Token grid entering the next layer added (rows, cols) and its width.
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t channels() const { return channels_; }
  int64_t output_features() const { return head_ ? classes_ : channels_; }
  // Elements (of T) of workspace run() needs for this batch size.
  int64_t workspace_elements(int64_t batch) const;

  // out (batch, output_features()) from images (batch, C, H, W) given by element strides.
  // Large batches run in chunks of kChunk images, all through the same workspace: its size
  // stays bounded (a few tens of MB; it can then be kept between calls instead of being
  // page-faulted in afresh every time), and kChunk images already give the stage-3 GEMMs
  // (16 tokens per image) enough rows to reuse each weight panel.
  // With `steps`, each step (a convolution, a GEMM, an attention, an MLP, a copy) is timed
  // as well and its StepTime added to *steps, in forward order; without, nothing is timed.
  static constexpr int64_t kChunk = 16;
  void run(const T* images, int64_t batch, int64_t sb, int64_t sc, int64_t sh, int64_t sw,
           T* workspace, T* out, int nthreads, std::vector<StepTime>* steps = nullptr) const;

 private:
  struct Geometry {  // token grid and width entering a token layer
    int64_t rows, cols, channels;
  };
  struct Attention {
    AttentionLayerT<T> layer;
    Geometry in;
  };
  struct Mlp {
    MlpLayerT<T> layer;
    Geometry in;
  };
  // Per-image sizes (elements) of the workspace regions: the two activation buffers that
  // alternate, qkv (or kv), the subsampled tokens plus their q, and the attention output.
  struct Sizes {
    int64_t act = 0, qkv = 0, sub = 0, attn = 0;
  };

  void grow(int64_t act, int64_t qkv, int64_t sub, int64_t attn);
  void require_no_head(const char* layer) const;
  void run_chunk(const T* images, int64_t batch, int64_t sb, int64_t sc, int64_t sh,
                 int64_t sw, T* workspace, T* out, int nthreads, StepClock& clock) const;
  void run_attention(const Attention& a, size_t index, int64_t batch, T* x, T* next, T* qkv,
                     T* sub, T* attn, int nthreads, StepClock& clock) const;

  const int64_t in_channels_, height_, width_;
  int64_t rows_, cols_, channels_;  // what the next layer receives
  bool tokens_started_ = false;
  std::vector<ConvLayerT<T>> convs_;
  int64_t stem_output_ = 0;  // elements of the last convolution's output, per image
  std::vector<std::variant<Attention, Mlp>> layers_;
  const T* head_ = nullptr;
  const T* head_bias_ = nullptr;
  int64_t classes_ = 0;
  Sizes sizes_;
};
using Program = ProgramT<float>;
using ProgramBf16 = ProgramT<bf16>;

}  // namespace levit
