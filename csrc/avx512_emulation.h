// avx512_emulation.h — TEST BUILDS ONLY: the AVX-512 and AVX512_BF16 intrinsics the kernels
// use, taken from SIMDe's portable implementations (https://github.com/simd-everywhere/simde,
// Debian/Ubuntu: libsimde-dev), so the avx512 and avx512_bf16 paths run on an AVX2 CPU.
//
// Why: the AVX512_BF16 kernel (gemm_avx512bf16.cpp) and the AVX-512 instantiations of the
// shared templates can only be compiled, not run, on the AVX2 machines most sessions get. An
// emulated build runs them through tests/fuzz (tests/test_emulated_avx512.py), so a wrong
// pair index, tail mask or lane order shows up before anyone measures on a Zen 4.
//
// What it does not check: speed, and the compiler's code for the real instructions. The
// arithmetic is SIMDe's: vdpbf16ps there rounds like the Intel pseudocode but may keep
// denormals that the instruction flushes. The masked loads and stores below touch only the
// lanes their mask selects, as the hardware does.
//
// Enabled by the CMake option LEVIT_EMULATE_AVX512 (setup.py: LEVIT_EMULATE_AVX512=1), which
// compiles the *_avx512*.cpp files with AVX2 flags and LEVIT_EMULATE_AVX512 defined, and makes
// cpu_features.cpp offer both AVX-512 paths wherever AVX2 is present (its isa_note() says
// "TEST BUILD ... emulated", so levit_kernels.info() shows it).
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

inline simde__m512 maskz_loadu_ps(simde__mmask16 k, const void* p) {
  float v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + 4 * i, 4);
  return simde_mm512_loadu_ps(v);
}

inline void mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 a) {
  float v[16];
  simde_mm512_storeu_ps(v, a);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<char*>(p) + 4 * i, &v[i], 4);
}

inline simde__m256i maskz_loadu_epi16(simde__mmask16 k, const void* p) {
  uint16_t v[16] = {};
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&v[i], static_cast<const char*>(p) + 2 * i, 2);
  return simde_mm256_loadu_si256(v);
}

inline void mask_storeu_epi16(void* p, simde__mmask16 k, simde__m256i a) {
  uint16_t v[16];
  simde_mm256_storeu_si256(v, a);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<char*>(p) + 2 * i, &v[i], 2);
}

inline simde__m256i cvtepi32_epi16(simde__m512i a) {  // vpmovdw: truncate each lane to 16 bits
  uint32_t in[16];
  uint16_t out[16];
  simde_mm512_storeu_si512(in, a);
  for (int i = 0; i < 16; ++i) out[i] = static_cast<uint16_t>(in[i]);
  return simde_mm256_loadu_si256(out);
}

inline simde__m512i cvtepu16_epi32(simde__m256i a) {  // vpmovzxwd: zero-extend
  uint16_t in[16];
  uint32_t out[16];
  simde_mm256_storeu_si256(in, a);
  for (int i = 0; i < 16; ++i) out[i] = in[i];
  return simde_mm512_loadu_si512(out);
}

inline simde__m256 extractf32x8_ps(simde__m512 a, int imm) {
  float v[16];
  simde_mm512_storeu_ps(v, a);
  return simde_mm256_loadu_ps(v + 8 * (imm & 1));
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
#undef _mm512_cvtepi32_epi16
#define _mm512_cvtepi32_epi16 levit_emulation::cvtepi32_epi16
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32 levit_emulation::cvtepu16_epi32
#undef _mm512_extractf32x8_ps
#define _mm512_extractf32x8_ps levit_emulation::extractf32x8_ps
