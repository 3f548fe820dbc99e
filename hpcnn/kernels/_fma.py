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

(``+=`` when ``acc`` is non-zero). A, B and out are float32 arrays of which only the data pointer
is used (the caller keeps every address in bounds; B may be read up to 8*NV - 1 elements past
the last ``j*b_inc``); aoffs is an int64 array of MR element offsets.
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


def _make_tile(MR, NV):
    def typer(typingctx, A, a0, aoffs, a_step, a_inc, B, b0, b_step, b_inc, nseg, L, out, o0, ldo,
              acc):
        arrays = (A, aoffs, B, out)
        if not all(isinstance(a, types.Array) for a in arrays):
            return None
        if A.dtype != types.float32 or B.dtype != types.float32 or out.dtype != types.float32:
            return None
        if aoffs.dtype != types.int64:
            return None
        sig = types.void(A, a0, aoffs, a_step, a_inc, B, b0, b_step, b_inc, nseg, L, out, o0, ldo,
                         acc)

        def codegen(context, builder, sig, args):
            ints = {}
            for name, idx in (("a0", 1), ("a_step", 3), ("a_inc", 4), ("b0", 6), ("b_step", 7),
                              ("b_inc", 8), ("nseg", 9), ("L", 10), ("o0", 12), ("ldo", 13),
                              ("acc", 14)):
                ints[name] = context.cast(builder, args[idx], sig.args[idx], types.int64)
            pA = _data(context, builder, sig.args[0], args[0])
            pO = _data(context, builder, sig.args[2], args[2])
            pB = _data(context, builder, sig.args[5], args[5])
            pC = _data(context, builder, sig.args[11], args[11])
            zero = ir.Constant(_V8, [0.0] * 8)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NV)]
                    for _ in range(MR)]
            abase = [builder.add(ints["a0"], builder.load(builder.gep(pO, [ir.Constant(_I64, i)])))
                     for i in range(MR)]
            splat = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
            undef = ir.Constant(_V8, ir.Undefined)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8, [_V8, _V8, _V8]), "llvm.fma.v8f32")
            with cgutils.for_range(builder, ints["nseg"]) as seg:
                ta = builder.mul(seg.index, ints["a_step"])
                tb = builder.add(ints["b0"], builder.mul(seg.index, ints["b_step"]))
                with cgutils.for_range(builder, ints["L"]) as step:
                    ja = builder.add(ta, builder.mul(step.index, ints["a_inc"]))
                    jb = builder.add(tb, builder.mul(step.index, ints["b_inc"]))
                    bs = []
                    for v in range(NV):
                        p = builder.gep(pB, [builder.add(jb, ir.Constant(_I64, 8 * v))])
                        bs.append(builder.load(builder.bitcast(p, _V8.as_pointer()), align=4))
                    for i in range(MR):
                        a = builder.load(builder.gep(pA, [builder.add(abase[i], ja)]))
                        av = builder.shuffle_vector(
                            builder.insert_element(undef, a, ir.Constant(_I32, 0)), undef, splat)
                        for v in range(NV):
                            s = builder.call(fma, [av, bs[v], builder.load(accs[i][v])])
                            builder.store(s, accs[i][v])
            keep = builder.icmp_signed("!=", ints["acc"], ir.Constant(_I64, 0))
            for i in range(MR):
                for v in range(NV):
                    o = builder.add(builder.add(ints["o0"], builder.mul(ir.Constant(_I64, i),
                                                                        ints["ldo"])),
                                    ir.Constant(_I64, 8 * v))
                    p = builder.gep(pC, [o])
                    p = builder.bitcast(p, _V8.as_pointer())
                    r = builder.load(accs[i][v])
                    r = builder.select(keep, builder.fadd(r, builder.load(p, align=4)), r)
                    builder.store(r, p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"tile{MR}x{8 * NV}"
    typer.__doc__ = f"The {MR} x {8 * NV} FMA tile (see the module docstring)."
    return intrinsic(typer)


MR = 6
"""Rows (output pixels, or output channels in the weight gradient) of a tile."""
tile6x16 = _make_tile(MR, 2)
tile6x8 = _make_tile(MR, 1)
