// cpu_features.cpp — runtime ISA detection (CPUID + XGETBV) and the active-path switch.
//
// Compiled with baseline flags: it must run on any x86-64 CPU. On other architectures only
// the generic path exists.
#include "cpu_features.h"

#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define LEVIT_X86 1
#endif
#if defined(LEVIT_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace levit {
namespace {

struct Features {
  bool avx2 = false;
  bool avx512 = false;
  bool avx512_bf16 = false;
  bool amx_bf16 = false;
};

#ifdef LEVIT_X86
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux hands AMX's 8 KiB of tile data to a process only on request (arch_prctl
// ARCH_REQ_XCOMP_PERM for XTILEDATA, kernel 5.16+); until then a tile instruction faults. The
// permission is the whole process's, so asking once covers every thread, the pool's included.
bool amx_permitted() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

Features detect() {
  Features f;
#ifdef LEVIT_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(osxsave && avx && fma)) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_saved = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
  const bool zmm_saved = (xcr0 & 0xE6) == 0xE6;    // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned max_subleaf = a;
  const bool amx_tile = d & (1u << 24), amx_bf16 = d & (1u << 22);
  const bool tiles_saved = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  f.avx2 = ymm_saved && avx2;
  f.avx512 = f.avx2 && zmm_saved && avx512f && avx512dq && avx512bw && avx512vl;
  if (max_subleaf >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = f.avx512 && (a & (1u << 5));  // leaf 7 subleaf 1 EAX bit 5: AVX512_BF16
  }
  // The AMX path's epilogues and softmax are AVX-512 code rounding with AVX512_BF16's
  // vcvtneps2bf16, and its attention probabilities run the avx512 kernels.
  f.amx_bf16 = f.avx512_bf16 && amx_tile && amx_bf16 && tiles_saved && amx_permitted();
#endif
#if defined(LEVIT_EMULATE_AVX512)
  // Test build (avx512_emulation.h): the AVX-512 files are portable code compiled for AVX2.
  f.avx512 = f.avx512_bf16 = f.amx_bf16 = f.avx2;
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

Isa best_isa() {
  if (features().amx_bf16) return Isa::amx_bf16;
  if (features().avx512_bf16) return Isa::avx512_bf16;
  if (features().avx512) return Isa::avx512;
  if (features().avx2) return Isa::avx2;
  return Isa::generic;
}

std::string& note() {
  static std::string n;
  return n;
}

std::string& warning() {
  static std::string w;
  return w;
}

Isa initial_isa() {
  const Isa best = best_isa();
  note() = std::string("best available on this CPU (") + isa_name(best) + ")";
  const char* env = std::getenv("LEVIT_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string value = std::string("LEVIT_CPU_ISA=") + env;
  Isa want;
  if (!isa_from_name(env, &want)) {
    warning() = value + " is not one of generic|avx2|avx512|avx512_bf16|amx_bf16: ignored, " +
                "using " + isa_name(best);
    note() = warning();
    return best;
  }
  if (!cpu_supports(want)) {
    warning() = value + " but this CPU (or OS) lacks " + isa_name(want) + ": ignored, using " +
                isa_name(best);
    note() = warning();
    return best;
  }
  note() = value;
  return want;
}

std::atomic<int>& active() {
  static std::atomic<int> a{static_cast<int>(initial_isa())};
  return a;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::amx_bf16: return "amx_bf16";
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

bool isa_from_name(const std::string& name, Isa* out) {
  std::string key;  // "AVX512-BF16" and " avx2 " name paths too
  for (char ch : name) {
    if (std::isspace(static_cast<unsigned char>(ch))) continue;
    key += ch == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  for (Isa isa : {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx_bf16}) {
    if (key == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::amx_bf16: return features().amx_bf16;
    case Isa::avx512_bf16: return features().avx512_bf16;
    case Isa::avx512: return features().avx512;
    case Isa::avx2: return features().avx2;
    default: return true;
  }
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (Isa i : {Isa::amx_bf16, Isa::avx512_bf16, Isa::avx512, Isa::avx2, Isa::generic})
    if (cpu_supports(i)) out.push_back(isa_name(i));
  return out;
}

Isa active_isa() { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

bool set_isa(Isa isa) {
  if (!cpu_supports(isa)) return false;
  active().store(static_cast<int>(isa), std::memory_order_relaxed);
  note() = std::string("set_isa(\"") + isa_name(isa) + "\")";
  return true;
}

const std::string& isa_note() {
  active();  // make sure the initial choice (and its note) has been made
  return note();
}

const char* isa_emulation() {
#if defined(LEVIT_EMULATE_AVX512)
  return "AVX-512 and AVX512_BF16 emulated by SIMDe, AMX tiles by plain C++, on AVX2 (a test "
         "build, not for speed)";
#else
  return "";
#endif
}

const std::string& isa_warning() {
  active();
  return warning();
}

}  // namespace levit
