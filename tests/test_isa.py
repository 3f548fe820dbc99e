"""The vector-ISA paths of the "direct" convolution (hpcnn.kernels.isa, hpcnn.kernels._fma).

- choosing a path: the host's widest by default, HPCNN_ISA narrower, a wider or unknown one a
  usage error (one line, exit 2 from the command-line tools);
- the code each path's tile becomes: the AVX-512 tile compiled for an AVX-512 target uses 512-bit
  FMAs with its accumulators in registers (no vector spill in the inner loop), the AVX2 tile
  256-bit ones (no need to run them: LLVM only compiles here);
- every path this machine runs against the naive reference, forward and both gradients, on
  awkward shapes: padding up to R-1 and beyond (windows wholly on the border), stride 2 and 3,
  1x1 to 7x7 images, tiles of every row count, output channels across panel widths;
- finite differences through each path; the count of real multiply-adds against brute force;
- the autotuner keys its choices by path.
"""

import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

from hpcnn.errors import UsageError
from hpcnn.kernels import _fma, autotune, direct, isa
from tests import reference as ref

RUNNABLE = [i.name for i in isa.runnable()]
THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]


def test_select_host_env_and_errors(monkeypatch):
    avx2_host = {"avx", "avx2", "fma"}
    assert isa.host_isa(avx2_host).name == "avx2"
    assert isa.host_isa({"avx512f", "avx2", "fma"}).name == "avx512"
    assert isa.host_isa({"sse2"}).name == "generic"
    monkeypatch.delenv(isa.ENV, raising=False)
    assert isa.select(features=avx2_host).name == "avx2"
    assert isa.select("generic", features=avx2_host).name == "generic"
    with pytest.raises(UsageError, match="runs at most avx2"):
        isa.select("avx512", features=avx2_host)
    with pytest.raises(UsageError, match="not a vector ISA"):
        isa.select("sse9", features=avx2_host)
    monkeypatch.setenv(isa.ENV, "generic")
    assert isa.select(features=avx2_host).name == "generic"
    assert [i.name for i in isa.runnable(avx2_host)] == ["avx2", "generic"]


def test_bad_isa_env_is_one_line_exit_2():
    env = dict(os.environ, HPCNN_ISA="avx1024")
    r = subprocess.run([sys.executable, "-m", "hpcnn.bench", "conv", "--algos", "direct",
                        "--no-torch"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "HPCNN_ISA='avx1024' is not a vector ISA" in r.stderr
    assert "Traceback" not in r.stderr


def _hot_loop(asm):
    """The basic block with the most FMAs: the tile's inner loop."""
    blocks = re.split(r"\n(?=\.LBB)", asm)
    return max(blocks, key=lambda b: len(re.findall(r"vfmadd\w*ps", b)))


@pytest.mark.parametrize("name,reg,width,nv", [("avx512", "zmm", 32, 2), ("avx512", "zmm", 32, 3),
                                               ("avx2", "ymm", 16, 2)])
def test_generated_code_uses_the_isa_vectors(name, reg, width, nv):
    target = isa.ISAS[name]
    rows = target.rows3 if nv == 3 else target.rows
    asm = _fma.assembly(_fma.standalone_module(target, nv, rows), target.llvm_cpu)
    loop = _hot_loop(asm)
    fmas = re.findall(r"vfmadd\w*ps\s+(%\w+), (%\w+), (%\w+)", loop)
    assert len(fmas) == rows * nv  # one FMA per accumulator and step
    assert all(all(op.startswith("%" + reg) for op in f) for f in fmas), fmas
    assert target.widths[0] == width
    # the accumulators stay in registers: no vector register goes to or comes from the stack
    assert not re.search(r"vmov\w+\s+%[xyz]mm\d+, -?\d*\(%rsp\)", loop), loop
    assert not re.search(r"vmov\w+\s+-?\d*\(%rsp\), %[xyz]mm", loop), loop


@pytest.mark.parametrize("name", ["avx512", "avx2"])
def test_packed_tile_prefetches_its_panel_ahead(name):
    """tile_packed's inner loop: the same FMAs and no vector spill, plus one prefetch per cache
    line of the step's B, PREFETCH steps ahead of the step's own load."""
    target = isa.ISAS[name]
    width = target.widths[0]
    loop = _hot_loop(_fma.assembly(_fma.standalone_module(target, prefetch=_fma.PREFETCH),
                                   target.llvm_cpu))
    assert len(re.findall(r"vfmadd\w*ps", loop)) == target.rows * 2
    assert not re.search(r"vmov\w+\s+%[xyz]mm\d+, -?\d*\(%rsp\)", loop), loop
    pf = [int(d or 0) for d in re.findall(r"prefetcht0\s+(-?\d*)\(%\w+\)", loop)]
    assert len(pf) == width * 4 // 64, loop  # one per 64-byte line
    # B's own loads use the same base register: the prefetches lie PREFETCH steps past them
    loads = [int(d or 0) for d in re.findall(r"vmovups\s+(-?\d*)\(%\w+\), %[yz]mm", loop)]
    assert min(pf) - min(loads) == _fma.PREFETCH * width * 4, loop


def _case(N, C, H, W, K, R, S, stride, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, S)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, ref.pair(stride), ref.pair(pad)


def _close(got, want):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape and got.dtype == np.float32
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


# (N, C, H, W, K, R, S, stride, padding)
AWKWARD = [
    (2, 3, 8, 8, 5, 5, 5, 1, 2),  # the first layer's 3 channels: weight-gradient tiles span s
    (3, 32, 8, 8, 35, 5, 5, 1, 2),  # panels of 32 + narrow rest, prefetched (> PREFETCH_PANEL)
    (2, 16, 7, 7, 64, 3, 3, 1, 1),  # 7x7 outputs
    (1, 17, 1, 1, 19, 3, 3, 1, 2),  # a 1x1 image, padding R-1: every window mostly border
    (2, 4, 2, 3, 9, 3, 3, 1, 4),  # padding beyond R-1: windows wholly on the border
    (2, 5, 7, 9, 7, 3, 3, 2, 1),  # stride 2
    (2, 20, 7, 7, 40, 3, 3, 3, (0, 1)),  # stride 3
    (2, 24, 6, 5, 13, 5, 3, (1, 2), (2, 1)),  # channels between one and two vectors
    (1, 9, 4, 4, 30, 2, 2, 1, 1),  # even kernel
    (3, 48, 5, 5, 16, 1, 1, 1, 0),  # 1x1; the data gradient's 48 channels: a three-vector panel
    (2, 8, 6, 6, 80, 3, 3, 1, 1),  # 80 output channels: panels of 32 and 48 on AVX-512
]


def test_weight_gradient_tiles_take_three_vectors_for_a_one_vector_rest():
    avx512, avx2 = isa.ISAS["avx512"], isa.ISAS["avx2"]

    def tiles(C, S, path):  # (first column, width, columns used, kernel column) per tile
        return [tuple(int(v) for v in t) for t in direct.column_tiles(C, S, path)]

    assert tiles(16, 5, avx512) == [(0, 32, 32, -1), (32, 48, 48, -1)]  # spans the row: 80
    assert tiles(48, 2, avx512) == [(0, 48, 48, 0), (48, 48, 48, 1)]  # per kernel column
    assert tiles(24, 3, avx512) == [(0, 32, 32, -1), (32, 48, 40, -1)]  # 72: 40 of 48 used
    assert tiles(3, 5, avx512) == [(0, 16, 15, -1)]
    assert tiles(64, 1, avx512) == [(0, 32, 32, 0), (32, 32, 32, 0)]
    assert tiles(24, 1, avx2) == [(0, 16, 16, 0), (16, 8, 8, 0)]  # no three-vector tile


def test_panels_take_three_vectors_for_a_one_vector_rest():
    avx512, avx2 = isa.ISAS["avx512"], isa.ISAS["avx2"]
    assert list(direct._panels(16, avx512)) == [16]
    assert list(direct._panels(35, avx512)) == [48]
    assert list(direct._panels(48, avx512)) == [48]
    assert list(direct._panels(64, avx512)) == [32, 32]
    assert list(direct._panels(80, avx512)) == [32, 48]
    assert list(direct._panels(88, avx512)) == [32, 32, 32]  # a rest of 24: two vectors
    assert list(direct._panels(24, avx2)) == [16, 8]  # AVX2 has no three-vector tile
    assert list(direct._panels(8, avx2)) == [8]


@pytest.mark.parametrize("name", [n for n in RUNNABLE if n != "generic"])
def test_awkward_cases_run_both_tile_kinds(name):
    """Some forward weight panels of the cases below are prefetched (tile_packed), some not (the
    generic path's 8-wide panels are all small: test_tile_sums_over_image_blocks checks its
    tile_packed)."""
    wide = isa.ISAS[name].widths[0]
    panels = [R * S * C * wide * 4 for _, C, _, _, _, R, S, _, _ in AWKWARD]
    assert min(panels) <= direct.PREFETCH_PANEL < max(panels)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_every_path_matches_the_reference(case, name, n_threads):
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        x, w, b, stride, pad = _case(*case, seed=len(name))
        y_ref = ref.conv2d_forward(x, w, b, stride, pad)
        dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
        _close(direct.forward(x, w, b, stride, pad, isa=name), y_ref)
        grads = direct.backward(dy, x, w, stride, pad, isa=name)
        for got, want in zip(grads, ref.conv2d_backward(dy, x, w, stride, pad), strict=True):
            _close(got, want)
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_path_by_finite_differences(name):
    """y is linear in x, w and b: L(t + v) - L(t - v) = 2 <dL/dt, v> up to rounding."""
    x, w, b, stride, pad = _case(2, 12, 6, 5, 20, 3, 3, 1, 1, seed=3)
    rng = np.random.default_rng(4)
    G = rng.standard_normal(direct.forward(x, w, b, stride, pad, isa=name).shape)
    G = G.astype(np.float32)
    grads = dict(zip("xwb", direct.backward(G, x, w, stride, pad, isa=name), strict=True))

    def loss(**kw):
        args = {"x": x, "w": w, "b": b, **kw}
        y = direct.forward(args["x"], args["w"], args["b"], stride, pad, isa=name)
        return float(np.sum(y.astype(np.float64) * G))

    base = {"x": x, "w": w, "b": b}
    for k, g in grads.items():
        v = rng.standard_normal(g.shape).astype(np.float32)
        fd = (loss(**{k: base[k] + v}) - loss(**{k: base[k] - v})) / 2
        an = float(np.sum(g.astype(np.float64) * v))
        assert abs(fd - an) <= 1e-3 * max(1.0, abs(an)), (k, fd, an)


@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_real_macs_counts_the_taps_on_real_pixels(case):
    N, C, H, W, K, R, S, stride, pad = case
    (sh, sw), (ph, pw) = ref.pair(stride), ref.pair(pad)
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    real = sum(1 for p in range(P) for q in range(Q) for r in range(R) for s in range(S)
               if 0 <= p * sh - ph + r < H and 0 <= q * sw - pw + s < W)
    assert direct.real_macs((N, C, H, W), (K, C, R, S), (sh, sw), (ph, pw)) == N * K * C * real


def test_peak_loop_computes_its_recurrence():
    """The peak loop's result is the FMA recurrence it claims (so no work is skipped)."""
    from hpcnn.kernels import peak

    out = np.zeros(1, dtype=np.float32)
    n = 1000
    name = RUNNABLE[0]
    peak._peak_kernel(isa.ISAS[name].id, n, out)
    want = 0.0
    for c in range(_fma.peak_chains(isa.ISAS[name])):
        a = float(c)
        for _ in range(n):
            a = a * 0.999999 + 1e-6
        want += a
    assert abs(float(out[0]) - want) <= 1e-4 * want


def test_autotune_key_names_the_path(monkeypatch):
    args = ((2, 3, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1), np.float32, 1)
    keys = set()
    for name in RUNNABLE:
        monkeypatch.setenv(isa.ENV, name)
        key = autotune.make_key(*args)
        assert f"isa={name};" in key
        keys.add(key)
    assert len(keys) == len(RUNNABLE)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C,H,W,ph,pw", [(16, 8, 8, 0, 0), (19, 5, 13, 2, 1), (3, 4, 9, 1, 3),
                                         (8, 1, 16, 2, 0)])
def test_pack_x_moves_blocks_and_ragged_edges(C, H, W, ph, pw, dtype):
    """NCHW -> zero-bordered NHWC, in 8x8 register transposes where x is contiguous and value by
    value for the ragged channels and columns (and for a strided x)."""
    from hpcnn.kernels import nhwc

    x = np.random.default_rng(C).standard_normal((4, C, H, W)).astype(dtype)
    want = np.zeros((2, H + 2 * ph, W + 2 * pw, C), dtype=dtype)
    want[:, ph:ph + H, pw:pw + W, :] = x[1:3].transpose(0, 2, 3, 1)
    for src in (x, np.asfortranarray(x)):
        xp = np.full((2, H + 2 * ph, (W + 2 * pw) * C), np.nan, dtype=dtype)
        nhwc.pack_x(src, 1, 3, ph, pw, xp)
        np.testing.assert_array_equal(xp, want.reshape(xp.shape))


@pytest.mark.parametrize("nv", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", RUNNABLE)
def test_tile_sums_over_image_blocks(name, packed, nv):
    """The tile's outer loop (nblk blocks at strides a_blk, b_blk) against NumPy, with and
    without prefetching B (tile_packed: the prefetches reach past B's end, harmlessly), for
    every tile width the path has."""
    path = isa.ISAS[name]
    rows = path.rows3 if nv == 3 else path.rows
    if rows == 0:
        pytest.skip(f"{name} has no {nv}-vector tile")
    m, nblk, nseg, L = rows - 1, 3, 2, 5
    lanes = path.lanes
    width = nv * lanes
    a_step, a_blk, b_step, b_blk, b_inc = 7, 40, 3 * width, 11 * width, width
    rng = np.random.default_rng(5)
    A = rng.standard_normal(2000).astype(np.float32)
    B = rng.standard_normal(4000).astype(np.float32)
    aoffs = (np.arange(m) * 150).astype(np.int64)
    ooffs = (np.arange(m) * (width + 3)).astype(np.int64)
    out = rng.standard_normal(m * (width + 3) + width).astype(np.float32)
    want = out.astype(np.float64).copy()
    for i in range(m):
        for u in range(nblk):
            for t in range(nseg):
                for j in range(L):
                    a = A[aoffs[i] + u * a_blk + t * a_step + j]
                    b0 = u * b_blk + t * b_step + j * b_inc
                    want[ooffs[i]:ooffs[i] + width] += a * B[b0:b0 + width].astype(np.float64)
    run = _run_tile_packed if packed else _run_tile
    run(path.id, nv, m, A, aoffs, a_step, a_blk, B, b_step, b_blk, b_inc, nblk, nseg, L, out,
        ooffs)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@numba.njit
def _run_tile(isa_id, nv, m, A, aoffs, a_step, a_blk, B, b_step, b_blk, b_inc, nblk, nseg, L,
              out, ooffs):
    _fma.tile(isa_id, nv, m, A, 0, aoffs, a_step, a_blk, B, 0, b_step, b_blk, b_inc, nblk, nseg,
              L, out, 0, ooffs, 1)


@numba.njit
def _run_tile_packed(isa_id, nv, m, A, aoffs, a_step, a_blk, B, b_step, b_blk, b_inc, nblk,
                     nseg, L, out, ooffs):
    _fma.tile_packed(isa_id, nv, m, A, 0, aoffs, a_step, a_blk, B, 0, b_step, b_blk, b_inc, nblk,
                     nseg, L, out, 0, ooffs, 1)


PAIRED = [  # (N, C, H, W, K, R, S, padding): the data gradient on pairs of output pixels
    (2, 16, 6, 8, 20, 5, 5, 2),  # even width
    (2, 9, 5, 7, 33, 3, 5, (1, 2)),  # odd width: the last pair's odd pixel lies past the edge
    (1, 12, 3, 3, 7, 3, 3, 0),  # no padding: the input is smaller than the kernel's reach
    (2, 16, 4, 5, 40, 3, 3, (2, 2)),  # padding R-1: dy's border is wider than the image's
    (1, 5, 1, 1, 3, 1, 1, 0),  # a 1x1 image and kernel
]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("case", PAIRED, ids=str)
def test_paired_data_gradient_matches_the_reference(case, name, n_threads):
    """Forced onto pairs whatever :func:`direct.pairs` says (and on the plain path), dx matches
    the reference; the choice itself follows the ISA's vector width."""
    N, C, H, W, K, R, S, pad = case
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        x, w, b, stride, pad = _case(N, C, H, W, K, R, S, 1, pad, seed=C)
        path = isa.ISAS[name]
        dy = np.random.default_rng(2).standard_normal(
            ref.conv2d_forward(x, w, b, stride, pad).shape).astype(np.float32)
        want = ref.conv2d_backward(dy, x, w, stride, pad)[0]
        dpad = (R - 1 - pad[0], S - 1 - pad[1])
        for paired in (True, False):
            _close(direct._data_grad(dy, w, dpad, W, path, paired=paired), want)
    finally:
        numba.set_num_threads(old)
    narrow = path.widths[1]
    assert direct.pairs(narrow, 5, 28, path) and not direct.pairs(narrow // 2, 5, 28, path)
    assert not direct.pairs(narrow, 3, 28, path) and not direct.pairs(narrow, 5, 7, path)
