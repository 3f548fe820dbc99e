# hpcnn: the two set-up commands are `make train` (the main job) and `make test` (the tests).
# Each installs what is missing first (a virtualenv in .venv with the package and its extras,
# plus an MPI from PyPI when no `mpiexec` is on PATH).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RANKS  ?= 2
EPOCHS ?= 10
STAMP  := $(VENV)/.installed

# Use the venv's mpiexec when the mpich wheel put one there (it matches the MPI that mpi4py loads),
# else the system's.
MPIEXEC = $(shell if [ -x $(VENV)/bin/mpiexec ]; then echo $(VENV)/bin/mpiexec; else command -v mpiexec; fi)

.PHONY: install train test test-serial test-mpi test-cluster bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@extras="test,lint"; \
	if ! command -v mpiexec >/dev/null 2>&1; then \
	  echo "no mpiexec on PATH: installing MPICH from PyPI into $(VENV)"; extras="$$extras,mpi"; \
	fi; \
	$(PY) -m pip install -q -e ".[$$extras]"
	@touch $(STAMP)

# The main job: LeNet-5 on MNIST with $(RANKS) MPI ranks; synthetic data when MNIST is not found
# (in $$HPCNN_DATA/mnist, the cache, or by a download).
train: install
	@$(PY) -m hpcnn.data download mnist --timeout 15 \
	  || echo "could not download MNIST (offline?): training falls back to synthetic data"
	$(MPIEXEC) -n $(RANKS) $(PY) -m hpcnn.train --net lenet5 --dataset mnist --fallback-synthetic \
	  --epochs $(EPOCHS)

test: test-serial test-mpi

test-serial: install
	$(PY) -m pytest -q tests

# Two MPI tiers: every MPI test on 2 ranks, then on 4 (oversubscribed on a 2-core machine:
# fine for the small nets the tests use; grids that need 4 ranks run only there).
test-mpi: install
	$(MPIEXEC) -n 2 $(PY) -m pytest -q --with-mpi -m mpi tests
	$(MPIEXEC) -n 4 $(PY) -m pytest -q --with-mpi -m mpi tests

# The multi-node tests alone (part of test-serial): the peer watchdog, 2 emulated nodes
# (network namespaces; root), and a local 2-node Slurm that they bring up and take down (root,
# apt-get). They skip, with the reason, where that cannot be done (fail instead under CI=true).
test-cluster: install
	$(PY) -m pytest -q tests/test_watchdog.py tests/test_cluster_local.py tests/test_slurm.py

bench: install
	$(PY) -m hpcnn.bench train --net cifar10_quick
	$(PY) -m hpcnn.bench train --net lenet5

lint: install
	$(VENV)/bin/ruff check hpcnn tests
	@# Numba options come from hpcnn/kernels/_jit.py only (STYLE.md: one place for fastmath/cache).
	@if grep -rnE "jit\(.*(fastmath|cache|parallel) *=" hpcnn --include=*.py | grep -v "kernels/_jit.py"; \
	  then echo "numba options set outside hpcnn/kernels/_jit.py"; exit 1; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Longer mutation fuzzing of the readers of outside files (IDX, CIFAR-10, HDF5 store, autotune
# cache); `make test` runs a short pass. FUZZ_N inputs per reader, FUZZ_SEED picks them.
FUZZ_N    ?= 5000
FUZZ_SEED ?= 1
.PHONY: fuzz
fuzz: install
	HPCNN_FUZZ_N=$(FUZZ_N) HPCNN_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q tests/test_fuzz_readers.py
