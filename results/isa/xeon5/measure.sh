#!/bin/bash
# [G] figures on the Intel Xeon (AVX-512) of stop 26 (the same kind of machine), each command alone on the machine;
# stop 28: the same kind of Xeon; O defaults to results/isa/xeon5
cd /work/main
unset HPCNN_AUTOTUNE_CACHE
O=${O:-results/isa/xeon5}  # the output folder (each stop its own)
P=.venv/bin/python
REV=$(git rev-parse --short HEAD)
log() { echo "$(date -u +%H:%M:%S) $*" >> $O/measure.log; }
log start
log "conv all"
$P -m hpcnn.bench conv --set all --threads 1,2 --isa avx512,avx2 --algos auto --repeats 5 --json $O/conv_all_$REV.json > $O/conv_all_$REV.log 2>&1
log "train cifar10_quick"
$P -m hpcnn.bench train --net cifar10_quick --threads 1,2 --rounds 4 --json $O/train_cifar10_quick_$REV.json > $O/train_cifar10_quick_$REV.log 2>&1
log "train lenet5"
$P -m hpcnn.bench train --net lenet5 --threads 1,2 --json $O/train_lenet5_$REV.json > $O/train_lenet5_$REV.log 2>&1
log "node"
$P -m hpcnn.bench node --net cifar10_quick > $O/node_cifar10_quick_$REV.log 2>&1
log done
