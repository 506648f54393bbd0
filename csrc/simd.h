// simd.h — thin vector "traits" structs over AVX2 and AVX-512 intrinsics, shared by the
// ISA-specific kernel files (gemm_avx2.cpp, attention_avx512.cpp, ...).
//
// Each struct exists only in translation units compiled with its ISA flags, and everything
// here lives in an anonymous namespace: every .cpp that includes this file gets its own copy,
// so the linker can never merge an AVX-512 instantiation into code that runs on an AVX2 CPU.
//
// bf16 (bf16.h): load_bf16 widens W values to float32 (exact), store_bf16 rounds W floats to
// bf16 (nearest-even, NaN kept NaN: the rule of bf16.h, in integer ops so every ISA path
// rounds alike); the `n` variants touch only the first n elements. even()/odd() split W
// pairs of a pair-interleaved bf16 panel row (2·W values, [w0 w1] per lane) into the float32
// values of the even and the odd element: even = lane << 16, odd = lane & 0xFFFF0000.
//
// exp<V>(): Cephes-style expf. Split x = n·ln2 + r with |r| <= ln2/2 (ln2 in two parts, so r is
// exact), e^r by a degree-7 polynomial (1 + r + r²·p(r), p of degree 5), 2^n built in the exponent
// bits. Error ~1 ulp over the range.
#pragma once

#include <immintrin.h>
#if defined(LEVIT_EMULATE_AVX512)
#include "avx512_emulation.h"  // test builds: AVX-512 from portable code (CMake LEVIT_EMULATE_AVX512)
#endif

#include <cstdint>
#include <cstring>

#include "bf16.h"

namespace levit {
namespace {

constexpr float kExpLo = -87.33654475f;  // ln(2^-126): smallest normal result
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;   // ln2 split so n·kLn2Hi is exact for |n| <= 128
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f,
                kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;

#if defined(__AVX512F__) || defined(LEVIT_EMULATE_AVX512)
struct Avx512 {
  using vec = __m512;
  using mask = __mmask16;
  static constexpr int W = 16;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec set1(float x) { return _mm512_set1_ps(x); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  // Mask of the first n lanes (n clamped to [0, W]).
  static mask tail(int64_t n) {
    return n >= W ? mask(0xFFFF) : n <= 0 ? mask(0) : mask((1u << n) - 1u);
  }
  static vec load(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, vec v, mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static vec select(mask m, vec a, vec b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static vec fnma(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a·b
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
  static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  static vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
  // Written out (not _mm512_reduce_*): GCC 12's versions trip -Wmaybe-uninitialized.
  static float hmax(vec v) {
    const __m256 h = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float hsum(vec v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  // 2^n from t = n + 1.5·2^23 + 127 (an integer-valued float): its low mantissa bits are n + 127.
  static vec pow2_from_magic(vec t) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23));
  }
  // v where x >= lo (or x is NaN), else 0.
  static vec zero_below(vec v, vec x, vec lo) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), v);
  }
  using ivec = __m512i;
  static vec load_bf16(const bf16* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static vec load_bf16(const bf16* p, int64_t n) { return widen(_mm256_maskz_loadu_epi16(tail(n), p)); }
  static void store_bf16(bf16* p, vec x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(x));
  }
  static void store_bf16(bf16* p, vec x, int64_t n) { _mm256_mask_storeu_epi16(p, tail(n), narrow(x)); }
  static ivec load_pairs(const bf16* p) { return _mm512_loadu_si512(p); }
  static vec even(ivec raw) { return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)); }
  static vec odd(ivec raw) {
    return _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int(0xFFFF0000u))));
  }
  static vec widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m256i narrow(vec x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
    r = _mm512_srli_epi32(r, 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
  }
};
#endif

#if defined(__AVX512BF16__) || defined(LEVIT_EMULATE_AVX512)
// The AVX512_BF16 path's traits: Avx512 with the stores rounding by vcvtneps2bf16, one
// instruction where `narrow` takes eight (its tiles store after as few as 8 dot products per
// output vector). The same nearest-even rounding of normal values, inf kept; unlike bf16.h's
// rule, denormal values become signed zeros (as vdpbf16ps already treats them on this path)
// and a NaN keeps its sign and top payload bits (still a NaN, quietened) instead of 0x7FC0.
struct Avx512Bf16 : Avx512 {
  static __m256i narrow(vec x) { return (__m256i)_mm512_cvtneps_pbh(x); }
  static void store_bf16(bf16* p, vec x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(x));
  }
  static void store_bf16(bf16* p, vec x, int64_t n) { _mm256_mask_storeu_epi16(p, tail(n), narrow(x)); }
};
#endif

#if defined(__AVX2__) && defined(__FMA__)
struct Avx2 {
  using vec = __m256;
  using mask = __m256i;
  static constexpr int W = 8;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float x) { return _mm256_set1_ps(x); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static mask tail(int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int k = n >= W ? W : n <= 0 ? 0 : static_cast<int>(n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), lane);
  }
  // maskload/maskstore never touch memory in masked-off lanes (no fault past the end).
  static vec load(const float* p, mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, vec v, mask m) { _mm256_maskstore_ps(p, m, v); }
  static vec select(mask m, vec a, vec b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec fnma(vec a, vec b, vec c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a·b
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static vec min(vec a, vec b) { return _mm256_min_ps(a, b); }
  static float hmax(vec v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float hsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static vec pow2_from_magic(vec t) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  }
  static vec zero_below(vec v, vec x, vec lo) {
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), v);
  }
  using ivec = __m256i;
  static vec load_bf16(const bf16* p) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // No 16-bit masked loads/stores in AVX2: partial vectors go through a stack copy.
  static vec load_bf16(const bf16* p, int64_t n) {
    alignas(16) uint16_t tmp[W] = {};
    std::memcpy(tmp, p, static_cast<size_t>(clamp_n(n)) * 2);
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
  static void store_bf16(bf16* p, vec x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(x));
  }
  static void store_bf16(bf16* p, vec x, int64_t n) {
    alignas(16) uint16_t tmp[W];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), narrow(x));
    std::memcpy(p, tmp, static_cast<size_t>(clamp_n(n)) * 2);
  }
  static ivec load_pairs(const bf16* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static vec even(ivec raw) { return _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16)); }
  static vec odd(ivec raw) {
    return _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(int(0xFFFF0000u))));
  }
  static int64_t clamp_n(int64_t n) { return n >= W ? W : n <= 0 ? 0 : n; }
  static vec widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static __m128i narrow(vec x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
    // packus works per 128-bit lane: (r0..r3 r0..r3 | r4..r7 r4..r7); gather qwords 0 and 2.
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8));
  }
};
#endif

// e^x for x <= 88 (the softmax calls it on x = s - max(s) <= 0). Short dependency chain, since
// the softmax pass is latency-bound: n = round(x·log2e) by adding a "magic" 1.5·2^23 + 127
// (the FMA's rounding does the rounding, and the sum's low mantissa bits are already the
// biased exponent of 2^n); the polynomial in Estrin form (depth 3 instead of Horner's 5).
// x < ln(2^-126), -inf included, gives exactly 0; NaN gives NaN.
template <class V>
inline typename V::vec exp(typename V::vec x) {
  using vec = typename V::vec;
  const vec magic = V::set1(12582912.0f + 127.0f);
  const vec t = V::fma(x, V::set1(kLog2e), magic);
  const vec n = V::sub(t, magic);
  vec r = V::fnma(n, V::set1(kLn2Hi), x);  // r = x - n·ln2, exact in two steps
  r = V::fnma(n, V::set1(kLn2Lo), r);
  const vec r2 = V::mul(r, r);
  const vec c45 = V::fma(V::set1(kExpP4), r, V::set1(kExpP5));
  const vec c23 = V::fma(V::set1(kExpP2), r, V::set1(kExpP3));
  const vec c01 = V::fma(V::set1(kExpP0), r, V::set1(kExpP1));
  const vec p = V::fma(r2, V::fma(r2, c01, c23), c45);
  const vec y = V::fma(p, r2, V::add(r, V::set1(1.0f)));  // e^r = 1 + r + r²·p(r)
  return V::zero_below(V::mul(y, V::pow2_from_magic(t)), x, V::set1(kExpLo));
}

// Hardswish x·min(max(x + 3, 0), 6)/6, with ·(1/6) instead of PyTorch's /6 (may differ by
// 1 ulp): a vector division per output costs up to half of a short-K GEMM tile (the stem's
// first convolution has K = 27).
template <class V>
inline typename V::vec hardswish(typename V::vec x) {
  const auto t = V::min(V::max(V::add(x, V::set1(3.0f)), V::zero()), V::set1(6.0f));
  return V::mul(V::mul(x, t), V::set1(1.0f / 6.0f));
}

// Element-type-generic loads and stores for kernels templated on float or bf16 storage.
template <class V>
inline typename V::vec load_as_float(const float* p) { return V::load(p); }
template <class V>
inline typename V::vec load_as_float(const bf16* p) { return V::load_bf16(p); }
template <class V>
inline typename V::vec load_as_float(const float* p, int64_t n) { return V::load(p, V::tail(n)); }
template <class V>
inline typename V::vec load_as_float(const bf16* p, int64_t n) { return V::load_bf16(p, n); }
template <class V>
inline void store_from_float(float* p, typename V::vec x) { V::store(p, x); }
template <class V>
inline void store_from_float(bf16* p, typename V::vec x) { V::store_bf16(p, x); }
template <class V>
inline void store_from_float(float* p, typename V::vec x, int64_t n) { V::store(p, x, V::tail(n)); }
template <class V>
inline void store_from_float(bf16* p, typename V::vec x, int64_t n) { V::store_bf16(p, x, n); }

inline float hardswish_scalar(float x) {
  const float t = x + 3.0f;
  return x * (t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t)) / 6.0f;
}

}  // namespace
}  // namespace levit
