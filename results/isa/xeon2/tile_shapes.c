/* The register tile alone in C (gcc intrinsics, AVX-512), for shapes MR rows x NV vectors of 16:
 * GFLOP/s of a loop of NV loads of B, MR broadcasts of A and MR*NV FMAs, data in L1.
 *   gcc -O3 -march=native -o /tmp/tile_shapes results/isa/xeon2/tile_shapes.c
 *   /tmp/tile_shapes 160; /tmp/tile_shapes 600      (L, the steps per call)
 * Compare with the FMA peak of `python -m hpcnn.bench conv` on the same machine. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define DEF(MR,NV) \
__attribute__((noinline)) void tile_##MR##_##NV(const float*A,const long*aoffs,const float*B,float*out,long L){ \
  __m512 c[MR][NV]; for(int i=0;i<MR;i++)for(int k=0;k<NV;k++)c[i][k]=_mm512_setzero_ps(); \
  const float* ap[MR]; for(int i=0;i<MR;i++) ap[i]=A+aoffs[i]; \
  for(long j=0;j<L;j++){ __m512 b[NV]; for(int k=0;k<NV;k++) b[k]=_mm512_loadu_ps(B+j*NV*16+16*k); \
    for(int i=0;i<MR;i++){__m512 a=_mm512_set1_ps(ap[i][j]); for(int k=0;k<NV;k++) c[i][k]=_mm512_fmadd_ps(a,b[k],c[i][k]);}} \
  for(int i=0;i<MR;i++)for(int k=0;k<NV;k++)_mm512_storeu_ps(out+i*NV*16+16*k,c[i][k]); }
DEF(14,2) DEF(6,4) DEF(8,3) DEF(12,2) DEF(28,1) DEF(4,6) DEF(7,4) DEF(9,3)
typedef void(*F)(const float*,const long*,const float*,float*,long);
int main(int argc,char**argv){
  long L=argc>1?atol(argv[1]):160;
  float*A=aligned_alloc(64,4*40000),*B=aligned_alloc(64,4*200000),*out=aligned_alloc(64,4*4096);
  for(int i=0;i<40000;i++)A[i]=1e-3f*(i%7);for(int i=0;i<200000;i++)B[i]=1e-3f*(i%5);
  long aoffs[32];for(int i=0;i<32;i++)aoffs[i]=i*300;
  F fs[]={tile_14_2,tile_6_4,tile_8_3,tile_12_2,tile_28_1,tile_4_6,tile_7_4,tile_9_3}; int mr[]={14,6,8,12,28,4,7,9}, nv[]={2,4,3,2,1,6,4,3};
  for(int v=0;v<8;v++){ long reps=(long)(4e9/(L*mr[v]*nv[v]*16*2.0)); double best=1e9;
   for(int k=0;k<5;k++){double t=now(); for(long r=0;r<reps;r++) fs[v](A,aoffs,B,out,L); t=now()-t; if(t<best)best=t;}
   printf("%2dx%d L=%ld: %.1f GFLOP/s\n", mr[v], nv[v], L, reps*L*mr[v]*nv[v]*16*2.0/best/1e9);}
  return (int)out[3];
}
