"""The RNN: kernels against their NumPy twins, BPTT against finite differences and against the
O(T^2) loop, the text reader and its streams, and the command line (train, checkpoint, sample)."""

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest

from hpcnn.data.text import load_text, read_text
from hpcnn.errors import DataError, UsageError
from hpcnn.kernels import rnn as K
from hpcnn.nn.loss import SequenceCrossEntropy
from hpcnn.nn.rnn import Windows, build_rnn, generate
from hpcnn.optim import SGD
from hpcnn.parallel import DataParallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-6
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness, it was the epoch of belief. ") * 40


def arrays(rng, B, T, H, V, dtype):
    f = partial(np.asarray, dtype=dtype)
    return (rng.integers(0, V, (B, T)), f(rng.standard_normal((B, H)) * 0.5),
            f(rng.standard_normal((V, H)) * 0.5), f(rng.standard_normal((H, H)) * 0.5),
            f(rng.standard_normal(H) * 0.1))


# ---------------------------------------------------------------------------------------------
# kernels against their NumPy twins


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("B,T,H,V", [(3, 1, 7, 5), (3, 13, 7, 5), (1, 4, 33, 2), (5, 9, 16, 70)])
def test_forward_and_backward_match_numpy_twins(B, T, H, V, dtype, tol):
    rng = np.random.default_rng(B * 100 + T)
    ids, h0, emb, w, b = arrays(rng, B, T, H, V, dtype)
    hs = K.rnn_forward(ids, h0, emb, w, b)
    np.testing.assert_allclose(hs, K.rnn_forward_reference(ids, h0, emb, w, b), atol=tol)
    np.testing.assert_allclose(K.rnn_cell_forward(ids[:, 0], h0, emb, w, b), hs[0], atol=tol)
    dh = rng.standard_normal(hs.shape).astype(dtype)
    got = K.rnn_backward(dh, ids, hs, h0, w, V)
    ref = K.rnn_backward_reference(dh, ids, hs, h0, w, V)
    for name, a, r in zip(("demb", "dw_hh", "db_h", "dh0"), got, ref, strict=True):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, r, atol=tol * 20, rtol=tol * 20, err_msg=name)


def test_float32_tanh_within_its_bound():
    """The float32 cell's rational tanh against float64 tanh on [-12, 12]: the cell with a zero
    state and zero recurrent weights is tanh(emb[id])."""
    H = 64
    x = np.linspace(-12, 12, 4001 * H).astype(np.float32).reshape(-1, H)
    ids = np.arange(len(x))
    got = K.rnn_cell_forward(ids, np.zeros((len(x), H), np.float32), x,
                             np.zeros((H, H), np.float32), np.zeros(H, np.float32))
    assert np.abs(got - np.tanh(x.astype(np.float64))).max() <= 3.5e-7


@pytest.mark.parametrize("N,V", [(1, 2), (39, 5), (200, 113)])
def test_softmax_over_vocab_matches_twin(N, V):
    rng = np.random.default_rng(N)
    z = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    z[0, 0] = 80.0  # large logits stay finite
    labels = rng.integers(0, V, N)
    total, dz = K.softmax_ce_steps(z, labels, 0.25)
    rt, rdz = K.softmax_ce_steps_reference(z, labels, 0.25)
    assert total == pytest.approx(rt, rel=1e-6)
    np.testing.assert_allclose(dz, rdz, atol=1e-7)
    assert K.softmax_ce_steps(z, labels, 0.25, grad=False) == (total, None)


def test_kernels_refuse_bad_input_naming_shapes():
    rng = np.random.default_rng(0)
    ids, h0, emb, w, b = arrays(rng, 3, 4, 7, 5, np.float32)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        K.rnn_forward(ids + 5, h0, emb, w, b)
    with pytest.raises(ValueError, match="hidden size 7"):
        K.rnn_forward(ids, h0, emb[:, :6], w, b)
    with pytest.raises(ValueError, match="B = 3"):
        K.rnn_forward(ids[:2], h0, emb, w, b)
    with pytest.raises(ValueError, match="dtype"):
        K.rnn_forward(ids, h0.astype(np.float64), emb, w, b)
    with pytest.raises(ValueError, match="labels|ids"):
        K.softmax_ce_steps(np.zeros((2, 3), np.float32), np.array([0, 3]), 1.0)


# ---------------------------------------------------------------------------------------------
# backpropagation through time


@pytest.mark.parametrize("T", [1, 10, 13, 50])
def test_one_sweep_equals_the_quadratic_loop(T):
    rng = np.random.default_rng(T)
    ids, h0, emb, w, b = arrays(rng, 3, T, 7, 5, np.float64)
    hs = K.rnn_forward(ids, h0, emb, w, b)
    dh = rng.standard_normal(hs.shape)
    fast = K.rnn_backward(dh, ids, hs, h0, w, 5)
    loop = K.rnn_backward_truncated_loop(dh, ids, hs, h0, w, 5)
    for a, r in zip(fast[:3], loop[:3], strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
    if T > 2:  # truncated shorter than the window, the loop computes something else
        short = K.rnn_backward_truncated_loop(dh, ids, hs, h0, w, 5, truncate=1)
        assert not np.allclose(short[1], fast[1])


def model64(V, H, T, seed):
    net = build_rnn(V, H, T, seed=seed)
    rng = np.random.default_rng(seed)
    for p in net.params():
        p.data = rng.standard_normal(p.data.shape) * 0.6
        p.grad = np.zeros_like(p.data)
    return net


@pytest.mark.parametrize("T", [1, 13])
def test_whole_window_gradients_against_finite_differences(T):
    """Every parameter of the model (input weights, recurrent weights, biases, output layer)
    under the per-step softmax loss of a window, from a carried (non-zero) state."""
    B, H, V = 3, 7, 5
    net = model64(V, H, T, seed=T)
    rng = np.random.default_rng(T + 1)
    ids, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    h0 = rng.standard_normal((B, H)) * 0.5
    loss_fn = SequenceCrossEntropy()

    def loss():
        return loss_fn(net.forward(Windows(ids, h0.copy()), train=False), y)[0]

    _, dz = loss_fn(net.forward(Windows(ids, h0.copy())), y)
    net.backward(dz)
    for p in net.params():
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(12, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + EPS
            fp = loss()
            flat[i] = old - EPS
            fm = loss()
            flat[i] = old
            np.testing.assert_allclose(p.grad.reshape(-1)[i], (fp - fm) / (2 * EPS),
                                       rtol=1e-5, atol=1e-8, err_msg=p.name)


def test_state_carried_across_windows_equals_one_long_window():
    net = build_rnn(5, 8, 6, seed=2)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5, (2, 12))
    state = np.zeros((2, 8), np.float32)
    first = net.forward(Windows(ids[:, :6], state), train=False)
    second = net.forward(Windows(ids[:, 6:], state), train=False)
    whole = net.forward(Windows(ids), train=False)  # (12*2, V) time-major
    np.testing.assert_allclose(np.concatenate([first, second]), whole, atol=1e-6)
    hs = K.rnn_forward(ids, np.zeros((2, 8), np.float32), net.layers[0].emb.data,
                       net.layers[0].w_hh.data, net.layers[0].b_h.data)
    np.testing.assert_allclose(state, hs[-1], atol=1e-6)  # the state left for the next window


def test_loss_normalised_by_the_global_number_of_characters():
    """Two halves of the streams with scale 1/2 each sum to the whole batch's gradient."""
    rng = np.random.default_rng(4)
    ids, y = rng.integers(0, 5, (4, 7)), rng.integers(0, 5, (4, 7))
    grads = []
    for parts in ([slice(0, 4)], [slice(0, 2), slice(2, 4)]):
        net = model64(5, 6, 7, seed=5)
        for sl in parts:
            _, dz = SequenceCrossEntropy()(net.forward(Windows(ids[sl])), y[sl],
                                           1.0 / len(parts))
            net.backward(dz)
        grads.append(np.concatenate([p.grad.ravel() for p in net.params()]))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, atol=1e-14)


def test_training_lowers_the_loss_and_generates_from_the_vocabulary():
    ds = load_text_from(TEXT, 10)
    net = build_rnn(ds.num_classes, 32, 10, seed=0)
    # lr 0.05: at 0.1 with momentum 0.9 this small net sat at the edge of divergence, and on an
    # AMD Zen 3 the float rounding tipped it over (loss 2.64 -> 3.15; 2.80 -> 0.10 at 0.05).
    st = DataParallel(None, net, partial(SGD, lr=0.05, momentum=0.9),
                      loss=SequenceCrossEntropy())
    losses = [st.step(x, y, 0.05) for _ in range(3)
              for x, y in ds.epoch_batches(4, 4, 0, 0, ds.steps_per_epoch(4), 32)]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.5
    text = generate(net, ds.vocab, 50, np.random.default_rng(0), prime="it was")
    assert len(text) == 50 and set(text) <= set(ds.vocab)


# ---------------------------------------------------------------------------------------------
# the text reader and its streams


def load_text_from(text, bptt, tmp=None):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        return load_text(f.name, bptt)
    finally:
        os.unlink(f.name)


def test_reader_refuses_empty_non_utf8_missing_and_large(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_text(empty)
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="empty"):
        read_text(bom)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 3"):
        read_text(latin)
    with pytest.raises(DataError, match="cannot read"):
        read_text(tmp_path / "missing.txt")
    big = tmp_path / "big.txt"
    big.write_text("a" * 101)
    with pytest.raises(DataError, match="larger than the 100 bytes"):
        read_text(big, max_bytes=100)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc")
    with pytest.raises(DataError, match="at least 4"):
        load_text(tiny, 1)


def test_vocabulary_split_and_encoding():
    ds = load_text_from("\ufeff" + "h\u00e9llo w\u00f6rld, h\u00e9llo \u2603!\n" * 3, 2)
    assert ds.vocab == "".join(sorted(set("h\u00e9llo w\u00f6rld, \u2603!\n")))
    ids = np.concatenate([ds.x_train, ds.x_test])
    assert "".join(ds.vocab[i] for i in ids) == "h\u00e9llo w\u00f6rld, h\u00e9llo \u2603!\n" * 3
    assert len(ds.x_test) == max(2, int(len(ids) * 0.1)) and ds.num_classes == len(ds.vocab)
    assert ds.input_shape == (2,)


def test_streams_of_n_ranks_are_the_serial_streams():
    ds = load_text_from(TEXT, 7)
    B = 6
    steps = ds.steps_per_epoch(B)
    length = (len(ds.x_train) - 1) // B
    assert steps == length // 7
    serial = list(ds.epoch_batches(B, B, 0, 0, steps, 3))
    for n in (2, 3):
        per = B // n
        ranks = [list(ds.epoch_batches(B, per, r, 0, steps, 3)) for r in range(n)]
        for i, (x, y) in enumerate(serial):
            np.testing.assert_array_equal(np.concatenate([rk[i][0].ids for rk in ranks]),
                                          x.ids)
            np.testing.assert_array_equal(np.concatenate([rk[i][1] for rk in ranks]), y)
    # targets are the next characters, windows follow each other within a stream
    x0, y0 = serial[0]
    x1, _ = serial[1]
    np.testing.assert_array_equal(y0[:, :-1], x0.ids[:, 1:])
    np.testing.assert_array_equal(y0[:, -1], x1.ids[:, 0])
    assert x0.state is serial[-1][0].state and not x0.state.any()  # one state, zero at start


def test_too_short_for_the_streams_is_a_usage_error():
    ds = load_text_from("abcdefghij" * 3, 5)
    with pytest.raises(UsageError, match="fewer than one window of --bptt 5"):
        ds.train_examples(8)
    with pytest.raises(UsageError, match="held-out text"):
        ds.train_examples(4)


# ---------------------------------------------------------------------------------------------
# the command line


def run_cli(module, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_train_checkpoint_and_sample(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    m, ck = tmp_path / "m.jsonl", tmp_path / "ck"
    r = run_cli("hpcnn.train", "--net", "rnn", "--dataset", "text", "--text", str(text),
                "--hidden", "24", "--bptt", "12", "--batch-size", "8", "--epochs", "2",
                "--threads", "1", "--metrics", str(m), "--checkpoint-dir", str(ck))
    assert r.returncode == 0, r.stderr
    assert "net rnn (" in r.stdout and "char/s" in r.stdout
    assert "epoch 2 done: train loss" in r.stdout and "held-out perplexity" in r.stdout
    recs = [json.loads(line) for line in m.read_text().splitlines()]
    assert [rec.get("epoch") for rec in recs] == [1, 2, 2]
    for rec in recs[:2]:
        assert rec["test_perplexity"] == pytest.approx(np.exp(rec["test_loss"]))
        assert 1 < rec["test_perplexity"] < len(set(TEXT))
        assert rec["train_perplexity"] == pytest.approx(np.exp(rec["train_loss"]))
    assert recs[1]["train_perplexity"] < recs[0]["train_perplexity"]
    ckpt = recs[-1]["checkpoint"]
    s = run_cli("hpcnn.sample", "--checkpoint", ckpt, "--length", "80", "--seed", "3",
                "--prime", "it was")
    assert s.returncode == 0, s.stderr
    out = s.stdout.rstrip("\n")
    assert out.startswith("it was") and len(out) == len("it was") + 80
    assert set(out) <= set(TEXT)
    again = run_cli("hpcnn.sample", "--checkpoint", ckpt, "--length", "80", "--seed", "3",
                    "--prime", "it was")
    assert again.stdout == s.stdout  # the seed decides
    # resume from the checkpoint: one more epoch
    r2 = run_cli("hpcnn.train", "--net", "rnn", "--dataset", "text", "--text", str(text),
                 "--hidden", "24", "--bptt", "12", "--batch-size", "8", "--epochs", "3",
                 "--threads", "1", "--checkpoint-dir", str(ck), "--resume", "auto")
    assert r2.returncode == 0, r2.stderr
    assert "resumed from" in r2.stdout and "epoch 3 done" in r2.stdout


@pytest.mark.parametrize("extra,content,message", [
    (["--bptt", "0"], TEXT, "--bptt (the window T) must be from 1"),
    (["--bptt", "-3"], TEXT, "--bptt (the window T) must be from 1"),
    ([], "", "the text file is empty"),
    ([], b"\xff\xfeA\x00B\x00", "not UTF-8 text"),
    (["--parallel", "hybrid"], TEXT, "--net rnn trains with --parallel data"),
    (["--batch-size", "4096"], TEXT, "fewer than one window of --bptt 50"),
    (["--batch-size", "8192"], TEXT, "too short for 8192 streams"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, content, message):
    text = tmp_path / "t.txt"
    if isinstance(content, bytes):
        text.write_bytes(content)
    else:
        text.write_text(content, encoding="utf-8")
    r = run_cli("hpcnn.train", "--net", "rnn", "--dataset", "text", "--text", str(text),
                "--threads", "1", *extra)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_rnn_and_text_go_together(tmp_path):
    r = run_cli("hpcnn.train", "--net", "rnn", "--dataset", "synthetic", "--threads", "1")
    assert r.returncode == 2 and "--net rnn trains on --dataset text" in r.stderr
    r = run_cli("hpcnn.train", "--net", "rnn", "--dataset", "text", "--threads", "1")
    assert r.returncode == 2 and "needs --text PATH" in r.stderr


def test_sample_refuses_a_cnn_checkpoint_and_a_missing_file(tmp_path):
    r = run_cli("hpcnn.sample", "--checkpoint", str(tmp_path / "none.h5"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr
    from hpcnn.checkpoint import write_checkpoint

    meta = {"net": "mlp", "step": 1, "epoch": 1, "index": 1, "loss_sum": 0.0, "loss_n": 1,
            "ranks": 1, "batch": 1, "steps_per_epoch": 1, "rows": 1,
            "arrays": {"param/fc.weight": [2, 2]}}
    path = write_checkpoint(tmp_path / "cnn.h5", {"param/fc.weight": np.zeros((2, 2), np.float32)},
                            meta)
    r = run_cli("hpcnn.sample", "--checkpoint", str(path))
    assert r.returncode == 2 and "not a checkpoint of an rnn" in r.stderr


def test_resume_mid_epoch_is_exact(tmp_path):
    """A run resumed from a checkpoint written in the middle of an epoch (hidden states of the
    streams included) ends with the uninterrupted run's numbers."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    common = ["--net", "rnn", "--dataset", "text", "--text", str(text), "--hidden", "16",
              "--bptt", "12", "--batch-size", "8", "--epochs", "2", "--threads", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_cli("hpcnn.train", *common, "--checkpoint-dir", str(a), "--checkpoint-every", "20",
                "--keep", "100", "--metrics", str(tmp_path / "a.jsonl"))
    assert r.returncode == 0, r.stderr
    r = run_cli("hpcnn.train", *common, "--checkpoint-dir", str(b), "--resume",
                str(a / "ckpt-000000020.h5"), "--metrics", str(tmp_path / "b.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "step 20, epoch 1, batch 20 of " in r.stdout
    ends = [json.loads((tmp_path / f"{n}.jsonl").read_text().splitlines()[-1]) for n in "ab"]
    for key in ("train_loss", "test_perplexity", "test_accuracy"):
        assert ends[0][key] == ends[1][key], key
