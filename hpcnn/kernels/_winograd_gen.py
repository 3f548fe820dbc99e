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

VARIANTS = ((2, 3), (4, 3), (2, 5), (4, 5))
"""(m, r) pairs: output tile m x m, kernel r x r."""

POINTS = {4: (0.0, 1.0, -1.0), 6: (0.0, 1.0, -1.0, 2.0, -2.0),
          8: (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)}
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


@functools.lru_cache(maxsize=None)
def taps(m, r, dtype):
    """(a*a, r*r) G (x) G in ``dtype`` (a numpy type string): U[xi] = sum over the taps of
    taps[xi, tap] * w[tap]. Read-only, computed once per (m, r, dtype)."""
    G = matrices(m, r)[1]
    t = np.kron(G, G).astype(dtype)
    t.flags.writeable = False
    return t


def weight_transform(w, m, turned=False, out=None):
    """U[xi, k, c] = (G w[k, c] G^T)[xi] for w (K, C, r, r): one GEMM, (a*a, r*r) by (r*r, K*C),
    into ``out`` (a*a, K, C) or a new array. ``turned``: of w turned by 180 degrees (the taps in
    reverse order), still indexed [xi, k, c]. (Per (k, c) pair in a loop it took longer than the
    GEMMs of GoogLeNet's 7x7 layers: 6.5 ms on 5b_3x3 at one thread on an Intel Xeon, against
    10.6 for the sixteen GEMMs.)"""
    K, C, r = w.shape[0], w.shape[1], w.shape[2]
    t = taps(m, r, w.dtype.str)
    if out is None:
        out = np.empty((t.shape[0], K, C), dtype=w.dtype)
    np.matmul(t[:, ::-1] if turned else t, w.reshape(K * C, r * r).T,
              out=out.reshape(t.shape[0], K * C))
    return out


# ---------------------------------------------------------------------------------------------
# code generation


def _lin(terms):
    """'c1*n1 + c2*n2 ...' for (coefficient, name) pairs, zeros dropped, +-1 as adds. Other
    coefficients are small integers or multiples of 1/256 (F(4, 5)'s points +-1/2), written as
    float32 constants (exact in float32 and float64), so float32 data stays float32 and the
    tile loops vectorize 8 wide."""
    out = []
    for c, name in terms:
        if abs(c) < 1e-12:
            continue
        mag = abs(float(c))
        if mag * 256 != int(mag * 256):
            raise ValueError(f"winograd: coefficient {c} is not a multiple of 1/256")
        term = name if mag == 1.0 else f"f32({mag!r}) * {name}"
        out.append(("-" if c < 0 else "+", term))
    if not out:
        return "f32(0.0)"
    text = ("-" if out[0][0] == "-" else "") + out[0][1]
    for sign, term in out[1:]:
        text += f" {sign} {term}"
    return text


# Two forms of each transform. "rows": one tile row per loop, the loop over its tiles j at unit
# stride; inside the parallel drivers (where Numba marks the arrays noalias) LLVM vectorizes it
# along j, which pays when a row has many tiles. "chunk": passes over all the tiles of a chunk
# at once, for rows of few tiles (7x7 images: 4 tiles of F(2, 3), 2 of F(4, 3)), where the row
# loop is too short to vectorize. The drivers pick per call (geo[14]: winograd.ROW_TILES).


def _input_rows(m, a):
    """The loop head both input forms share: channel c, tile row R of the chunk (image plane
    ``img``, first input row h0, first tile t0), then the a input rows h of that tile row."""
    return ["    for c in range(C):",
            "        for R in range(r0, r1):",
            "            img = x[R // th, c]",
            f"            h0 = (R % th) * {m} - ph",
            "            t0 = (R - r0) * tw",
            f"            for u in range({a}):",
            "                h = h0 + u"]


def _rows_input_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def input_rows_{s}(x, r0, r1, geo, V, xs):",
        f'    """V[xi, c, t] = (BT d B)[xi] of F({m}, {r}) for the tiles of rows r0 <= R < r1.',
        "",
        "    xs (a, m, tiles_w + (a-1)//m) holds the a input rows of one tile row, zero-padded and",
        "    split by column phase: xs[u, p, k] = x[n, c, h0 + u, k*m + p - pw], so that tile j",
        '    reads xs[u, q % m, j + q // m]: unit stride in j, and the tile loop vectorizes."""',
        "    C, H, W = geo[1], geo[2], geo[3]",
        "    ph, pw, th, tw = geo[8], geo[9], geo[10], geo[11]",
        "    L = xs.shape[2]",
    ] + _input_rows(m, a) + [
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


def _rows_output_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def output_rows_{s}(M, r0, r1, geo, b, y, ys):",
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


def _rows_grad_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def grad_rows_{s}(dy, r0, r1, geo, dM, gs):",
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


def _pass(comment, loads, stores):
    """One loop over the chunk's tiles: ``loads`` (name, source) then ``stores`` (target, expr).
    At most a stores per loop: with more, LLVM's runtime alias checks give up and the loop
    stays scalar (16 stores did, 8 did not, measured)."""
    lines = [f"        for t in range(nt):  # {comment}"]
    lines += [f"            {name} = {src}" for name, src in loads]
    lines += [f"            {dst} = {expr}" for dst, expr in stores]
    return lines


def _input_kernel(m, r, at, bt):
    a, nb = m + r - 1, (m + r - 2) // m + 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def input_{s}(x, r0, r1, geo, V, xs):",
        f'    """V[xi, c, t] = (BT d B)[xi] of F({m}, {r}) for the tiles t of rows r0 <= R < r1.',
        "",
        "    Per channel, xs (a*m*nb, tiles) gathers the input of every tile of the chunk, zero",
        "    outside the image: row (u*m + p)*nb + b holds x[n, c, h0 + u, (j + b)*m + p - pw] at",
        "    tile t = (R - r0)*tw + j, so column q of the tile's row u is row (u*m + q % m)*nb +",
        "    q // m. Then passes over all the chunk's tiles (unit stride, vectorized), each",
        "    storing the a rows of one column v of V = BT d B.",
        '    """',
        "    C, H, W = geo[1], geo[2], geo[3]",
        "    ph, pw, th, tw = geo[8], geo[9], geo[10], geo[11]",
        "    nt = (r1 - r0) * tw",
        f"    ja = min(tw, (pw + {m - 1}) // {m})  # tiles ja <= j < jb read inside the image only",
        f"    jb = max(ja, min(tw, (W - {m * nb} + pw) // {m} + 1))",
    ] + _input_rows(m, a) + [
        "                if h < 0 or h >= H:",
        f"                    for i in range({m * nb}):",
        f"                        xs[u * {m * nb} + i, t0:t0 + tw] = 0.0",
        "                    continue",
        "                row = img[h]",
        "                for j in range(ja, jb):",
    ]
    lines += [f"                    xs[u * {m * nb} + {p * nb + b}, t0 + j] = "
              f"row[j * {m} + {b * m + p} - pw]" for p in range(m) for b in range(nb)]
    for edge in ("range(ja)", "range(jb, tw)"):  # the edge tiles, one column at a time
        lines += [
            f"                for j in {edge}:",
            f"                    for p in range({m}):",
            f"                        for b in range({nb}):",
            f"                            w = (j + b) * {m} + p - pw",
            f"                            xs[u * {m * nb} + p * {nb} + b, t0 + j] = (",
            "                                row[w] if 0 <= w < W else f32(0.0))",
        ]
    lines.append("        Vc = V[:, c, :nt]")
    for v in range(a):  # V column v = BT (d B)[:, v], (d B)[u, v] from the taps q it needs
        taps = [q for q in range(a) if bt[v, q] != 0]
        loads = [(f"d{u}_{q}", f"xs[{(u * m + q % m) * nb + q // m}, t]")
                 for u in range(a) for q in taps]
        loads += [(f"e{u}", _lin([(bt[v, q], f"d{u}_{q}") for q in taps])) for u in range(a)]
        stores = [(f"Vc[{u2 * a + v}, t]", _lin([(bt[u2, u], f"e{u}") for u in range(a)]))
                  for u2 in range(a)]
        lines += _pass(f"column {v} of BT d B", loads, stores)
    return lines


def _output_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def output_{s}(M, r0, r1, geo, b, y, fs, ys):",
        f'    """y tiles of rows r0 <= R < r1 = AT M A + b of F({m}, {r}), clipped to y: per',
        "    output channel, passes over all the chunk's tiles (unit stride, vectorized) give",
        "    fs = AT M one column v at a time and ys[u*m + v, t] = (fs A)[u, v] + b one row u at a",
        '    time; then ys goes to y, row by row."""',
        "    K, P, Q = geo[4], geo[5], geo[6]",
        "    th, tw = geo[10], geo[11]",
        "    nt = (r1 - r0) * tw",
        "    for k in range(K):",
        "        bk = b[k] if b.shape[0] else f32(0.0)",
        "        Mk = M[:, k, :nt]",
    ]
    for v in range(a):
        loads = [(f"m{q}", f"Mk[{q * a + v}, t]") for q in range(a)]
        stores = [(f"fs[{u * a + v}, t]", _lin([(at[u, q], f"m{q}") for q in range(a)]))
                  for u in range(m)]
        lines += _pass(f"column {v} of AT M", loads, stores)
    for u in range(m):
        loads = [(f"f{q}", f"fs[{u * a + q}, t]") for q in range(a)]
        stores = [(f"ys[{u * m + v}, t]", _lin([(at[v, q], f"f{q}") for q in range(a)]) + " + bk")
                  for v in range(m)]
        lines += _pass(f"row {u} of (AT M) A", loads, stores)
    lines += [
        "        for R in range(r0, r1):",
        "            out = y[R // th, k]",
        f"            p0 = (R % th) * {m}",
        "            t0 = (R - r0) * tw",
        f"            for u in range(min({m}, P - p0)):",
        "                row = out[p0 + u]",
        f"                for v in range({m}):",
        f"                    src = ys[u * {m} + v, t0:t0 + tw]",
        f"                    for j in range(min(tw, (Q - v + {m - 1}) // {m})):",
        f"                        row[j * {m} + v] = src[j]",
    ]
    return lines


def _grad_kernel(m, r, at, bt):
    a = m + r - 1
    s = f"{m}_{r}"
    lines = [
        "@njit",
        f"def grad_{s}(dy, r0, r1, geo, dM, gs, fs):",
        f'    """dM[xi, k, t] = (A g AT)[xi] of F({m}, {r}), g the m x m tile of dy (zero',
        "    outside), for the tiles of rows r0 <= R < r1: per output channel, gs[u*m + v, t]",
        "    gathers every tile of the chunk, then passes over all the tiles (unit stride,",
        "    vectorized) give fs = A g one column v at a time and dM = fs AT one row u at a",
        '    time."""',
        "    K, P, Q = geo[4], geo[5], geo[6]",
        "    th, tw = geo[10], geo[11]",
        "    nt = (r1 - r0) * tw",
        "    for k in range(K):",
        "        for R in range(r0, r1):",
        "            src = dy[R // th, k]",
        f"            p0 = (R % th) * {m}",
        "            t0 = (R - r0) * tw",
        f"            for u in range({m}):",
        f"                for v in range({m}):",
        f"                    dst = gs[u * {m} + v, t0:t0 + tw]",
        "                    if p0 + u >= P:",
        "                        dst[:] = 0.0",
        "                        continue",
        "                    row = src[p0 + u]",
        f"                    jn = max(0, min(tw, (Q - v + {m - 1}) // {m}))",
        "                    for j in range(jn):",
        f"                        dst[j] = row[j * {m} + v]",
        "                    for j in range(jn, tw):",
        "                        dst[j] = 0.0",
    ]
    for v in range(m):
        loads = [(f"g{q}", f"gs[{q * m + v}, t]") for q in range(m)]
        stores = [(f"fs[{u * m + v}, t]", _lin([(at[q, u], f"g{q}") for q in range(m)]))
                  for u in range(a)]
        lines += _pass(f"column {v} of A g", loads, stores)
    lines.append("        Mk = dM[:, k, :nt]")
    for u in range(a):
        loads = [(f"f{q}", f"fs[{u * m + q}, t]") for q in range(m)]
        stores = [(f"Mk[{u * a + v}, t]", _lin([(at[q, v], f"f{q}") for q in range(m)]))
                  for v in range(a)]
        lines += _pass(f"row {u} of (A g) AT", loads, stores)
    return lines


_DRIVERS = '''
@pnjit
def forward_{s}(gemm, x, U, b, y, geo, starts, V, M):
    """y = the F({m}, {r}) convolution of x with the transformed weights U (a*a, K, C): each
    thread g takes the tile rows starts[g] .. starts[g + 1], in chunks of geo[13] rows; the
    transforms are the "rows" form when geo[14] is 1, else the "chunk" form. U[xi] is (K, C),
    or (C, K) taken transposed when geo[15] is 1."""
    C, K, tw, ld, rows, by_rows = geo[1], geo[4], geo[11], geo[12], geo[13], geo[14]
    ta, lda = (TRANS, K) if geo[15] else (NO_TRANS, C)
    isz = x.itemsize
    for g in prange(starts.shape[0] - 1):
        Vg = V[g]
        Mg = M[g]
        xr = np.empty(({a}, {m}, tw + {e}), dtype=x.dtype)
        yr = np.empty(({m}, {m}, tw), dtype=x.dtype)
        xs = np.empty(({amb}, ld if by_rows == 0 else 1), dtype=x.dtype)
        fs = np.empty(({am}, ld if by_rows == 0 else 1), dtype=x.dtype)
        ys = np.empty(({m2}, ld if by_rows == 0 else 1), dtype=x.dtype)
        for r0 in range(starts[g], starts[g + 1], rows):
            r1 = min(r0 + rows, starts[g + 1])
            if by_rows:
                input_rows_{s}(x, r0, r1, geo, Vg, xr)
            else:
                input_{s}(x, r0, r1, geo, Vg, xs)
            for xi in range({a2}):
                gemm(ROW_MAJOR, ta, NO_TRANS, K, (r1 - r0) * tw, C, 1.0,
                     U.ctypes.data + xi * K * C * isz, lda,
                     Vg.ctypes.data + xi * C * ld * isz, ld, 0.0,
                     Mg.ctypes.data + xi * K * ld * isz, ld)
            if by_rows:
                output_rows_{s}(Mg, r0, r1, geo, b, y, yr)
            else:
                output_{s}(Mg, r0, r1, geo, b, y, fs, ys)


@pnjit
def wgrad_{s}(gemm, x, dy, geo, starts, V, dM, dU):
    """dU[g] = sum over thread g's tiles of dM[xi] @ V[xi].T, F({m}, {r}) (zeroed here)."""
    C, K, tw, ld, rows, by_rows = geo[1], geo[4], geo[11], geo[12], geo[13], geo[14]
    isz = x.itemsize
    for g in prange(starts.shape[0] - 1):
        Vg = V[g]
        dMg = dM[g]
        dU[g] = 0.0
        xr = np.empty(({a}, {m}, tw + {e}), dtype=x.dtype)
        gr = np.empty(({m}, {m}, tw), dtype=x.dtype)
        xs = np.empty(({amb}, ld if by_rows == 0 else 1), dtype=x.dtype)
        gs = np.empty(({m2}, ld if by_rows == 0 else 1), dtype=x.dtype)
        fs = np.empty(({am}, ld if by_rows == 0 else 1), dtype=x.dtype)
        for r0 in range(starts[g], starts[g + 1], rows):
            r1 = min(r0 + rows, starts[g + 1])
            if by_rows:
                input_rows_{s}(x, r0, r1, geo, Vg, xr)
                grad_rows_{s}(dy, r0, r1, geo, dMg, gr)
            else:
                input_{s}(x, r0, r1, geo, Vg, xs)
                grad_{s}(dy, r0, r1, geo, dMg, gs, fs)
            for xi in range({a2}):
                gemm(ROW_MAJOR, NO_TRANS, TRANS, K, C, (r1 - r0) * tw, 1.0,
                     dMg.ctypes.data + xi * K * ld * isz, ld,
                     Vg.ctypes.data + xi * C * ld * isz, ld, 1.0,
                     dU.ctypes.data + (g * {a2} + xi) * K * C * isz, C)
'''

_HEADER = '''"""Winograd tile kernels, GENERATED by hpcnn/kernels/_winograd_gen.py: do not edit.

Straight-line transforms with the coefficients of :func:`hpcnn.kernels._winograd_gen.matrices`,
each a few passes over all the tiles of a chunk at unit stride (vectorized); see
:mod:`hpcnn.kernels.winograd`.
geo: N, Cin, H, W, Kout, P, Q, m, ph, pw, tiles_h, tiles_w, ld, rows per chunk, rows form (1)
or chunk form (0), U transposed (1). Tile t of a chunk is (tile row R, column j),
t = (R - r0) * tiles_w + j.
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
        for make in (_rows_input_kernel, _rows_output_kernel, _rows_grad_kernel,
                     _input_kernel, _output_kernel, _grad_kernel):
            parts.append("\n\n" + "\n".join(make(m, r, at, bt)) + "\n")
        parts.append("\n" + _DRIVERS.format(s=s, m=m, r=r, a=a, a2=a * a, am=a * m, m2=m * m,
                                             amb=a * m * ((a - 1) // m + 1), e=(a - 1) // m))
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
