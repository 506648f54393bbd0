// forward.cpp — see forward.h.
//
// Workspace, per image: two activation buffers A and B (the largest stem output or token
// matrix), qkv (the largest qkv / kv projection), sub (a shrinking layer's subsampled tokens
// and their q projection), attn (the largest attention output), then the mean token. The
// stem and the token layers alternate between A and B; a self-attention block adds its
// projection into x in place (the GEMM allows the residual to be its output).
#include "forward.h"

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "attention.h"
#include "gemm.h"
#include "gemm_bf16.h"

namespace levit {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

std::string str(int64_t v) { return std::to_string(v); }

// Element counts of a layer, checked: sizes from a bad layer (a padding of 2^33) would wrap
// around int64 and size the workspace too small. No real LeViT comes near the limit.
constexpr int64_t kMaxElements = int64_t{1} << 48;
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;  // a side, kernel, stride or padding

int64_t elements(std::initializer_list<int64_t> dims, const char* layer) {
  int64_t n = 1;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(n, d, &n) || n > kMaxElements)
      throw std::invalid_argument(std::string(layer) + ": its activations would exceed 2^48 "
                                  "elements per image (check its sizes, stride and padding)");
  return n;
}

// Regions start 128 bytes apart in float32, 64 in bf16 (whole cache lines either way).
int64_t aligned(int64_t n) { return (n + 31) / 32 * 32; }

// tokens (B, rows, cols, c) -> (B, ceil(rows/s), ceil(cols/s), c): every s-th row and column.
template <class T>
void subsample_tokens(const T* x, int64_t batch, int64_t rows, int64_t cols, int64_t c,
                      int64_t s, T* out) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; r += s)
      for (int64_t col = 0; col < cols; col += s, out += c) {
        const T* src = x + ((b * rows + r) * cols + col) * c;
        std::copy(src, src + c, out);
      }
}

// out (B, c) = mean over the n tokens of x (B, n, c), summed in double.
template <class T>
void mean_tokens(const T* x, int64_t batch, int64_t n, int64_t c, T* out) {
  std::vector<double> sum(c);
  for (int64_t b = 0; b < batch; ++b) {
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const T* row = x + (b * n + i) * c;
      for (int64_t j = 0; j < c; ++j) sum[j] += to_float(row[j]);
    }
    for (int64_t j = 0; j < c; ++j) out[b * c + j] = from_float<T>(static_cast<float>(sum[j] / n));
  }
}

}  // namespace

// Times the steps of a profiled run; without `steps` it runs them and reads no clock. A
// step's entry is found by name, so the stem's image-by-image convolutions and the chunks of
// a large batch add up into one entry each. Names are made (and entries searched) only when
// profiling, after the step's clock has stopped.
class StepClock {
 public:
  explicit StepClock(std::vector<StepTime>* steps) : steps_(steps) {}

  // work(), timed as the step name() (a callable returning its std::string) of `kind`.
  template <class Name, class Work>
  void operator()(const char* kind, const Name& name, double flops, const Work& work) {
    if (!steps_) {
      work();
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    work();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string key = name();
    for (StepTime& step : *steps_) {
      if (step.name == key) {
        step.flops += flops;
        step.seconds += seconds;
        return;
      }
    }
    steps_->push_back({std::move(key), kind, flops, seconds});
  }

 private:
  std::vector<StepTime>* steps_;
};

template <class T>
ProgramT<T>::ProgramT(int64_t in_channels, int64_t height, int64_t width)
    : in_channels_(in_channels), height_(height), width_(width), rows_(height), cols_(width),
      channels_(in_channels) {
  require(in_channels >= 1 && height >= 1 && width >= 1,
          "images: expected channels, height and width >= 1");
  require(in_channels <= kMaxDim && height <= kMaxDim && width <= kMaxDim,
          "images: expected channels, height and width <= " + str(kMaxDim));
}

template <class T>
void ProgramT<T>::grow(int64_t act, int64_t qkv, int64_t sub, int64_t attn) {
  sizes_.act = std::max(sizes_.act, aligned(act));
  sizes_.qkv = std::max(sizes_.qkv, aligned(qkv));
  sizes_.sub = std::max(sizes_.sub, aligned(sub));
  sizes_.attn = std::max(sizes_.attn, aligned(attn));
}

template <class T>
void ProgramT<T>::add_conv(const ConvLayerT<T>& l) {
  require_no_head("conv");
  require(!tokens_started_, "conv: every convolution must come before the token layers");
  require(l.cin == channels_, "conv: expected " + str(channels_) + " input channels, got " +
                                  str(l.cin));
  require(l.cout >= 1 && l.kernel >= 1 && l.stride >= 1 && l.pad >= 0,
          "conv: expected cout, kernel, stride >= 1 and pad >= 0");
  require(l.kernel <= kMaxDim && l.stride <= kMaxDim && l.pad <= kMaxDim,
          "conv: expected kernel, stride and pad <= " + str(kMaxDim));
  const int64_t ho = (rows_ + 2 * l.pad - l.kernel) / l.stride + 1;
  const int64_t wo = (cols_ + 2 * l.pad - l.kernel) / l.stride + 1;
  require(rows_ + 2 * l.pad >= l.kernel && cols_ + 2 * l.pad >= l.kernel,
          "conv: the " + str(rows_) + "x" + str(cols_) + " input is smaller than the kernel");
  // its input with this conv's zero border (the padded images, or the previous output)
  const int64_t padded = elements({rows_ + 2 * l.pad, cols_ + 2 * l.pad, channels_}, "conv");
  const int64_t output = elements({ho, wo, l.cout}, "conv");
  convs_.push_back(l);
  grow(padded, 0, 0, 0);
  rows_ = ho, cols_ = wo, channels_ = l.cout;
  grow(output, 0, 0, 0);
  stem_output_ = output;
}

template <class T>
void ProgramT<T>::add_attention(const AttentionLayerT<T>& l) {
  require_no_head("attention");
  require(!convs_.empty(), "attention: the stem must come first (the tokens are its output)");
  require(l.channels == channels_, "attention: expected " + str(channels_) +
                                       " input channels, got " + str(l.channels));
  require(l.heads >= 1 && l.dk >= 1 && l.dv >= 1 && l.subsample >= 1 && l.out_channels >= 1,
          "attention: expected heads, dk, dv, subsample and out_channels >= 1");
  for (int64_t v : {l.heads, l.dk, l.dv, l.subsample, l.out_channels, l.head_width, l.q_offset,
                    l.k_offset, l.v_offset})
    require(v <= kMaxDim, "attention: expected sizes and offsets <= " + str(kMaxDim));
  // Shrinking attention is the layer with q weights of its own, whatever its stride (a
  // config may subsample by 1); self-attention has none, keeps the grid and adds a residual.
  const bool shrinking = l.q_packed != nullptr;
  require(shrinking || l.out_channels == l.channels,
          "attention: a self-attention block keeps the width (residual)");
  require(shrinking || l.subsample == 1,
          "attention: subsampling (subsample > 1) needs the q weights of shrinking attention");
  auto inside = [&](int64_t offset, int64_t width) {
    return offset >= 0 && offset + width <= l.head_width;
  };
  require(inside(l.k_offset, l.dk) && inside(l.v_offset, l.dv) &&
              (shrinking || inside(l.q_offset, l.dk)),
          "attention: q, k and v must lie inside each head's slot of " + str(l.head_width) +
              " channels");
  const int64_t n = rows_ * cols_;
  const int64_t nq = shrinking ? ((rows_ - 1) / l.subsample + 1) * ((cols_ - 1) / l.subsample + 1)
                               : n;
  const int64_t act = elements({nq, l.out_channels}, "attention");
  const int64_t qkv = elements({n, l.heads, l.head_width}, "attention");
  const int64_t q_width = elements({l.heads, l.dk}, "attention");
  const int64_t sub = shrinking ? elements({nq, l.channels + q_width}, "attention") : 0;
  const int64_t attn = elements({nq, l.heads, l.dv}, "attention");
  tokens_started_ = true;
  const Geometry in{rows_, cols_, channels_};
  grow(act, qkv, sub, attn);
  if (shrinking) {
    rows_ = (rows_ - 1) / l.subsample + 1;
    cols_ = (cols_ - 1) / l.subsample + 1;
  }
  channels_ = l.out_channels;
  layers_.emplace_back(Attention{l, in});
}

template <class T>
void ProgramT<T>::add_mlp(const MlpLayerT<T>& l) {
  require_no_head("mlp");
  require(!convs_.empty(), "mlp: the stem must come first (the tokens are its output)");
  require(l.channels == channels_, "mlp: expected " + str(channels_) + " channels, got " +
                                       str(l.channels));
  require(l.hidden >= 1, "mlp: expected hidden >= 1");
  tokens_started_ = true;
  layers_.emplace_back(Mlp{l, Geometry{rows_, cols_, channels_}});
}

template <class T>
void ProgramT<T>::require_no_head(const char* layer) const {
  // The head reads the mean of the tokens the last layer leaves: nothing may come after it.
  require(head_ == nullptr, std::string(layer) + ": the head is already set; it must be the "
                                                  "last layer");
}

template <class T>
void ProgramT<T>::set_head(const T* packed, const T* bias, int64_t in_features,
                           int64_t classes) {
  require_no_head("head");
  require(!convs_.empty(), "head: the stem must come first");
  require(packed != nullptr && classes >= 1, "head: expected a packed weight and classes >= 1");
  require(in_features == channels_, "head: expected " + str(channels_) +
                                        " input features, got " + str(in_features));
  head_ = packed, head_bias_ = bias, classes_ = classes;
}

template <class T>
int64_t ProgramT<T>::workspace_elements(int64_t batch) const {
  return std::min(batch, kChunk) *
         (2 * sizes_.act + sizes_.qkv + sizes_.sub + sizes_.attn + aligned(channels_));
}

template <class T>
void ProgramT<T>::run_attention(const Attention& a, size_t index, int64_t batch, T* x, T* next,
                                T* qkv, T* sub, T* attn, int nthreads, StepClock& clock) const {
  const AttentionLayerT<T>& l = a.layer;
  const int64_t n = a.in.rows * a.in.cols, c = l.channels;
  const int64_t h = l.heads, dk = l.dk, dv = l.dv;
  const bool shrinking = l.q_packed != nullptr;  // add_attention: q weights of its own
  auto name = [&](const char* part) {
    return [=, &a] {
      return "layer " + str(static_cast<int64_t>(index) + 1) +
             (shrinking ? " shrinking attention (" : " attention (") + str(a.in.rows) + "x" +
             str(a.in.cols) + " tokens, " + str(h) + " heads): " + part;
    };
  };
  // qkv (B, n, h, head_width): self-attention projects q with k and v; k and v (and q) are
  // strided views of it at the slot offsets the layer names
  const int64_t per_head = l.head_width, width = h * per_head;
  clock("gemm", name(shrinking ? "kv projection" : "qkv projection"),
        2.0 * batch * n * c * width, [&] {
          gemm_packed(x, batch * n, c, c, l.qkv_packed, width, l.qkv_bias, nullptr, 0, kActNone,
                      qkv, width, nthreads);
        });
  AttnArgsT<T> args{};
  args.batch = batch, args.heads = h, args.nq = n, args.nk = n, args.dk = dk, args.dv = dv;
  args.bias = l.bias, args.scale = l.scale, args.hardswish = true, args.probs = false;
  args.out = attn;
  args.k = qkv + l.k_offset, args.v = qkv + l.v_offset;
  args.k_sb = args.v_sb = n * width, args.k_sh = args.v_sh = per_head;
  args.k_sn = args.v_sn = width;
  if (shrinking) {  // q (B, nq, h, dk) from the subsampled tokens
    args.nq = ((a.in.rows - 1) / l.subsample + 1) * ((a.in.cols - 1) / l.subsample + 1);
    T* q = sub + batch * args.nq * c;
    clock("copy", name("subsample tokens"), 0,
          [&] { subsample_tokens(x, batch, a.in.rows, a.in.cols, c, l.subsample, sub); });
    clock("gemm", name("q projection"), 2.0 * batch * args.nq * c * h * dk, [&] {
      gemm_packed(sub, batch * args.nq, c, c, l.q_packed, h * dk, l.q_bias, nullptr, 0,
                  kActNone, q, h * dk, nthreads);
    });
    args.q = q, args.q_sb = args.nq * h * dk, args.q_sh = dk, args.q_sn = h * dk;
  } else {
    args.q = qkv + l.q_offset, args.q_sb = n * width, args.q_sh = per_head, args.q_sn = width;
  }
  clock("attention", name("attention"), 2.0 * batch * h * args.nq * n * (dk + dv),
        [&] { attention(args, nthreads); });
  // self-attention adds the projection into x in place; shrinking writes the next tokens
  clock("gemm", name("projection"), 2.0 * batch * args.nq * h * dv * l.out_channels, [&] {
    gemm_packed(attn, batch * args.nq, h * dv, h * dv, l.proj_packed, l.out_channels,
                l.proj_bias, shrinking ? nullptr : x, c, kActNone, shrinking ? next : x,
                l.out_channels, nthreads);
  });
}

template <class T>
void ProgramT<T>::run(const T* images, int64_t batch, int64_t sb, int64_t sc, int64_t sh,
                      int64_t sw, T* workspace, T* out, int nthreads,
                      std::vector<StepTime>* steps) const {
  if (convs_.empty()) throw std::logic_error("Program::run: no layers");
  StepClock clock(steps);
  for (int64_t b0 = 0; b0 < batch; b0 += kChunk)
    run_chunk(images + b0 * sb, std::min(kChunk, batch - b0), sb, sc, sh, sw, workspace,
              out + b0 * output_features(), nthreads, clock);
}

template <class T>
void ProgramT<T>::run_chunk(const T* images, int64_t batch, int64_t sb, int64_t sc,
                            int64_t sh, int64_t sw, T* workspace, T* out, int nthreads,
                            StepClock& clock) const {
  T* buf[2] = {workspace, workspace + batch * sizes_.act};
  T* qkv = buf[1] + batch * sizes_.act;
  T* sub = qkv + batch * sizes_.qkv;
  T* attn = sub + batch * sizes_.sub;
  T* mean = attn + batch * sizes_.attn;
  int cur = 0;

  // The stem: the images are copied once into NHWC with the first convolution's zero border
  // (reading them through their strides), and each convolution writes its output with the
  // next one's border, so no convolution gathers patches (conv2d_padded). One image at a
  // time when there are several: an image's intermediates (~1 MB for LeViT at 224) stay in
  // cache between its convolutions, where a whole chunk's (13 MB out of the first one for 16
  // images) went to memory and back: 1.24-1.29x the stem's speed at batch 16, one thread
  // (benchmarks/README.md). They alternate between two image-sized slots of buf[1], and the
  // last convolution writes the image's tokens into buf[0]. One image alternates buf[1] and
  // buf[0], ending where the count of convolutions puts it.
  auto stem = [&](const T* imgs, int64_t n, T* ping, T* pong, T* tokens) {
    int64_t hp = height_ + 2 * convs_[0].pad, wp = width_ + 2 * convs_[0].pad, c = in_channels_;
    clock("copy", [] { return std::string("stem: images to padded NHWC"); }, 0, [&] {
      pad_nhwc(imgs, n, height_, width_, c, sb, sh, sw, sc, convs_[0].pad, ping, nthreads);
    });
    const T* src = ping;
    for (size_t i = 0; i < convs_.size(); ++i) {
      const ConvLayerT<T>& l = convs_[i];
      const bool last = i + 1 == convs_.size();
      const int64_t out_pad = last ? 0 : convs_[i + 1].pad;
      T* dst = last && tokens ? tokens : src == ping ? pong : ping;
      PaddedConvArgsT<T> args{src, n, hp, wp, c, l.kernel, l.stride, l.packed, l.cout, l.bias,
                          l.act, dst, out_pad};
      const int64_t ho = (hp - l.kernel) / l.stride + 1, wo = (wp - l.kernel) / l.stride + 1;
      auto name = [&] {
        return "stem conv " + str(static_cast<int64_t>(i) + 1) + " (" + str(c) + "->" +
               str(l.cout) + ", " + str(l.kernel) + "x" + str(l.kernel) + " stride " +
               str(l.stride) + ", to " + str(ho) + "x" + str(wo) + ")";
      };
      clock("convolution", name, 2.0 * n * ho * wo * l.cout * l.kernel * l.kernel * c,
            [&] { conv2d_padded(args, nthreads); });
      hp = ho + 2 * out_pad;
      wp = wo + 2 * out_pad;
      c = l.cout;
      src = dst;
    }
    return src;
  };
  if (batch == 1) {
    cur = stem(images, 1, buf[1], buf[0], nullptr) == buf[0] ? 0 : 1;
  } else {
    for (int64_t b = 0; b < batch; ++b)
      stem(images + b * sb, 1, buf[1], buf[1] + sizes_.act, buf[0] + b * stem_output_);
  }
  // buf[cur] holds the tokens (B, h·w, c)

  for (size_t i = 0; i < layers_.size(); ++i) {
    if (const Attention* a = std::get_if<Attention>(&layers_[i])) {
      run_attention(*a, i, batch, buf[cur], buf[cur ^ 1], qkv, sub, attn, nthreads, clock);
      if (a->layer.q_packed) cur ^= 1;  // shrinking wrote the next tokens to the other buffer
    } else {
      const Mlp& m = std::get<Mlp>(layers_[i]);
      const MlpLayerT<T>& l = m.layer;
      const int64_t rows = batch * m.in.rows * m.in.cols;
      auto name = [&] {
        return "layer " + str(static_cast<int64_t>(i) + 1) + " mlp (" + str(m.in.rows) + "x" +
               str(m.in.cols) + " tokens, " + str(l.channels) + "->" + str(l.hidden) + "->" +
               str(l.channels) + ")";
      };
      clock("mlp", name, 4.0 * rows * l.channels * l.hidden, [&] {
        mlp_packed(buf[cur], rows, l.channels, l.channels, l.w1_packed, l.b1, l.hidden,
                   l.w2_packed, l.b2, buf[cur ^ 1], nthreads);
      });
      cur ^= 1;
    }
  }

  const int64_t tokens = rows_ * cols_;
  clock("copy", [] { return std::string("mean over tokens"); }, 0,
        [&] { mean_tokens(buf[cur], batch, tokens, channels_, head_ ? mean : out); });
  if (!head_) return;
  clock("gemm", [&] { return "head (" + str(channels_) + "->" + str(classes_) + ")"; },
        2.0 * batch * channels_ * classes_, [&] {
          gemm_packed(mean, batch, channels_, channels_, head_, classes_, head_bias_, nullptr, 0,
                      kActNone, out, classes_, nthreads);
        });
}

template class ProgramT<float>;
template class ProgramT<bf16>;

}  // namespace levit
