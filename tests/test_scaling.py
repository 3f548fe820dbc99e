"""The scaling study without timing: the alpha-beta formulas on hand-checked cases, the fit, the
model's timeline, the CSV round trip and its refusals, the command lines' bad input, the report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hpcnn.scaling import alphabeta as ab
from hpcnn.scaling import compute as cm
from hpcnn.scaling import csvio
from hpcnn.scaling import model as md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# alpha-beta ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,p,n,want", [
    ("allreduce_ring", 4, 1000, (6, 1500)),          # 2(p-1), 2(p-1)/p n
    ("allreduce_ring", 2, 1000, (2, 1000)),
    ("allreduce_rd", 8, 1000, (3, 3000)),            # log2 p, log2 p n
    ("allreduce_rd", 5, 100, (3, 300)),              # a non-power of 2: one more round
    ("allreduce", 4, 1024, (2, 2048)),               # short: recursive doubling
    ("allreduce", 4, 4096, (4, 6144)),               # long: Rabenseifner 2 log2 p, 2(p-1)/p n
    ("iallreduce", 4, 4096, (4, 6144)),              # non-blocking: the same terms
    ("reduce_scatter", 4, 1000, (3, 750)),           # (p-1), (p-1)/p n
    ("allgather", 4, 100, (3, 300)),                 # (p-1), (p-1) n (own block)
    ("bcast", 4, 100, (2, 200)),                     # binomial
    ("bcast", 4, 100000, (5, 150000)),               # scatter + all-gather
    ("reduce", 8, 1024, (3, 3072)),                  # binomial
    ("reduce", 8, 4096, (6, 7168)),                  # Rabenseifner
    ("alltoall", 2, 1000, (1, 500)),                 # pairwise
    ("allreduce", 1, 1000, (0, 0)),                  # one rank: nothing
    ("allgather", 4, 0, (0, 0)),
])
def test_coefficients_by_hand(kind, p, n, want):
    assert ab.coefficients(kind, p, n) == pytest.approx(want)


def test_cost_is_alpha_and_beta_terms():
    # ring allreduce of 1 MB on 4 ranks, 10 us and 1 GB/s: 6 * 10us + 1.5 MB / 1 GB/s = 1.56 ms
    assert ab.cost("allreduce_ring", 4, 10**6, 10e-6, 1e-9) == pytest.approx(1.56e-3)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown collective kind"):
        ab.coefficients("gossip", 2, 10)


def test_fit_recovers_alpha_beta_exactly():
    alpha, beta = 7e-6, 1 / 3e8
    samples = [(k, p, n, ab.cost(k, p, n, alpha, beta))
               for k in ("allreduce_ring", "allgather", "bcast") for p in (2, 4, 8)
               for n in (4, 1024, 65536, 1 << 22)]
    got = ab.fit(samples)
    assert got == pytest.approx((alpha, beta), rel=1e-9)


def test_fit_with_noise_and_nonnegative():
    rng = np.random.default_rng(0)
    alpha, beta = 20e-6, 1 / 1.1e8
    samples = [("allreduce", 2, n, ab.cost("allreduce", 2, n, alpha, beta)
                * (1 + 0.02 * rng.standard_normal())) for n in 4 * 4 ** np.arange(12)]
    a, b = ab.fit(samples)
    assert a == pytest.approx(alpha, rel=0.05) and b == pytest.approx(beta, rel=0.05)
    # pure latency (every size costs the same): beta would go negative; clamped to 0
    flat = [("allgather", 2, n, 5e-6) for n in (4, 400, 40000)]
    a, b = ab.fit(flat)
    assert b == 0.0 and a == pytest.approx(5e-6, rel=0.3)


def _two_regimes(alpha, beta, beta_big, kinds=("iallreduce", "allgather"), ranks=(2, 4)):
    """bench comm-like samples whose messages of ab.BIG bytes and more move at ``beta_big``."""
    return [(k, p, n, ab.cost(k, p, n, alpha, beta_big if n >= ab.BIG else beta))
            for k in kinds for p in ranks for n in 4 * 4 ** np.arange(13)]  # 4 B to 64 MiB


def test_messages_past_the_cache_get_their_own_beta():
    alpha, beta, big = 30e-6, 1 / 3.5e9, 1 / 1.2e9  # shared memory: 3.5 GB/s in cache, 1.2 past
    samples = _two_regimes(alpha, beta, big)
    assert ab.fit(samples) == pytest.approx((alpha, beta), rel=1e-9)  # big ones left out
    assert ab.fit_big(samples, alpha) == pytest.approx(big, rel=1e-9)
    assert ab.fit_big([x for x in samples if x[2] < ab.BIG], alpha) is None


def test_fit_links_and_comm_cost_use_the_big_fit(tmp_path):
    alpha, beta, big = 30e-6, 1 / 3.5e9, 1 / 1.2e9
    for p in (2, 4):
        results = {k: [{"bytes": int(n), "avg_us": 1e6 * t, "median_us": 1e6 * t}
                       for kk, pp, n, t in _two_regimes(alpha, beta, big, (k,), (p,))]
                   for k in ("iallreduce", "allgather")}
        with open(tmp_path / f"comm_shm_{p}_auto.json", "w") as f:
            json.dump({"link": "shm", "ranks": p, "allreduce_algorithm": "auto",
                       "results": results}, f)
    fits = md.fit_links(str(tmp_path))["shm"]
    assert {"iallreduce", "iallreduce@2", "iallreduce@big", "iallreduce@2@big",
            "allgather@4@big"} <= set(fits)
    assert fits["iallreduce@2"]["beta_s_per_byte"] == pytest.approx(beta, rel=1e-6)
    assert fits["iallreduce@2@big"]["beta_s_per_byte"] == pytest.approx(big, rel=1e-6)
    assert fits["iallreduce@2@big"]["samples"] == 2  # 16 and 64 MiB
    assert fits["iallreduce@2"]["worst_rel_error"] < 1e-6
    link = {k: (v["alpha_s"], v["beta_s_per_byte"]) for k, v in fits.items()}
    for n, b in ((1 << 20, beta), (25 << 20, big)):  # a 25 MiB gradient bucket: past the cache
        assert md.comm_cost(link, "iallreduce", 4, n) == pytest.approx(
            ab.cost("iallreduce", 4, n, alpha, b), rel=1e-6)
    # a kind the link lacks costs as its allreduce; a link without big fits, as before
    plain = {"allreduce": (alpha, beta)}
    assert md.comm_cost(plain, "bcast", 2, 25 << 20) == ab.cost("bcast", 2, 25 << 20, alpha,
                                                                beta)


def test_fit_needs_samples():
    with pytest.raises(ValueError, match="no samples"):
        ab.fit([("allreduce", 1, 100, 1e-3)])


# compute interpolation -----------------------------------------------------------------------
PROF = {"net": "toy", "layers": [{"name": "c", "part": "feature", "params": 30},
                                 {"name": "f", "part": "head", "params": 70}],
        "params_feature": 30, "params_head": 70,
        "batches": {"16": {"fwd": [1.6, 0.16], "bwd": [3.2, 0.32], "loss": 0.016,
                           "optimizer": 0.5},
                    "64": {"fwd": [4.0, 0.64], "bwd": [8.0, 1.28], "loss": 0.064,
                           "optimizer": 0.5}}}


def test_layer_time_interpolates():
    assert cm.layer_time(PROF, 16, 0, "fwd") == 1.6  # measured
    assert cm.layer_time(PROF, 40, 0, "fwd") == pytest.approx(2.8)  # linear in between
    assert cm.layer_time(PROF, 8, 0, "fwd") == pytest.approx(0.8)  # per sample below
    assert cm.layer_time(PROF, 128, 1, "bwd") == pytest.approx(2.56)  # per sample above
    assert cm.stage_time(PROF, 64, "head", "bwd") == pytest.approx(1.28)
    assert cm.optimizer_time(PROF, 35) == pytest.approx(0.175)
    assert cm.layer_time(PROF, 0, 0, "fwd") == 0.0


# the model -----------------------------------------------------------------------------------
class ToyShape:
    """A two-layer net: conv (layer 0, 30 params) | fc (layer 1, 70 params: 7 out, 9 in)."""
    name, head_start, num_layers = "toy", 1, 2
    data_buckets = [(280, 1), (120, 0)]  # bytes, ready layer
    feature_buckets = [(120, 0)]
    feature_bytes, head_bytes = 120, 280
    fc_out, fc_in, in_features = [7], [9], 9


FREE = {k: (0.0, 0.0) for k in ab.KINDS}
LINK = {k: (1e-3, 1e-3) for k in ab.KINDS}  # 1 ms per message, 1 ms per byte


def test_no_communication_is_compute_only():
    one = md.predict(PROF, ToyShape, "data", 1, 1, 16, LINK)
    compute = 1.6 + 0.16 + 3.2 + 0.32 + 0.016 + 0.5
    assert one["step_s"] == pytest.approx(compute) and one["wait_s"] == {}
    free = md.predict(PROF, ToyShape, "data", 2, 1, 16, FREE)
    assert free["step_s"] == pytest.approx(compute)
    assert free["images_per_s"] == pytest.approx(32 / compute)


def test_data_parallel_without_overlap_adds_every_bucket():
    r = md.predict(PROF, ToyShape, "data", 2, 1, 16, LINK, overlap=0.0)
    # 2 ranks, Rabenseifner (n > 2 KiB? no: 280 and 120 B are short: recursive doubling)
    cost = sum(1e-3 * 1 + 1e-3 * 1 * b for b in (280, 120))
    assert r["exposed_s"] == pytest.approx(cost)
    assert r["step_s"] == pytest.approx(r["compute_s"] + cost)
    assert r["bytes"] == {"allreduce": 400}


def test_overlap_hides_a_bucket_behind_backward():
    link = {k: (0.0, 1e-3) for k in ab.KINDS}
    # bucket 0 (280 B, 0.28 s) is ready after the head's backward (0.32 s), with 3.2 s of conv
    # backward left to hide it: fully hidden at overlap 1; bucket 1 (0.12 s) starts at the end
    r = md.predict(PROF, ToyShape, "data", 2, 1, 16, link, overlap=1.0)
    assert r["exposed_s"] == pytest.approx(0.12)
    # at overlap 0.05 only 0.05 * 3.2 = 0.16 s of bucket 0 is done by the end: 0.12 + 0.12 left
    r = md.predict(PROF, ToyShape, "data", 2, 1, 16, link, overlap=0.05)
    assert r["exposed_s"] == pytest.approx(0.12 + 0.12)


def test_hybrid_a_collectives_and_head_split():
    cols = md.collectives(ToyShape, "hybrid", 2, 16, (1, 2), "a")
    kinds = [(k, g, b) for k, g, b, _, _ in cols]
    assert kinds == [("allgather", 2, 8), ("allgather", 2, 128), ("allgather", 2, 4 * 16 * 9),
                     ("allreduce_loss", 2, 8 * 32), ("allreduce_loss", 2, 16 * 32),
                     ("reduce_scatter", 2, 4 * 2 * 16 * 9), ("allreduce", 2, 120)]
    r = md.predict(PROF, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme="a")
    # the head runs on 32 examples split in 2: half of its time at batch 32
    head = (cm.layer_time(PROF, 32, 1, "fwd") + cm.layer_time(PROF, 32, 1, "bwd")) / 2
    opt = cm.optimizer_time(PROF, 30 + 70 / 2)
    assert r["compute_s"] == pytest.approx(1.6 + 3.2 + head + 0.016 + opt)


def test_hybrid_b_and_c_run_the_head_in_m_passes():
    assert md.head_passes("a", 2, 16) == [32]
    assert md.head_passes("b", 2, 16) == [16, 16]
    assert md.head_passes("c", 3, 7) == [9, 6, 6]  # 3 x the r-th third of 7 examples: 3, 2, 2
    assert md.head_passes("c", 4, 2) == [4, 4]  # ranks with no examples left run no pass
    # a head whose time has a fixed part (its weights' traffic): forward 0.40 s at batch 16,
    # 0.64 at 64, so 0.48 at 32; backward twice that. Two passes of 16 cost 0.80 + 1.60, one of
    # 32 0.48 + 0.96, each split over the 2 ranks: b (and c) compute 0.48 s longer than a
    prof = json.loads(json.dumps(PROF))
    prof["batches"]["16"]["fwd"][1], prof["batches"]["16"]["bwd"][1] = 0.40, 0.80
    per = {s: md.predict(prof, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme=s)
           for s in "abc"}
    assert per["b"]["compute_s"] - per["a"]["compute_s"] == pytest.approx((2.4 - 1.44) / 2)
    assert per["c"]["compute_s"] == pytest.approx(per["b"]["compute_s"])
    # proportional to the batch (PROF's head), the passes cost the same in every scheme
    same = [md.predict(PROF, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme=s)
            for s in "abc"]
    assert same[0]["compute_s"] == pytest.approx(same[1]["compute_s"])


def test_hybrid_head_from_a_single_batch_profile_takes_the_study_profiles_batch_shape():
    """A profile taken beside a cell holds that cell's batch only. Hybrid a's pass over the
    group's 2 x 16 rows then takes the head's time at 16 from it, scaled by how the study's
    profile (16 and 64) grows from 16 to 32, not in proportion to the rows: a head that costs
    mostly its weights' traffic (0.40 s forward at 16, 0.64 at 64, so 0.48 at 32) takes 1.2x, and
    split over 2 ranks 0.6x, of its time at 16 on each rank, not 1x."""
    study = json.loads(json.dumps(PROF))
    study["batches"]["16"]["fwd"][1], study["batches"]["16"]["bwd"][1] = 0.40, 0.80
    beside = json.loads(json.dumps(study))  # the machine ran 1.5x slower beside the cell
    beside["batches"] = {"16": {k: ([1.5 * x for x in v] if isinstance(v, list) else 1.5 * v)
                                for k, v in study["batches"]["16"].items()}}
    assert md.head_time(beside, 32, 16, 1, "fwd", study) == pytest.approx(0.60 * 1.2)
    assert md.head_time(beside, 32, 16, 1, "bwd", study) == pytest.approx(1.20 * 1.2)
    assert md.head_time(beside, 16, 16, 1, "fwd", study) == pytest.approx(0.60)  # held: as is
    assert md.head_time(beside, 32, 16, 1, "fwd") == pytest.approx(1.20)  # no study: per row
    a = md.predict(beside, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme="a",
                   shape_prof=study)
    alone = md.predict(beside, ToyShape, "data", 1, 1, 16, FREE)
    head_alone = (0.60 + 1.20) * cm.calibration(beside, 16)
    assert alone["compute_s"] - a["compute_s"] == pytest.approx(
        head_alone * (1 - 0.6) + cm.optimizer_time(beside, 70) / 2, rel=1e-6)


def test_hybrid_b_broadcasts_move_every_round():
    cols = md.collectives(ToyShape, "hybrid", 2, 4, (1, 2), "b")
    bc = [(sent, moved) for k, _, sent, moved, _ in cols if k == "bcast"]
    assert bc == [(144, 144), (0, 144)]
    assert md.predict_bytes(ToyShape, "hybrid", 2, 4, (1, 2), "b")["reduce"] == 2 * 144


def test_model_bytes_data_parallel_equal_the_gradient_buffer():
    from hpcnn.nn import NETS, build_net

    model = build_net("owt_cifar", NETS["owt_cifar"][2], 10, narrow=16)
    shape = md.NetShape(model)
    assert md.predict_bytes(shape, "data", 4, 8) == {"allreduce": model.group.nbytes()}
    assert md.predict_bytes(shape, "data", 1, 8) == {}
    assert shape.feature_bytes + shape.head_bytes == model.group.nbytes()


# the CSV -------------------------------------------------------------------------------------
def _row(**kw):
    row = {c: 0.0 for c in csvio.COLUMNS}
    row.update({c: 1 for c in csvio.INTS})
    row.update(time_utc="2026-12-01T00:00:00Z", cpu="test cpu", net="cifar10_quick",
               parallel="data", scheme="", grid="1x1", link="shm", command="python -m x 'a,b'",
               images_per_s=100.0, batch_per_rank=16, global_batch=16)
    row.update(kw)
    return row


def test_csv_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "points.csv")
    rows = [_row(), _row(net="owt_cifar", parallel="hybrid", scheme="b", grid="1x2", ranks=2,
                         images_per_s=1.0 / 3, command='say "hi", twice')]
    for r in rows:
        csvio.append_row(path, r)
    with open(path) as f:
        text = f.read()
    assert text.count("time_utc,") == 1  # one header
    back = csvio.read_rows(path)
    assert back == rows


def test_spreads_and_best_rows_group_rows_by_cell():
    rows = [_row(images_per_s=100.0), _row(images_per_s=130.0), _row(images_per_s=110.0),
            _row(images_per_s=50.0, link="1gbit"), _row(images_per_s=40.0, batch_per_rank=64),
            _row(images_per_s=44.0, batch_per_rank=64)]
    assert sorted(r["images_per_s"] for r in csvio.best_rows(rows)) == [44.0, 50.0, 130.0]
    got = csvio.spreads(rows)  # the 1gbit cell has one row: no spread
    assert [round(x, 6) for x, _ in got] == [0.3, 0.1]
    assert got[0][1]["images_per_s"] == 130.0 and got[1][1]["batch_per_rank"] == 64


def test_csv_refuses_malformed(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(csvio.CsvError, match="line 1 is not the scaling study's header"):
        csvio.read_rows(str(bad))
    with pytest.raises(csvio.CsvError, match="header is not the scaling study's"):
        csvio.append_row(str(bad), _row())
    good = tmp_path / "good.csv"
    csvio.append_row(str(good), _row())
    with open(good, "a") as f:
        f.write("1,2,3\n")
    with pytest.raises(csvio.CsvError, match=r"line 3: 3 fields, expected \d+"):
        csvio.read_rows(str(good))
    nan = tmp_path / "nan.csv"
    csvio.append_row(str(nan), _row(images_per_s=float("nan")))
    with pytest.raises(csvio.CsvError, match="not a finite number"):
        csvio.read_rows(str(nan))
    with pytest.raises(csvio.CsvError, match="cannot read"):
        csvio.read_rows(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="row columns differ"):
        csvio.format_row({"net": "x"})


# command lines: bad input is one line and exit 2 ---------------------------------------------
def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("args,msg", [
    (("hpcnn.scaling",), "usage"),
    (("hpcnn.scaling", "frobnicate"), "unknown command"),
    (("hpcnn.scaling", "point", "--net", "nope", "--csv", "x.csv"), "unknown --net"),
    (("hpcnn.scaling", "point", "--parallel", "data", "--scheme", "b", "--csv", "x.csv"),
     "need --parallel hybrid"),
    (("hpcnn.scaling", "point", "--steps", "0", "--csv", "x.csv"), "must be positive"),
    (("hpcnn.scaling", "run", "--layouts", "2y1:fast", "--dry-run"), "a layout looks like"),
    (("hpcnn.scaling", "run", "--layouts", "2x1:shm", "--dry-run"), "need a link rate"),
    (("hpcnn.scaling", "run", "--modes", "data,z", "--dry-run"), "unknown 'z'"),
    (("hpcnn.scaling", "run", "--comm", "1:1gbit", "--dry-run"), "NODES >= 2"),
    (("hpcnn.scaling", "model"), "choose fit, compute or predict"),
    (("hpcnn.scaling", "model", "predict", "--net", "owt_cifar", "--link", "carrier-pigeon"),
     "unknown --link"),
    (("hpcnn.bench", "comm", "--kinds", "gossip"), "unknown --kinds"),
    (("hpcnn.bench", "comm", "--allreduce-algorithm", "magic"), "unknown --allreduce-algorithm"),
])
def test_bad_command_line_is_one_line_exit_2(args, msg):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr


def test_report_refuses_malformed_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("nodes,ranks\n1,2\n")
    r = _cli("hpcnn.scaling", "report", "--csv", str(bad), "--out", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {bad}: line 1 is not the scaling study's header (2 columns, expected "
        f"{len(csvio.COLUMNS)}; 'nodes' where 'time_utc' belongs)"]


def test_run_dry_run_lists_the_matrix():
    r = _cli("hpcnn.scaling", "run", "--dry-run", "--layouts", "1x1:shm,2x1:1gbit",
             "--nets", "owt_cifar", "--batches", "16,64", "--csv", "/tmp/none.csv")
    assert r.returncode == 0, r.stderr
    lines = [ln.split("] ", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("[")]
    labels = [ln.split(": ")[0] for ln in lines]
    # one rank: data only; two nodes: data and the three hybrid schemes; before the cells of
    # each batch, the net's compute profile at that batch with as many copies as ranks
    assert labels == ["profile owt_cifar b16 x1", "owt_cifar/data/b16/1x1:shm",
                      "profile owt_cifar b64 x1", "owt_cifar/data/b64/1x1:shm",
                      "profile owt_cifar b16 x2",
                      *[f"owt_cifar/{m}/b16/2x1:1gbit" for m in ("data", "a", "b", "c")],
                      "profile owt_cifar b64 x2",
                      *[f"owt_cifar/{m}/b64/2x1:1gbit" for m in ("data", "a", "b", "c")]]
    assert "cluster-local.sh" in r.stdout and "-ppn 1 -n 2" in r.stdout
    prof = lines[4].split(": ", 1)[1]
    assert "mpiexec -n 2 " in prof and "cluster-local.sh" not in prof  # compute only, on host
    assert "--batches 16 " in prof and "/tmp/profiles/compute_owt_cifar_x2_b16_" in prof
    r = _cli("hpcnn.scaling", "run", "--dry-run", "--layouts", "1x2:shm", "--nets", "owt_cifar",
             "--global-batches", "32", "--modes", "data", "--no-profiles", "--csv", "/tmp/n.csv")
    assert r.returncode == 0 and "profile" not in r.stdout and "--global-batch 32" in r.stdout


def test_run_refuses_an_unusable_autotune_cache_up_front(tmp_path):
    cache = tmp_path / "autotune.json"
    cache.write_bytes(b"\xff{not json")
    env = {k: v for k, v in os.environ.items() if k != "HPCNN_AUTOTUNE_CACHE"}
    argv = [sys.executable, "-m", "hpcnn.scaling", "run", "--dry-run", "--layouts", "1x1:shm",
            "--nets", "lenet5", "--csv", str(tmp_path / "points.csv")]
    for extra in ([], ["--autotune-cache", str(cache)]):  # the default: beside the CSV
        r = subprocess.run(argv + extra, capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env=env)
        assert r.returncode == 2 and "[" not in r.stdout, r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: autotune cache") and \
            str(cache) in lines[0], r.stderr
        assert cache.read_bytes() == b"\xff{not json"  # left as it was


def test_run_takes_profiles_beside_its_cells_with_one_autotune_cache(tmp_path):
    """A real one-cell study (lenet5, 1 rank): the profile is taken before the point, at its
    batch, into profiles/; both share the study's autotune cache; the model then predicts the
    point from that profile."""
    csv_path = tmp_path / "study" / "points.csv"
    env = {k: v for k, v in os.environ.items() if k != "HPCNN_AUTOTUNE_CACHE"}
    r = subprocess.run([sys.executable, "-m", "hpcnn.scaling", "run", "--layouts", "1x1:shm",
                        "--nets", "lenet5", "--batches", "8", "--steps", "1", "--warmup", "1",
                        "--min-seconds", "0", "--profile-reps", "1", "--csv", str(csv_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ran 1 point(s), 0 failed" in r.stdout
    cache = json.loads((tmp_path / "study" / "autotune.json").read_text())
    assert cache  # the profile and the point tuned into the study's cache
    names = os.listdir(tmp_path / "study" / "profiles")
    assert len(names) == 1 and names[0].startswith("compute_lenet5_x1_b8_")
    profs = md.load_profiles(str(tmp_path / "study"))
    [(when, prof)] = profs.timeline[("lenet5", 1)]
    assert list(prof["batches"]) == ["8"] and prof["concurrent"] == 1
    [row] = csvio.read_rows(str(csv_path))
    assert md.utc_seconds(prof["started_utc"]) <= md.utc_seconds(row["time_utc"])
    gap, near = md.nearest_profile(profs, "lenet5", 1, row["time_utc"], 8)
    assert near is prof and gap < 600
    assert md.profile_for(profs, "lenet5", 1, row["time_utc"], 8) is prof
    assert md.profile_for(profs, "lenet5", 1) is None  # no study-wide profile here


def _timed_profile(folder, when, scale, b=16, net="cifar10_quick", copies=2):
    """A profile file of PROF's shape, every time times ``scale``, taken at ``when``."""
    doc = json.loads(json.dumps(PROF))
    doc.update(net=net, concurrent=copies, started_utc=when, time_utc=when)
    doc["batches"] = {str(b): {k: ([x * scale for x in v] if isinstance(v, list) else v * scale)
                               for k, v in PROF["batches"]["16"].items()}}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"compute_{net}_x{copies}_b{b}_{when}.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def test_a_profile_taken_beside_the_cells_predicts_a_point(tmp_path):
    timed = str(tmp_path / "profiles")
    _timed_profile(timed, "2026-12-02T10:00:00Z", 1.5)
    _timed_profile(timed, "2026-12-02T10:10:00Z", 1.0)  # the machine faster 10 minutes later
    _timed_profile(timed, "2026-12-02T10:20:00Z", 1.2)
    _timed_profile(timed, "2026-12-02T10:30:00Z", 0.5, b=64)  # another batch: never for b16
    static = dict(PROF, net="cifar10_quick")
    with open(tmp_path / "compute_cifar10_quick.json", "w") as f:
        json.dump(static, f)
    profs = md.load_profiles(str(tmp_path))
    assert set(profs) == {"cifar10_quick"} and len(profs.timeline[("cifar10_quick", 2)]) == 4

    def fwd0(when, pick, b=16):
        return md.profile_for(profs, "cifar10_quick", 2, when, b, pick)["batches"][str(b)][
            "fwd"][0]

    for when, scale in (("2026-12-02T10:01:00Z", 1.5), ("2026-12-02T10:06:00Z", 1.0),
                        ("2026-12-02T10:17:00Z", 1.2), ("2026-12-02T11:00:00Z", 1.2)):
        assert fwd0(when, "nearest") == pytest.approx(1.6 * scale)
        assert fwd0(when, "fastest") == pytest.approx(1.6)  # the least disturbed, at any time
    assert fwd0(None, "fastest") == pytest.approx(1.6)
    assert fwd0("2026-12-02T10:01:00Z", "nearest", 64) == pytest.approx(1.6 * 0.5)  # b64 alone
    assert md.nearest_profile(profs, "cifar10_quick", 2, "2026-12-02T10:06:00Z", 16)[0] == 240
    with pytest.raises(md.HpcnnError, match="time_utc 'noon' is not a time"):
        md.profile_for(profs, "cifar10_quick", 2, "noon", 16)
    # no profile beside the cells of that batch, or of that many processes: the study-wide one
    for pick in md.PICKS:
        assert md.profile_for(profs, "cifar10_quick", 2, "2026-12-02T10:06:00Z", 256,
                              pick) == static
        assert md.profile_for(profs, "cifar10_quick", 1, "2026-12-02T10:06:00Z", 16,
                              pick) == static
    assert md.profile_for(profs, "cifar10_quick", 2) == static
    # the prediction follows the profile
    slow = md.predict(md.profile_for(profs, "cifar10_quick", 2, "2026-12-02T10:01:00Z", 16,
                                     "nearest"), ToyShape, "data", 1, 2, 16, FREE)
    fast = md.predict(md.profile_for(profs, "cifar10_quick", 2, "2026-12-02T10:01:00Z", 16,
                                     "fastest"), ToyShape, "data", 1, 2, 16, FREE)
    assert slow["compute_s"] == pytest.approx(1.5 * fast["compute_s"], rel=0.02)


@pytest.mark.parametrize("damage,msg", [
    (lambda d: d.pop("time_utc"), "needs its started_utc and time_utc"),
    (lambda d: d.update(time_utc="yesterday"), "needs its started_utc and time_utc"),
    (lambda d: d["batches"]["16"].update(fwd=[1.0]), "not one time per layer"),
    (lambda d: d["batches"]["16"].update(loss=-1.0), "a negative time"),
    (lambda d: d.update(batches={}), "no net, layers or batches"),
    (lambda d: d.update(concurrent=0), "concurrent must be a positive count"),
    (lambda d: d.update(concurrent="two"), "not a compute profile"),
    (lambda d: d.update(batches={"zero": d["batches"]["16"]}), "not a compute profile"),
    (lambda d: d.update(pad="x" * (md.MAX_PROFILE_BYTES + 1)), "larger than 4 MiB"),
])
def test_a_damaged_profile_is_one_clear_error(tmp_path, damage, msg):
    path = _timed_profile(str(tmp_path / "profiles"), "2026-12-02T10:00:00Z", 1.0)
    with open(path) as f:
        doc = json.load(f)
    damage(doc)
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(md.HpcnnError, match=msg) as e:
        md.load_profiles(str(tmp_path))
    assert "\n" not in str(e.value) and path in str(e.value)


# the report ----------------------------------------------------------------------------------
def test_report_builds_from_a_small_csv(tmp_path):
    from hpcnn.scaling import report

    # a profile of owt_cifar's layer list, with made-up times
    shape = md.NetShape.of("owt_cifar")
    from hpcnn.nn import NETS, build_net

    model = build_net("owt_cifar", NETS["owt_cifar"][2], 10)
    layers = [{"name": lay.name, "part": "feature" if i < model.head_start else "head",
               "params": int(sum(p.data.size for p in lay.params()))}
              for i, lay in enumerate(model.layers)]
    L = len(layers)
    prof = {"net": "owt_cifar", "threads": 1, "cpu": "t", "layers": layers,
            "params_feature": shape.feature_bytes // 4, "params_head": shape.head_bytes // 4,
            "batches": {str(b): {"fwd": [1e-4 * b] * L, "bwd": [2e-4 * b] * L,
                                 "loss": 1e-5 * b, "optimizer": 0.02} for b in (16, 64)}}
    with open(tmp_path / "compute_owt_cifar.json", "w") as f:
        json.dump(prof, f)
    os.makedirs(tmp_path / "profiles")  # taken beside the 2-rank points: twice as slow
    beside = dict(prof, concurrent=2, started_utc="2026-12-01T00:00:00Z",
                  time_utc="2026-12-01T00:00:10Z",
                  batches={"16": {k: ([2 * x for x in v] if isinstance(v, list) else 2 * v)
                                  for k, v in prof["batches"]["16"].items()}})
    with open(tmp_path / "profiles" / "compute_owt_cifar_x2_b16_x.json", "w") as f:
        json.dump(beside, f)
    fits = {"links": {"1gbit": {"kinds": {k: [50e-6, 1 / 1.1e8] for k in ab.KINDS},
                                "overlap": 0.2, "detail": {}}}}
    with open(tmp_path / "alphabeta.json", "w") as f:
        json.dump(fits, f)
    csv_path = str(tmp_path / "points.csv")
    csvio.append_row(csv_path, _row(net="owt_cifar", batch_per_rank=16, images_per_s=20.0))
    csvio.append_row(csv_path, _row(net="owt_cifar", batch_per_rank=16, images_per_s=16.0))
    csvio.append_row(csv_path, _row(net="owt_cifar", batch_per_rank=16, images_per_s=12.0,
                                    ranks=2, nodes=2, link="1gbit", grid="2x1",
                                    global_batch=32))
    csvio.append_row(csv_path, _row(net="owt_cifar", batch_per_rank=16, images_per_s=35.0,
                                    ranks=2, nodes=2, link="1gbit", parallel="hybrid",
                                    scheme="a", grid="1x2", global_batch=32))
    out = str(tmp_path / "out")
    assert report.main(["--csv", csv_path, "--fits", str(tmp_path / "alphabeta.json"),
                        "--profiles", str(tmp_path), "--comm-dir", str(tmp_path / "none"),
                        "--out", out]) == 0
    text = open(os.path.join(out, "report.md")).read()
    assert "| owt_cifar | hybrid a | 2x1 | 1gbit | 16 | 35.0 |" in text
    assert "2.92x** measured" in text  # 35 / 12
    assert "Projection to 864 nodes" in text and "772x" in text
    assert "Model error" in text and md.ASSUMPTIONS.splitlines()[0] in text
    assert "| owt_cifar | data | 1x1 | shm | 16 | 20.0 |" in text  # the cell's fastest row
    assert "Repeatability: of the 1 cells measured more than once, 1 have rows more than 15% " \
        "apart (fastest over slowest images/s; median 25.0%, largest 25.0%: owt_cifar data, " \
        "1x1 over shm, batch 16/rank)" in text
    assert "Compute profiles: 2 of 3 points are predicted from the compute profile that `run` " \
        "took beside them" in text and "the one taken nearest in time: median 5 s away, at " \
        "most 5 s)" in text
    assert "From the fastest of those profiles instead (the least disturbed): " in text and \
        "From the study's one profile per net (`compute_NET[_x2].json`)" in text
    # the 2-rank points' model compute is the slower profile's
    data2 = [ln for ln in text.splitlines() if ln.startswith("| owt_cifar | data | 2x1 |")][0]
    static = md.predict(prof, shape, "data", 2, 1, 16, {k: (0.0, 0.0) for k in ab.KINDS})
    assert float(data2.split("|")[14]) == pytest.approx(2e3 * static["compute_s"], abs=0.1)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "No PNGs: matplotlib is not installed" in text
        pytest.skip("matplotlib is not installed: the PNGs are not made (the report says so)")
    for name in ("speedup_owt_cifar.png", "breakdown.png", "batch_owt_cifar.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
        assert f"]({name})" in text


def test_jitter_is_paid_at_every_wait_point():
    base = md.predict(PROF, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme="a")
    jit = md.predict(PROF, ToyShape, "hybrid", 2, 1, 16, FREE, grid=(1, 2), scheme="a",
                     jitter=0.01)
    # 6 blocking collectives (counts, labels, features, 2 loss sums, reduce-scatter) and the
    # end of the overlapped feature reduction
    assert jit["step_s"] - base["step_s"] == pytest.approx(7 * 0.01)
    one = md.predict(PROF, ToyShape, "data", 1, 1, 16, FREE, jitter=0.01)
    assert one["step_s"] == pytest.approx(base["step_s"] - base["compute_s"]
                                          + one["compute_s"])  # one rank never waits


def test_link_constants_recover_a_made_up_link():
    # points made by the model itself at overlap 0.25, jitter 2 ms: the fit finds them again
    shapes = {"toy": ToyShape}
    profs = {"toy": PROF}
    link = {k: (1e-4, 1e-2) for k in ab.KINDS}  # buckets only partly hidden: overlap shows
    rows = []
    for mode, scheme, grid in (("data", "", "2x1"), ("hybrid", "a", "1x2"),
                               ("hybrid", "b", "1x2")):
        for b in (16, 64):
            r = {"link": "x", "ranks": 2, "nodes": 2, "ranks_per_node": 1, "net": "toy",
                 "parallel": mode, "scheme": scheme, "grid": grid, "batch_per_rank": b}
            m, g, s = md.point_args(r)
            r["step_s_max"] = md.predict(PROF, ToyShape, m, 2, 1, b, link, 0.25, g, s,
                                         2e-3)["step_s"]
            rows.append(r)
    got = md.fit_link_constants(rows, profs, shapes, {"x": {"kinds": link}})
    assert got == {"x": (0.25, 2e-3)}
