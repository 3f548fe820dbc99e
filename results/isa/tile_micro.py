import time, numpy as np
from numba import njit
from hpcnn.kernels._fma import tile
from hpcnn.kernels import peak, isa as I
from hpcnn import threads
threads.apply(1)
@njit(nogil=True)
def run(reps, A, aoffs, B, out, ooffs, L, nseg, mr):
    for _ in range(reps):
        tile(0, 2, mr, A, 0, aoffs, 256, B, 0, 0, 32, nseg, L, out, 0, ooffs, 1)
A=np.random.rand(20000).astype(np.float32); B=np.random.rand(40000).astype(np.float32)
out=np.zeros(14*32+64,np.float32)
pk=peak.fma_peak(I.ISAS["avx512"])
for L,nseg in [(160,1),(1000,1),(32,5),(15,5)]:
  for mr in (14,12,8):
    aoffs=(np.arange(14)*300).astype(np.int64); ooffs=(np.arange(14)*32).astype(np.int64)
    run(1,A,aoffs,B,out,ooffs,L,nseg,mr)
    reps=max(1,int(2e8/(L*nseg*mr*32*2)))
    t=time.perf_counter(); run(reps,A,aoffs,B,out,ooffs,L,nseg,mr); dt=time.perf_counter()-t
    print(L,nseg,mr,"%.0f%%"%(reps*L*nseg*mr*32*2/dt/1e9/pk*100))
