"""Serial tier of hpcnn.parallel: bucketing, block distribution, grid, averaging, LR rules.

Everything here runs in one process (``COMM_SELF`` where a communicator is needed); the MPI tier
in tests/mpi/ checks the same machinery across ranks.
"""

import numpy as np
import pytest

from hpcnn.nn import build_net
from hpcnn.optim import SGD
from hpcnn.parallel import (
    DataParallel,
    ParamAveraging,
    ProcessGrid,
    blockdist,
    make_buckets,
    model_buckets,
    reduce_timing,
)
from hpcnn.train import UsageError, lr_at, parse_args, scaled_lr, validate_sync


# blockdist ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,size", [(10, 4), (7, 7), (3, 5), (0, 3), (100, 1), (101, 8)])
def test_blockdist_covers_in_order_remainder_to_low_ranks(n, size):
    blocks = [blockdist(n, size, r) for r in range(size)]
    assert sum(c for c, _ in blocks) == n
    start = 0
    for count, s in blocks:
        assert s == start
        start += count
    counts = [c for c, _ in blocks]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("args", [(-1, 2, 0), (4, 0, 0), (4, 2, 2), (4, 2, -1)])
def test_blockdist_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="blockdist"):
        blockdist(*args)


# buckets --------------------------------------------------------------------------------------
def check_partition(buckets, sizes):
    """Buckets are contiguous, disjoint, cover the buffer, run backwards, end at param bounds."""
    bounds = set(np.concatenate([[0], np.cumsum(sizes)]).tolist())
    hi = int(sum(sizes))
    for lo, b_hi, _ in buckets:
        assert b_hi == hi and lo < b_hi and lo in bounds and b_hi in bounds
        hi = lo
    assert hi == 0


def test_one_bucket_when_everything_fits():
    assert make_buckets([0, 0, 2, 2], [6, 2, 4, 1], cap_elems=100) == [(0, 13, 0)]


def test_buckets_fill_in_reverse_and_respect_the_cap():
    layers, sizes = [0, 0, 2, 2, 5, 5], [30, 3, 20, 2, 10, 1]
    buckets = make_buckets(layers, sizes, cap_elems=25)
    check_partition(buckets, sizes)
    # reverse order: l5.bias 1 + l5.weight 10 + l2.bias 2 = 13 (l2.weight would pass 25), then
    # l2.weight 20 + l0.bias 3 = 23, then l0.weight 30 alone (over the cap: a bucket of its own)
    assert buckets == [(53, 66, 2), (30, 53, 0), (0, 30, 0)]
    for lo, hi, _ in buckets:
        assert hi - lo <= 25 or hi - lo == max(sizes)


def test_ready_layer_is_the_lowest_layer_in_the_bucket():
    # a bucket boundary may split a layer's weight and bias: both halves wait for that layer
    buckets = make_buckets([1, 1, 3, 3], [8, 2, 5, 1], cap_elems=7)
    check_partition(buckets, [8, 2, 5, 1])
    assert buckets == [(10, 16, 3), (8, 10, 1), (0, 8, 1)]
    readies = [r for _, _, r in buckets]
    assert readies == sorted(readies, reverse=True)  # launched in the order backward frees them


@pytest.mark.parametrize("cap", [1, 5, 100, 10**9])
def test_random_partitions(cap):
    rng = np.random.default_rng(cap)
    sizes = rng.integers(1, 50, size=17).tolist()
    layers = np.sort(rng.integers(0, 9, size=17)).tolist()
    buckets = make_buckets(layers, sizes, cap)
    check_partition(buckets, sizes)
    for lo, hi, _ in buckets:
        assert hi - lo <= cap or hi - lo in sizes


def test_make_buckets_rejects_bad_input():
    with pytest.raises(ValueError, match="cap"):
        make_buckets([0], [3], 0)
    with pytest.raises(ValueError, match="layer indices"):
        make_buckets([0, 1], [3], 10)


def test_model_buckets_for_lenet5():
    model = build_net("lenet5", (1, 28, 28), 10)
    assert model_buckets(model, 25) == [(0, model.num_params(), 0)]
    small = model_buckets(model, 0.1)  # 0.1 MiB = 26214 floats: ip1.weight (400k) alone
    sizes = [p.data.size for p in model.params()]
    check_partition(small, sizes)
    assert len(small) >= 3
    names = [p.name for p in model.params()]
    ip1 = names.index("ip1.weight")
    off = sum(sizes[:ip1])
    assert (off, off + sizes[ip1], 5) in small  # ip1 is layer 5 (after the flatten)


# DataParallel / ParamAveraging on one rank ---------------------------------------------------
def test_data_parallel_single_rank_is_plain_serial_training():
    from functools import partial

    from mpi4py import MPI

    model = build_net("mlp", (1, 4, 4), 3, hidden=5)
    ref = build_net("mlp", (1, 4, 4), 3, hidden=5)
    dp = DataParallel(MPI.COMM_SELF, model, partial(SGD, lr=0.1), bucket_mb=1e-5)
    assert len(dp.buckets) > 1
    x = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    y = np.arange(6) % 3
    dp.step(x, y, 0.1)
    from hpcnn.kernels import softmax_cross_entropy

    ref.zero_grad()
    _, d = softmax_cross_entropy(ref.forward(x), y)
    ref.backward(d)
    SGD(ref.params(), 0.1).step()
    np.testing.assert_array_equal(model.flat_params, ref.flat_params)
    assert dp.timings()["wait_s"] == {} and dp.timings()["steps"] == 1
    with pytest.raises(ValueError, match="bucket"):
        DataParallel(None, model, partial(SGD, lr=0.1), bucket_mb=0)


def test_param_averaging_flattens_momentum_in_place():
    model = build_net("mlp", (1, 4, 4), 3, hidden=5)

    def sgd(params):
        opt = SGD(params, 0.1, momentum=0.9)
        opt.momentum_buffers[1][...] = 7.0
        return opt

    pa = ParamAveraging(None, model, sgd, every=2, average_optimizer_state=True)
    flat = pa.flat_momentum
    assert flat.size == model.num_params()
    off, n = model.offsets[1]
    assert (flat[off:off + n] == 7.0).all()
    for v in pa.opt.momentum_buffers:
        assert np.shares_memory(v, flat)
    pa.finish_step(0.0)
    assert pa.since == 1
    pa.finish_step(0.0)
    assert pa.since == 0


def test_grid_on_one_rank():
    from mpi4py import MPI

    g = ProcessGrid(MPI.COMM_SELF)
    assert g.dims == (1, 1) and g.coords == (0, 0)
    assert g.data_comm.Get_size() == 1 and g.model_comm.Get_size() == 1
    g.free()
    with pytest.raises(ValueError, match="does not match"):
        ProcessGrid(MPI.COMM_SELF, (2, 1))


def test_reduce_timing_on_one_rank():
    t = reduce_timing(None, {"a": 1.5, "b": 2})
    assert t == {"a": {"min": 1.5, "mean": 1.5, "max": 1.5}, "b": {"min": 2, "mean": 2, "max": 2}}


# large-batch learning-rate rules ------------------------------------------------------------
def test_linear_scaling_and_warmup():
    assert scaled_lr(0.01, 256, 64, "none") == 0.01
    assert scaled_lr(0.01, 256, 64, "linear") == pytest.approx(0.04)
    ramp = [lr_at(s, "fixed", 0.04, {}, ref_lr=0.01, warmup_steps=4) for s in range(6)]
    assert ramp == pytest.approx([0.01, 0.0175, 0.025, 0.0325, 0.04, 0.04])
    # the policy runs on the scaled rate; warm-up multiplies it
    inv = lr_at(2, "inv", 0.04, {"gamma": 0.1, "power": 1.0}, ref_lr=0.01, warmup_steps=4)
    assert inv == pytest.approx(0.04 / 1.2 * 0.625)


@pytest.mark.parametrize("argv,needle", [
    (["--batch-size", "8", "--batch-per-rank", "4"], "not allowed with"),
    (["--average-every", "2"], "--sync average"),
    (["--average-optimizer-state"], "--sync average"),
    (["--sync", "average", "--no-overlap"], "--sync grad"),
    (["--sync", "average", "--bucket-mb", "1"], "--sync grad"),
    (["--warmup-epochs", "1"], "--lr-scaling linear"),
    (["--sync", "allgather"], "invalid choice"),
    (["--bucket-mb", "0"], "--bucket-mb"),
    (["--grid", "2x1"], "--parallel hybrid"),
    (["--hybrid-scheme", "b"], "--parallel hybrid"),
    (["--parallel", "hybrid", "--sync", "average"], "data-parallel option"),
    (["--parallel", "hybrid", "--grid", "2by2"], "DxM"),
    (["--parallel", "hybrid", "--grid", "0x2"], "positive"),
    (["--parallel", "hybrid", "--hybrid-scheme", "d"], "invalid choice"),
    (["--parallel", "model"], "invalid choice"),
])
def test_parallel_options_are_checked(argv, needle):
    with pytest.raises(UsageError, match=needle):
        validate_sync(parse_args(argv))


# parameter groups ---------------------------------------------------------------------------
def test_a_parameter_used_twice_is_reduced_and_updated_once():
    """Tied weights: two layers sharing one weight and bias. The gradient accumulates both uses,
    the parameter is once in the flat buffer (so once in any reduction) and is stepped once."""
    from functools import partial

    from hpcnn.nn import Flatten, Linear, ReLU, Sequential
    from hpcnn.parallel.flatbuf import FlatGroup

    rng = np.random.default_rng(0)
    fc = Linear(6, 6, rng=rng, name="tied")
    again = Linear(6, 6, rng=rng, name="again")
    again.weight, again.bias = fc.weight, fc.bias
    model = Sequential([Flatten(), fc, ReLU("r"), again], (6, 1, 1))
    assert [p.name for p in model.params()] == ["tied.weight", "tied.bias"]
    assert model.flat_params.size == 6 * 6 + 6 == model.num_params()
    group = FlatGroup([fc.weight, fc.bias, fc.weight])
    assert group.size == 42 and len(group.params) == 2
    x = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    y = np.arange(4) % 6
    before = fc.weight.data.copy()
    dp = DataParallel(None, model, partial(SGD, lr=0.5))
    dp.step(x, y, 0.5)
    np.testing.assert_allclose(fc.weight.data, before - 0.5 * fc.weight.grad, rtol=1e-6)


def test_split_parameter_knows_its_rows():
    from hpcnn.nn import Param

    p = Param(np.arange(20, dtype=np.float32).reshape(5, 4), "w")
    count, start = blockdist(5, 2, 1)
    p.take_rows(start, count)
    assert p.shard == (3, 2) and p.full_shape == (5, 4) and p.data.shape == (2, 4)
    full = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(p.local_part(full), full[3:])
    with pytest.raises(ValueError, match="already split"):
        p.take_rows(0, 1)
