"""Winograd tile transforms generated as LLVM IR on the ISA's vectors (a Numba intrinsic).

A Winograd transform maps an a x b tile of values to ``L tile R^T`` with small constant matrices
(Lavin & Gray: BT d B for the input, AT M A for the output, A g AT for the output gradient).
Here the tile's values are vectors of channels (NHWC: the channels of one pixel are contiguous),
so that one transform moves ``lanes`` channels at once: the code is straight-line, one load per
input value, the products with the matrices' entries written out as adds, subtracts and FMAs by
constants (entries 0 cost nothing, +-1 an add), one store per output value. Numba's loops over
tiles of scalars do not reliably vectorize (36 input and 36 output streams need more run-time
alias checks than LLVM makes), so the vectors are written out in the IR, as :mod:`~._fma` does
for its register tiles.

``wtrans(kind, isa, src, s0, s_row, s_col, dst, d0, d_row, d_col, n, oi, oj)`` computes, for
c < n and the matrices (L, R) of :data:`KINDS`[kind],

    dst.flat[d0 + i*d_row + j*d_col + c] = sum over u, v of L[i, u] * R[j, v]
                                           * src.flat[s0 + u*s_row + v*s_col + c]

for the output rows i < oi and columns j < oj only (the others are not written: a tile past
the image's last row or column), with ``isa`` an :attr:`~hpcnn.kernels.isa.Isa.id`: c in
vectors of the ISA's lanes, then one by one. src and dst are float32 arrays of which only the
data pointer is used (the caller keeps every address in bounds).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hpcnn.kernels._winograd_gen import matrices
from hpcnn.kernels.isa import runnable

_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _kinds():
    AT, _, BT = matrices(2, 5)
    AT4, _, BT4 = matrices(4, 3)
    AT45, _, BT8 = matrices(4, 5)
    AT23, _, BT23 = matrices(2, 3)
    assert np.array_equal(BT, BT4)  # the same six points: one input transform for both
    return {
        0: (BT, BT),  # input of F(2x2, 5x5) and F(4x4, 3x3): 6x6 -> 6x6
        1: (AT, AT),  # output of F(2x2, 5x5): 6x6 -> 2x2
        2: (AT.T, AT.T),  # output gradient of F(2x2, 5x5): 2x2 -> 6x6
        3: (AT4, AT4),  # output of F(4x4, 3x3): 6x6 -> 4x4
        4: (AT4.T, AT4.T),  # output gradient of F(4x4, 3x3): 4x4 -> 6x6
        5: (BT8, BT8),  # input of F(4x4, 5x5): 8x8 -> 8x8
        6: (AT45, AT45),  # output of F(4x4, 5x5): 8x8 -> 4x4
        7: (AT45.T, AT45.T),  # output gradient of F(4x4, 5x5): 4x4 -> 8x8
        8: (BT23, BT23),  # input of F(2x2, 3x3): 4x4 -> 4x4
        9: (AT23, AT23),  # output of F(2x2, 3x3): 4x4 -> 2x2
        10: (AT23.T, AT23.T),  # output gradient of F(2x2, 3x3): 2x2 -> 4x4
    }


KINDS = _kinds()
"""kind -> (L, R), float64 matrices with small integer (or power-of-two fraction) entries."""
INPUT = {4: 8, 6: 0, 8: 5}
"""input tile size a -> the kind of its input transform."""
OUTPUT = {(2, 3): 9, (2, 5): 1, (4, 3): 3, (4, 5): 6}
"""F(m, r) -> the kind of its output transform (likewise :data:`GRAD`)."""
GRAD = {(2, 3): 10, (2, 5): 2, (4, 3): 4, (4, 5): 7}


def _splat(vt, value):
    if isinstance(vt, ir.VectorType):
        return ir.Constant(vt, [float(value)] * vt.count)
    return ir.Constant(vt, float(value))


def _ops(builder, vt, fma):
    """kind -> (1-D transform, its input length): vector operations, common terms shared. The
    6-point ones are written out: the input transform (the same for F(2, 5) and F(4, 3): the
    same six points) in 12 operations, where the rows written out one by one take 22; F(2, 5)'s
    output and output gradient in 8 and 4 (as many as row by row); F(4, 3)'s in 10 and 9 (row by
    row 14 and 12). Those of F(4, 5) (8 points) and F(2, 3) (4) are derived from their
    matrices (:func:`_shared`)."""
    add, sub = builder.fadd, builder.fsub
    c2, c4, c8, m2, m5 = (_splat(vt, c) for c in (2.0, 4.0, 8.0, -2.0, -5.0))

    def fms(c, a, b):  # c*a - b
        return builder.call(fma, [c, a, builder.fneg(b)])

    def bt(d):  # rows of BT: 4d0-5d2+d4, (4d2-d4)+-(4d1-d3), (d4-d2)+-2(d3-d1), 4d1-5d3+d5
        a, b = fms(c4, d[2], d[4]), fms(c4, d[1], d[3])
        c, e = sub(d[4], d[2]), sub(d[3], d[1])
        return [builder.call(fma, [c4, d[0], builder.call(fma, [m5, d[2], d[4]])]),
                add(a, b), sub(a, b),
                builder.call(fma, [c2, e, c]), builder.call(fma, [m2, e, c]),
                builder.call(fma, [c4, d[1], builder.call(fma, [m5, d[3], d[5]])])]

    def at(m):  # rows of AT: m0+m1+m2+m3+m4, m1-m2+2(m3-m4)+m5
        return [add(add(m[0], add(m[1], m[2])), add(m[3], m[4])),
                add(builder.call(fma, [c2, sub(m[3], m[4]), sub(m[1], m[2])]), m[5])]

    def a(g):  # rows of A: g0, g0+g1, g0-g1, g0+2g1, g0-2g1, g1
        return [g[0], add(g[0], g[1]), sub(g[0], g[1]), builder.call(fma, [c2, g[1], g[0]]),
                builder.call(fma, [m2, g[1], g[0]]), g[1]]

    def at4(m):  # rows of AT of F(4, 3): the sums and differences of (m1, m2) and (m3, m4)
        s12, d12, s34, d34 = add(m[1], m[2]), sub(m[1], m[2]), add(m[3], m[4]), sub(m[3], m[4])
        return [add(add(m[0], s12), s34), builder.call(fma, [c2, d34, d12]),
                builder.call(fma, [c4, s34, s12]),
                add(builder.call(fma, [c8, d34, d12]), m[5])]

    def a4(g):  # rows of A of F(4, 3): g0, (g0+g2) +- (g1+g3), (g0+4g2) +- (2g1+8g3), g3
        e, o = add(g[0], g[2]), add(g[1], g[3])
        e2 = builder.call(fma, [c4, g[2], g[0]])
        o2 = builder.call(fma, [c8, g[3], builder.fmul(c2, g[1])])
        return [g[0], add(e, o), sub(e, o), add(e2, o2), sub(e2, o2), g[3]]

    ops = {INPUT[6]: (bt, 6), OUTPUT[2, 5]: (at, 6), GRAD[2, 5]: (a, 2), OUTPUT[4, 3]: (at4, 6),
           GRAD[4, 3]: (a4, 4)}
    for kind in (INPUT[8], OUTPUT[4, 5], GRAD[4, 5], INPUT[4], OUTPUT[2, 3], GRAD[2, 3]):
        L = KINDS[kind][0]
        ops[kind] = (_shared(builder, vt, fma, L), L.shape[1])
    return ops


def _shared(builder, vt, fma, L):
    """The 1-D transform by L (rows x n) as vector operations, for the kinds without a written
    one (those of F(4x4, 5x5) and F(2x2, 3x3)). The points come in pairs +-p, and so do the
    terms: where two rows of L differ only in the sign of their odd columns (the input and
    output-gradient transforms), both are E +- O of one even and one odd sum; where two
    columns differ only in the sign of their odd rows (the output transform), the inputs first
    become their sum and difference. Coefficients 0 cost nothing, +-1 an add or subtract."""
    n_out, n = L.shape
    alt = np.array([1.0 if k % 2 == 0 else -1.0 for k in range(max(n_out, n))])

    def lin(coefs, d):  # sum of coefs[k] * d[k]: +1 terms first, then -1, then the others
        terms = sorted(((c, k) for k, c in enumerate(coefs) if c != 0),
                       key=lambda t: (t[0] != 1, t[0] != -1))
        acc = None
        for c, k in terms:
            if acc is None:
                acc = (d[k] if c == 1 else builder.fneg(d[k]) if c == -1
                       else builder.fmul(_splat(vt, c), d[k]))
            elif c in (1, -1):
                acc = (builder.fadd if c == 1 else builder.fsub)(acc, d[k])
            else:
                acc = builder.call(fma, [_splat(vt, c), d[k], acc])
        return _splat(vt, 0.0) if acc is None else acc

    def pairs(M, sign):  # (i, i', s): M[i'] = s * M[i] * sign, s = +-1, M[i] with odd terms
        out, used = [], set()
        for i in range(M.shape[0]):
            if i in used or not np.any(M[i] * (sign < 0)):
                continue
            for j in range(i + 1, M.shape[0]):
                for s in (1.0, -1.0):
                    if j not in used and np.array_equal(M[j], s * M[i] * sign):
                        out.append((i, j, s))
                        used.update((i, j))
                        break
                if i in used:
                    break
        return out, used

    def rows(d):
        if n > n_out:  # column pairs: fold the inputs into sums and differences
            cols, _ = pairs(L.T, alt[:n_out])
            d, Lf = list(d), L.copy()
            for j, j2, s in cols:
                d[j], d[j2] = builder.fadd(d[j], d[j2]), builder.fsub(d[j], d[j2])
                # row i: L[i, j] d_j + L[i, j2] d_j2 = L[i, j] (d_j + (-1)^i s d_j2)
                for i in range(n_out):
                    even = (i % 2 == 0) == (s > 0)
                    Lf[i, j], Lf[i, j2] = (L[i, j], 0.0) if even else (0.0, L[i, j])
            return [lin(Lf[i], d) for i in range(n_out)]
        prs, used = pairs(L, alt[:n])
        out = [None] * n_out
        for i, i2, s in prs:
            e = lin(L[i] * (alt[:n] > 0), d)
            o = lin(L[i] * (alt[:n] < 0), d)
            out[i] = builder.fadd(e, o)
            out[i2] = builder.fsub(e, o) if s > 0 else builder.fsub(o, e)
        for i in range(n_out):
            if i not in used:
                out[i] = lin(L[i], d)
        return out

    return rows


def emit_transform(builder, kind, VL, src, s0, s_row, s_col, dst, d0, d_row, d_col, oi, oj):
    """One transform of ``VL`` channels (VL = 1: a scalar) at the builder's position; offsets are
    i64 values, src/dst float pointers. Only the output transform checks oi and oj."""
    vt = ir.VectorType(_F32, VL) if VL > 1 else _F32
    vp = vt.as_pointer()
    name = f"llvm.fma.v{VL}f32" if VL > 1 else "llvm.fma.f32"
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), name)
    one_d, n = _ops(builder, vt, fma)[kind]

    def at(base, off, i, j, row, col):
        o = builder.add(off, builder.add(builder.mul(ir.Constant(_I64, i), row),
                                         builder.mul(ir.Constant(_I64, j), col)))
        return builder.bitcast(builder.gep(base, [o]), vp)

    rows = [one_d([builder.load(at(src, s0, u, v, s_row, s_col), align=4) for v in range(n)])
            for u in range(n)]  # rows[u][j]: the transform along each input row
    for j in range(len(rows[0])):
        col = one_d([rows[u][j] for u in range(n)])
        for i, out in enumerate(col):
            if kind not in OUTPUT.values():
                builder.store(out, at(dst, d0, i, j, d_row, d_col), align=4)
                continue
            inside = builder.and_(builder.icmp_signed(">", oi, ir.Constant(_I64, i)),
                                  builder.icmp_signed(">", oj, ir.Constant(_I64, j)))
            with builder.if_then(inside, likely=True):
                builder.store(out, at(dst, d0, i, j, d_row, d_col), align=4)


_ARGS = ("kind", "isa", "src", "s0", "s_row", "s_col", "dst", "d0", "d_row", "d_col", "n", "oi",
         "oj")


def _typer(typingctx, kind, isa, src, s0, s_row, s_col, dst, d0, d_row, d_col, n, oi, oj):
    ty = dict(zip(_ARGS, (kind, isa, src, s0, s_row, s_col, dst, d0, d_row, d_col, n, oi, oj)))
    if not all(isinstance(ty[a], types.Array) and ty[a].dtype == types.float32
               for a in ("src", "dst")):
        return None
    if not all(isinstance(ty[a], types.Integer) for a in _ARGS if a not in ("src", "dst")):
        return None
    sig = types.void(*ty.values())

    def codegen(context, builder, sig, args):
        v = {}
        for arg, t, val in zip(_ARGS, sig.args, args):
            if arg in ("src", "dst"):
                v[arg] = context.make_array(t)(context, builder, val).data
            else:
                v[arg] = context.cast(builder, val, t, types.int64)
        fn = builder.function
        done = fn.append_basic_block("wtrans.done")
        key = builder.or_(builder.shl(v["isa"], ir.Constant(_I64, 8)), v["kind"])
        sw = builder.switch(key, done)
        operands = [v[a] for a in _ARGS[2:]]
        for isa in runnable():
            for kind in KINDS:
                blk = fn.append_basic_block(f"wtrans.{isa.name}.{kind}")
                sw.add_case(ir.Constant(_I64, (isa.id << 8) | kind), blk)
                builder.position_at_end(blk)
                builder.call(_function(builder.module, kind, isa), operands)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


def _function(module, kind, isa):
    """The transform loop of one kind and ISA as a function of its own in ``module`` (defined
    once per module, not inlined): every call site of :data:`wtrans` switches over all the kinds
    and ISAs, and with the transforms inlined there LLVM took minutes over the kernels that call
    it three times."""
    name = f"hpcnn_wtrans_{isa.name}_{kind}"
    if name in module.globals:
        return module.globals[name]
    fp = _F32.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [fp, _I64, _I64, _I64, fp, _I64, _I64, _I64, _I64,
                                           _I64, _I64])
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "linkonce_odr"
    fn.attributes.add("noinline")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    _emit_loop(builder, kind, isa.lanes, dict(zip(_ARGS[2:], fn.args)))
    builder.ret_void()
    return fn


def _emit_loop(builder, kind, lanes, v):
    """The n channels: vectors of ``lanes``, then one by one."""
    n = v["n"]
    nvec = builder.sdiv(n, ir.Constant(_I64, lanes))
    for VL, count, first in ((lanes, nvec, ir.Constant(_I64, 0)),
                             (1, builder.sub(n, builder.mul(nvec, ir.Constant(_I64, lanes))),
                              builder.mul(nvec, ir.Constant(_I64, lanes)))):
        with cgutils.for_range(builder, count) as loop:
            c = builder.add(first, builder.mul(loop.index, ir.Constant(_I64, VL)))
            emit_transform(builder, kind, VL, v["src"], builder.add(v["s0"], c), v["s_row"],
                           v["s_col"], v["dst"], builder.add(v["d0"], c), v["d_row"],
                           v["d_col"], v["oi"], v["oj"])


_typer.__name__ = "wtrans"
wtrans = intrinsic(_typer)


def reference(kind, tile):
    """The transform of one tile (u, v, ...) in float64, for tests."""
    Lm, Rm = KINDS[kind]
    return np.einsum("iu,jv,uv...->ij...", Lm, Rm, np.asarray(tile, dtype=np.float64))
