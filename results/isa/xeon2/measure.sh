#!/bin/bash
# [G] figures on the Intel Xeon (AVX-512) of stop 25, each command alone on the machine
cd /work/main
unset HPCNN_AUTOTUNE_CACHE
O=results/isa/xeon2
P=.venv/bin/python
log() { echo "$(date -u +%H:%M:%S) $*" >> $O/measure.log; }
log start
log "winograd a/b 1"
$P $O/winograd_ab.py 1 > $O/winograd_ab_1.log 2>&1
log "winograd a/b 2"
$P $O/winograd_ab.py 2 > $O/winograd_ab_2.log 2>&1
log "tile shapes"
gcc -O3 -march=native -o /tmp/tile_shapes $O/tile_shapes.c && { /tmp/tile_shapes 160; /tmp/tile_shapes 600; } > $O/tile_shapes.log 2>&1
log "conv all"
$P -m hpcnn.bench conv --set all --threads 1,2 --isa avx512,avx2 --algos auto --repeats 5 --json $O/conv_all_final.json > $O/conv_all_final.log 2>&1
log "train cifar10_quick"
$P -m hpcnn.bench train --net cifar10_quick --threads 1,2 --rounds 4 --json $O/train_cifar10_quick.json > $O/train_cifar10_quick.log 2>&1
log "train lenet5"
$P -m hpcnn.bench train --net lenet5 --threads 1,2 --json $O/train_lenet5.json > $O/train_lenet5.log 2>&1
log "node"
$P -m hpcnn.bench node --net cifar10_quick > $O/node_cifar10_quick.log 2>&1
log done
