#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>
#include <chrono>
#include <cmath>
struct Cfg { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; };
static uint16_t f2b(float f){uint32_t u; memcpy(&u,&f,4); u += 0x7FFF + ((u>>16)&1); return u>>16;}
static float b2f(uint16_t b){uint32_t u=uint32_t(b)<<16; float f; memcpy(&f,&u,4); return f;}
int main(){
  long r = syscall(SYS_arch_prctl, 0x1023, 18);
  printf("arch_prctl=%ld\n", r);
  Cfg c{}; c.palette=1; for(int t=0;t<8;++t){c.colsb[t]=64;c.rows[t]=16;}
  _tile_loadconfig(&c);
  const int M=32,N=32,K=512;
  std::vector<uint16_t> A(M*K), Bp((N/16)*(K/2)*32);
  std::vector<float> Af(M*K), Wf(N*K);
  for(int i=0;i<M*K;++i){A[i]=f2b(sinf(i*0.37f)); Af[i]=b2f(A[i]);}
  for(int n=0;n<N;++n)for(int k=0;k<K;++k){uint16_t w=f2b(cosf((n*K+k)*0.11f)); Wf[n*K+k]=b2f(w);
    int p=n/16,cc=n%16; Bp[((p*(K/2)+k/2)*16+cc)*2+k%2]=w;}
  float C[32][32];
  auto run=[&](){
    _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
    for(int k0=0;k0<K;k0+=32){
      _tile_loadd(4,&A[0*K+k0],K*2); _tile_loadd(5,&A[16*K+k0],K*2);
      _tile_loadd(6,&Bp[(0*(K/2)+k0/2)*32],64); _tile_loadd(7,&Bp[(1*(K/2)+k0/2)*32],64);
      _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
    }
    _tile_stored(0,&C[0][0],128);_tile_stored(1,&C[0][16],128);_tile_stored(2,&C[16][0],128);_tile_stored(3,&C[16][16],128);
  };
  run();
  double maxerr=0; for(int i=0;i<M;++i)for(int n=0;n<N;++n){double s=0;for(int k=0;k<K;++k)s+=double(Af[i*K+k])*Wf[n*K+k]; maxerr=fmax(maxerr,fabs(s-C[i][n]));}
  printf("maxerr %g\n",maxerr);
  auto t0=std::chrono::steady_clock::now(); int it=200000; for(int i=0;i<it;++i) run();
  double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
  printf("GFLOP/s %.1f\n", 2.0*M*N*K*it/s/1e9);
  _tile_release();
}
