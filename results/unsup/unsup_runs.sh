#!/bin/bash
# the sparse autoencoder and FISTA measurements (results/unsup), one locked chunk
set -x
cd /work/main
export HPCNN_DATA=../shared/data
R=results/unsup
PY=.venv/bin/python
MPI=.venv/bin/mpiexec
lscpu | grep -E "Model name|^CPU\(s\)" > $R/cpu.txt
$PY -m hpcnn.unsup autoencoder --dataset mnist --patches 10000 --hidden 25 --iters 400 --threads 1 \
  --png $R/filters_mnist.png --checkpoint $R/sae_mnist.h5 --metrics $R/sae_mnist.json > $R/sae_mnist.log 2>&1
$MPI -n 2 $PY -m hpcnn.unsup autoencoder --dataset mnist --patches 10000 --hidden 25 --iters 400 --threads 1 \
  --png $R/filters_mnist_2ranks.png --metrics $R/sae_mnist_2ranks.json > $R/sae_mnist_2ranks.log 2>&1
$PY -m hpcnn.unsup autoencoder --dataset fashion-mnist --patches 10000 --hidden 25 --iters 400 --threads 1 \
  --png $R/filters_fashion.png --metrics $R/sae_fashion.json > $R/sae_fashion.log 2>&1
$PY -m hpcnn.unsup fista --dataset mnist --patches 10000 --dictionary $R/sae_mnist.h5 --lam 0.1 --iters 200 \
  --reference --reference-iters 20000 --threads 1 --metrics $R/fista_sae_dict.json > $R/fista_sae_dict.log 2>&1
$MPI -n 2 $PY -m hpcnn.unsup fista --dataset mnist --patches 10000 --dictionary $R/sae_mnist.h5 --lam 0.1 --iters 200 \
  --reference --reference-iters 20000 --threads 1 --metrics $R/fista_sae_dict_2ranks.json > $R/fista_sae_dict_2ranks.log 2>&1
$PY -m hpcnn.unsup fista --dataset mnist --patches 2000 --atoms 256 --lam 0.1 --iters 300 \
  --reference --reference-iters 20000 --threads 1 --metrics $R/fista_random256.json > $R/fista_random256.log 2>&1
$MPI -n 2 $PY -m hpcnn.unsup fista --dataset mnist --patches 10000 --atoms 64 --lam 0.1 --iters 100 --learn 30 \
  --threads 1 --save-dictionary $R/dictionary_learned.npy --png $R/dictionary_learned.png --metrics $R/fista_learn_2ranks.json > $R/fista_learn_2ranks.log 2>&1
$PY -m hpcnn.unsup fista --dataset mnist --patches 10000 --atoms 64 --lam 0.1 --iters 100 --learn 30 \
  --threads 1 --metrics $R/fista_learn.json > $R/fista_learn.log 2>&1
