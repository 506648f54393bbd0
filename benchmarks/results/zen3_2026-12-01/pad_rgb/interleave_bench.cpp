#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>
#include <algorithm>
struct bf16 { uint16_t bits; };
template <class T>
__attribute__((noinline)) void cur(const T* src, int64_t w, int64_t c, int64_t sc, int64_t sw, T* dst) {
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t i = 0; i < w; ++i) dst[i * c + ch] = src[ch * sc + i * sw];
}
template <class T>
__attribute__((noinline)) void px3(const T* src, int64_t w, int64_t sc, T* __restrict dst) {
  const T* __restrict r = src; const T* __restrict g = src + sc; const T* __restrict b = src + 2 * sc;
  for (int64_t i = 0; i < w; ++i) { dst[3 * i] = r[i]; dst[3 * i + 1] = g[i]; dst[3 * i + 2] = b[i]; }
}
template <class T>
void run(const char* name) {
  const int64_t h = 224, w = 224, c = 3, imgs = 16;
  std::vector<T> src(imgs * c * h * w), dst(imgs * h * (w + 2) * c + 64);
  for (size_t i = 0; i < src.size(); ++i) src[i] = T{static_cast<decltype(T{}.bits)>(i)};
  for (int variant = 0; variant < 2; ++variant) {
    double best = 1e9;
    for (int rep = 0; rep < 20; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t im = 0; im < imgs; ++im)
        for (int64_t y = 0; y < h; ++y) {
          const T* s = src.data() + im * c * h * w + y * w;
          T* d = dst.data() + (im * h + y) * (w + 2) * c + c;
          if (variant == 0) cur(s, w, c, h * w, 1, d); else px3(s, w, h * w, d);
        }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    printf("%s %s %.3f ms\n", name, variant ? "px3" : "cur", best * 1e3);
  }
}
struct f32 { float bits; };
int main() { run<f32>("f32"); run<bf16>("bf16"); }
