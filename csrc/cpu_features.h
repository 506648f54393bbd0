// cpu_features.h — which instruction-set path the CPU kernels run.
//
// Five paths, best first: "amx_bf16" (the avx512_bf16 path with the bf16 GEMMs on AMX tiles),
// "avx512_bf16" (the AVX-512 path plus AVX512_BF16's vdpbf16ps for the bf16 GEMMs and
// attention), "avx512" (AVX-512F/DQ/BW/VL + FMA), "avx2" (AVX2 + FMA) and "generic" (portable
// C++ built with the compiler's baseline flags). float32 kernels run the same code on
// amx_bf16, avx512_bf16 and avx512; what each path means for bf16 is in the bf16 kernel table
// (gemm_bf16.cpp, bf16_path()). The choice is made once from CPUID + XGETBV (the OS must also
// save the wide registers, and for AMX grant the process its tile state), can be overridden
// with the environment variable
// LEVIT_CPU_ISA=generic|avx2|avx512|avx512_bf16|amx_bf16 (case and '-'/'_' ignored), and can be
// switched at run time with set_isa() so one test process covers every path.
//
// Asking for an ISA the CPU lacks, or a name that is none of these: LEVIT_CPU_ISA falls back
// to the best available path and records why in isa_note() and isa_warning() (which the
// Python package turns into a warning, so a typo is never silent); set_isa() refuses and
// returns false (the binding raises).
#pragma once

#include <string>
#include <vector>

namespace levit {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx_bf16 = 4 };

const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);  // case-insensitive, "-" == "_"

bool cpu_supports(Isa isa);          // hardware + OS support
std::vector<std::string> available_isas();  // supported paths, best first

Isa active_isa();                    // the path kernels dispatch to now
bool set_isa(Isa isa);               // false (and no change) if unsupported
const std::string& isa_note();       // why the active path is what it is
const std::string& isa_warning();    // why LEVIT_CPU_ISA was not honoured ("" when it was)
const char* isa_emulation();         // "" except in test builds that emulate an ISA (avx512_emulation.h)

}  // namespace levit
