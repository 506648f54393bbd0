// Times the LeViT-128S stem convs (padded path) one by one, float32 or bf16 (argv[4]=bf16).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include "gemm.h"
#include "gemm_bf16.h"
using namespace levit;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
template <class T> void run(int B, int T_, int reps) {
  int H = 224, cin = 3; const int couts[4] = {16, 32, 64, 128};
  std::vector<T> x(size_t(B) * (H + 2) * (H + 2) * cin);
  for (auto& v : x) v = from_float<T>(rand() / float(RAND_MAX) - 0.5f);
  for (int l = 0; l < 4; ++l) {
    int co = couts[l], K = 9 * cin, ho = H / 2;
    std::vector<T> w(size_t(co) * K), bias(co);
    for (auto& v : w) v = from_float<T>(rand() / float(RAND_MAX) - 0.5f);
    std::vector<T> packed;
    if constexpr (std::is_same_v<T, float>) { packed.resize(packed_numel(co, K)); pack_weight(w.data(), co, K, K, packed.data(), 1); }
    else { packed.resize(packed_numel_bf16(co, K, 3)); pack_weight(w.data(), co, K, K, 3, packed.data(), 1); }
    int op = l < 3 ? 1 : 0;
    std::vector<T> out(size_t(B) * (ho + 2 * op) * (ho + 2 * op) * co);
    PaddedConvArgsT<T> a{x.data(), B, H + 2, H + 2, cin, 3, 2, packed.data(), co, bias.data(), kActHardswish, out.data(), op};
    double best = 1e9;
    for (int r = 0; r < reps; ++r) { double t0 = now(); conv2d_padded(a, T_); best = std::min(best, now() - t0); }
    printf("conv%d %.3f ms %.1f GF/s | ", l + 1, best * 1e3, 2.0 * B * ho * ho * co * K / best / 1e9);
    x.swap(out); H = ho; cin = co;
  }
  printf("\n");
}
int main(int argc, char** argv) {
  int B = atoi(argv[1]), T_ = atoi(argv[2]), reps = atoi(argv[3]);
  if (argc > 4 && !strcmp(argv[4], "bf16")) run<bf16>(B, T_, reps); else run<float>(B, T_, reps);
}
