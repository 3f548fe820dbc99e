"""The strategy interface, written once and run for every strategy, on one rank and under MPI.

Each test runs twice: in the serial tier on ``COMM_SELF``, and in the MPI tiers (``mpiexec -n 2``
and ``-n 4 ... --with-mpi -m mpi``) on ``COMM_WORLD``.
"""

from functools import partial

import numpy as np
import pytest

from hpcnn.nn import build_net
from hpcnn.optim import SGD
from hpcnn.parallel import DataParallel, build_strategy

STRATEGIES = {
    "data": dict(parallel="data"),
    "data-no-overlap": dict(parallel="data", overlap=False, bucket_mb=0.01),
    "average": dict(parallel="data", sync="average", average_every=1,
                    average_optimizer_state=True),
    "average-every-2": dict(parallel="data", sync="average", average_every=2),
    "hybrid-a": dict(parallel="hybrid", scheme="a"),
    "hybrid-b": dict(parallel="hybrid", scheme="b"),
    "hybrid-c": dict(parallel="hybrid", scheme="c", bucket_mb=0.01),
}
TIERS = [pytest.param("serial", id="serial"),
         pytest.param("mpi", id="mpi", marks=pytest.mark.mpi(min_size=2))]
SHAPE = (1, 16, 16)


def _comm(tier):
    from mpi4py import MPI

    return MPI.COMM_SELF if tier == "serial" else MPI.COMM_WORLD


def _make(name, comm, seed=0):
    model = build_net("lenet5", SHAPE, 10, seed=seed, algo="lowering")
    opt = partial(SGD, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return build_strategy(comm, model, opt, **STRATEGIES[name])


def _batch(comm, per_rank=3, seed=0, same=False):
    rng = np.random.default_rng([seed, 0 if same else comm.Get_rank()])
    x = rng.standard_normal((per_rank, *SHAPE)).astype(np.float32)
    return x, rng.integers(0, 10, per_rank)


def _bcast_state(comm, st):
    """``get`` for :meth:`Strategy.load_state` from ``st``'s state, on every rank."""
    arrays, _ = st.state()
    rows = comm.Get_size() if st.per_rank_rows and comm.Get_size() > 1 else 1

    def get(name):
        a = arrays[name] if comm.Get_rank() == 0 else None
        return comm.bcast(a, root=0)

    return get, rows


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_step_returns_the_loss_and_reports_what_it_sent(name, tier):
    comm = _comm(tier)
    st = _make(name, comm)
    x, y = _batch(comm)
    losses = [st.step(x, y, 0.05) for _ in range(4)]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
    t = st.timings()
    assert t["steps"] == 4
    batch = len(x) * comm.Get_size()
    assert {k: v for k, v in t["bytes"].items() if v} == pytest.approx(
        {k: 4 * v for k, v in st.bytes_per_step(batch).items() if v})
    if comm.Get_size() == 1:
        assert sum(t["bytes"].values()) == 0
    line = st.describe()
    assert line and "\n" not in line
    st.reset_timings()
    assert st.timings() == {"wait_s": {}, "bytes": {}, "steps": 0}


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_state_is_full_shape_and_loads_back(name, tier):
    comm = _comm(tier)
    st = _make(name, comm)
    x, y = _batch(comm)
    st.step(x, y, 0.05)
    arrays, extra = st.state()
    expected = st.expected_state()
    rows = comm.Get_size() if st.per_rank_rows and comm.Get_size() > 1 else 1
    if comm.Get_rank() == 0:
        assert sorted(arrays) == sorted(expected)
        for k, shape in expected.items():
            assert arrays[k].shape == (shape if rows == 1 else (rows, *shape)), k
            assert arrays[k].dtype == np.float32
    else:
        assert arrays is None
    # a fresh strategy of the same kind (another initialisation) takes it back exactly
    fresh = _make(name, comm, seed=7)
    get, rows = _bcast_state(comm, st)
    fresh.load_state(get, rows, extra, same_layout=True)
    again, _ = fresh.state()
    if comm.Get_rank() == 0:
        for k in arrays:
            np.testing.assert_array_equal(again[k], arrays[k], err_msg=k)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_predictions_are_the_serial_model_s(name, tier):
    comm = _comm(tier)
    ref = DataParallel(None, build_net("lenet5", SHAPE, 10, seed=3, algo="lowering"),
                       partial(SGD, lr=0.05, momentum=0.9))
    x, y = _batch(comm, per_rank=9, seed=1, same=True)
    for _ in range(3):
        ref.step(x, y, 0.05)
    st = _make(name, comm)
    get, _ = _bcast_state(comm, ref)
    st.load_state(get, 1)
    np.testing.assert_array_equal(st.predict(x), ref.predict(x))


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_evaluation_with_fewer_test_examples_than_ranks(name, tier):
    """Some ranks score no example at all; the collective pieces still line up."""
    from hpcnn.train import evaluate

    comm = _comm(tier)
    st = _make(name, comm)
    n = max(1, comm.Get_size() - 1)
    x, y = _batch(comm, per_rank=n, seed=2, same=True)
    acc = evaluate(st, x, y, comm)
    assert 0.0 <= acc <= 1.0
    ref = DataParallel(None, build_net("lenet5", SHAPE, 10, seed=0, algo="lowering"),
                       partial(SGD, lr=0.05))
    assert acc == evaluate(ref, x, y, None)
