#!/bin/bash
# The scaling study of jobs/scaling.sbatch without Slurm: the same loop and the same CSV, each
# point launched with `mpiexec -n R` on this host (shared memory), R running over the rank
# counts 1 2 4 ... up to the cores (HPCNN_SCALING_NODES sets them; HPCNN_SCALING_MAX_RANKS the
# limit). Every setting of jobs/scaling.sbatch applies (HPCNN_SCALING_BATCHES, _NETS, _MODES,
# _STEPS, _WARMUP, _SEED, _LINK [shm], _CSV [scaling-DATE.csv], _THREADS, HPCNN_PYTHON, MPIEXEC).
#
#   jobs/single-node-scaling.sh
#   HPCNN_SCALING_NODES="1 2" HPCNN_SCALING_BATCHES="16 64" HPCNN_SCALING_CSV=out.csv \
#     jobs/single-node-scaling.sh
#
# Across emulated nodes (network namespaces with shaped links) use `python -m hpcnn.scaling run`
# or jobs/cluster-local.sh mpiexec.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${SLURM_JOB_ID:-}" ]; then
  # inside a Slurm job, scaling.sbatch would use srun: run it without the job's identity
  exec env -u SLURM_JOB_ID bash "$here/scaling.sbatch" "$@"
fi
exec bash "$here/scaling.sbatch" "$@"
