#!/bin/bash
set -x
cd /work/main
export HPCNN_DATA=../shared/data
R=results/unsup
PY=.venv/bin/python
MPI=.venv/bin/mpiexec
# 2-rank equivalence on MNIST in float64 (float32 L-BFGS trajectories drift apart by rounding)
$PY -m hpcnn.unsup autoencoder --dataset mnist --patches 10000 --hidden 25 --iters 400 --threads 1 --dtype float64 \
  --metrics $R/sae_mnist_f64.json > $R/sae_mnist_f64.log 2>&1
$MPI -n 2 $PY -m hpcnn.unsup autoencoder --dataset mnist --patches 10000 --hidden 25 --iters 400 --threads 1 --dtype float64 \
  --metrics $R/sae_mnist_f64_2ranks.json > $R/sae_mnist_f64_2ranks.log 2>&1
# dictionary learning from data patches, 100 steps, 2 ranks
$MPI -n 2 $PY -m hpcnn.unsup fista --dataset mnist --patches 10000 --atoms 64 --lam 0.1 --iters 100 --learn 100 \
  --dictionary patches --threads 1 --save-dictionary $R/dictionary_learned.npy --png $R/dictionary_learned.png \
  --metrics $R/fista_learn_patches_2ranks.json > $R/fista_learn_patches_2ranks.log 2>&1
