"""Alpha-beta (Hockney) costs of the collectives, their fit to ``hpcnn.bench comm``, and named
interconnects.

A collective on ``p`` ranks with per-rank payload ``n`` bytes (counted as the strategies count
it: :mod:`hpcnn.parallel.strategy`) costs ``A(p, n) * alpha + B(p, n) * beta``: alpha the latency
of one message, beta the seconds per byte of one link. The coefficients are the classic ones of
Thakur, Rabenseifner and Gropp, "Optimization of collective communication operations in MPICH"
(IJHPCA 19(1), 2005), with MPICH's switch points between algorithms (its defaults:
``MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE`` 2048 B, ``MPIR_CVAR_BCAST_SHORT_MSG_SIZE`` 12288 B,
``MPIR_CVAR_REDUCE_SHORT_MSG_SIZE`` 2048 B). The reduction's arithmetic is folded into beta.

=====================  ==========================  ================================
kind (algorithm)        A (latency terms)          B (bytes over one link)
=====================  ==========================  ================================
allreduce ring          2 (p - 1)                   2 (p - 1) / p * n
allreduce rec. doubl.   log2 p                      log2 p * n
allreduce (MPICH)       rec. doubling for n <= 2 KiB, else Rabenseifner:
                        2 log2 p                    2 (p - 1) / p * n
iallreduce              as allreduce (its own alpha and beta: the non-blocking algorithms)
reduce-scatter          p - 1                       (p - 1) / p * n      (n: whole input)
all-gather (ring)       p - 1                       (p - 1) * n          (n: own block)
broadcast               binomial for n < 12 KiB: log2 p, log2 p * n; else scatter +
                        all-gather: log2 p + p - 1, 2 (p - 1) / p * n
reduce                  binomial for n <= 2 KiB: log2 p, log2 p * n; else Rabenseifner:
                        2 log2 p, 2 (p - 1) / p * n
all-to-all (pairwise)   p - 1                       (p - 1) / p * n      (n: whole send buffer)
=====================  ==========================  ================================

log2 p is rounded up (non-powers of two take one more round).
"""

import math

KINDS = ("allreduce", "iallreduce", "allreduce_ring", "allreduce_rd", "reduce_scatter",
         "allgather", "bcast", "reduce", "alltoall")

# Named interconnects: (alpha seconds, beta seconds per byte), with where the figures come from.
INTERCONNECTS = {
    # 10 Gigabit Ethernet (IEEE 802.3ae): 10 Gbit/s line rate = 1.25 GB/s each way; MPI over
    # TCP/IP on 10 GbE has a one-way latency of tens of microseconds (an assumed 20 us here).
    "10GbE": (20e-6, 1 / 1.25e9),
    # InfiniBand EDR 4x: 100 Gbit/s = 12.5 GB/s each way (InfiniBand Trade Association roadmap);
    # MPI ping-pong latency about 1 us on ConnectX-4 EDR adapters (an assumed 1.0 us).
    "IB-EDR": (1.0e-6, 1 / 12.5e9),
    # The K computer's Tofu: 6D mesh/torus, links of 5 GB/s each way (10 GB/s full duplex;
    # Ajima et al., "Tofu: A 6D Mesh/Torus Interconnect for Exascale Computers", IEEE Computer
    # 42(11), 2009, and "The Tofu Interconnect", IEEE Micro 32(1), 2012); one link used per
    # collective step here (the 4 RDMA engines and 10 links are not modelled); MPI latency of
    # about 1.5 us (an assumption: the papers report sub-microsecond put latency).
    "Tofu": (1.5e-6, 1 / 5.0e9),
}

ALLREDUCE_SHORT = 2048
BCAST_SHORT = 12288
REDUCE_SHORT = 2048


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


def coefficients(kind, p, n):
    """(A, B) of ``kind`` on ``p`` ranks with per-rank payload ``n`` bytes: the cost is
    ``A * alpha + B * beta``. ``p`` = 1 or ``n`` = 0 costs nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown collective kind {kind!r}; choose from {', '.join(KINDS)}")
    if p <= 1 or n <= 0:
        return 0.0, 0.0
    lg = _log2(p)
    frac = (p - 1) / p
    if kind == "iallreduce":  # fitted on its own; MPICH's selection modelled like the blocking
        kind = "allreduce"
    if kind == "allreduce_ring":
        return 2.0 * (p - 1), 2.0 * frac * n
    if kind == "allreduce_rd" or (kind == "allreduce" and n <= ALLREDUCE_SHORT):
        return float(lg), float(lg * n)
    if kind == "allreduce":
        return 2.0 * lg, 2.0 * frac * n
    if kind in ("reduce_scatter", "alltoall"):
        return float(p - 1), frac * n
    if kind == "allgather":
        return float(p - 1), float((p - 1) * n)
    if kind == "bcast":
        if n < BCAST_SHORT:
            return float(lg), float(lg * n)
        return float(lg + p - 1), 2.0 * frac * n
    # reduce
    if n <= REDUCE_SHORT:
        return float(lg), float(lg * n)
    return 2.0 * lg, 2.0 * frac * n


def cost(kind, p, n, alpha, beta):
    """Seconds of one ``kind`` collective (see :func:`coefficients`)."""
    a, b = coefficients(kind, p, n)
    return a * alpha + b * beta


SMALL = 4096  # bytes: latency-bound samples (alpha)
LARGE = 65536  # bytes: bandwidth-bound samples (beta)
# bytes per rank from which a collective's buffers (send, receive, a temporary: 3 x 16 MiB)
# outgrow the last-level cache of the machines here (32 MiB L3), and its copies and sums run at
# memory speed: such messages get their own beta (fit_big), as data parallelism's 25 MiB
# gradient buckets are. On shared memory and 10 Gbit/s the rate falls by 1.5-3x past it.
BIG = 16 << 20


def fit_big(samples, alpha):
    """beta of the messages of ``BIG`` bytes and more, with ``alpha`` from :func:`fit`: the
    median over them of ``(t - A alpha) / B``; None without such samples."""
    import statistics

    big = [(coefficients(k, p, n), t) for k, p, n, t in samples if n >= BIG and t > 0]
    big = [((a, b), t) for (a, b), t in big if b > 0]
    if not big:
        return None
    return max(0.0, statistics.median((t - a * alpha) / b for (a, b), t in big))


def fit(samples):
    """(alpha, beta) >= 0 from ``samples`` [(kind, p, n, seconds)].

    Robust where there are both small (<= 4 KiB) and large (64 KiB to ``BIG``) messages: alpha
    is the
    median over the small ones of ``(t - B beta) / A``, beta the median over the large ones of
    ``(t - A alpha) / B``, alternated until they settle (exact data gives alpha and beta back
    exactly). A few odd sizes then move nothing: on the emulated links a broadcast's root
    returns once its eager message is buffered, so some mid sizes time far below the link.
    Otherwise: least squares of the relative error (:func:`fit_least_squares`)."""
    import statistics

    small = [(coefficients(k, p, n), t) for k, p, n, t in samples if 0 < n <= SMALL and t > 0]
    large = [(coefficients(k, p, n), t) for k, p, n, t in samples
             if LARGE <= n < BIG and t > 0]
    small = [((a, b), t) for (a, b), t in small if a > 0]
    large = [((a, b), t) for (a, b), t in large if b > 0]
    if not small or not large:
        return fit_least_squares(samples)
    alpha, beta = 0.0, 0.0
    for _ in range(50):
        alpha = max(0.0, statistics.median((t - b * beta) / a for (a, b), t in small))
        new = max(0.0, statistics.median((t - a * alpha) / b for (a, b), t in large))
        if abs(new - beta) <= 1e-12 * max(new, 1e-30):
            beta = new
            break
        beta = new
    return alpha, beta


def fit_least_squares(samples):
    """Least-squares (alpha, beta) >= 0 from ``samples`` [(kind, p, n, seconds)], each sample's
    error relative to its time (small and large messages weigh alike)."""
    rows = []
    for kind, p, n, t in samples:
        a, b = coefficients(kind, p, n)
        if t > 0 and (a or b):
            rows.append((a / t, b / t))
    if not rows:
        raise ValueError("no samples to fit (every one has p = 1, n = 0 or time 0)")
    # normal equations of min sum (a*alpha + b*beta - 1)^2, then the non-negative corners
    saa = sum(a * a for a, _ in rows)
    sbb = sum(b * b for _, b in rows)
    sab = sum(a * b for a, b in rows)
    sa = sum(a for a, _ in rows)
    sb = sum(b for _, b in rows)

    def err(al, be):
        return sum((a * al + b * be - 1.0) ** 2 for a, b in rows)

    cands = []
    det = saa * sbb - sab * sab
    if det > 1e-12 * max(saa * sbb, 1e-300):
        al = (sa * sbb - sb * sab) / det
        be = (sb * saa - sa * sab) / det
        if al >= 0 and be >= 0:
            cands.append((al, be))
    if saa:
        cands.append((sa / saa, 0.0))
    if sbb:
        cands.append((0.0, sb / sbb))
    return min(cands, key=lambda c: err(*c))


def fit_bench(results, p, kind_map=None):
    """(alpha, beta) per kind from one ``bench comm`` JSON's ``results`` ({kind: rows}) measured
    on ``p`` ranks (seconds from each row's ``median_us``, else its mean ``avg_us``)."""
    out = {}
    for kind, rows in results.items():
        k = (kind_map or {}).get(kind, kind)
        out[k] = fit([(k, p, r["bytes"], r.get("median_us", r["avg_us"]) * 1e-6) for r in rows])
    return out
