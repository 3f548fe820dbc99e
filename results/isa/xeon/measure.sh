#!/bin/bash
# [G] figures on the Intel Xeon (AVX-512) of stop 24, each command alone on the machine
cd /work/main
unset HPCNN_AUTOTUNE_CACHE
O=results/isa/xeon
P=.venv/bin/python
log() { echo "$(date -u +%H:%M:%S) $*" >> $O/measure.log; }
log start
log "conv all"
$P -m hpcnn.bench conv --set all --threads 1,2 --isa avx512,avx2 --algos auto --repeats 5 --json $O/conv_all.json > $O/conv_all.log 2>&1
log "train cifar10_quick"
$P -m hpcnn.bench train --net cifar10_quick --threads 1,2 --rounds 4 --json $O/train_cifar10_quick.json > $O/train_cifar10_quick.log 2>&1
log "train lenet5"
$P -m hpcnn.bench train --net lenet5 --threads 1,2 --json $O/train_lenet5.json > $O/train_lenet5.log 2>&1
log "node"
$P -m hpcnn.bench node --net cifar10_quick > $O/node_cifar10_quick.log 2>&1
for i in 1 2; do
  log "before $i"
  (cd /tmp/old && /work/main/.venv/bin/python -m hpcnn.bench conv --set cifar10_quick --algos direct --no-torch --threads 1,2 --repeats 5 --json /work/main/$O/before_direct_$i.json > /work/main/$O/before_direct_$i.log 2>&1)
  log "after $i"
  HPCNN_ISA=avx2 $P -m hpcnn.bench conv --set cifar10_quick --algos direct --no-torch --threads 1,2 --repeats 5 --json $O/after_avx2_direct_$i.json > $O/after_avx2_direct_$i.log 2>&1
done
log done
