// bf16.h — the bfloat16 storage type of the bf16 kernels and its scalar conversions.
//
// A bfloat16 is the upper half of a float32 (sign, 8 exponent bits, 7 mantissa bits). The
// kernels read bf16 inputs and weights, compute in float32 (products of two bf16 values are
// exact in float32), and round each output once:
//   widen:  f = bits << 16                                  (exact)
//   narrow: round to nearest, ties to even, on the dropped 16 bits; NaN stays NaN (0x7FC0,
//           what PyTorch's c10::BFloat16 gives); ±inf and overflow to ±inf as in IEEE.
// These are the same rules as torch's float32 -> bfloat16 conversion, so a kernel output is
// what PyTorch would store for the same float32 value. The vector versions live in simd.h.
#pragma once

#include <cstdint>
#include <cstring>

namespace levit {

// A distinct type (not uint16_t) so that a bf16 buffer cannot be passed where float or an
// integer count is expected.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes: tensors are read in place");

inline float to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(float x) { return x; }

inline uint16_t round_bits(uint32_t u) {  // float32 bits -> bf16 bits (see the header)
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <class T>
inline T from_float(float f);

template <>
inline float from_float<float>(float f) {
  return f;
}

template <>
inline bf16 from_float<bf16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return bf16{round_bits(u)};
}

}  // namespace levit
