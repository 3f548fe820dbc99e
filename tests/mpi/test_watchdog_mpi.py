"""The peer-death watchdog's set-up across ranks (its death handling: tests/test_watchdog.py)."""

import pytest

from hpcnn.parallel import watchdog


@pytest.fixture(autouse=True)
def no_watchdog_left_running():
    """Each test starts from no watchdog, even after an earlier MPI test in the same processes
    failed midway with one running (``start`` would then rightly do nothing)."""
    watchdog.stop()
    yield
    watchdog.stop()


@pytest.mark.mpi(min_size=2)
def test_start_connects_every_rank_and_stop_ends_it_quietly(capfd):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    assert watchdog.start(comm) is True
    assert watchdog.running()
    assert watchdog.start(comm) is False  # already running: nothing more
    if comm.Get_rank() == 0:
        assert len(watchdog._state.peers) == comm.Get_size() - 1
        assert sorted(watchdog._state.peers.values()) == list(range(1, comm.Get_size()))
    else:
        assert list(watchdog._state.peers.values()) == [0]
    comm.Barrier()
    watchdog.stop()
    assert not watchdog.running()
    comm.Barrier()
    assert "died" not in capfd.readouterr().err


@pytest.mark.mpi(min_size=2)
def test_a_failed_set_up_is_said_once_and_every_rank_runs_without(monkeypatch, capfd):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    monkeypatch.setattr(watchdog, "_listen", lambda same_host: (None, "no port for you"))
    assert watchdog.start(comm) is False
    assert not watchdog.running()
    err = capfd.readouterr().err
    if comm.Get_rank() == 0:
        assert err.strip().splitlines() == [
            "warning: peer watchdog off: no port for you; a rank that dies may leave the others "
            "waiting until the time limit"]
    else:
        assert err == ""


@pytest.mark.mpi(min_size=2)
def test_a_rank_that_cannot_connect_turns_it_off_everywhere(monkeypatch, capfd):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == comm.Get_size() - 1:
        monkeypatch.setattr(watchdog, "_connect", lambda addrs, port, rank: (None, "refused"))
    assert watchdog.start(comm) is False
    assert not watchdog.running()
    err = capfd.readouterr().err
    if comm.Get_rank() == 0:
        assert err.strip().splitlines() == [
            f"warning: peer watchdog off: rank {comm.Get_size() - 1}: refused; a rank that dies "
            "may leave the others waiting until the time limit"]
    comm.Barrier()
