"""The vector ISA the convolution microkernels are generated for, and how to choose it.

A register tile is shaped by two facts of the target: how many floats a vector holds and how
many vector registers there are. :data:`ISAS` lists the three paths hpcnn generates:

=========  =====  =========  =====================================================
name       lanes  registers  tiles (vectors wide x rows): accumulators
=========  =====  =========  =====================================================
avx512        16         32  2 x 14 (28 accumulators), 1 x 14, 3 x 9 (27)
avx2           8         16  2 x 6 (12 accumulators), 1 x 6: the BLIS/oneDNN AVX2 shape
generic        4         16  2 x 6, 1 x 6: plain LLVM vectors any target lowers
=========  =====  =========  =====================================================

The host's path is the widest one its CPU features allow (LLVM's view of the host, the same
one Numba compiles for). ``HPCNN_ISA=avx2`` (or ``generic``) forces a narrower path, so that an
AVX-512 machine can run and test every path; asking for a path wider than the host's is an
error (one line, exit status 2 from the command-line tools), never a silent fallback.

Every path the host runs is compiled into the same kernels and chosen at run time by a small
integer (:attr:`Isa.id`): Numba's on-disk cache (keyed by the host CPU) stays valid whichever
path a process uses. Paths wider than the host are not compiled at all: LLVM cannot lower the
AVX-512 tile's register constraints for an AVX2 CPU ("couldn't allocate input reg for constraint
'v'"), which once broke every kernel on AVX2-only machines.
"""

import functools
import os
from dataclasses import dataclass

from hpcnn.errors import UsageError

ENV = "HPCNN_ISA"


@dataclass(frozen=True)
class Isa:
    name: str
    id: int
    lanes: int  # float32 per vector
    regs: int  # vector registers
    rows: int  # rows of a full tile (output pixels, or output channels in the weight gradient)
    llvm_cpu: str  # an LLVM CPU that has exactly this path (for the generated-code check)
    rows3: int = 0  # rows of a three-vector tile (0: none)

    @property
    def widths(self):
        """Column counts of the two tile variants: two vectors, one vector."""
        return (2 * self.lanes, self.lanes)


ISAS = {
    "avx512": Isa("avx512", 0, 16, 32, 14, "skylake-avx512", 9),
    "avx2": Isa("avx2", 1, 8, 16, 6, "haswell"),
    "generic": Isa("generic", 2, 4, 16, 6, "x86-64"),
}
ORDER = ("avx512", "avx2", "generic")  # widest first


@functools.lru_cache(maxsize=1)
def host_features():
    """The set of CPU features LLVM sees on this host (e.g. {"avx2", "fma", "avx512f"})."""
    import llvmlite.binding as llvm

    return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


def host_isa(features=None):
    """The widest path the host's CPU runs."""
    f = host_features() if features is None else set(features)
    if {"avx512f", "fma"} <= f:
        return ISAS["avx512"]
    if {"avx2", "fma"} <= f:
        return ISAS["avx2"]
    return ISAS["generic"]


def select(name=None, features=None):
    """The path to run: ``name`` (or ``$HPCNN_ISA``), else the host's widest.

    Raises :class:`hpcnn.errors.UsageError` for an unknown name, or one wider than the host runs.
    """
    name = os.environ.get(ENV, "") if name is None else name
    host = host_isa(features)
    if not name:
        return host
    if name not in ISAS:
        raise UsageError(f"{ENV}={name!r} is not a vector ISA; choose one of "
                         f"{', '.join(ORDER)}")
    want = ISAS[name]
    if ORDER.index(want.name) < ORDER.index(host.name):
        raise UsageError(f"{ENV}={name}: this CPU runs at most {host.name} "
                         f"({', '.join(ORDER[ORDER.index(host.name):])} allowed)")
    return want


def runnable(features=None):
    """Every path this host can run, widest first."""
    host = host_isa(features)
    return [ISAS[n] for n in ORDER[ORDER.index(host.name):]]
