#!/bin/bash
# Forced AVX2 against the code before issue 14 (c0fcc04 in a worktree at /tmp/old), this stop's output folder;
# this stop: runs 1-4 on ecf55d1 (RUNS="3 4" for the second pair), runs 5-8 on the final code 371f0f8 (RUNS="5 6 7 8").
O=results/isa/xeon4 exec bash /work/main/results/isa/xeon2/avx2_ab.sh
