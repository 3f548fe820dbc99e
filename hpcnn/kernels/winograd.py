"""Winograd convolution (strategies "winograd" and "winograd4"): fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). The output is cut
into m x m tiles; each needs an a x a input tile, a = m + r - 1 for an r x r kernel. With the
Toom-Cook matrices AT (m, a), G (a, r) and BT (a, a) of F(m x m, r x r)::

    y_tile = AT [ (G g G^T) (.) (BT d B) ] A          (.) elementwise, one channel pair

Summed over input channels, the a*a elementwise products become a*a independent GEMMs::

    U[xi] (K, C) = weights transformed          V[xi] (C, T) = input tiles transformed
    M[xi] (K, T) = U[xi] @ V[xi]                y tiles = AT M A  (+ bias)

so a 3x3 layer does 16/4 = 4 multiply-adds per output and channel pair with F(2x2, 3x3) instead
of 9 (2.25x fewer), 36/16 with F(4x4, 3x3) (4x fewer), and a 5x5 layer 36/4 with F(2x2, 5x5)
(2.8x fewer) and 64/16 with F(4x4, 5x5) (6.25x fewer). The transforms are memory-bound passes
over the data, as lowering is; they are small next to the GEMMs on the wide layers where the
flops are.

Backward, stride 1:

- data gradient: dx is the forward Winograd convolution of dy with the kernel turned by 180
  degrees and K, C swapped, padded by r - 1 - pad (a "full" correlation where pad = (r-1)/2);
- weight gradient: the adjoint of the forward formula, dU[xi] (K, C) = sum over tiles of
  dM[xi] (K, T) @ V[xi].T with dM = A dy_tile AT (dy zero outside the output), then
  dW = G^T dU G; every thread accumulates its own dU, summed in thread order afterwards;
- bias gradient: dy summed over N, P, Q.

Tiles are numbered t = (n * tiles_h + i) * tiles_w + j over the batch; the tile rows are dealt
out to the Numba threads in contiguous ranges, and each thread works through its range in chunks
of whole tile rows (BLAS on one thread inside): as many as fit half of one core's L2 with their V
and M blocks, but at least :data:`MIN_TILES` tiles, because the GEMMs lose more on narrow
matrices than on cache misses (measured on GoogLeNet 4e_3x3 and 5b_3x3 at 1 thread). The
transforms are straight-line code generated per variant (:mod:`~._winograd_gen`, one tile per
loop iteration); interpreted loops over the small matrices made them slower than the GEMMs.

Numerics: the data transforms have small integer (F(4, 5): dyadic) entries, exact in float32;
the points are 0, +-1 (F(2, 3)), 0, +-1, +-2 (F(4, 3), F(2, 5)) and 0, +-1, +-2, +-1/2 (F(4, 5)),
with the point at infinity. F(2, 3) errs about as direct convolution does; the 6 x 6 tiles mix
magnitudes up to 8 and lose about one decimal digit more in float32, the 8 x 8 ones about twice
as much again (about 1e-5 of the output's scale on GoogLeNet 3a_3x3, checked
against float64 references in tests/test_winograd.py).

Applies to stride-1 layers with square r x r kernels, r in :data:`TILE` for the strategy, and
padding <= r - 1; other shapes run "chunked" lowering (correct, but the autotuner skips them).
"""

import numba
import numpy as np

from hpcnn.kernels import _native, direct, pipelined, winograd_fma
from hpcnn.kernels._jit import pnjit, prange
from hpcnn.kernels._winograd_gen import taps, weight_transform
from hpcnn.kernels._winograd_tiles import KERNELS

AVAILABLE = pipelined.AVAILABLE

TILE = {
    "winograd": {3: 2, 5: 2},
    "winograd4": {3: 4, 5: 4},
}
"""strategy -> {kernel size r: output tile size m}."""


def tile_size(algo, w_shape):
    """m for strategy ``algo`` on kernel ``w_shape`` (K, C, R, S), or 0 where it does not apply."""
    R, S = w_shape[2], w_shape[3]
    return TILE.get(algo, {}).get(R, 0) if R == S else 0


def applies(algo, x_shape, w_shape, stride, padding, direction=None):
    """True where ``algo`` runs Winograd (else it runs "chunked"), in ``direction`` (None: all
    three); in float32 on the register tiles (:func:`_fma_path`), the weight gradient with
    too few vectors of input channels is "direct"'s (:func:`~.winograd_fma.own_wgrad`)."""
    r = w_shape[2]
    if (direction in ("wgrad", None) and _fma_path(algo, w_shape)
            and not winograd_fma.own_wgrad(w_shape[1], direct._isa(None),
                                           tile_size(algo, w_shape), r)):
        return False
    return (tile_size(algo, w_shape) > 0 and tuple(stride) == (1, 1)
            and max(padding) <= r - 1 and x_shape[2] + 2 * padding[0] >= r
            and x_shape[3] + 2 * padding[1] >= r)


# ---------------------------------------------------------------------------------------------
# weights and bias (the tile kernels are generated: :mod:`~._winograd_tiles`)


def _weight_untransform(dUs, m, dw):
    """dw[k, c] = G^T (sum over threads of dUs[g, :, k, c]) G, the sum in thread order; the
    transform is one GEMM, (K*C, a*a) by (a*a, r*r)."""
    K, C, r = dw.shape[0], dw.shape[1], dw.shape[2]
    du = dUs[0]
    if dUs.shape[0] > 1:
        du = du + dUs[1]  # a new array: the partials stay as they are
        for g in range(2, dUs.shape[0]):
            du += dUs[g]
    np.matmul(du.reshape(du.shape[0], K * C).T, taps(m, r, dw.dtype.str),
              out=dw.reshape(K * C, r * r))


@pnjit
def _bias_grad(dy, db):
    """db[k] = sum of dy[:, k] (float64 lanes, one per output column)."""
    N, K, P, Q = dy.shape
    for k in prange(K):
        lanes = np.zeros(Q, dtype=np.float64)
        for n in range(N):
            for p in range(P):
                row = dy[n, k, p]
                for q in range(Q):
                    lanes[q] += row[q]
        db[k] = lanes.sum()


# ---------------------------------------------------------------------------------------------
# orchestration


ROW_TILES = 7
"""Tile rows of at least this many tiles are transformed one row at a time (the "rows" form of
:mod:`~._winograd_gen`, vectorized along the row); shorter ones in passes over all the chunk's
tiles (the "chunk" form). Measured on an Intel Xeon (AVX-512), forward + backward of
GoogLeNet's 3x3 layers, chunk form against rows form (``results/isa/xeon2/winograd_ab.py``):
1.44-1.53x for F(2, 3) on 7x7 images (rows of 4 tiles), 1.16-1.31x for F(4, 3) there (2 tiles),
1.48-1.65x for F(4, 3) on 14x14 (4 tiles); on rows of 7 to 28 tiles 0.95-1.01x."""


MIN_TILES = 256
"""Tiles per chunk, at least, with the default chunk size (narrower GEMMs lose efficiency)."""


def _geo(x_shape, k_out, r, pads, m, itemsize, threads, chunk):
    """(geo, starts) for a Winograd pass of x (N, C, H, W) to k_out channels: starts[g] is the
    first tile row of thread g; chunks hold as many tile rows as fit the chunk size (V and M
    blocks together), at least one, and at least :data:`MIN_TILES` tiles by default."""
    N, C, H, W = x_shape
    ph, pw = pads
    P, Q = H + 2 * ph - r + 1, W + 2 * pw - r + 1
    th, tw = -(-P // m), -(-Q // m)
    nrows = N * th
    a = m + r - 1
    budget = pipelined.chunk_bytes(chunk)
    rows = budget // (a * a * (C + k_out) * itemsize * tw)
    if chunk is None:
        rows = max(rows, -(-MIN_TILES // tw))
    rows = max(1, min(nrows, rows))
    T = max(1, min(threads, nrows))
    starts = np.linspace(0, nrows, T + 1).round().astype(np.int64)
    geo = np.array([N, C, H, W, k_out, P, Q, m, ph, pw, th, tw, rows * tw, rows,
                    int(tw >= ROW_TILES), 0], dtype=np.int64)
    return geo, starts


def _buffers(geo, starts, a, backward):
    """Shapes of the per-thread V and M (dM, and the dU partials in backward) blocks."""
    G, C, K, ld = len(starts) - 1, int(geo[1]), int(geo[4]), int(geo[12])
    if backward:
        return {"V": (G, a * a, C, ld), "dM": (G, a * a, K, ld), "dU": (G, a * a, K, C)}
    return {"V": (G, a * a, C, ld), "M": (G, a * a, K, ld)}


def _conv(x, w, b, pads, m, chunk, dgrad=False):
    """Winograd forward of checked x (N, C, H, W) with w (K, C, r, r), stride 1; ``dgrad``:
    with w (C, K, r, r) turned by 180 degrees and its channel axes swapped instead (the data
    gradient), without copying it: the transformed weights stay [xi, C, K] and the GEMMs take
    them transposed."""
    r = w.shape[2]
    a = m + r - 1
    k_out = w.shape[1] if dgrad else w.shape[0]
    geo, starts = _geo(x.shape, k_out, r, pads, m, x.itemsize, numba.get_num_threads(), chunk)
    geo[15] = int(dgrad)
    U = np.empty((a * a, w.shape[0], w.shape[1]), dtype=x.dtype)
    weight_transform(w, m, turned=dgrad, out=U)
    y = np.empty((x.shape[0], k_out, int(geo[5]), int(geo[6])), dtype=x.dtype)
    ws = pipelined._workspace(_buffers(geo, starts, a, False), x.dtype)
    bias = np.zeros(0, dtype=x.dtype) if b is None else b
    with pipelined._BlasThreads(1):
        KERNELS[m, r][0](_native.GEMM[x.dtype], x, U, bias, y, geo, starts, ws["V"], ws["M"])
    return y


def _fallback(x, w, stride, padding, algo):
    """Whether the shape runs "chunked" (the weight gradient that :func:`applies` may leave to
    "direct" still runs its Winograd forward and data gradient)."""
    return not applies(algo, x.shape, w.shape, stride, padding, "forward")


def _fma_path(algo, w_shape, dtype=np.float32):
    """Whether the variant runs on register tiles (:mod:`~.winograd_fma`): all four, in
    float32."""
    m = tile_size(algo, w_shape)
    return (m, w_shape[2]) in winograd_fma.VARIANTS and np.dtype(dtype) == np.float32


def forward(x, w, b, stride, padding, algo="winograd", chunk=None):
    """y (N, K, P, Q) of checked arguments (see :mod:`hpcnn.kernels.conv`)."""
    if _fallback(x, w, stride, padding, algo):
        return pipelined.forward(x, w, b, stride, padding, schedule="chunked", chunk=chunk)
    if _fma_path(algo, w.shape, x.dtype) and chunk is None:
        return winograd_fma.forward(x, w, b, stride, padding, tile_size(algo, w.shape))
    return _conv(x, w, b, padding, tile_size(algo, w.shape), chunk)


def backward(dy, x, w, stride, padding, input_grad=True, algo="winograd", chunk=None):
    """(dx, dw, db) of checked arguments; dx is None without ``input_grad``."""
    if _fallback(x, w, stride, padding, algo):
        return pipelined.backward(dy, x, w, stride, padding, input_grad, schedule="chunked",
                                  chunk=chunk)
    if _fma_path(algo, w.shape, x.dtype) and chunk is None:
        return winograd_fma.backward(dy, x, w, stride, padding, tile_size(algo, w.shape),
                                     input_grad)
    m = tile_size(algo, w.shape)
    K, C, r, _ = w.shape
    a = m + r - 1
    db = np.empty(K, dtype=x.dtype)
    _bias_grad(dy, db)
    geo, starts = _geo(x.shape, K, r, padding, m, x.itemsize, numba.get_num_threads(), chunk)
    ws = pipelined._workspace(_buffers(geo, starts, a, True), x.dtype)
    with pipelined._BlasThreads(1):
        KERNELS[m, r][1](_native.GEMM[x.dtype], x, dy, geo, starts, ws["V"], ws["dM"],
                         ws["dU"])
    dw = np.empty_like(w)
    _weight_untransform(ws["dU"], m, dw)
    if not input_grad:
        return None, dw, db
    dx = _conv(dy, w, None, (r - 1 - padding[0], r - 1 - padding[1]), m, chunk, dgrad=True)
    return dx, dw, db


def workspace_bytes(algo, x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                    backward=False, chunk=None):
    """(total, transformed-input) scratch bytes of one pass (the chunk buffers, and the
    transformed weights)."""
    if not applies(algo, x_shape, w_shape, stride, padding):
        return pipelined.workspace_bytes("chunked", x_shape, w_shape, stride, padding, itemsize,
                                         threads, backward, chunk)
    if _fma_path(algo, w_shape, f"f{itemsize}") and chunk is None:
        return winograd_fma.workspace_bytes(x_shape, w_shape, padding, tile_size(algo, w_shape),
                                            itemsize, threads, backward)
    T = threads or numba.get_num_threads()
    m = tile_size(algo, w_shape)
    K, C, r, _ = w_shape
    a = m + r - 1
    geo, starts = _geo(x_shape, K, r, padding, m, itemsize, T, chunk)
    shapes = _buffers(geo, starts, a, backward)
    total = sum(int(np.prod(s)) for s in shapes.values()) + a * a * K * C
    lowered = int(np.prod(shapes["V"]))
    if backward:  # the data gradient's own forward pass: V and M over K -> C
        g2, s2 = _geo((x_shape[0], K, *_out_hw(x_shape, r, padding)), C, r,
                      (r - 1 - padding[0], r - 1 - padding[1]), m, itemsize, T, chunk)
        shapes2 = _buffers(g2, s2, a, False)
        total = max(total, sum(int(np.prod(s)) for s in shapes2.values()) + a * a * K * C)
        lowered = max(lowered, int(np.prod(shapes2["V"])))
    return total * itemsize, lowered * itemsize


def _out_hw(x_shape, r, padding):
    return x_shape[2] + 2 * padding[0] - r + 1, x_shape[3] + 2 * padding[1] - r + 1
