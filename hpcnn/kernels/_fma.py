"""A register-tiled FMA microkernel, generated as LLVM IR (a Numba intrinsic).

Why: the layers that matter most here (5x5 with 16-64 channels, 32-64 output channels) make
thin GEMMs that OpenBLAS runs at 40-70% of its ceiling, after it has packed (copied) the lowered
matrix once more. A convolution can instead feed a small register tile straight from the padded
NHWC input: the 6 output pixels of a tile read their windows in place, one kernel row at a time,
and nothing is lowered. Numba does not keep a 6x16 accumulator in registers when it is written
as arrays or loops, so the tile is written here as IR with ``<8 x float>`` vectors and
``llvm.fma``: LLVM allocates the 12 accumulators to registers and emits one broadcast per row
and two loads of B per step, 12 FMAs, the shape of the inner kernels of BLIS and oneDNN on AVX2.
Measured alone on a Zen 3 core with its data in L1: 87 GFLOP/s, the SGEMM ceiling.

``tile{MR}x{8*NV}(A, a0, aoffs, a_step, a_inc, B, b0, b_step, b_inc, nseg, L, out, o0, ldo,
acc)`` computes, for i < MR and n < 8*NV,

    out.flat[o0 + i*ldo + n] (+)= sum over t < nseg, j < L of
        A.flat[a0 + aoffs[i] + t*a_step + j*a_inc] * B.flat[b0 + t*b_step + j*b_inc + n]

(``+=`` when ``acc`` is non-zero). A, B and out are float32
arrays of which only the data pointer is used (the caller keeps every address in bounds; B
may be read up to 8*NV - 1 elements past the last ``j*b_inc``); aoffs is an int64 array of MR
element offsets.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8 = ir.VectorType(_F32, 8)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


_ARGS = ("A", "a0", "aoffs", "a_step", "a_inc", "B", "b0", "b_step", "b_inc", "nseg", "L", "out",
         "o0", "ldo", "acc")
_ARRAYS = ("A", "aoffs", "B", "out")


def _make_tile(MR, NV):
    names = _ARGS

    def typer(typingctx, *args):
        ty = dict(zip(names, args))
        if not all(isinstance(ty[a], types.Array) for a in _ARRAYS):
            return None
        if any(ty[a].dtype != types.float32 for a in ("A", "B", "out")):
            return None
        if ty["aoffs"].dtype != types.int64:
            return None
        if not all(isinstance(ty[a], types.Integer) for a in names if a not in _ARRAYS):
            return None
        sig = types.void(*args)

        def codegen(context, builder, sig, args):
            val = {}
            for name, t, v in zip(names, sig.args, args):
                if name in _ARRAYS:
                    val[name] = _data(context, builder, t, v)
                else:
                    val[name] = context.cast(builder, v, t, types.int64)
            zero = ir.Constant(_V8, [0.0] * 8)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NV)]
                    for _ in range(MR)]
            abase = [builder.add(val["a0"], builder.load(builder.gep(val["aoffs"],
                                                                     [ir.Constant(_I64, i)])))
                     for i in range(MR)]
            splat = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
            undef = ir.Constant(_V8, ir.Undefined)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8, [_V8, _V8, _V8]), "llvm.fma.v8f32")

            def step(ja, jb):  # one j: NV loads of B, MR broadcasts of A, MR*NV FMAs
                bs = []
                for v in range(NV):
                    p = builder.gep(val["B"], [builder.add(jb, ir.Constant(_I64, 8 * v))])
                    bs.append(builder.load(builder.bitcast(p, _V8.as_pointer()), align=4))
                for i in range(MR):
                    a = builder.load(builder.gep(val["A"], [builder.add(abase[i], ja)]))
                    av = builder.shuffle_vector(
                        builder.insert_element(undef, a, ir.Constant(_I32, 0)), undef, splat)
                    for v in range(NV):
                        s = builder.call(fma, [av, bs[v], builder.load(accs[i][v])])
                        builder.store(s, accs[i][v])

            # loops outermost first: (count, A stride, B stride)
            loops = [(val["nseg"], val["a_step"], val["b_step"]), (val["L"], val["a_inc"],
                                                                     val["b_inc"])]

            def nest(k, ja, jb):
                if k == len(loops):
                    step(ja, jb)
                    return
                count, sa, sb = loops[k]
                with cgutils.for_range(builder, count) as loop:
                    nest(k + 1, builder.add(ja, builder.mul(loop.index, sa)),
                         builder.add(jb, builder.mul(loop.index, sb)))

            nest(0, ir.Constant(_I64, 0), val["b0"])
            keep = builder.icmp_signed("!=", val["acc"], ir.Constant(_I64, 0))
            for i in range(MR):
                row = builder.add(val["o0"], builder.mul(ir.Constant(_I64, i), val["ldo"]))
                for v in range(NV):
                    p = builder.gep(val["out"], [builder.add(row, ir.Constant(_I64, 8 * v))])
                    p = builder.bitcast(p, _V8.as_pointer())
                    r = builder.load(accs[i][v])
                    r = builder.select(keep, builder.fadd(r, builder.load(p, align=4)), r)
                    builder.store(r, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    # Numba's intrinsic wants named parameters (no *args): a thin wrapper with this variant's
    params = ", ".join(names)
    scope = {"typer": typer}
    exec(f"def tile(typingctx, {params}):\n    return typer(typingctx, {params})\n", scope)
    tile = scope["tile"]
    tile.__name__ = f"tile{MR}x{8 * NV}"
    tile.__doc__ = f"The {MR} x {8 * NV} FMA tile (see the module docstring)."
    return intrinsic(tile)


MR = 6
"""Rows (output pixels, or output channels in the weight gradient) of a tile."""
tile6x16 = _make_tile(MR, 2)
tile6x8 = _make_tile(MR, 1)
tile4x16 = _make_tile(4, 2)  # for a rest of 4 rows or fewer
tile4x8 = _make_tile(4, 1)


def _transpose8_typer(typingctx, src, s0, lds, bias, b0, dst, d0, ldd):
    arrays = (src, bias, dst)
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in arrays):
        return None
    sig = types.void(src, s0, lds, bias, b0, dst, d0, ldd)

    def codegen(context, builder, sig, args):
        ps, pb, pd = (_data(context, builder, sig.args[i], args[i]) for i in (0, 3, 5))
        s0, lds, b0, d0, ldd = (context.cast(builder, args[i], sig.args[i], types.int64)
                                for i in (1, 2, 4, 6, 7))

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off]), _V8.as_pointer())

        def shuf(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 8), mask))

        rows = [builder.load(vptr(ps, builder.add(s0, builder.mul(ir.Constant(_I64, i), lds))),
                             align=4) for i in range(8)]
        lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
        t = []
        for i in range(0, 8, 2):
            t += [shuf(rows[i], rows[i + 1], lo), shuf(rows[i], rows[i + 1], hi)]
        lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        u = []
        for i in (0, 4):  # (t0, t2) and (t1, t3), then (t4, t6) and (t5, t7)
            u += [shuf(t[i], t[i + 2], lo2), shuf(t[i], t[i + 2], hi2),
                  shuf(t[i + 1], t[i + 3], lo2), shuf(t[i + 1], t[i + 3], hi2)]
        lo3, hi3 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        cols = [None] * 8
        for j in range(4):
            cols[j] = shuf(u[j], u[j + 4], lo3)
            cols[j + 4] = shuf(u[j], u[j + 4], hi3)
        undef = ir.Constant(_V8, ir.Undefined)
        splat = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
        for j in range(8):
            bj = builder.load(builder.gep(pb, [builder.add(b0, ir.Constant(_I64, j))]))
            bv = builder.shuffle_vector(builder.insert_element(undef, bj, ir.Constant(_I32, 0)),
                                        undef, splat)
            off = builder.add(d0, builder.mul(ir.Constant(_I64, j), ldd))
            builder.store(builder.fadd(cols[j], bv), vptr(pd, off), align=4)
        return context.get_dummy_value()

    return sig, codegen


_transpose8_typer.__name__ = "transpose8"
transpose8 = intrinsic(_transpose8_typer)
"""``transpose8(src, s0, lds, bias, b0, dst, d0, ldd)``: dst.flat[d0 + j*ldd + i] =
src.flat[s0 + i*lds + j] + bias.flat[b0 + j] for i, j < 8 (an 8x8 block moved from pixel-major
to channel-major with the bias, in registers; float32 arrays)."""
