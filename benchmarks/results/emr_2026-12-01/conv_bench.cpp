#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "gemm.h"
#include "gemm_bf16.h"
#include "cpu_features.h"
using namespace levit;
int main(int argc, char** argv) {
  const char* isa = argc > 1 ? argv[1] : "amx_bf16";
  int cin = argc > 2 ? atoi(argv[2]) : 3, cout = argc > 3 ? atoi(argv[3]) : 32, hw = argc > 4 ? atoi(argv[4]) : 224;
  Isa want; isa_from_name(isa, &want);
  const int64_t B = 16, hp = hw + 2, wp = hw + 2, run = 3 * cin, runp = run + run % 2;
  std::vector<bf16> x(B * hp * wp * cin), w(cout * 3 * run), bias(cout);
  for (size_t i = 0; i < x.size(); ++i) x[i] = from_float<bf16>(((i * 7919) % 1000) / 1000.0f - 0.5f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = from_float<bf16>(((i * 31) % 100) / 100.0f - 0.5f);
  std::vector<bf16> packed(packed_numel_bf16(cout, 3 * run, 3));
  pack_weight(w.data(), cout, 3 * run, 3 * run, 3, packed.data(), 1);
  const int64_t ho = (hp - 3) / 2 + 1;
  std::vector<bf16> out(B * (ho + 2) * (ho + 2) * cout);
  PaddedConvArgsT<bf16> a{x.data(), B, hp, wp, cin, 3, 2, packed.data(), cout, bias.data(), 1, out.data(), 1};
  Isa isas[2] = {want, Isa::avx512};
  double best[2] = {1e9, 1e9};
  for (int r = 0; r < 30; ++r) for (int v = 0; v < 2; ++v) {
    set_isa(isas[v]);
    auto t0 = std::chrono::steady_clock::now();
    conv2d_padded(a, 1);
    best[v] = std::min(best[v], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  printf("cin=%d cout=%d: %s %.3f ms, avx512 %.3f ms, ratio %.2f\n", cin, cout, isa, best[0] * 1e3, best[1]*1e3, best[1]/best[0]);
}
