// LeViT-128S stem (pad + 4 padded convs), batch 16, 1 thread: layer by layer over the whole
// batch (as the program does) vs image by image (each image through all 4 convs).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "gemm.h"
using namespace levit;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  const int B = 16, reps = atoi(argv[1]);
  const int couts[4] = {16, 32, 64, 128};
  std::vector<float> img(size_t(B) * 3 * 224 * 224);
  for (auto& v : img) v = rand() / float(RAND_MAX) - 0.5f;
  std::vector<std::vector<float>> packed(4), bias(4);
  int cin = 3;
  for (int l = 0; l < 4; ++l) {
    int K = 9 * cin; std::vector<float> w(couts[l] * K);
    for (auto& v : w) v = (rand() / float(RAND_MAX) - 0.5f) * 0.2f;
    packed[l].resize(packed_numel(couts[l], K)); pack_weight(w.data(), couts[l], K, K, packed[l].data(), 1);
    bias[l].assign(couts[l], 0.1f); cin = couts[l];
  }
  std::vector<float> b0(size_t(B) * 114 * 114 * 16 + 1000), b1(size_t(B) * 226 * 226 * 3 + 1000);
  auto stem = [&](const float* images, int batch, float* buf0, float* buf1) {
    pad_nhwc(images, batch, 224, 224, 3, 3 * 224 * 224, 224, 1, 224 * 224, 1, buf1, 1);
    const float* src = buf1; float* bufs[2] = {buf0, buf1}; int cur = 0; int64_t hp = 226, c = 3;
    for (int l = 0; l < 4; ++l) {
      int op = l < 3 ? 1 : 0;
      PaddedConvArgs a{src, batch, hp, hp, c, 3, 2, packed[l].data(), couts[l], bias[l].data(), l < 3 ? kActHardswish : kActNone, bufs[cur], op};
      conv2d_padded(a, 1);
      hp = (hp - 3) / 2 + 1 + 2 * op; c = couts[l]; src = bufs[cur]; cur ^= 1;
    }
  };
  std::vector<float> s0(114 * 114 * 16 + 1000), s1(226 * 226 * 3 + 1000);
  double tb = 1e9, ti = 1e9;
  for (int r = 0; r < reps; ++r) {
    double t0 = now(); stem(img.data(), B, b0.data(), b1.data()); double t1 = now();
    for (int i = 0; i < B; ++i) stem(img.data() + size_t(i) * 3 * 224 * 224, 1, s0.data(), s1.data());
    double t2 = now();
    tb = std::min(tb, t1 - t0); ti = std::min(ti, t2 - t1);
  }
  printf("stem batch 16, 1 thread: layer by layer %.2f ms, image by image %.2f ms (%.2fx)\n", tb * 1e3, ti * 1e3, tb / ti);
}
