"""Winograd transform matrices, and the generator of the tile kernels in ``_winograd_tiles.py``.

The transforms of one a x a tile are tiny fixed linear maps. Written as loops over the matrices
they run a handful of iterations each and spend their time in loop control (measured: the input
transform of GoogLeNet 3a_3x3 took 80 ms, more than twice its GEMMs); written out as straight-line
code with the constant coefficients, zeros dropped and +-1 as adds, they are a few ns per tile.
So this module writes that code once per variant (F(m, r) in :data:`VARIANTS`) into
``hpcnn/kernels/_winograd_tiles.py``, an ordinary module that Numba compiles and caches. The file
is committed; ``tests/test_winograd.py`` checks it is what :func:`generate` writes today.

Regenerate after changing this file::

    python hpcnn/kernels/_winograd_gen.py   (a plain script: the package imports its output)
"""

import functools
import os

import numpy as np

VARIANTS = ((2, 3), (4, 3), (2, 5))
"""(m, r) pairs: output tile m x m, kernel r x r."""

POINTS = {4: (0.0, 1.0, -1.0), 6: (0.0, 1.0, -1.0, 2.0, -2.0)}
"""Interpolation points by tile size a = m + r - 1 (the point at infinity is added)."""

TARGET = os.path.join(os.path.dirname(__file__), "_winograd_tiles.py")


def _vandermonde(points, n):
    """(a, n): row i = powers 0..n-1 of point i; the last row (infinity) = the top power."""
    a = len(points) + 1
    v = np.zeros((a, n))
    for i, p in enumerate(points):
        v[i] = p ** np.arange(n)
    v[a - 1, n - 1] = 1.0
    return v


@functools.lru_cache(maxsize=None)
def matrices(m, r):
    """(AT (m, a), G (a, r), BT (a, a)) of F(m x m, r x r), float64.

    Correlation y = C_g^T d is the transpose of the linear convolution s = C_g h, and Toom-Cook
    writes that as C_g = V_a^-1 diag(V_r g) V_m, V_n evaluating a polynomial of n coefficients
    at the a points; hence AT = V_m^T, G = V_r and BT = V_a^-T. Each row i of BT is then scaled
    by f_i to small integers and row i of G by 1/f_i (the product is unchanged), so that the
    data transforms, which run on every tile, are exact in float32. Computed once per (m, r)
    (every convolution call asks); the arrays are read-only.
    """
    a = m + r - 1
    if a not in POINTS:
        raise ValueError(f"winograd: no interpolation points for F({m}, {r}) (tile {a})")
    pts = POINTS[a]
    at = _vandermonde(pts, m).T.copy()
    g = _vandermonde(pts, r)
    bt = np.linalg.inv(_vandermonde(pts, a)).T.copy()
    for i in range(a):
        nz = np.abs(bt[i][np.abs(bt[i]) > 1e-12])
        f = 1.0 / nz.min()
        bt[i] = np.round(bt[i] * f, 9)
        g[i] /= f
    for t in (at, g, bt):
        t.flags.writeable = False
    return at, g, bt


# ---------------------------------------------------------------------------------------------
# code generation


def _lin(terms):
    """'c1*n1 + c2*n2 ...' for (coefficient, name) pairs, zeros dropped, +-1 as adds. Other
    coefficients are small integers, written as float32 constants (exact in float32 and
    float64), so float32 data stays float32 and the tile loops vectorize 8 wide."""
    out = []
    for c, name in terms:
        if abs(c) < 1e-12:
            continue
        mag = abs(float(c))
        if mag != int(mag):
            raise ValueError(f"winograd: coefficient {c} is not an integer")
        term = name if mag == 1.0 else f"f32({mag:.1f}) * {name}"
        out.append(("-" if c < 0 else "+", term))
    if not out:
        return "f32(0.0)"
    text = ("-" if out[0][0] == "-" else "") + out[0][1]
    for sign, term in out[1:]:
        text += f" {sign} {term}"
    return text


def _input_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def input_{s}(x, r0, r1, geo, V, xs):",
        f'    """V[xi, c, t] = (BT d B)[xi] of F({m}, {r}) for the tiles of rows r0 <= R < r1.',
        "",
        "    xs (a, m, tiles_w + (a-1)//m) holds the a input rows of one tile row, zero-padded and",
        "    split by column phase: xs[u, p, k] = x[n, c, h0 + u, k*m + p - pw], so that tile j",
        '    reads xs[u, q % m, j + q // m]: unit stride in j, and the tile loop vectorizes."""',
        "    C, H, W = geo[1], geo[2], geo[3]",
        "    ph, pw, th, tw = geo[8], geo[9], geo[10], geo[11]",
        "    L = xs.shape[2]",
        "    for c in range(C):",
        "        for R in range(r0, r1):",
        "            img = x[R // th, c]",
        f"            h0 = (R % th) * {m} - ph",
        "            t0 = (R - r0) * tw",
        f"            for u in range({a}):",
        "                h = h0 + u",
        "                for p in range(" + str(m) + "):",
        "                    dst = xs[u, p]",
        "                    if 0 <= h < H:",
        "                        row = img[h]",
        "                        for k in range(L):",
        f"                            w = k * {m} + p - pw",
        "                            dst[k] = row[w] if 0 <= w < W else 0.0",
        "                    else:",
        "                        dst[:] = 0.0",
        "            for j in range(tw):",
    ]
    lines += [f"                d{u}_{q} = xs[{u}, {q % m}, j + {q // m}]"
              for u in range(a) for q in range(a)]
    for u in range(a):  # e = d B
        for v in range(a):
            lines.append(f"                e{u}_{v} = "
                         + _lin([(bt[v, q], f"d{u}_{q}") for q in range(a)]))
    for u2 in range(a):  # V = BT e
        for v in range(a):
            lines.append(f"                V[{u2 * a + v}, c, t0 + j] = "
                         + _lin([(bt[u2, u], f"e{u}_{v}") for u in range(a)]))
    return lines


def _output_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def output_{s}(M, r0, r1, geo, b, y, ys):",
        f'    """y tiles of rows r0 <= R < r1 = AT M A + b of F({m}, {r}), clipped to y; the',
        '    tile loop writes ys (m, m, tiles_w) with unit stride, then ys goes to y."""',
        "    K, P, Q = geo[4], geo[5], geo[6]",
        "    th, tw = geo[10], geo[11]",
        "    for k in range(K):",
        "        bk = b[k] if b.shape[0] else f32(0.0)",
        "        for R in range(r0, r1):",
        "            t0 = (R - r0) * tw",
        "            for j in range(tw):",
    ]
    lines += [f"                m{q}_{v} = M[{q * a + v}, k, t0 + j]"
              for q in range(a) for v in range(a)]
    for u in range(m):  # f = AT M
        for v in range(a):
            lines.append(f"                f{u}_{v} = "
                         + _lin([(at[u, q], f"m{q}_{v}") for q in range(a)]))
    for u in range(m):  # y = f A + b
        for v in range(m):
            lines.append(f"                ys[{u}, {v}, j] = "
                         + _lin([(at[v, q], f"f{u}_{q}") for q in range(a)]) + " + bk")
    lines += [
        "            out = y[R // th, k]",
        f"            p0 = (R % th) * {m}",
        f"            for u in range({m}):",
        "                if p0 + u < P:",
        "                    row = out[p0 + u]",
        f"                    for v in range({m}):",
        "                        src = ys[u, v]",
        "                        for j in range(tw):",
        f"                            q = j * {m} + v",
        "                            if q < Q:",
        "                                row[q] = src[j]",
    ]
    return lines


def _grad_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def grad_{s}(dy, r0, r1, geo, dM, gs):",
        f'    """dM[xi, k, t] = (A g AT)[xi] of F({m}, {r}), g the m x m tile of dy (zero',
        "    outside), for the tiles of rows r0 <= R < r1; gs (m, m, tiles_w) holds one tile row,",
        '    gs[u, v, j] = dy[n, k, p0 + u, j*m + v]."""',
        "    K, P, Q = geo[4], geo[5], geo[6]",
        "    th, tw = geo[10], geo[11]",
        "    for k in range(K):",
        "        for R in range(r0, r1):",
        "            src = dy[R // th, k]",
        f"            p0 = (R % th) * {m}",
        "            t0 = (R - r0) * tw",
        f"            for u in range({m}):",
        f"                for v in range({m}):",
        "                    dst = gs[u, v]",
        "                    if p0 + u < P:",
        "                        row = src[p0 + u]",
        "                        for j in range(tw):",
        f"                            q = j * {m} + v",
        "                            dst[j] = row[q] if q < Q else 0.0",
        "                    else:",
        "                        dst[:] = 0.0",
        "            for j in range(tw):",
    ]
    lines += [f"                g{u}_{v} = gs[{u}, {v}, j]" for u in range(m) for v in range(m)]
    for u in range(a):  # f = A g
        for v in range(m):
            lines.append(f"                f{u}_{v} = "
                         + _lin([(at[q, u], f"g{q}_{v}") for q in range(m)]))
    for u in range(a):  # dM = f AT
        for v in range(a):
            lines.append(f"                dM[{u * a + v}, k, t0 + j] = "
                         + _lin([(at[q, v], f"f{u}_{q}") for q in range(m)]))
    return lines


_DRIVERS = '''
@pnjit
def forward_{s}(gemm, x, U, b, y, geo, starts, V, M):
    """y = the F({m}, {r}) convolution of x with the transformed weights U (a*a, K, C): each
    thread g takes the tile rows starts[g] .. starts[g + 1], in chunks of geo[13] rows."""
    C, K, tw, ld, rows = geo[1], geo[4], geo[11], geo[12], geo[13]
    isz = x.itemsize
    for g in prange(starts.shape[0] - 1):
        Vg = V[g]
        Mg = M[g]
        xs = np.empty(({a}, {m}, tw + {e}), dtype=x.dtype)
        ys = np.empty(({m}, {m}, tw), dtype=x.dtype)
        for r0 in range(starts[g], starts[g + 1], rows):
            r1 = min(r0 + rows, starts[g + 1])
            input_{s}(x, r0, r1, geo, Vg, xs)
            for xi in range({a2}):
                gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, K, (r1 - r0) * tw, C, 1.0,
                     U.ctypes.data + xi * K * C * isz, C,
                     Vg.ctypes.data + xi * C * ld * isz, ld, 0.0,
                     Mg.ctypes.data + xi * K * ld * isz, ld)
            output_{s}(Mg, r0, r1, geo, b, y, ys)


@pnjit
def wgrad_{s}(gemm, x, dy, geo, starts, V, dM, dU):
    """dU[g] = sum over thread g's tiles of dM[xi] @ V[xi].T, F({m}, {r}) (zeroed here)."""
    C, K, tw, ld, rows = geo[1], geo[4], geo[11], geo[12], geo[13]
    isz = x.itemsize
    for g in prange(starts.shape[0] - 1):
        Vg = V[g]
        dMg = dM[g]
        dU[g] = 0.0
        xs = np.empty(({a}, {m}, tw + {e}), dtype=x.dtype)
        gs = np.empty(({m}, {m}, tw), dtype=x.dtype)
        for r0 in range(starts[g], starts[g + 1], rows):
            r1 = min(r0 + rows, starts[g + 1])
            input_{s}(x, r0, r1, geo, Vg, xs)
            grad_{s}(dy, r0, r1, geo, dMg, gs)
            for xi in range({a2}):
                gemm(ROW_MAJOR, NO_TRANS, TRANS, K, C, (r1 - r0) * tw, 1.0,
                     dMg.ctypes.data + xi * K * ld * isz, ld,
                     Vg.ctypes.data + xi * C * ld * isz, ld, 1.0,
                     dU.ctypes.data + (g * {a2} + xi) * K * C * isz, C)
'''

_HEADER = '''"""Winograd tile kernels, GENERATED by hpcnn/kernels/_winograd_gen.py: do not edit.

Straight-line transforms of one tile per loop iteration, with the coefficients of
:func:`hpcnn.kernels._winograd_gen.matrices`; see :mod:`hpcnn.kernels.winograd`.
geo: N, Cin, H, W, Kout, P, Q, m, ph, pw, tiles_h, tiles_w, ld, rows per chunk. Tile t of a
chunk is (tile row R, column j), t = (R - r0) * tiles_w + j.
"""

import numpy as np
from numpy import float32 as f32

from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels._native import NO_TRANS, ROW_MAJOR, TRANS
'''


def generate():
    """The source text of ``_winograd_tiles.py``."""
    parts = [_HEADER]
    table = []
    for m, r in VARIANTS:
        at, _, bt = matrices(m, r)
        a = m + r - 1
        s = f"{m}_{r}"
        for make in (_input_kernel, _output_kernel, _grad_kernel):
            parts.append("\n\n" + "\n".join(make(m, r, at, bt)) + "\n")
        parts.append("\n" + _DRIVERS.format(s=s, m=m, r=r, a=a, a2=a * a, e=(a - 1) // m))
        table.append(f"    ({m}, {r}): (forward_{s}, wgrad_{s}),")
    parts.append("\n\nKERNELS = {\n" + "\n".join(table) + "\n}\n"
                 '"""(m, r) -> (forward driver, weight-gradient driver)."""\n')
    return "".join(parts)


def main():
    with open(TARGET, "w") as f:
        f.write(generate())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
