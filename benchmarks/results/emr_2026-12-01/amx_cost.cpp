#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <chrono>
struct Cfg { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; };
alignas(64) uint16_t A[64*32], B[16*32];
alignas(64) float S[32][32];
int main(){
  syscall(SYS_arch_prctl, 0x1023, 18);
  Cfg c{}; c.palette=1; for(int t=0;t<8;++t){c.colsb[t]=64;c.rows[t]=16;}
  Cfg c2=c; c2.rows[0]=8;
  auto T=[&](const char* name, auto f){ auto t0=std::chrono::steady_clock::now(); int it=1000000; for(int i=0;i<it;++i) f();
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count(); printf("%s: %.1f ns\n",name,s/it*1e9);};
  _tile_loadconfig(&c);
  T("ldtilecfg", [&]{ _tile_loadconfig(&c); });
  T("ldtilecfg alternating", [&]{ _tile_loadconfig(&c2); _tile_loadconfig(&c); });
  T("zero+load+dot+store", [&]{ _tile_zero(0); _tile_loadd(4,A,64); _tile_loadd(6,B,64); _tile_dpbf16ps(0,4,6); _tile_stored(0,&S[0][0],128); });
  volatile float sink;
  T("zero+load+dot+store+reload", [&]{ _tile_zero(0); _tile_loadd(4,A,64); _tile_loadd(6,B,64); _tile_dpbf16ps(0,4,6); _tile_stored(0,&S[0][0],128);
     __m512 acc=_mm512_setzero_ps(); for(int r=0;r<16;++r) acc=_mm512_add_ps(acc,_mm512_load_ps(S[r])); sink=_mm512_reduce_add_ps(acc);});
  T("4 dots", [&]{ _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3); _tile_loadd(4,A,64);_tile_loadd(5,A+512,64); _tile_loadd(6,B,64);_tile_loadd(7,B,64); _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
     _tile_stored(0,&S[0][0],128);_tile_stored(1,&S[0][16],128);_tile_stored(2,&S[16][0],128);_tile_stored(3,&S[16][16],128);});
}
