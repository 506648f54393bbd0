// avx512_emulation.h — TEST BUILDS ONLY: the AVX-512 and AVX512_BF16 intrinsics the kernels
// use, taken from SIMDe's portable implementations (https://github.com/simd-everywhere/simde,
// Debian/Ubuntu: libsimde-dev), so the avx512 and avx512_bf16 paths run on an AVX2 CPU.
//
// Why: the AVX512_BF16 kernel (gemm_avx512bf16.cpp) and the AVX-512 instantiations of the
// shared templates can only be compiled, not run, on the AVX2 machines most sessions get. An
// emulated build runs them through tests/fuzz (tests/test_sanitizers.py), so a wrong
// pair index, tail mask or lane order shows up before anyone measures on a Zen 4.
//
// What it does not check: speed, and the compiler's code for the real instructions. The
// arithmetic is SIMDe's: vdpbf16ps there rounds like the Intel pseudocode but may keep
// denormals that the instruction flushes. The masked loads and stores below touch only the
// lanes their mask selects, as the hardware does.
//
// Enabled by the CMake option LEVIT_EMULATE_AVX512 (setup.py: LEVIT_EMULATE_AVX512=1), which
// compiles the *_avx512*.cpp files with AVX2 flags and LEVIT_EMULATE_AVX512 defined, and makes
// cpu_features.cpp offer both AVX-512 paths wherever AVX2 is present and say so in
// isa_emulation() (levit_kernels.info(): "cpu extension: built, TEST BUILD: ...").
#pragma once

#if !defined(__AVX2__) || !defined(__FMA__)
#error "the emulated AVX-512 build compiles its AVX-512 files with -mavx2 -mfma"
#endif

// Function-name aliases only (_mm512_add_ps -> simde_mm512_add_ps). SIMDe's type aliases are
// left off: GCC's <immintrin.h> always declares __m512 & co., and typedefs would collide; the
// type names are macros below instead, which only affect the code after this header.
#define SIMDE_X86_AVX512F_ENABLE_NATIVE_ALIASES
#define SIMDE_X86_AVX512VL_ENABLE_NATIVE_ALIASES
#define SIMDE_X86_AVX512BW_ENABLE_NATIVE_ALIASES
#define SIMDE_X86_AVX512DQ_ENABLE_NATIVE_ALIASES
#define SIMDE_X86_AVX512BF16_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#define __m512 simde__m512
#define __m512i simde__m512i
#define __m512bh simde__m512bh
#define __mmask16 simde__mmask16
#define __mmask32 simde__mmask32

#include <cstdint>
#include <cstring>

// Intrinsics SIMDe 0.7.4 lacks, written lane by lane from the Intel definitions.
namespace levit_emulation {

// Masked loads and stores of 16 lanes of type Lane: only the lanes mask k selects are read or
// written (masked-off lanes never fault or race, as in hardware); a load zeroes the others.
template <class Lane, class Vec>
Vec masked_load(uint32_t k, const void* p) {
  static_assert(sizeof(Vec) == 16 * sizeof(Lane), "16 lanes");
  Lane v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + i * sizeof(Lane), sizeof(Lane));
  Vec r;
  std::memcpy(&r, v, sizeof r);
  return r;
}

template <class Lane, class Vec>
void masked_store(void* p, uint32_t k, Vec a) {
  static_assert(sizeof(Vec) == 16 * sizeof(Lane), "16 lanes");
  Lane v[16];
  std::memcpy(v, &a, sizeof v);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<char*>(p) + i * sizeof(Lane), &v[i], sizeof(Lane));
}

inline simde__m512 maskz_loadu_ps(simde__mmask16 k, const void* p) {
  return masked_load<float, simde__m512>(k, p);
}
inline void mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 a) {
  masked_store<float>(p, k, a);
}
inline simde__m256i maskz_loadu_epi16(simde__mmask16 k, const void* p) {
  return masked_load<uint16_t, simde__m256i>(k, p);
}
inline void mask_storeu_epi16(void* p, simde__mmask16 k, simde__m256i a) {
  masked_store<uint16_t>(p, k, a);
}

// vmovdqu16 with merge masking, 32 lanes (the AMX kernel's row copies): the lanes k selects
// read from p, the others kept from src; unselected lanes are not read at all.
inline simde__m512i mask_loadu_epi16(simde__m512i src, simde__mmask32 k, const void* p) {
  uint16_t v[32];
  std::memcpy(v, &src, sizeof v);
  for (int i = 0; i < 32; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + 2 * i, 2);
  simde__m512i r;
  std::memcpy(&r, v, sizeof r);
  return r;
}

// Each of 16 lanes converted from In to Out (truncation or zero extension, by the types).
template <class Out, class In, class Result, class Arg>
Result convert_lanes(Arg a) {
  static_assert(sizeof(Arg) == 16 * sizeof(In) && sizeof(Result) == 16 * sizeof(Out), "16 lanes");
  In in[16];
  Out out[16];
  std::memcpy(in, &a, sizeof in);
  for (int i = 0; i < 16; ++i) out[i] = static_cast<Out>(in[i]);
  Result r;
  std::memcpy(&r, out, sizeof r);
  return r;
}

inline simde__m256i cvtepi32_epi16(simde__m512i a) {  // vpmovdw: keep each lane's low 16 bits
  return convert_lanes<uint16_t, uint32_t, simde__m256i>(a);
}

inline simde__m512i cvtepu16_epi32(simde__m256i a) {  // vpmovzxwd: zero-extend
  return convert_lanes<uint32_t, uint16_t, simde__m512i>(a);
}

inline simde__m256 extractf32x8_ps(simde__m512 a, int imm) {
  float v[16];
  simde_mm512_storeu_ps(v, a);
  return simde_mm256_loadu_ps(v + 8 * (imm & 1));
}

// vcvtneps2bf16, lane by lane as Intel's pseudocode has it: zero and denormal -> signed zero,
// inf truncated, NaN truncated with the quiet bit set, normal values rounded to nearest even.
inline simde__m256i cvtneps_pbh(simde__m512 a) {
  uint32_t in[16];
  uint16_t out[16];
  std::memcpy(in, &a, sizeof in);
  for (int i = 0; i < 16; ++i) {
    const uint32_t u = in[i], exponent = u & 0x7F800000u, mantissa = u & 0x007FFFFFu;
    if (exponent == 0) out[i] = static_cast<uint16_t>((u >> 16) & 0x8000u);
    else if (exponent == 0x7F800000u && mantissa == 0) out[i] = static_cast<uint16_t>(u >> 16);
    else if (exponent == 0x7F800000u) out[i] = static_cast<uint16_t>((u >> 16) | 0x40u);
    else out[i] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  simde__m256i r;
  std::memcpy(&r, out, sizeof r);
  return r;
}

}  // namespace levit_emulation

#undef _mm512_maskz_loadu_ps  // a newer SIMDe may have its own
#define _mm512_maskz_loadu_ps levit_emulation::maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps levit_emulation::mask_storeu_ps
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16 levit_emulation::maskz_loadu_epi16
#undef _mm256_mask_storeu_epi16
#define _mm256_mask_storeu_epi16 levit_emulation::mask_storeu_epi16
#undef _mm512_mask_loadu_epi16
#define _mm512_mask_loadu_epi16 levit_emulation::mask_loadu_epi16
#undef _mm512_cvtepi32_epi16
#define _mm512_cvtepi32_epi16 levit_emulation::cvtepi32_epi16
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 levit_emulation::cvtepu16_epi32
#undef _mm512_extractf32x8_ps
#define _mm512_extractf32x8_ps levit_emulation::extractf32x8_ps
#undef _mm512_cvtneps_pbh
#define _mm512_cvtneps_pbh levit_emulation::cvtneps_pbh
