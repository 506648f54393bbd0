// fuzz_kernels.cpp — randomized, torch-free test of the C++ CPU kernels, meant to run under
// AddressSanitizer + UndefinedBehaviorSanitizer (tests/test_sanitizers.py builds and runs it).
//
//   cmake -S . -B build-fuzz -G Ninja -DLEVIT_PYTHON=OFF -DLEVIT_FUZZ=ON -DLEVIT_SANITIZE=ON
//   ninja -C build-fuzz levit_fuzz && build-fuzz/levit_fuzz --iters 20000 --seed 7
//
// Each iteration draws one call — levit::attention (output or probabilities, Hardswish on or
// off), levit::gemm_packed (every epilogue, the residual sometimes aliasing the output, as
// gemm.h allows), levit::mlp_packed, levit::pack_weight or levit::conv2d_packed (NHWC or
// NCHW-strided input, any kernel/stride/padding) or a whole levit::Program (a random stem,
// self- and shrinking attention, MLPs and a head, run in one call and compared with the same
// layers called one kernel at a time) — with random sizes biased towards
// 1 and micro-tile tails, on a random ISA path (levit::set_isa over every path this CPU has)
// and 1 or 2 threads. Inputs are strided views into larger buffers whose gaps hold NaN, so a
// kernel that reads an element it should not use poisons its result; outputs sit between NaN
// guard regions (and, for strided outputs, NaN gaps between rows) that must survive the call.
// Results are compared with a naive double-precision reference: |out - ref| <= 1e-4·max|ref|
// (+1e-6), i.e. float32 accumulation error relative to the output's scale.
//
// Every call is drawn in float32 or in bf16 (bf16.h: the bf16 kernels of gemm_bf16.h, the
// attention and the Program in bf16, with NaN bf16 guards). bf16 checks take the same double
// reference on the bf16 inputs' values and allow 1e-2·max|ref| + 2^-8: a bf16 output carries
// up to 2^-9 relative rounding (2e-3), the MLP's hidden layer another rounding before the
// second GEMM; 1e-2 is ~2.5 bf16 ulps at the output's scale, and 2^-8 one ulp of the O(1)
// values every output here is summed from (inputs in [-1, 1], weights scaled by 1/sqrt(K)),
// which an output that cancels to ~0 still carries. A wrong index or a lost pair is off by
// the order of the outputs. A bf16 Program is compared with its layers run one bf16
// kernel at a time at 2^-5·max|ref|: the same roundings, but a conv's K blocks sum in another
// order (patches vs padded rows) and a one-ulp flip then travels through later layers.
//
// Exit status: 0 when every iteration passed, 1 on the first mismatch or damaged guard (the
// message names the iteration, the call and its sizes; rerun with the same --seed to debug),
// 2 on bad arguments. Buffers are exactly as large as what they hold plus the guards, so
// ASan reports reads or writes past them.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "bf16.h"
#include "cpu_features.h"
#include "forward.h"
#include "gemm.h"
#include "gemm_bf16.h"

namespace {

using levit::bf16;
using levit::from_float;
using levit::to_float;

constexpr int64_t kGuard = 16;  // NaN values before and after every output (one ZMM vector)
const float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class T>
T nan_of() {
  return from_float<T>(kNaN);
}

template <class T>
const char* dtype_name() {
  return std::is_same_v<T, bf16> ? "bf16" : "f32";
}

// The checks' tolerance relative to the reference's scale, and its absolute floor (see the
// header).
template <class T>
double tolerance() {
  return std::is_same_v<T, bf16> ? 1e-2 : 1e-4;
}
template <class T>
double tolerance_floor() {
  return std::is_same_v<T, bf16> ? 0x1p-8 : 1e-6;
}

std::mt19937_64 rng;

int64_t uniform(int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

bool coin(double p = 0.5) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }

// A size in [1, hi], biased to 1, small values and the tails of the micro-tiles (a size just
// below or above a multiple of 4, 6, 8, 14, 16 or 32) — where masking and row tails live.
int64_t dim(int64_t hi) {
  const int r = static_cast<int>(uniform(0, 9));
  int64_t n;
  if (r == 0) n = 1;
  else if (r <= 3) n = uniform(1, std::min<int64_t>(hi, 20));
  else if (r <= 6) {
    static const int64_t bases[] = {4, 6, 8, 14, 16, 28, 32, 42, 48, 64, 96, 112, 128, 196, 256};
    n = bases[uniform(0, 14)] + uniform(-1, 1);
  } else n = uniform(1, hi);
  return std::max<int64_t>(1, std::min(n, hi));
}

float value() { return std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng); }

template <class T>
T tvalue(float amp = 1.0f) {
  return from_float<T>(amp * value());
}

template <class T>
bool is_nan(T x) {
  return std::isnan(to_float(x));
}

// A buffer of `n` values between two NaN guards; everything starts as NaN.
template <class T = float>
struct Guarded {
  std::vector<T> mem;
  int64_t n;
  explicit Guarded(int64_t size)
      : mem(static_cast<size_t>(size + 2 * kGuard), nan_of<T>()), n(size) {}
  T* data() { return mem.data() + kGuard; }
  bool guards_intact() const {
    for (int64_t i = 0; i < kGuard; ++i)
      if (!is_nan(mem[i]) || !is_nan(mem[kGuard + n + i])) return false;
    return true;
  }
};

// A matrix of `rows` × `cols` with row stride ld >= cols inside a guarded buffer; the gaps
// between rows stay NaN.
template <class T = float>
struct Strided {
  Guarded<T> buf;
  int64_t rows, cols, ld;
  Strided(int64_t r, int64_t c, int64_t stride)
      : buf(r == 0 ? 0 : (r - 1) * stride + c), rows(r), cols(c), ld(stride) {}
  T* p() { return buf.data(); }
  T& at(int64_t i, int64_t j) { return buf.data()[i * ld + j]; }
  double get(int64_t i, int64_t j) { return to_float(at(i, j)); }
  void randomize() {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) at(i, j) = tvalue<T>();
  }
  bool gaps_intact() {  // guards and the inter-row gaps still NaN
    if (!buf.guards_intact()) return false;
    for (int64_t i = 0; i + 1 < rows; ++i)
      for (int64_t j = cols; j < ld; ++j)
        if (!is_nan(at(i, j))) return false;
    return true;
  }
};

// A (B, H, N, D) tensor view with random strides into a NaN-filled buffer: unit stride on D,
// heads and tokens interleaved either way (LeViT's packed qkv is (B, N, H, D)), gaps between
// rows, and sometimes a zero batch stride (an expanded tensor).
template <class T = float>
struct View4 {
  std::vector<T> mem;  // exactly the span of the view: ASan sees any read past it
  int64_t B, H, N, D, sb, sh, sn;
  View4(int64_t b, int64_t h, int64_t n, int64_t d) : B(b), H(h), N(n), D(d) {
    const int64_t row = d + (coin(0.5) ? 0 : uniform(1, 9));
    if (coin(0.5)) {          // (B, N, H, D): token-major, like a packed projection
      sh = row;
      sn = h * row + (coin(0.5) ? 0 : uniform(1, 5));
      sb = n * sn;
    } else {                  // (B, H, N, D)
      sn = row;
      sh = n * sn + (coin(0.5) ? 0 : uniform(1, 5));
      sb = h * sh;
    }
    if (b > 1 && coin(0.1)) sb = 0;  // broadcast over the batch
    else sb += coin(0.5) ? 0 : uniform(1, 7);
    const int64_t span = (b - 1) * sb + (h - 1) * sh + (n - 1) * sn + d;
    mem.assign(static_cast<size_t>(span), nan_of<T>());
    for (int64_t ib = 0; ib < b; ++ib)
      for (int64_t ih = 0; ih < h; ++ih)
        for (int64_t in = 0; in < n; ++in)
          for (int64_t id = 0; id < d; ++id) at(ib, ih, in, id) = tvalue<T>();
  }
  T& at(int64_t b, int64_t h, int64_t n, int64_t d) {
    return mem[static_cast<size_t>(b * sb + h * sh + n * sn + d)];
  }
  double get(int64_t b, int64_t h, int64_t n, int64_t d) { return to_float(at(b, h, n, d)); }
  const T* p() const { return mem.data(); }
};

double hardswish(double x) { return x * std::min(std::max(x + 3.0, 0.0), 6.0) / 6.0; }

// Compares out (count values, element i at out[index(i)]) with ref; prints the first bad one.
template <class T, class Index>
bool close(const char* what, const T* out, const std::vector<double>& ref, Index index,
           double rel = tolerance<T>()) {
  double scale = 0;
  for (double r : ref) scale = std::max(scale, std::fabs(r));
  const double tol = rel * scale + tolerance_floor<T>();
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = to_float(out[index(static_cast<int64_t>(i))]);
    if (!(std::fabs(o - ref[i]) <= tol)) {  // also catches NaN
      std::fprintf(stderr, "MISMATCH %s: element %zu is %.9g, reference %.9g (tol %.3g)\n",
                   what, i, o, ref[i], tol);
      return false;
    }
  }
  return true;
}

char g_call[512];  // the call being checked, for failure messages

bool fail(const char* why) {
  std::fprintf(stderr, "FAILED %s: %s\n", g_call, why);
  return false;
}

// ---------------------------------------------------------------------------- attention
template <class T>
bool check_attention(int nthreads) {
  const int64_t B = uniform(1, 3), H = uniform(1, 4), nq = dim(60);
  const int64_t nk = coin(0.1) ? dim(210) : dim(70), dk = dim(40), dv = dim(80);
  const bool probs = coin(0.3), hs = coin(0.5);
  std::snprintf(g_call, sizeof g_call, "attention<%s>(B=%lld H=%lld Nq=%lld Nk=%lld Dk=%lld "
                "Dv=%lld probs=%d hardswish=%d threads=%d isa=%s)", dtype_name<T>(), (long long)B,
                (long long)H, (long long)nq, (long long)nk, (long long)dk, (long long)dv, probs,
                hs, nthreads, levit::isa_name(levit::active_isa()));
  View4<T> q(B, H, nq, dk), k(B, H, nk, dk), v(B, H, nk, dv);
  Guarded<T> bias(H * nq * nk);
  for (int64_t i = 0; i < bias.n; ++i) bias.data()[i] = tvalue<T>(2.0f);
  const int64_t out_n = probs ? B * H * nq * nk : B * nq * H * dv;
  Guarded<T> out(out_n);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dk)));
  levit::AttnArgsT<T> a{q.p(), k.p(), probs ? nullptr : v.p(), bias.data(), B, H, nq, nk, dk,
                    probs ? 0 : dv, q.sb, q.sh, q.sn, k.sb, k.sh, k.sn, v.sb, v.sh, v.sn,
                    scale, hs, probs, out.data()};
  levit::attention(a, nthreads);
  if (!out.guards_intact()) return fail("wrote outside its output");

  std::vector<double> ref(static_cast<size_t>(out_n));
  std::vector<double> p(static_cast<size_t>(nk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < nq; ++i) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < nk; ++j) {
          double s = 0;
          for (int64_t d = 0; d < dk; ++d) s += q.get(b, h, i, d) * k.get(b, h, j, d);
          p[j] = s * scale + to_float(bias.data()[(h * nq + i) * nk + j]);
          mx = std::max(mx, p[j]);
        }
        for (int64_t j = 0; j < nk; ++j) sum += (p[j] = std::exp(p[j] - mx));
        if (probs) {
          for (int64_t j = 0; j < nk; ++j) ref[((b * H + h) * nq + i) * nk + j] = p[j] / sum;
          continue;
        }
        for (int64_t d = 0; d < dv; ++d) {
          double o = 0;
          for (int64_t j = 0; j < nk; ++j) o += p[j] * v.get(b, h, j, d);
          o /= sum;
          ref[(b * nq + i) * H * dv + h * dv + d] = hs ? hardswish(o) : o;
        }
      }
  if (!close(g_call, out.data(), ref, [](int64_t i) { return i; })) return fail("wrong values");
  return true;
}

// ---------------------------------------------------------------------------- GEMM / MLP
std::vector<float> packed_of(const std::vector<float>& w, int64_t n, int64_t k, int nthreads,
                             int64_t = 1) {
  std::vector<float> packed(static_cast<size_t>(levit::packed_numel(n, k)), kNaN);
  levit::pack_weight(w.data(), n, k, k, packed.data(), nthreads);
  return packed;
}

// bf16: K in `segments` runs, each padded to pairs (gemm_bf16.h).
std::vector<bf16> packed_of(const std::vector<bf16>& w, int64_t n, int64_t k, int nthreads,
                            int64_t segments = 1) {
  std::vector<bf16> packed(static_cast<size_t>(levit::packed_numel_bf16(n, k, segments)),
                           nan_of<bf16>());
  levit::pack_weight(w.data(), n, k, k, segments, packed.data(), nthreads);
  return packed;
}

template <class T = float>
std::vector<T> random_vec(int64_t n, float amp = 1.0f) {
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v) x = tvalue<T>(amp);
  return v;
}

bool check_pack(int nthreads) {
  const int64_t n = dim(300), k = dim(300), ldw = k + (coin(0.5) ? 0 : uniform(1, 9));
  std::snprintf(g_call, sizeof g_call, "pack_weight(n=%lld k=%lld ldw=%lld threads=%d)",
                (long long)n, (long long)k, (long long)ldw, nthreads);
  Strided w(n, k, ldw);
  w.randomize();
  Guarded packed(levit::packed_numel(n, k));
  levit::pack_weight(w.p(), n, k, ldw, packed.data(), nthreads);
  if (!packed.guards_intact()) return fail("wrote outside the packed buffer");
  const int64_t P = levit::kPanel;
  for (int64_t p = 0; p * P < n; ++p)
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t c = 0; c < P; ++c) {
        const float got = packed.data()[(p * k + kk) * P + c];
        // Past N: zeros, except the mark in each padding column's first row (gemm.h).
        const float want = p * P + c < n ? w.at(p * P + c, kk)
                           : kk == 0    ? std::numeric_limits<float>::max()
                                        : 0.0f;
        if (!(got == want)) return fail("wrong packed layout");
      }
  if (levit::packed_out_features(packed.data(), (n + P - 1) / P, k * P) != n)
    return fail("packed_out_features does not read back N");
  return true;
}

template <class T>
bool check_gemm(int nthreads) {
  const int64_t m = coin(0.15) ? dim(260) : dim(64), n = coin(0.15) ? dim(300) : dim(80);
  const int64_t k = coin(0.15) ? dim(600) : dim(64);
  const bool use_bias = coin(0.5), use_res = coin(0.5), alias = use_res && coin(0.4);
  const int act = coin(0.5) ? levit::kActHardswish : levit::kActNone;
  const int64_t ldx = k + (coin(0.5) ? 0 : uniform(1, 9));
  const int64_t ldo = n + (coin(0.5) ? 0 : uniform(1, 9));
  const int64_t ldr = alias ? ldo : n + (coin(0.5) ? 0 : uniform(1, 9));
  std::snprintf(g_call, sizeof g_call, "gemm_packed<%s>(m=%lld n=%lld k=%lld ldx=%lld ldr=%lld "
                "ldo=%lld bias=%d residual=%d alias=%d act=%d threads=%d isa=%s)", dtype_name<T>(),
                (long long)m,
                (long long)n, (long long)k, (long long)ldx, (long long)ldr, (long long)ldo,
                use_bias, use_res, alias, act, nthreads, levit::isa_name(levit::active_isa()));
  Strided<T> x(m, k, ldx);
  x.randomize();
  const std::vector<T> w = random_vec<T>(n * k, 1.0f / std::sqrt(float(k)));
  const std::vector<T> packed = packed_of(w, n, k, nthreads);
  Guarded<T> bias(n);
  for (int64_t j = 0; j < n; ++j) bias.data()[j] = tvalue<T>();
  Strided<T> out(m, n, ldo), res_own(use_res && !alias ? m : 0, n, ldr);
  Strided<T>& res = alias ? out : res_own;
  if (use_res) res.randomize();
  std::vector<double> res_copy(static_cast<size_t>(m * n), 0.0);
  if (use_res)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) res_copy[i * n + j] = res.get(i, j);
  levit::gemm_packed(x.p(), m, k, ldx, packed.data(), n, use_bias ? bias.data() : nullptr,
                     use_res ? res.p() : nullptr, ldr, act, out.p(), ldo, nthreads);
  if (!out.gaps_intact()) return fail("wrote outside its output (guards or row gaps)");
  std::vector<double> ref(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = use_bias ? to_float(bias.data()[j]) : 0.0;
      for (int64_t kk = 0; kk < k; ++kk) s += x.get(i, kk) * to_float(w[j * k + kk]);
      if (act == levit::kActHardswish) s = hardswish(s);
      ref[i * n + j] = s + res_copy[i * n + j];
    }
  if (!close(g_call, out.p(), ref, [&](int64_t i) { return (i / n) * ldo + i % n; }))
    return fail("wrong values");
  return true;
}

template <class T>
bool check_mlp(int nthreads) {
  const int64_t m = coin(0.15) ? dim(200) : dim(64), c = dim(96), ch = dim(200);
  const int64_t ldx = c + (coin(0.5) ? 0 : uniform(1, 9));
  std::snprintf(g_call, sizeof g_call, "mlp_packed<%s>(m=%lld c=%lld ch=%lld ldx=%lld threads=%d "
                "isa=%s)", dtype_name<T>(), (long long)m, (long long)c, (long long)ch,
                (long long)ldx, nthreads, levit::isa_name(levit::active_isa()));
  Strided<T> x(m, c, ldx);
  x.randomize();
  const std::vector<T> w1 = random_vec<T>(ch * c, 1.0f / std::sqrt(float(c)));
  const std::vector<T> w2 = random_vec<T>(c * ch, 1.0f / std::sqrt(float(ch)));
  const std::vector<T> b1 = random_vec<T>(ch), b2 = random_vec<T>(c);
  const std::vector<T> w1p = packed_of(w1, ch, c, nthreads);
  const std::vector<T> w2p = packed_of(w2, c, ch, nthreads);
  Guarded<T> out(m * c);
  levit::mlp_packed(x.p(), m, c, ldx, w1p.data(), b1.data(), ch, w2p.data(), b2.data(),
                    out.data(), nthreads);
  if (!out.guards_intact()) return fail("wrote outside its output");
  std::vector<double> ref(static_cast<size_t>(m * c)), hid(static_cast<size_t>(ch));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t h = 0; h < ch; ++h) {
      double s = to_float(b1[h]);
      for (int64_t j = 0; j < c; ++j) s += x.get(i, j) * to_float(w1[h * c + j]);
      hid[h] = hardswish(s);
    }
    for (int64_t j = 0; j < c; ++j) {
      double s = x.get(i, j) + to_float(b2[j]);
      for (int64_t h = 0; h < ch; ++h) s += hid[h] * to_float(w2[j * ch + h]);
      ref[i * c + j] = s;
    }
  }
  if (!close(g_call, out.data(), ref, [](int64_t i) { return i; })) return fail("wrong values");
  return true;
}

// ---------------------------------------------------------------------------- conv (the stem)
template <class T>
bool check_conv(int nthreads) {
  const int64_t b = dim(3), h = dim(16), w = dim(16), cin = dim(12), cout = dim(40);
  const int64_t kh = uniform(1, 4), kw = uniform(1, 4), stride = uniform(1, 3),
                pad = uniform(0, 2);
  const int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
  if (h + 2 * pad < kh || w + 2 * pad < kw || ho < 1 || wo < 1) return true;  // no output
  const bool use_bias = coin(0.5);
  const int act = coin(0.5) ? levit::kActHardswish : levit::kActNone;
  // x (B, H, W, C) read through strides: NHWC with gaps, or NCHW (an image batch in place).
  int64_t sb, sh, sw, sc;
  if (coin(0.5)) {
    sc = 1;
    sw = cin + (coin(0.5) ? 0 : uniform(1, 3));
    sh = w * sw + (coin(0.5) ? 0 : uniform(1, 5));
    sb = h * sh + (coin(0.5) ? 0 : uniform(1, 5));
  } else {
    sw = 1;
    sh = w + (coin(0.5) ? 0 : uniform(1, 3));
    sc = h * sh + (coin(0.5) ? 0 : uniform(1, 5));
    sb = cin * sc + (coin(0.5) ? 0 : uniform(1, 5));
  }
  std::snprintf(g_call, sizeof g_call, "conv2d_packed<%s>(b=%lld h=%lld w=%lld cin=%lld "
                "cout=%lld k=%lldx%lld stride=%lld pad=%lld strides=(%lld,%lld,%lld,%lld) bias=%d "
                "act=%d threads=%d isa=%s)", dtype_name<T>(), (long long)b, (long long)h, (long long)w, (long long)cin,
                (long long)cout, (long long)kh, (long long)kw, (long long)stride,
                (long long)pad, (long long)sb, (long long)sh, (long long)sw, (long long)sc,
                use_bias, act, nthreads, levit::isa_name(levit::active_isa()));
  // exactly the span of the view, so ASan sees any read past it
  std::vector<T> x(static_cast<size_t>((b - 1) * sb + (h - 1) * sh + (w - 1) * sw +
                                       (cin - 1) * sc + 1), nan_of<T>());
  auto at = [&](int64_t ib, int64_t iy, int64_t ix, int64_t c) -> T& {
    return x[static_cast<size_t>(ib * sb + iy * sh + ix * sw + c * sc)];
  };
  for (int64_t ib = 0; ib < b; ++ib)
    for (int64_t iy = 0; iy < h; ++iy)
      for (int64_t ix = 0; ix < w; ++ix)
        for (int64_t c = 0; c < cin; ++c) at(ib, iy, ix, c) = tvalue<T>();
  const int64_t k = kh * kw * cin;  // weight as (cout, kh, kw, cin), the packed order
  const std::vector<T> wt = random_vec<T>(cout * k, 1.0f / std::sqrt(float(k)));
  const std::vector<T> packed = packed_of(wt, cout, k, nthreads, kh);
  const std::vector<T> bias = random_vec<T>(cout);
  Guarded<T> out(b * ho * wo * cout);
  levit::ConvArgsT<T> a{x.data(), b, h, w, cin, sb, sh, sw, sc, kh, kw, stride, pad, packed.data(),
                    cout, use_bias ? bias.data() : nullptr, act, out.data()};
  levit::conv2d_packed(a, nthreads);
  if (!out.guards_intact()) return fail("wrote outside its output");
  std::vector<double> ref(static_cast<size_t>(b * ho * wo * cout));
  for (int64_t ib = 0; ib < b; ++ib)
    for (int64_t oy = 0; oy < ho; ++oy)
      for (int64_t ox = 0; ox < wo; ++ox)
        for (int64_t o = 0; o < cout; ++o) {
          double s = use_bias ? to_float(bias[o]) : 0.0;
          for (int64_t ky = 0; ky < kh; ++ky)
            for (int64_t kx = 0; kx < kw; ++kx) {
              const int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
              for (int64_t c = 0; c < cin; ++c)
                s += double(to_float(at(ib, iy, ix, c))) *
                     to_float(wt[o * k + (ky * kw + kx) * cin + c]);
            }
          ref[((ib * ho + oy) * wo + ox) * cout + o] =
              act == levit::kActHardswish ? hardswish(s) : s;
        }
  if (!close(g_call, out.data(), ref, [](int64_t i) { return i; })) return fail("wrong values");
  return true;
}

// ---------------------------------------------------------------------------- whole forward
// A random Program against the same layers called one kernel at a time (each of those is
// checked against a naive reference above): this checks the program's plumbing — workspace
// regions, token grids, q/k/v strides, subsampling, chunks of 16 images — with the
// workspace and the output between NaN guards.
template <class T>
struct Tokens {  // the one-kernel-at-a-time state: (B, rows, cols, c) contiguous
  std::vector<T> x;
  int64_t rows, cols, c;
};

template <class T>
bool check_program(int nthreads) {
  const int64_t batch = coin(0.1) ? uniform(15, 18) : dim(3);
  const int64_t cin = uniform(1, 4), h = uniform(1, 20), w = uniform(1, 20);
  std::deque<std::vector<T>> keep;  // weights the program points at
  auto kept = [&](std::vector<T> v) {
    keep.push_back(std::move(v));
    return keep.back().data();
  };
  auto weight = [&](int64_t n, int64_t k, int64_t segments = 1) {  // packed (n, k) weight
    return kept(packed_of(random_vec<T>(n * k, 1.0f / std::sqrt(float(k))), n, k, nthreads,
                          segments));
  };
  std::string desc;
  char part[96];
  levit::ProgramT<T> program(cin, h, w);
  const std::vector<T> images = random_vec<T>(batch * cin * h * w);
  Tokens<T> t{{}, h, w, cin};

  const int nconv = static_cast<int>(uniform(1, 3));
  for (int i = 0; i < nconv; ++i) {
    // Sometimes wide enough that the next 3x3 convolution's kernel rows (3·cout values)
    // exceed one K block (256): conv2d_padded then sums them block by block through its
    // output instead of in registers.
    const int64_t kernel = uniform(1, 3), stride = uniform(1, 2);
    const int64_t cout = coin(0.1) ? uniform(86, 100) : dim(24);
    int64_t pad = uniform(0, 2);
    if (t.rows + 2 * pad < kernel || t.cols + 2 * pad < kernel) pad = kernel;
    const int act = coin(0.5) ? levit::kActHardswish : levit::kActNone;
    const T* packed = weight(cout, kernel * kernel * t.c, kernel);
    const T* bias = kept(random_vec<T>(cout));
    program.add_conv({packed, bias, t.c, cout, kernel, stride, pad, act});
    const int64_t ho = (t.rows + 2 * pad - kernel) / stride + 1;
    const int64_t wo = (t.cols + 2 * pad - kernel) / stride + 1;
    std::vector<T> y(static_cast<size_t>(batch * ho * wo * cout));
    const bool first = i == 0;  // the images, NCHW, read through their strides
    const T* src = first ? images.data() : t.x.data();
    levit::ConvArgsT<T> a{src, batch, t.rows, t.cols, t.c,
                      first ? t.c * t.rows * t.cols : t.rows * t.cols * t.c,
                      first ? t.cols : t.cols * t.c, first ? 1 : t.c, first ? t.rows * t.cols : 1,
                      kernel, kernel, stride, pad, packed, cout, bias, act, y.data()};
    levit::conv2d_packed(a, nthreads);
    t = Tokens<T>{std::move(y), ho, wo, cout};
    std::snprintf(part, sizeof part, " conv(k%lld s%lld p%lld ->%lld)", (long long)kernel,
                  (long long)stride, (long long)pad, (long long)cout);
    desc += part;
  }

  const int nlayers = static_cast<int>(uniform(0, 4));
  for (int i = 0; i < nlayers; ++i) {
    const int64_t n = t.rows * t.cols, m = batch * n;
    const int kind = static_cast<int>(uniform(0, 2));
    if (kind == 0) {  // MLP
      const int64_t ch = dim(40);
      const T *w1 = weight(ch, t.c), *b1 = kept(random_vec<T>(ch));
      const T *w2 = weight(t.c, ch), *b2 = kept(random_vec<T>(t.c));
      program.add_mlp({t.c, ch, w1, b1, w2, b2});
      std::vector<T> y(t.x.size());
      levit::mlp_packed(t.x.data(), m, t.c, t.c, w1, b1, ch, w2, b2, y.data(), nthreads);
      t.x = std::move(y);
      std::snprintf(part, sizeof part, " mlp(%lld)", (long long)ch);
      desc += part;
      continue;
    }
    const int64_t heads = uniform(1, 3), dk = dim(8), dv = dim(8);
    const int64_t s = kind == 1 ? 1 : uniform(2, 3);
    const int64_t rows = (t.rows - 1) / s + 1, cols = (t.cols - 1) / s + 1, nq = rows * cols;
    const int64_t out_c = s == 1 ? t.c : dim(24);
    // Each head's slot holds [q | k | v] (or [k | v]) in a random order: the program must
    // read the offsets it is given, not assume the model's order.
    const int64_t per_head = (s == 1 ? 2 : 1) * dk + dv, width = heads * per_head;
    int64_t q_off = 0, k_off = 0, v_off = 0;
    {
      std::vector<std::pair<int64_t*, int64_t>> parts = {{&k_off, dk}, {&v_off, dv}};
      if (s == 1) parts.push_back({&q_off, dk});
      std::shuffle(parts.begin(), parts.end(), rng);
      int64_t offset = 0;
      for (auto& [where, size] : parts) *where = offset, offset += size;
    }
    const T *qkv_w = weight(width, t.c), *qkv_b = kept(random_vec<T>(width));
    const T *q_w = s == 1 ? nullptr : weight(heads * dk, t.c);
    const T *q_b = s == 1 ? nullptr : kept(random_vec<T>(heads * dk));
    const T *proj_w = weight(out_c, heads * dv), *proj_b = kept(random_vec<T>(out_c));
    const T* table = kept(random_vec<T>(heads * nq * n));
    const float scale = 0.5f;
    program.add_attention({t.c, out_c, heads, dk, dv, s, per_head, q_off, k_off, v_off, scale,
                           table, qkv_w, qkv_b, q_w, q_b, proj_w, proj_b});
    std::vector<T> qkv(static_cast<size_t>(m * width));
    levit::gemm_packed(t.x.data(), m, t.c, t.c, qkv_w, width, qkv_b, nullptr, 0,
                       levit::kActNone, qkv.data(), width, nthreads);
    levit::AttnArgsT<T> a{};
    a.batch = batch, a.heads = heads, a.nq = nq, a.nk = n, a.dk = dk, a.dv = dv;
    a.bias = table, a.scale = scale, a.hardswish = true, a.probs = false;
    a.k = qkv.data() + k_off, a.v = qkv.data() + v_off;
    a.k_sb = a.v_sb = n * width, a.k_sh = a.v_sh = per_head, a.k_sn = a.v_sn = width;
    std::vector<T> q;
    if (s == 1) {
      a.q = qkv.data() + q_off, a.q_sb = n * width, a.q_sh = per_head, a.q_sn = width;
    } else {
      std::vector<T> sub;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < t.rows; r += s)
          for (int64_t col = 0; col < t.cols; col += s) {
            const T* src = t.x.data() + ((b * t.rows + r) * t.cols + col) * t.c;
            sub.insert(sub.end(), src, src + t.c);
          }
      q.resize(static_cast<size_t>(batch * nq * heads * dk));
      levit::gemm_packed(sub.data(), batch * nq, t.c, t.c, q_w, heads * dk, q_b, nullptr, 0,
                         levit::kActNone, q.data(), heads * dk, nthreads);
      a.q = q.data(), a.q_sb = nq * heads * dk, a.q_sh = dk, a.q_sn = heads * dk;
    }
    std::vector<T> attn(static_cast<size_t>(batch * nq * heads * dv));
    a.out = attn.data();
    levit::attention(a, nthreads);
    std::vector<T> y(static_cast<size_t>(batch * nq * out_c));
    levit::gemm_packed(attn.data(), batch * nq, heads * dv, heads * dv, proj_w, out_c, proj_b,
                       s == 1 ? t.x.data() : nullptr, t.c, levit::kActNone, y.data(), out_c,
                       nthreads);
    t = Tokens<T>{std::move(y), rows, cols, out_c};
    std::snprintf(part, sizeof part, " attention(h%lld dk%lld dv%lld s%lld ->%lld)",
                  (long long)heads, (long long)dk, (long long)dv, (long long)s,
                  (long long)out_c);
    desc += part;
  }

  // the mean token, then the head if there is one
  const int64_t n = t.rows * t.cols;
  std::vector<double> mean(static_cast<size_t>(batch * t.c), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < t.c; ++j) mean[b * t.c + j] += to_float(t.x[(b * n + i) * t.c + j]) / double(n);
  std::vector<double> ref = mean;
  if (coin(0.7)) {
    const int64_t classes = dim(20);
    const std::vector<T> hw = random_vec<T>(classes * t.c, 1.0f / std::sqrt(float(t.c)));
    const T* hb = kept(random_vec<T>(classes));
    program.set_head(kept(packed_of(hw, classes, t.c, nthreads)), hb, t.c, classes);
    ref.assign(static_cast<size_t>(batch * classes), 0.0);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t o = 0; o < classes; ++o) {
        double acc = to_float(hb[o]);
        for (int64_t j = 0; j < t.c; ++j) acc += mean[b * t.c + j] * to_float(hw[o * t.c + j]);
        ref[b * classes + o] = acc;
      }
    std::snprintf(part, sizeof part, " head(%lld)", (long long)classes);
    desc += part;
  }
  std::snprintf(g_call, sizeof g_call, "Program<%s>(b=%lld c=%lld %lldx%lld:%s threads=%d isa=%s)",
                dtype_name<T>(), (long long)batch, (long long)cin, (long long)h, (long long)w, desc.c_str(),
                nthreads, levit::isa_name(levit::active_isa()));
  Guarded<T> workspace(program.workspace_elements(batch));
  Guarded<T> out(batch * program.output_features());
  // Half the runs profiled (each step timed): the same results, and a step list to check.
  std::vector<levit::StepTime> steps;
  const bool profiled = coin(0.5);
  program.run(images.data(), batch, cin * h * w, h * w, w, 1, workspace.data(), out.data(),
              nthreads, profiled ? &steps : nullptr);
  if (profiled) {
    if (steps.empty() || steps.front().name.rfind("stem", 0) != 0)
      return fail("profiled run: expected its steps, the stem's first");
    for (const levit::StepTime& step : steps)
      if (step.kind == nullptr || step.seconds < 0 || step.flops < 0)
        return fail("profiled run: a step without a kind, or negative time or flops");
  }
  if (!workspace.guards_intact()) return fail("wrote outside its workspace");
  if (!out.guards_intact()) return fail("wrote outside its output");
  const double rel = std::is_same_v<T, bf16> ? 0x1p-5 : tolerance<T>();  // see the header
  if (!close(g_call, out.data(), ref, [](int64_t i) { return i; }, rel))
    return fail("wrong values");
  return true;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--iters N] [--seed S] [--verbose]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  long long iters = 200;
  unsigned long long seed = 1;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    char* end = nullptr;
    if ((arg == "--iters" || arg == "--seed") && i + 1 < argc) {
      const char* text = argv[++i];
      errno = 0;
      const unsigned long long v = std::strtoull(text, &end, 10);
      if (end == text || *end != '\0' || errno != 0 || text[0] == '-') return usage(argv[0]);
      if (arg == "--iters") iters = static_cast<long long>(v);
      else seed = v;
    } else if (arg == "--verbose") {
      verbose = true;
    } else {
      return usage(argv[0]);
    }
  }
  rng.seed(seed);
  std::vector<levit::Isa> isas;
  for (const std::string& name : levit::available_isas()) {
    levit::Isa isa;
    if (levit::isa_from_name(name, &isa)) isas.push_back(isa);
  }
  long long counts[7] = {0, 0, 0, 0, 0, 0, 0};
  for (long long it = 0; it < iters; ++it) {
    // Every ISA path in turn, and both thread counts, so a short run covers each of them.
    const levit::Isa isa = isas[static_cast<size_t>(it) % isas.size()];
    if (!levit::set_isa(isa)) {
      std::fprintf(stderr, "set_isa(%s) refused\n", levit::isa_name(isa));
      return 1;
    }
    const int nthreads = (it / static_cast<long long>(isas.size())) % 2 ? 2 : 1;
    const int kind = static_cast<int>(uniform(0, 11));
    bool ok;
    const bool bf = coin(0.5);  // float32 or bf16 kernels (pack_weight: float32 layout only)
    if (kind < 4) ok = bf ? check_attention<bf16>(nthreads) : check_attention<float>(nthreads), ++counts[0];
    else if (kind < 7) ok = bf ? check_gemm<bf16>(nthreads) : check_gemm<float>(nthreads), ++counts[1];
    else if (kind < 9) ok = bf ? check_mlp<bf16>(nthreads) : check_mlp<float>(nthreads), ++counts[2];
    else if (kind < 10) ok = check_pack(nthreads), ++counts[3];
    else if (kind < 11) ok = bf ? check_conv<bf16>(nthreads) : check_conv<float>(nthreads), ++counts[4];
    else ok = bf ? check_program<bf16>(nthreads) : check_program<float>(nthreads), ++counts[5];
    counts[6] += bf;
    if (verbose) std::fprintf(stderr, "[%lld] %s\n", it, g_call);
    if (!ok) {
      std::fprintf(stderr, "levit_fuzz: iteration %lld of --seed %llu failed\n", it, seed);
      return 1;
    }
  }
  std::printf("levit_fuzz: %lld iterations passed (seed %llu; attention %lld, gemm %lld, "
              "mlp %lld, pack %lld, conv %lld, program %lld, %lld of them bf16; isas:", iters,
              seed, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6]);
  for (levit::Isa isa : isas) std::printf(" %s", levit::isa_name(isa));
  std::printf(")\n");
  return 0;
}
