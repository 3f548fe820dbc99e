"""MPI tier: ranks x threads must not exceed the cores, or every collective waits on a rank that
the OS has descheduled (and BLAS threads spin). Under ``mpiexec`` each rank takes its share of the
node's cores, as ``python -m hpcnn.train`` does; a plain serial run is left alone.
"""

import os

from hpcnn import threads

_ranks = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
if _ranks > 1:
    threads.apply(threads.default_threads(_ranks))  # one node: tests launch with mpiexec -n 2
