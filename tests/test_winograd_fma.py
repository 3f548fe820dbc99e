"""Winograd F(2x2, 3x3), F(2x2, 5x5), F(4x4, 3x3) and F(4x4, 5x5) on register tiles
(hpcnn.kernels.winograd_fma: the "winograd" and "winograd4" strategies in float32) and its
vector transforms (hpcnn.kernels._wtrans)."""

import numba
import numpy as np
import pytest
from llvmlite import ir

from hpcnn.kernels import _fma, _wtrans, conv, direct, isa, winograd, winograd_fma
from tests import reference as ref

RUNNABLE = [i.name for i in isa.runnable()]
THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]


@numba.njit
def _apply(kind, isa_id, src, s0, s_row, s_col, dst, d0, d_row, d_col, n, oi, oj):
    _wtrans.wtrans(kind, isa_id, src, s0, s_row, s_col, dst, d0, d_row, d_col, n, oi, oj)


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("kind", sorted(_wtrans.KINDS))
def test_transforms_match_their_matrices(name, kind):
    """Every kind on every path, for channel counts below, at and past a vector (the vector
    loop and the one-by-one rest), with strided rows and columns and clipped outputs."""
    Lm, Rm = _wtrans.KINDS[kind]
    nu, nv = Lm.shape[1], Rm.shape[1]
    rng = np.random.default_rng(kind)
    for n in (1, 3, 16, 21, 37):
        s_col, s_row = n + 5, (n + 5) * nv + 3
        src = rng.standard_normal(2 + nu * s_row).astype(np.float32)
        d_col, d_row = n + 2, (n + 2) * Rm.shape[0] + 1
        for oi, oj in ((Lm.shape[0], Rm.shape[0]), (1, 2), (2, 1)):
            dst = np.full(3 + Lm.shape[0] * d_row, 7.0, dtype=np.float32)
            _apply(kind, isa.ISAS[name].id, src, 2, s_row, s_col, dst, 3, d_row, d_col, n, oi, oj)
            tile = np.stack([[src[2 + u * s_row + v * s_col:][:n] for v in range(nv)]
                             for u in range(nu)])
            want = _wtrans.reference(kind, tile)
            if kind not in _wtrans.OUTPUT.values():
                oi, oj = Lm.shape[0], Rm.shape[0]  # only the output transform clips
            expect = np.full_like(dst, 7.0)
            for i in range(oi):
                for j in range(oj):
                    expect[3 + i * d_row + j * d_col:][:n] = want[i, j]
            np.testing.assert_allclose(dst, expect, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("a", sorted(_wtrans.INPUT))
def test_avx512_transform_uses_512_bit_vectors(a):
    mod = ir.Module(name="t")
    fp, i64 = ir.FloatType().as_pointer(), ir.IntType(64)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [fp, i64, i64, i64, fp, i64, i64, i64,
                                                          i64, i64]), name="t")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    _wtrans.emit_transform(builder, _wtrans.INPUT[a], 16, *fn.args)
    builder.ret_void()
    asm = _fma.assembly(mod, isa.ISAS["avx512"].llvm_cpu)
    ops = [line.split(None, 1) for line in asm.splitlines() if "zmm" in line]
    ops = [(op, args.split(", ")) for op, args in ops if "rsp" not in args]  # not spills
    stores = [a for op, a in ops if op.startswith("vmov") and "(" in a[-1]]
    loads = [a for op, a in ops if any("(" in x for x in a[:-1])]
    assert len(stores) == a * a and len(loads) >= a * a  # one 16-lane vector per tile value
    fmas = sum(op.startswith(("vfmadd", "vfmsub", "vfnmadd")) for op, _ in ops)
    adds = sum(op.startswith(("vadd", "vsub")) for op, _ in ops)
    assert fmas + adds >= a * a and (fmas >= a * a or a == 4)  # F(2x2, 3x3)'s: adds only


CASES = [  # (N, C, H, W, K, m, r, pad): 3-vector panels (K 48, 80), ragged channels, bands,
    # several images per block, partial tiles (P or Q not a multiple of m)
    (3, 16, 14, 14, 48, 2, 5, 2),
    (2, 33, 9, 11, 80, 2, 5, 2),
    (5, 7, 7, 7, 20, 2, 5, 1),
    (1, 5, 40, 37, 9, 2, 5, 3),  # a block is a band of tile rows
    (9, 3, 6, 6, 33, 2, 5, 4),  # padding 4: windows wholly on the border
    (2, 17, 5, 8, 16, 2, 5, 0),
    (3, 32, 14, 14, 48, 4, 3, 1),
    (2, 33, 9, 10, 20, 4, 3, 2),
    (1, 6, 70, 13, 7, 4, 3, 1),
    (4, 16, 7, 7, 64, 4, 3, 0),
    (3, 32, 16, 16, 32, 4, 5, 2),  # F(4x4, 5x5): 8x8 input tiles
    (2, 33, 9, 11, 80, 4, 5, 2),
    (1, 5, 45, 38, 9, 4, 5, 3),
    (6, 3, 6, 7, 33, 4, 5, 4),
    (2, 17, 5, 8, 16, 4, 5, 0),
    (3, 16, 12, 12, 24, 4, 5, 2),  # its weight gradient from one AVX-512 vector of channels
    (2, 32, 7, 7, 40, 2, 3, 1),  # F(2x2, 3x3): 4x4 input tiles
    (3, 17, 9, 6, 20, 2, 3, 2),
    (1, 5, 30, 11, 9, 2, 3, 0),
]


@pytest.mark.parametrize("name", RUNNABLE)
@pytest.mark.parametrize("n_threads", THREADS)
def test_forward_and_backward_match_the_reference(name, n_threads, monkeypatch):
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        for i, (N, C, H, W, K, m, r, pad) in enumerate(CASES):
            rng = np.random.default_rng(i)
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            w = (rng.standard_normal((K, C, r, r)) / np.sqrt(r * r * C)).astype(np.float32)
            b = rng.standard_normal(K).astype(np.float32)
            algo = "winograd4" if m == 4 else "winograd"
            assert winograd._fma_path(algo, w.shape)
            assert winograd.applies(algo, x.shape, w.shape, (1, 1), (pad, pad), "forward")
            y = winograd_fma.forward(x, w, b, (1, 1), (pad, pad), m, isa=name)
            want = ref.conv2d_forward(x, w, b, 1, pad)
            np.testing.assert_allclose(y, want, rtol=0, atol=1e-4 * np.abs(want).max())
            dy = rng.standard_normal(y.shape).astype(np.float32)
            got = winograd_fma.backward(dy, x, w, (1, 1), (pad, pad), m, isa=name)
            for g, e in zip(got, ref.conv2d_backward(dy, x, w, 1, pad), strict=True):
                np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * max(1, np.abs(e).max()))
            assert winograd_fma.backward(dy, x, w, (1, 1), (pad, pad), m, False,
                                         isa=name)[0] is None
    finally:
        numba.set_num_threads(old)


def test_bands_and_image_blocks_are_planned():
    assert winograd_fma._blocks(4, 1, 20, 19) == (5, 1)  # 128 // 19 = 6 rows: 4 even bands of 5
    assert winograd_fma._blocks(100, 2, 8, 8) == (8, 2)  # two 64-tile images per block
    assert winograd_fma._blocks(3, 2, 2, 2) == (2, 2)  # no more than a group's images


def test_strategy_takes_the_tiles_in_float32_only(monkeypatch):
    """"winograd" runs F(2x2, 5x5) (and F(2x2, 3x3)) on the tiles in float32; float64 and an
    explicit chunk keep the BLAS path; with 8 input channels its weight gradient is "direct"'s,
    so the autotuner does not time it there."""
    xs, ws = (2, 8, 9, 9), (4, 8, 5, 5)
    real = winograd_fma._conv
    assert winograd._fma_path("winograd", ws) and not winograd._fma_path("winograd", ws, "f8")
    assert winograd._fma_path("winograd", (4, 8, 3, 3))  # F(2x2, 3x3)
    assert not winograd._fma_path("winograd", (4, 8, 3, 3), "f8")
    assert winograd._fma_path("winograd4", (4, 8, 3, 3))
    assert winograd._fma_path("winograd4", (4, 8, 5, 5))  # F(4x4, 5x5)
    assert "winograd" in conv.candidates(xs, ws, (1, 1), (2, 2), direction="forward")
    assert "winograd" in conv.candidates(xs, ws, (1, 1), (2, 2), direction="backward")
    assert "winograd" not in conv.candidates(xs, ws, (1, 1), (2, 2), direction="wgrad")
    assert "winograd" in conv.candidates((2, 32, 9, 9), (4, 32, 5, 5), (1, 1), (2, 2),
                                         direction="wgrad")  # two vectors of input channels
    lanes = direct._isa(None).lanes  # one vector: F(4x4, 5x5)'s own, F(2x2, 5x5)'s "direct"'s
    one = conv.candidates((2, lanes, 9, 9), (4, lanes, 5, 5), (1, 1), (2, 2), direction="wgrad")
    assert "winograd4" in one and "winograd" not in one
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    calls = []
    monkeypatch.setattr(winograd_fma, "_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    for dtype in (np.float32, np.float64):
        got = conv.conv2d_forward(x.astype(dtype), w.astype(dtype), None, 1, 2, algo="winograd")
        want = ref.conv2d_forward(x, w, None, 1, 2)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=(1e-4 if dtype == np.float32
                                                            else 1e-10) * np.abs(want).max())
        assert len(calls) == 1  # float32 ran its own forward (though the weight gradient of 8
        # input channels is "direct"'s), float64 did not


def test_workspace_is_block_sized():
    xs, ws = (32, 32, 14, 14), (128, 32, 5, 5)
    fwd, v = winograd.workspace_bytes("winograd", xs, ws, (1, 1), (2, 2), 4, 2)
    bwd, _ = winograd.workspace_bytes("winograd", xs, ws, (1, 1), (2, 2), 4, 2, backward=True)
    lowering = conv.workspace_bytes("lowering", xs, ws, 1, 2)[0]
    assert 0 < v < fwd < lowering / 4 and 0 < bwd < lowering / 4
    T = winograd_fma._geometry(xs, 128, 2, 5, (2, 2), direct._isa(None), 2)[7]
    assert v == 2 * 36 * T * 32 * 4  # two groups' V blocks
    assert 36 * T * (32 + 48) * 4 <= winograd_fma.BLOCK_BYTES  # V and one panel's M
    shapes = winograd_fma._geometry(xs, 128, 2, 5, (2, 2), direct._isa(None), 2,
                                    wgrad=True)[-1]
    assert shapes["vb"][1] * 4 + shapes["mb"][1] * 4 <= 1.1 * winograd_fma.WGRAD_BLOCK_BYTES
    assert bwd >= sum(int(np.prod(s)) for s in shapes.values()) * 4
