#include "gemm_kernel.h"
#include <chrono>
#include <cstdio>
#include <vector>
#include <cstdlib>
using namespace levit;
static double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
int main(int argc,char**argv){
  int64_t m=atoi(argv[1]), kc=atoi(argv[2]), n=atoi(argv[3]); long reps=atol(argv[4]);
  int64_t lda = argc>5? atoi(argv[5]) : kc+16;
  std::vector<float> A(m*lda,0.5f), B(kc*((n+15)/16*16),0.25f), C(m*n,0.f);
  GemmBlock g{}; g.a=A.data(); g.lda=lda; g.m=m; g.kc=kc; g.b=B.data(); g.panel_stride=kc*16; g.n=n;
  g.c=C.data(); g.ldc=n; g.bias=nullptr; g.residual=nullptr; g.ldr=0; g.act=0; g.first=true; g.last=true;
  for(int t=0;t<3;t++){
  double t0=now();
  for(long r=0;r<reps;r++){ gemm_block<Avx2,6,2>(g); asm volatile(""::"r"(C.data()):"memory"); }
  double s=now()-t0;
  printf("m %ld kc %ld n %ld: %.1f GF/s\n",(long)m,(long)kc,(long)n, 2.0*m*kc*n*reps/s/1e9);}
}
