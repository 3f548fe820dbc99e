"""hpcnn: train convolutional neural networks on CPU clusters with MPI."""

import os as _os

# OpenBLAS's worker threads busy-wait for about 2^28 cycles (~0.1 s) after every multi-threaded
# call before they sleep, and meanwhile take the cores from Numba's threads. Measured at 2
# threads: "direct" took 54.3 ms right after plain lowering's 2-thread GEMM against 27.0 ms after
# itself; with a timeout of 2^4 cycles, 31.3 against 28.4. Read when numpy loads OpenBLAS, so it
# only acts when hpcnn is imported first (the entry points are); a user's own value wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# Freed arrays stay in the process for the next step instead of being unmapped and faulted in
# again (see hpcnn.heap).
from hpcnn import heap as _heap  # noqa: E402

RETAINED_HEAP = _heap.retain()


__version__ = "0.1.0"
