#!/bin/bash
# Forced AVX2 against the code before issue 14 (c0fcc04 in a worktree at /tmp/old), this stop's output folder.
O=results/isa/xeon4 exec bash /work/main/results/isa/xeon2/avx2_ab.sh
