"""Reference nets: architecture, parameter counts, shapes on every dataset's input."""

import numpy as np
import pytest

from hpcnn.nn import NETS, build_net


def count(shapes):
    return sum(int(np.prod(s)) for s in shapes)


def test_lenet5_is_caffes_lenet():
    net = build_net("lenet5", (1, 28, 28), 10)
    shapes = [p.data.shape for p in net.params()]
    assert shapes == [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,),
                      (10, 500), (10,)]
    assert net.num_params() == count(shapes) == 431080


def test_cifar10_quick_is_caffes():
    net = build_net("cifar10_quick", (3, 32, 32), 10)
    shapes = [p.data.shape for p in net.params()]
    assert shapes == [(32, 3, 5, 5), (32,), (32, 32, 5, 5), (32,), (64, 32, 5, 5), (64,),
                      (64, 1024), (64,), (10, 64), (10,)]
    # 32 -> 16 -> 8 -> 4 through Caffe's ceil-mode pools
    assert [line.split()[1] for line in net.summary() if line.startswith("pool")] == [
        "(32,", "(32,", "(64,"]
    conv1 = net.layers[0].weight.data
    assert 0.5e-4 < conv1.std() < 2e-4  # gaussian std 1e-4
    assert net.layers[0].bias.lr_mult == 2.0 and net.layers[0].weight.lr_mult == 1.0


def test_mlp_hidden_width():
    net = build_net("mlp", (1, 28, 28), 10, hidden=300)
    assert net.num_params() == 784 * 300 + 300 + 300 * 10 + 10


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 17, 23)])
def test_every_net_runs_on_every_input_shape(name, shape):
    net = build_net(name, shape, 10)
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    y = net.forward(x)
    assert y.shape == (2, 10) and np.isfinite(y).all()
    dx = net.backward(np.ones_like(y), input_grad=True)
    assert dx.shape == x.shape
    assert np.abs(net.flat_grads).sum() > 0
    grads = net.flat_grads.copy()
    net.zero_grad()
    net.forward(x)
    assert net.backward(np.ones_like(y)) is None  # the first layer skips its data gradient
    # the same gradients (to rounding: the first layer may be tuned to another strategy)
    np.testing.assert_allclose(net.flat_grads, grads, rtol=1e-4, atol=1e-5 * np.abs(grads).max())


def test_params_live_in_flat_buffers():
    net = build_net("lenet5", (1, 28, 28), 10)
    for p in net.params():
        assert np.shares_memory(p.data, net.flat_params)
        assert np.shares_memory(p.grad, net.flat_grads)
    net.flat_params[:] = 1.0
    assert all((p.data == 1.0).all() for p in net.params())


def test_same_seed_same_weights_and_state_dict_round_trip():
    a = build_net("cifar10_quick", (3, 32, 32), 10, seed=3)
    b = build_net("cifar10_quick", (3, 32, 32), 10, seed=3)
    c = build_net("cifar10_quick", (3, 32, 32), 10, seed=4)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, c.flat_params)
    c.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.flat_params, c.flat_params)


@pytest.mark.parametrize("name", list(NETS))
def test_build_net_gives_its_tuner_to_every_conv(name, monkeypatch):
    """Every convolution of a net built with a tuner asks that tuner (and only it); without
    one, the kernels' default one."""
    from hpcnn.kernels import autotune, conv
    from hpcnn.nn import Conv2d

    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", "")
    tuner = autotune.Autotuner(conv.ALGOS)
    net = build_net(name, NETS[name][2], 10, tuner=tuner)
    convs = [layer for layer in net.layers if isinstance(layer, Conv2d)]
    assert all(layer.tuner is tuner for layer in convs)
    assert all(layer.tuner is None for layer in build_net(name, NETS[name][2], 10).layers
               if isinstance(layer, Conv2d))
    default = conv.DEFAULT_TUNER.choices()
    x = np.zeros((1, *NETS[name][2]), dtype=np.float32)
    net.backward(np.ones_like(net.forward(x)))
    assert bool(tuner.choices()) == bool(convs)
    assert conv.DEFAULT_TUNER.choices() == default


def test_unknown_net():
    with pytest.raises(ValueError, match="unknown net"):
        build_net("resnet", (1, 28, 28), 10)
