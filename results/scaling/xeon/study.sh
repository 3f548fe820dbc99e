#!/bin/bash
# The scaling study of this folder, as it was run (from the repository root, as root, alone on
# the machine: stop 24's Intel Xeon, 2 vCPUs, AVX-512): the study-wide compute profiles, the 78
# cells twice (each net and batch of a layout after its own compute profile), the
# communication-only points (to 64 MiB, the default since 0402ad5), the fits, the report.
set -x
D=results/scaling/xeon
export HPCNN_AUTOTUNE_CACHE=$D/autotune.json
PY=.venv/bin/python
date -u
$PY -m hpcnn.scaling model compute --net cifar10_quick --batches 16,64,256 --out $D/compute_cifar10_quick.json
$PY -m hpcnn.scaling model compute --net owt_cifar --batches 16,64,256 --reps 3 --out $D/compute_owt_cifar.json
.venv/bin/mpiexec -n 2 $PY -m hpcnn.scaling model compute --net cifar10_quick --batches 16,64,256 --out $D/compute_cifar10_quick_x2.json
.venv/bin/mpiexec -n 2 $PY -m hpcnn.scaling model compute --net owt_cifar --batches 16,64,256 --reps 3 --out $D/compute_owt_cifar_x2.json
for pass in 1 2; do
  date -u
  $PY -m hpcnn.scaling run --layouts 1x1:shm,1x2:shm,2x1:10gbit,2x1:1gbit --nets cifar10_quick,owt_cifar --modes data,a,b,c --batches 16,64,256 --steps 5 --warmup 2 --min-seconds 2 --seed 0 --csv $D/points.csv --skip-done --repeat $pass
  if [ $pass = 1 ]; then
    date -u
    $PY -m hpcnn.scaling run --comm 2:shm,2:1gbit,4:1gbit,8:1gbit,2:10gbit,4:10gbit,8:10gbit --comm-budget 0.2 --comm-dir $D/comm
  fi
  date -u
  $PY -m hpcnn.scaling model fit --comm-dir $D/comm --csv $D/points.csv --profiles $D --out $D/alphabeta.json
  $PY -m hpcnn.scaling report --csv $D/points.csv --fits $D/alphabeta.json --profiles $D --comm-dir $D/comm --out $D
done
date -u
# Pass 1's fit and report ran with the model as stop 23 left it, commit 6228e59 (72 of 78 within 15%). Pass 2's fit
# and report ran with the change of commit 3d68df1 in the working tree (a hybrid head pass on
# other rows than a beside-profile holds takes the study profile's batch shape): 78 of 78. The
# same two commands with the model before it, on the final CSV, gave 74 of 78
# (report_stop23_model.md; its fits in /tmp, not kept).
