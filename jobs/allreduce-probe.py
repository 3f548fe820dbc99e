"""A 2-or-more-rank Allreduce of a large float32 array, timed: does the data cross a link or stay
in shared memory? Rank 0 prints the ranks' hosts and the median and min of 5 Allreduces.

    jobs/cluster-local.sh mpiexec -ppn 1 -n 2 -- .venv/bin/python jobs/allreduce-probe.py [MIB]
"""

import sys
import time

import numpy as np
from mpi4py import MPI


def main():
    comm = MPI.COMM_WORLD
    mib = float(sys.argv[1]) if len(sys.argv) > 1 else 32.0
    a = np.ones(int(mib * (1 << 20) / 4), dtype=np.float32)
    hosts = comm.allgather(MPI.Get_processor_name())
    comm.Allreduce(MPI.IN_PLACE, a)
    times = []
    for _ in range(5):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, a)
        times.append(time.perf_counter() - t)
    if comm.Get_rank() == 0:
        print(f"{hosts} {a.nbytes / 2**20:.0f} MiB allreduce median "
              f"{1e3 * sorted(times)[2]:.1f} ms min {1e3 * min(times):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
