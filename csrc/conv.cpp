// conv.cpp — LeViT's convolution stem as an implicit GEMM with a fused epilogue:
//   out[b, oy, ox, :] = act( Σ_{ky,kx,ci} x[b, oy·s - p + ky, ox·s - p + kx, ci] · W[:, ky, kx, ci] + bias )
// in NHWC, so the stem's last output is already the (B, N, C) token matrix of the first stage.
// Reference: torch.nn.functional.conv2d (+ hardswish), as levit_kernels.ops.cpu.conv2d_packed's
// tests compare it.
//
// The input is read through its strides, so NCHW images feed the first convolution in place
// (no layout pass). Each thread task is one block of output pixels: their kh·kw·cin patches are gathered into a
// thread-local buffer (row stride padded so rows never alias in L1; out-of-image taps are 0),
// which then feeds the packed GEMM block kernels with the bias + Hardswish epilogue applied in
// registers. The patch matrix never exists as a whole, and no separate activation pass runs.
//
// Float32 and bf16 share this code (templates on the element type T); the bf16 GEMMs
// accumulate in float32 and round each output once (gemm_bf16.h). A bf16 patch row holds each
// kernel row's kw·cin values padded with a zero to an even length, the runs the packed bf16
// weight is laid out in. Reference: torch.nn.functional.conv2d (+ Hardswish).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "gemm.h"
#include "gemm_bf16.h"
#include "thread_pool.h"

namespace levit {

namespace {

// Rows [i0, i0 + rows) of the patch matrix: the kh·kw·cin patch of each output pixel, in
// (ky, kx, ci) order, zeros off the image. Arguments are copied to locals first: the stores
// into `dst` could otherwise alias them in the compiler's eyes and force reloads per tap.
// Values per kernel row of a patch row: kw·cin, padded to pairs in bf16.
template <class T>
int64_t run_stride(int64_t run) {
  return std::is_same_v<T, bf16> ? run + run % 2 : run;
}

template <class T>
void gather_patches(const ConvArgsT<T>& a, int64_t ho, int64_t wo, int64_t i0, int64_t rows,
                    T* dst, int64_t ld) {
  const T zero{};
  const T* const x = a.x;
  const int64_t h = a.h, w = a.w, cin = a.cin, sb = a.sb, sh = a.sh, sw = a.sw, sc = a.sc;
  const int64_t kh = a.kh, kw = a.kw, stride = a.stride, pad = a.pad;
  const int64_t run = kw * cin, step = run_stride<T>(run);
  const bool nhwc = sc == 1 && sw == cin;  // a kernel row's kw taps are one contiguous run
  // Output pixel (b, oy, ox) of row i0, then stepped row by row (three divisions per row
  // would cost as much as gathering a 27-float patch).
  int64_t b = i0 / (ho * wo), oy = i0 / wo % ho, ox = i0 % wo;
  for (int64_t r = 0; r < rows; ++r, dst += ld) {
    const int64_t iy0 = oy * stride - pad, ix0 = ox * stride - pad;
    const bool whole_rows = nhwc && ix0 >= 0 && ix0 + kw <= w;
    T* d = dst;
    for (int64_t ky = 0; ky < kh; ++ky, d += step) {
      const int64_t iy = iy0 + ky;
      if (step > run) d[run] = zero;  // the pair padding of a bf16 run
      if (iy < 0 || iy >= h) {
        for (int64_t i = 0; i < run; ++i) d[i] = zero;
        continue;
      }
      const T* src_row = x + b * sb + iy * sh;
      if (whole_rows) {
        const T* src = src_row + ix0 * sw;
        for (int64_t i = 0; i < run; ++i) d[i] = src[i];
        continue;
      }
      for (int64_t kx = 0; kx < kw; ++kx) {  // image edge, or a non-NHWC layout
        const int64_t ix = ix0 + kx;
        T* dk = d + kx * cin;
        const T* src = src_row + ix * sw;
        if (ix < 0 || ix >= w) {
          for (int64_t c = 0; c < cin; ++c) dk[c] = zero;
        } else {  // e.g. NCHW images read in place: channels are a plane apart
          for (int64_t c = 0; c < cin; ++c) dk[c] = src[c * sc];
        }
      }
    }
    if (++ox == wo) {
      ox = 0;
      if (++oy == ho) oy = 0, ++b;
    }
  }
}

template <class T>
void conv2d_packed_t(const ConvArgsT<T>& a, int nthreads) {
  const int64_t ho = (a.h + 2 * a.pad - a.kh) / a.stride + 1;
  const int64_t wo = (a.w + 2 * a.pad - a.kw) / a.stride + 1;
  const int64_t m = a.batch * ho * wo, k = a.kh * run_stride<T>(a.kw * a.cin);
  const int64_t mb = gemm_row_block<T>(), lda = padded_stride(k);
  parallel_for((m + mb - 1) / mb, nthreads, [&](int64_t ib) {
    thread_local std::vector<T> patches;
    if (static_cast<int64_t>(patches.size()) < mb * lda) patches.resize(mb * lda);
    const int64_t i0 = ib * mb, rows = std::min(mb, m - i0);
    gather_patches(a, ho, wo, i0, rows, patches.data(), lda);
    gemm_rows_all(patches.data(), lda, rows, k, a.packed, a.cout, a.bias, a.act,
                  a.out + i0 * a.cout, a.cout);
  });
}

template <class T>
void conv2d_padded_t(const PaddedConvArgsT<T>& a, int nthreads) {
  const T zero{};
  const int64_t ho = (a.hp - a.kernel) / a.stride + 1, wo = (a.wp - a.kernel) / a.stride + 1;
  const int64_t p = a.out_pad, out_w = wo + 2 * p, c = a.cout;
  const int64_t run = a.kernel * a.cin;  // one kernel row of a patch: contiguous in the input
  // One task per output row: its pixels' patches are `kernel` strided matrices (one per kernel
  // row) with row stride stride·cin, multiplied straight out of the padded input.
  parallel_for(a.batch * ho, nthreads, [&](int64_t t) {
    const int64_t b = t / ho, oy = t % ho;
    T* image = a.out + b * (ho + 2 * p) * out_w * c;
    T* row = image + ((oy + p) * out_w + p) * c;
    if (p > 0) {  // the next convolution's zero border around this row (and above / below)
      std::fill(row - p * c, row, zero);
      std::fill(row + wo * c, row + (wo + p) * c, zero);
      if (oy == 0) std::fill(image, image + p * out_w * c, zero);
      if (oy == ho - 1) std::fill(row + (wo + p) * c, row + (wo + p + p * out_w) * c, zero);
    }
    // Kernel row ky of the patches: input row oy·stride + ky, one padded row (wp·cin) apart.
    gemm_rows_segments(a.x + (b * a.hp + oy * a.stride) * a.wp * a.cin, a.wp * a.cin, a.kernel,
                       run, a.stride * a.cin, wo, a.packed, c, a.bias, a.act, row, c);
  });
}

}  // namespace

void conv2d_packed(const ConvArgsT<float>& a, int nthreads) { conv2d_packed_t(a, nthreads); }
void conv2d_packed(const ConvArgsT<bf16>& a, int nthreads) { conv2d_packed_t(a, nthreads); }
void conv2d_padded(const PaddedConvArgsT<float>& a, int nthreads) { conv2d_padded_t(a, nthreads); }
void conv2d_padded(const PaddedConvArgsT<bf16>& a, int nthreads) { conv2d_padded_t(a, nthreads); }

// One image row of three channel planes (NCHW RGB, unit stride along the row) interleaved
// into NHWC, pixel by pixel: the images' pad step 1.5x (float32) and 1.7x (bf16) faster than
// with the channel-by-channel loop below, whose stores land a pixel apart (Zen 3, LeViT-128S
// batch 16, in-process A/B; benchmarks/README.md).
template <class T>
void interleave_rgb_row(const T* __restrict r, const T* __restrict g, const T* __restrict b,
                        int64_t w, T* __restrict dst) {
  for (int64_t i = 0; i < w; ++i) {
    dst[3 * i] = r[i];
    dst[3 * i + 1] = g[i];
    dst[3 * i + 2] = b[i];
  }
}

template <class T>
void pad_nhwc(const T* x, int64_t batch, int64_t h, int64_t w, int64_t c, int64_t sb, int64_t sh,
              int64_t sw, int64_t sc, int64_t pad, T* out, int nthreads) {
  const T zero{};
  const int64_t hp = h + 2 * pad, wp = w + 2 * pad;
  parallel_for(batch * hp, nthreads, [&](int64_t t) {
    const int64_t b = t / hp, y = t % hp - pad;
    T* row = out + t * wp * c;
    if (y < 0 || y >= h) {
      std::fill(row, row + wp * c, zero);
      return;
    }
    std::fill(row, row + pad * c, zero);
    std::fill(row + (pad + w) * c, row + wp * c, zero);
    const T* src = x + b * sb + y * sh;
    T* dst = row + pad * c;
    if (sc == 1 && sw == c) {
      std::copy(src, src + w * c, dst);
      return;
    }
    if (c == 3 && sw == 1) {
      interleave_rgb_row(src, src + sc, src + 2 * sc, w, dst);
      return;
    }
    for (int64_t ch = 0; ch < c; ++ch)  // e.g. NCHW: one plane row per channel, interleaved
      for (int64_t i = 0; i < w; ++i) dst[i * c + ch] = src[ch * sc + i * sw];
  });
}

template void pad_nhwc<float>(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, float*, int);
template void pad_nhwc<bf16>(const bf16*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, int64_t, bf16*, int);

}  // namespace levit
