#!/bin/bash
# Forced AVX2 against the code before issue 14 (c0fcc04, 8-lane tiles, from a worktree at /tmp/old:
# `git worktree add /tmp/old c0fcc04`), `direct` on cifar10_quick, alternated twice.
cd /work/main
O=${O:-results/isa/xeon2}  # the output folder (each stop its own)
P=/work/main/.venv/bin/python
for i in ${RUNS:-1 2}; do
  (cd /tmp/old && $P -m hpcnn.bench conv --set cifar10_quick --algos direct --no-torch --threads 1,2 --repeats 5 --json /work/main/$O/before_direct_$i.json > /work/main/$O/before_direct_$i.log 2>&1)
  HPCNN_ISA=avx2 $P -m hpcnn.bench conv --set cifar10_quick --algos direct --no-torch --threads 1,2 --repeats 5 --json $O/after_avx2_direct_$i.json > $O/after_avx2_direct_$i.log 2>&1
done
echo "$(date -u +%H:%M:%S) avx2 a/b done" >> $O/measure.log
