"""A small MPI program for the peer-death tests (tests/test_watchdog.py, test_cluster_local.py,
test_slurm.py): every rank starts the watchdog, then runs Allreduce in a loop.

    python -m tests.peer_kill [--kill-rank R --kill-after S] [--seconds T] [--mib M]
                              [--linger R:S] [--no-stop]

``--kill-rank R``: rank R prints ``peer_kill: rank R kills itself`` and sends itself SIGKILL
``S`` seconds into the loop (no clean-up at all, as the OOM killer would). Without it every rank
stops after ``T`` seconds (agreed through an Allreduce), calls ``watchdog.stop()`` (not with
``--no-stop``: then only the interpreter's exit stops it) and exits 0, rank 0 printing
``peer_kill: done``; ``--linger R:S`` keeps rank R alive S seconds longer than the others.
Rank 0 prints ``peer_kill: looping`` once every rank is in the loop (``watchdog on`` or ``off``).
"""

import argparse
import os
import signal
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-after", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--mib", type=float, default=1.0)
    p.add_argument("--linger", default="-1:0")
    p.add_argument("--no-stop", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    from mpi4py import MPI

    from hpcnn.parallel import watchdog

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    on = watchdog.start(comm)
    a = np.ones(max(1, int(args.mib * (1 << 20) / 4)), dtype=np.float32)
    flag = np.zeros(1, dtype=np.float64)
    comm.Barrier()
    if rank == 0:
        print(f"peer_kill: looping, {comm.Get_size()} ranks on "
              f"{','.join(sorted(set(comm.allgather(MPI.Get_processor_name()))))}, "
              f"watchdog {'on' if on else 'off'}", flush=True)
    else:
        comm.allgather(MPI.Get_processor_name())
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if rank == args.kill_rank and elapsed > args.kill_after:
            print(f"peer_kill: rank {rank} kills itself", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        comm.Allreduce(MPI.IN_PLACE, a)
        a[:] = 1.0
        flag[0] = 1.0 if (args.kill_rank < 0 and elapsed > args.seconds) else 0.0
        comm.Allreduce(MPI.IN_PLACE, flag, op=MPI.MAX)
        if flag[0] > 0:
            break
    if not args.no_stop:
        watchdog.stop()
    linger_rank, linger_s = args.linger.split(":")
    if rank == int(linger_rank):
        time.sleep(float(linger_s))
    if rank == 0:
        print("peer_kill: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
