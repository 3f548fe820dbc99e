# Sourced by the job scripts (jobs/*.sbatch) before `srun --mpi=pmi2`, with $PYTHON set: the MPI
# settings that Slurm's PMI needs. Sets nothing the caller has set.
#
# The MPICH from PyPI (what `make install` puts in .venv) speaks PMI-1 to Slurm's pmi2 plugin,
# which takes each request from a single read() of at most 1024 bytes. With MPICH's UCX netmod
# every rank puts a 4 KiB business card (the UCX address, padded with whatever that heap memory
# held) as 9 values of 511 bytes, hex-encoded with runs of zeros shortened: each request line is
# 700 to 1077 bytes, by the heap's contents. A line over 1024 bytes is cut, and the start fails
# ("slurmstepd: error: mpi/pmi2: value not properly terminated in client request"), at random
# (jobs/README-slurm.md). With the OFI netmod the card is one 66-byte request. So ranks of the
# PyPI MPICH use OFI under srun, unless MPIR_CVAR_CH4_NETMOD says otherwise.
if [ -z "${MPIR_CVAR_CH4_NETMOD:-}" ] \
   && "$PYTHON" -c 'import importlib.metadata as m; m.version("mpich")' >/dev/null 2>&1; then
  export MPIR_CVAR_CH4_NETMOD=ofi
fi
