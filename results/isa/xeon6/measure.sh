#!/bin/bash
# [G] figures on the Intel Xeon (AVX-512) of stop 29 (the same kind of machine): stop 26's script, this stop's folder
O=results/isa/xeon6 exec bash /work/main/results/isa/xeon3/measure.sh
