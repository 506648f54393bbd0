#include <stdint.h>
#include <immintrin.h>
void prefetch_all(const uint64_t* addr, int64_t n, int64_t lines) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < lines; ++l) _mm_prefetch((const char*)(addr[i]) + 64 * l, _MM_HINT_T0);
}
