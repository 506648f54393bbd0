// cpu_features.h — which instruction-set path the CPU kernels run.
//
// Three paths, best first: "avx512" (AVX-512F/DQ/BW/VL + FMA), "avx2" (AVX2 + FMA) and
// "generic" (portable C++ built with the compiler's baseline flags). The choice is made once
// from CPUID + XGETBV (the OS must also save the wide registers), can be overridden with the
// environment variable LEVIT_CPU_ISA=generic|avx2|avx512, and can be switched at run time with
// set_isa() so one test process covers every path.
//
// Asking for an ISA the CPU lacks: LEVIT_CPU_ISA falls back to the best available path and
// records why (isa_note()); set_isa() refuses and returns false (the binding raises).
#pragma once

#include <string>
#include <vector>

namespace levit {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);

bool cpu_supports(Isa isa);          // hardware + OS support
std::vector<std::string> available_isas();  // supported paths, best first

Isa active_isa();                    // the path kernels dispatch to now
bool set_isa(Isa isa);               // false (and no change) if unsupported
const std::string& isa_note();       // why the active path is what it is

}  // namespace levit
