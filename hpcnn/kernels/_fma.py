"""Register-tiled FMA microkernels, generated as LLVM IR for each vector ISA (Numba intrinsics).

Why: the layers that matter most here (3x3 and 5x5 with 16-64 channels, 32-64 output channels)
make thin GEMMs that BLAS runs far below its ceiling, after packing the lowered matrix once more.
A convolution can instead feed a register tile straight from the NHWC image: the rows of a tile
read their windows in place and nothing is lowered. Numba does not keep such a tile in registers
when it is written as arrays or loops, so the tile is written here as IR with ``<lanes x float>``
vectors and ``llvm.fma``: LLVM keeps the accumulators in registers and emits, per step, one
broadcast per row, one load of B per vector and rows x vectors FMAs: the inner kernels of BLIS
and oneDNN. The tile's shape comes from the ISA (:mod:`hpcnn.kernels.isa`): 14 rows x 2 vectors of
16 floats (28 of AVX-512's 32 registers), 6 x 2 vectors of 8 on AVX2 (12 of 16), 6 x 2 of 4 for
any other LLVM target.

``tile(isa, nv, m, A, a0, aoffs, a_step, a_blk, B, b0, b_step, b_blk, b_inc, nblk, nseg, L, out,
o0, ooffs, acc)`` computes, with ``lanes`` the ISA's vector width, for i < m and n < nv * lanes,

    out.flat[o0 + ooffs[i] + n] (+)= sum over u < nblk, t < nseg, j < L of
        A.flat[a0 + aoffs[i] + u*a_blk + t*a_step + j]
        * B.flat[b0 + u*b_blk + t*b_step + j*b_inc + n]

(``+=`` when ``acc`` is non-zero), for ``isa`` an :attr:`~hpcnn.kernels.isa.Isa.id`, ``nv`` 1 or
2 and 1 <= m <= the ISA's rows, or ``nv`` 3 and m <= its ``rows3`` (AVX-512: 9 rows x 3 vectors,
27 accumulators); other values do nothing. Every (isa, nv, m) has its own code
(one IR switch picks it): a short tile costs its own FMAs only. A, B and out are float32 arrays
of which only the data pointer is used (the caller keeps every address in bounds; B may be read
up to nv*lanes - 1 elements past the last ``j*b_inc``); aoffs and ooffs are int64 arrays of at
least m element offsets.

``tile_strided`` takes one more argument, ``a_inc``: A is read at ``... + j*a_inc`` instead of
``... + j`` (a reduction over rows of a matrix whose columns are the tile's rows: Winograd's
weight gradient sums over tiles, :mod:`~.winograd_fma`); the loop is the same, its index moving
by a_inc.

``tile_packed`` (same arguments) is the tile for a B that is a packed panel read in order, b_inc
= nv * lanes (the weights in "direct"'s forward and data gradient): each step also prefetches
the panel's lines :data:`PREFETCH` steps ahead (prefetches never fault, so running past B's end
is harmless). A panel larger than L1 (a 5x5 layer with 32 input channels has 100 KiB per
32-wide panel) streams from L2 once per tile, and a step that waits for its loads of B stalls
its FMAs.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hpcnn.kernels.isa import runnable

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8 = ir.VectorType(_F32, 8)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _fma(module, vt):
    return cgutils.get_or_insert_function(module, ir.FunctionType(vt, [vt, vt, vt]),
                                          f"llvm.fma.v{vt.count}f32")


_I8P = ir.IntType(8).as_pointer()
_PF_ARGS = (ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1))  # read, to L1, data


def _prefetch(module):
    return cgutils.get_or_insert_function(
        module, ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32]), "llvm.prefetch.p0")


def _for(builder, count):
    return cgutils.for_range(builder, count)


def _fence(builder, after):
    """An empty asm statement (no instruction) that takes the previous row's FMA results and
    that memory accesses may not cross: the next row's broadcast is scheduled after them.
    Without it LLVM's scheduler issues all the rows' broadcasts first, which needs more vector
    registers than AVX-512 has beside 28 accumulators, and spills them."""
    cons = ",".join(["v"] * len(after) + ["~{memory}"])
    builder.asm(ir.FunctionType(ir.VoidType(), [a.type for a in after]), "", cons, after,
                side_effect=True)


def _opaque(builder, value):
    """``value``, hidden from LLVM's loop analyses behind an empty asm statement."""
    return builder.asm(ir.FunctionType(_I64, [_I64]), "", "=r,0", [value], side_effect=True)


def emit_tile(builder, p, v, MR, NV, VL, prefetch=0):
    """Emit one MR x (NV*VL) tile at the builder's position. ``p``: float*/i64* pointers "A",
    "aoffs", "B", "out", "ooffs"; ``v``: i64 values "a0", "a_step", "a_blk", "b0", "b_step",
    "b_blk", "b_inc", "nblk", "nseg", "L", "o0", "acc" (see the module docstring), and "a_inc"
    for :data:`tile_strided` (A's step between j; 1 when absent). With
    ``prefetch`` > 0, each step prefetches B's lines ``prefetch`` steps ahead of a packed panel
    (b_inc = NV*VL: see :data:`tile_packed`)."""
    vt = ir.VectorType(_F32, VL)
    vp = vt.as_pointer()
    fma = _fma(builder.module, vt)
    zero = ir.Constant(vt, [0.0] * VL)
    undef = ir.Constant(vt, ir.Undefined)
    splat = ir.Constant(ir.VectorType(_I32, VL), [0] * VL)
    one = ir.Constant(_I64, 1)
    a_inc = v.get("a_inc")
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(NV)] for _ in range(MR)]

    def at(ptr, i):
        return builder.load(builder.gep(ptr, [ir.Constant(_I64, i)]))

    abase = [builder.add(v["a0"], at(p["aoffs"], i)) for i in range(MR)]

    def step(rows, j, bp):  # one j: NV loads of B, MR broadcasts of A, MR*NV FMAs
        for k in range(0, NV * VL, 16) if prefetch else ():  # a prefetch per 64-byte line
            ahead = builder.gep(bp, [ir.Constant(_I64, prefetch * NV * VL + k)])
            builder.call(_prefetch(builder.module), [builder.bitcast(ahead, _I8P), *_PF_ARGS])
        bs = [builder.load(builder.bitcast(builder.gep(bp, [ir.Constant(_I64, VL * k)]), vp),
                           align=4) for k in range(NV)]
        done = []
        for i in range(MR):
            _fence(builder, done)
            a = builder.load(builder.gep(rows[i], [j]))
            av = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(_I32, 0)),
                                        undef, splat)
            done = []
            for k in range(NV):
                done.append(builder.call(fma, [av, bs[k], builder.load(accs[i][k])]))
                builder.store(done[-1], accs[i][k])

    # The inner loop keeps one pointer per row of A (set per segment), one index j that all rows
    # share and one pointer into B that moves by b_inc: gcc's code for the same tile in C. j
    # goes through an empty asm before the rows use it and the next j is taken from that asm's
    # output: otherwise loop strength reduction gives each of the MR rows an induction pointer
    # of its own, more than the 16 general registers, and the loop spends more on spilling them
    # than on FMAs; and with j itself live past the asm, its copy takes a register. j runs from
    # -L up to 0 (the rows' pointers start L further on), so no bound is kept either. On
    # AVX-512 a step of 14 rows reloads 3 spilled row pointers, where it loaded 6 spilled values
    # and multiplied j by b_inc before; 12 rows reload nothing. "direct" ran 1.02-1.16x faster
    # (forward + backward, 1 thread, cifar10_quick and GoogLeNet's 5x5 layers, both vector
    # paths) and 0.95-1.05x at 2 threads; 12-row tiles against 14 with this loop, 0.93-1.08x,
    # so 14 stay (Intel Xeon; results/isa/xeon3/tile_loop_ab.log).
    fn = builder.function
    with _for(builder, v["nblk"]) as blk:
        ja1 = builder.mul(blk.index, v["a_blk"])
        jb1 = builder.add(v["b0"], builder.mul(blk.index, v["b_blk"]))
        with _for(builder, v["nseg"]) as seg:
            ja0 = builder.add(ja1, builder.mul(seg.index, v["a_step"]))
            span = v["L"] if a_inc is None else builder.mul(v["L"], a_inc)
            jend = builder.add(ja0, span)  # j runs from -span up to 0 (no bound to keep)
            rows = [builder.gep(p["A"], [builder.add(abase[i], jend)]) for i in range(MR)]
            bp0 = builder.gep(p["B"], [builder.add(jb1, builder.mul(seg.index, v["b_step"]))])
            j0 = builder.neg(span)
            pre = builder.block
            head = fn.append_basic_block("tile.head")
            body = fn.append_basic_block("tile.body")
            after = fn.append_basic_block("tile.after")
            builder.branch(head)
            builder.position_at_end(head)
            j = builder.phi(_I64)
            bp = builder.phi(p["B"].type)
            j.add_incoming(j0, pre)
            bp.add_incoming(bp0, pre)
            builder.cbranch(builder.icmp_signed("<", j, ir.Constant(_I64, 0)), body, after)
            builder.position_at_end(body)
            jo = _opaque(builder, j)
            step(rows, jo, bp)
            j.add_incoming(builder.add(jo, one if a_inc is None else a_inc), builder.block)
            bp.add_incoming(builder.gep(bp, [v["b_inc"]]), builder.block)
            builder.branch(head)
            builder.position_at_end(after)
    keep = builder.icmp_signed("!=", v["acc"], ir.Constant(_I64, 0))
    for i in range(MR):
        row = builder.add(v["o0"], at(p["ooffs"], i))
        for k in range(NV):
            q = builder.gep(p["out"], [builder.add(row, ir.Constant(_I64, VL * k))])
            q = builder.bitcast(q, vp)
            r = builder.load(accs[i][k])
            r = builder.select(keep, builder.fadd(r, builder.load(q, align=4)), r)
            builder.store(r, q, align=4)


_ARGS = ("isa", "nv", "m", "A", "a0", "aoffs", "a_step", "a_blk", "B", "b0", "b_step", "b_blk",
         "b_inc", "nblk", "nseg", "L", "out", "o0", "ooffs", "acc")
_FLOATS = ("A", "B", "out")
_OFFSETS = ("aoffs", "ooffs")


def _case_key(isa_id, nv, m):
    return (isa_id << 12) | (nv << 6) | m


def _emit_switch(builder, p, v, prefetch):
    """The switch over (isa, nv, m) to every tile's own code."""
    key = builder.or_(builder.or_(builder.shl(v["isa"], ir.Constant(_I64, 12)),
                                  builder.shl(v["nv"], ir.Constant(_I64, 6))), v["m"])
    fn = builder.function
    done = fn.append_basic_block("tile.done")
    sw = builder.switch(key, done)
    for isa in runnable():  # only what the host runs: LLVM cannot emit AVX-512 for an AVX2 CPU
        for nv, rows in ((1, isa.rows), (2, isa.rows), (3, isa.rows3)):
            for m in range(1, rows + 1):
                blk = fn.append_basic_block(f"tile.{isa.name}.{nv}x{m}")
                sw.add_case(ir.Constant(_I64, _case_key(isa.id, nv, m)), blk)
                builder.position_at_end(blk)
                emit_tile(builder, p, v, m, nv, isa.lanes, prefetch)
                builder.branch(done)
    builder.position_at_end(done)


def _tile_intrinsic(name, prefetch, strided=False):
    names = _ARGS + ("a_inc",) if strided else _ARGS

    def type_of(args):
        ty = dict(zip(names, args))
        if not all(isinstance(ty[a], types.Array) and ty[a].dtype == types.float32
                   for a in _FLOATS):
            return None
        if not all(isinstance(ty[a], types.Array) and ty[a].dtype == types.int64
                   for a in _OFFSETS):
            return None
        if not all(isinstance(ty[a], types.Integer) for a in names
                   if a not in _FLOATS + _OFFSETS):
            return None
        sig = types.void(*ty.values())

        def codegen(context, builder, sig, args):
            p, v = {}, {}
            for arg, t, val in zip(names, sig.args, args):
                if arg in _FLOATS or arg in _OFFSETS:
                    p[arg] = _data(context, builder, t, val)
                else:
                    v[arg] = context.cast(builder, val, t, types.int64)
            _emit_switch(builder, p, v, prefetch)
            return context.get_dummy_value()

        return sig, codegen

    # Numba passes an intrinsic its arguments by name (a typer with *args fails to lower): one
    # with exactly these parameters
    params = ", ".join(names)
    scope = {"type_of": type_of}
    exec(f"def {name}(typingctx, {params}):\n    return type_of(({params},))", scope)
    return intrinsic(scope[name])


PREFETCH = 16
"""Steps ahead that :data:`tile_packed` prefetches its B panel (2 KiB of a 32-wide AVX-512
panel). Measured on an Intel Xeon (AVX-512; ``results/isa/xeon4/prefetch_ab_*.log``), "direct"'s
forward on 15 layer shapes with 0, 8, 16 and 24 steps alternated in one process: 16 steps ran
0.99-1.09x as fast as none at 1 thread and 0.99-1.10x at 2; 8 and 24 steps within 4% of 16
(mostly 2%)."""

tile = _tile_intrinsic("tile", 0)
tile_packed = _tile_intrinsic("tile_packed", PREFETCH)
tile_strided = _tile_intrinsic("tile_strided", 0, strided=True)


def standalone_module(isa, nv=2, m=None, prefetch=0):
    """An LLVM module with one function ``hpcnn_tile`` holding ``isa``'s nv x m tile alone (all
    arguments as pointers and i64), for inspecting the code LLVM makes of it for a target (see
    :func:`assembly`)."""
    m = isa.rows if m is None else m
    mod = ir.Module(name=f"tile_{isa.name}")
    fp, ip = _F32.as_pointer(), _I64.as_pointer()
    names = [a for a in _ARGS if a not in ("isa", "nv", "m")]
    argt = [fp if a in _FLOATS else ip if a in _OFFSETS else _I64 for a in names]
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), argt), name="hpcnn_tile")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    p = {a: arg for a, arg in zip(names, fn.args) if a in _FLOATS or a in _OFFSETS}
    v = {a: arg for a, arg in zip(names, fn.args) if a not in p}
    emit_tile(builder, p, v, m, nv, isa.lanes, prefetch)
    builder.ret_void()
    return mod


def assembly(module, cpu, features=""):
    """The optimised x86-64 assembly LLVM makes of ``module`` for ``cpu``."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_triple("x86_64-unknown-linux-gnu")
    tm = target.create_target_machine(cpu=cpu, features=features, opt=3)
    mod = llvm.parse_assembly(str(module))
    mod.triple = "x86_64-unknown-linux-gnu"
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_assembly(mod)


def _peak_typer(typingctx, isa, n):
    if not (isinstance(isa, types.Integer) and isinstance(n, types.Integer)):
        return None
    sig = types.float32(isa, n)

    def codegen(context, builder, sig, args):
        isa_v, n_v = (context.cast(builder, a, t, types.int64) for a, t in zip(args, sig.args))
        fn = builder.function
        done = fn.append_basic_block("peak.done")
        res = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        sw = builder.switch(isa_v, done)
        for isa in runnable():
            blk = fn.append_basic_block(f"peak.{isa.name}")
            sw.add_case(ir.Constant(_I64, isa.id), blk)
            builder.position_at_end(blk)
            builder.store(_emit_peak(builder, n_v, isa), res)
            builder.branch(done)
        builder.position_at_end(done)
        return builder.load(res)

    return sig, codegen


def peak_chains(isa):
    """Independent FMA chains of the peak loop: most of the registers (12 of 16, 28 of 32),
    more than two FMA units of latency 4 need to stay busy."""
    return isa.regs - 4


def _emit_peak(builder, n, isa):
    VL, K = isa.lanes, peak_chains(isa)
    vt = ir.VectorType(_F32, VL)
    fma = _fma(builder.module, vt)
    x = ir.Constant(vt, [0.999999] * VL)
    y = ir.Constant(vt, [1e-6] * VL)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(vt, [float(i)] * VL)) for i in range(K)]
    with _for(builder, n):
        for a in accs:
            builder.store(builder.call(fma, [builder.load(a), x, y]), a)
    total = builder.load(accs[0])
    for a in accs[1:]:
        total = builder.fadd(total, builder.load(a))
    return builder.extract_element(total, ir.Constant(_I32, 0))


_peak_typer.__name__ = "fma_peak_loop"
fma_peak_loop = intrinsic(_peak_typer)
"""``fma_peak_loop(isa, n)``: n iterations of :func:`peak_chains` independent vector FMAs of
the ISA, in registers only (the sum of the chains' first lanes is returned, so nothing is
optimised away): 2 * n * chains * lanes flops."""


def _transpose8_typer(typingctx, src, s0, lds, bias, b0, dst, d0, ldd):
    arrays = (src, bias, dst)
    if not all(isinstance(a, types.Array) and a.dtype in (types.float32, types.float64)
               for a in arrays) or len({a.dtype for a in arrays}) != 1:
        return None
    sig = types.void(src, s0, lds, bias, b0, dst, d0, ldd)

    def codegen(context, builder, sig, args):
        ps, pb, pd = (_data(context, builder, sig.args[i], args[i]) for i in (0, 3, 5))
        s0, lds, b0, d0, ldd = (context.cast(builder, args[i], sig.args[i], types.int64)
                                for i in (1, 2, 4, 6, 7))
        v8 = ir.VectorType(context.get_value_type(sig.args[0].dtype), 8)

        def vptr(base, off):
            return builder.bitcast(builder.gep(base, [off]), v8.as_pointer())

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
        undef = ir.Constant(v8, ir.Undefined)
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
src.flat[s0 + i*lds + j] + bias.flat[b0 + j] for i, j < 8 (an 8x8 block transposed in
registers, with a bias: pixel-major to channel-major, or NCHW to NHWC with a zero bias; float32
or float64 arrays, all three alike, of which only the data pointer is used)."""
