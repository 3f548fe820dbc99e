"""Peer-death watchdog: when any rank of the job dies, every other rank ends within seconds.

A rank killed by a signal (SIGKILL, the OOM killer) runs no code of its own, and MPICH's shared
memory transport has no peer-death detection: its peers wait in their next collective, spinning,
until the job's time limit, unless the launcher kills them (Hydra's mpiexec does; ``srun`` does
only with ``--kill-on-bad-exit``, and Slurm's default is ``KillOnBadExit=0``). This module makes
hpcnn end the whole job whatever the launcher's settings.

How: after MPI starts, rank 0 listens on a TCP port at its host's address (or the loopback when
every rank runs on its host) and broadcasts it; every other rank connects and says its rank.
A daemon thread on each rank waits (``select``) on its socket(s). The kernel closes the sockets of
a process that dies, however it dies, so:

- rank 0 reading end-of-file from rank P, without the ``bye`` that :func:`stop` sends first,
  prints ``rank 0: peer rank P died; ending the job``, tells every other rank, and exits;
- a rank told so by rank 0, or reading end-of-file from rank 0 itself, prints
  ``rank R: peer rank P died; ending the job`` and exits.

Exits are ``os._exit(EXIT_STATUS)``: no clean-up, no MPI finalize (a collective with a dead peer
would hang). TCP keepalive (about 10 s) also catches a peer whose whole node vanished.

``start(comm)`` is collective (every rank calls it, after MPI is initialised); ``stop()`` is not:
each rank calls it once its last collective is done (an ``atexit`` hook calls it too, so a normal
interpreter exit is never taken for a death). ``HPCNN_WATCHDOG=0`` turns it off. When it cannot be
set up, rank 0 says so in one line and the job runs without it.
"""

import atexit
import os
import select
import socket
import struct
import sys
import threading

EXIT_STATUS = 1  # a peer died: this rank ends the job with this status
ENV = "HPCNN_WATCHDOG"
CONNECT_TIMEOUT = 10.0  # seconds to connect to rank 0 / for rank 0 to accept every rank

_BYE = b"B"  # a clean stop: the sender's end-of-file that follows is not a death
_DEAD = b"D"  # from rank 0: b"D" + rank (4 bytes): that rank died, end now

_state = None  # the running watchdog, or None


def enabled() -> bool:
    """Whether the watchdog is on: it is unless ``HPCNN_WATCHDOG`` is 0, off, no or false."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


def _say(text: str) -> None:
    """One line on stderr, written straight to the descriptor (another thread may hold the lock
    of ``sys.stderr``)."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError, RuntimeError):
        pass
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def _keepalive(sock: socket.socket) -> None:
    """Notice a peer whose node vanished (no FIN ever comes) within about 10 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 4), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _interface_addresses():
    """The IPv4 addresses of this host's interfaces (Linux ioctl), loopback left out."""
    import fcntl

    found = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
            except OSError:
                continue
            if not addr.startswith("127."):
                found.append(addr)
    return found


def _host_addresses():
    """Addresses of this host the other nodes may reach: its name's first, then its interfaces'."""
    addrs = []
    try:
        addrs = [a for a in socket.gethostbyname_ex(socket.gethostname())[2]
                 if not a.startswith("127.")]
    except OSError:
        pass
    return addrs + [a for a in _interface_addresses() if a not in addrs]


class _Watchdog:
    def __init__(self, rank: int, peers: dict):
        self.rank = rank
        self.peers = peers  # socket -> the peer's rank (rank 0: every other rank; else: {s: 0})
        self.lock = threading.Lock()
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()  # stop() wakes the thread through it
        self.thread = threading.Thread(target=self._watch, name="hpcnn-watchdog", daemon=True)

    # -- the watching thread

    def _watch(self):
        pending = {s: b"" for s in self.peers}
        while True:
            with self.lock:
                socks = list(self.peers)
            if not socks:
                return
            try:
                ready, _, _ = select.select(socks + [self.wake_r], [], [])
            except (OSError, ValueError):
                return  # closed by stop()
            if self.wake_r in ready:
                return
            for s in ready:
                try:
                    data = s.recv(4096)
                except OSError:  # reset by the peer's kernel (it died), or closed by stop()
                    data = b""
                with self.lock:
                    if self.stopping:
                        return
                    peer = self.peers.get(s)
                if peer is None:
                    continue
                buf = pending[s] + data
                if buf.startswith(_BYE):  # the peer is done: forget it, its EOF is not a death
                    with self.lock:
                        self.peers.pop(s, None)
                    s.close()
                    continue
                if buf.startswith(_DEAD):
                    if len(buf) < 5 and data:
                        pending[s] = buf
                        continue
                    dead = struct.unpack("!i", buf[1:5])[0] if len(buf) >= 5 else peer
                    self._end(dead)
                if not data:
                    self._end(peer)
                pending[s] = buf

    def _end(self, dead: int):
        """Peer ``dead`` died: say so, tell the others (rank 0), and end this process now."""
        _say(f"rank {self.rank}: peer rank {dead} died; ending the job")
        if self.rank == 0:
            msg = _DEAD + struct.pack("!i", dead)
            with self.lock:
                socks = list(self.peers)
            for s in socks:
                try:
                    s.sendall(msg)
                except OSError:
                    pass
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        os._exit(EXIT_STATUS)

    # -- stopping

    def stop(self):
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
            socks = list(self.peers)
            self.peers.clear()
        for s in socks:
            try:
                s.sendall(_BYE)
            except OSError:
                pass
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(2.0)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _listen(same_host: bool):
    """Rank 0's listening socket and the addresses the others should try, or (None, why)."""
    try:
        addrs = ["127.0.0.1"] if same_host else _host_addresses()
        if not addrs:
            return None, f"no address of this host ({socket.gethostname()}) but the loopback"
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.0.0.1" if same_host else "0.0.0.0", 0))
        srv.listen(128)
        return srv, (addrs, srv.getsockname()[1])
    except OSError as e:
        return None, f"cannot listen on a TCP port: {e}"


def _connect(addrs, port, rank):
    """Connect to rank 0 and say which rank this is: the socket, or (None, why)."""
    why = "no address"
    for addr in addrs:
        try:
            s = socket.create_connection((addr, port), timeout=CONNECT_TIMEOUT / len(addrs))
            s.settimeout(None)
            _keepalive(s)
            s.sendall(struct.pack("!i", rank))
            return s, None
        except OSError as e:
            why = f"cannot connect to rank 0 at {addr}:{port}: {e}"
    return None, why


def _accept_all(srv, n, got, errors):
    """Rank 0, in a thread: accept ``n`` connections, each naming its rank, into ``got``."""
    srv.settimeout(CONNECT_TIMEOUT)
    try:
        while len(got) < n:
            s, _ = srv.accept()
            s.settimeout(CONNECT_TIMEOUT)
            head = b""
            while len(head) < 4:
                part = s.recv(4 - len(head))
                if not part:
                    break
                head += part
            if len(head) < 4:
                s.close()
                continue
            s.settimeout(None)
            _keepalive(s)
            got[s] = struct.unpack("!i", head)[0]
    except OSError as e:
        errors.append(f"accepting the ranks' connections: {e}")


def start(comm):
    """Watch every other rank of ``comm`` for death; collective. Returns whether it runs.

    A no-op (False) with one rank, without ``comm``, when ``HPCNN_WATCHDOG=0``, or when it is
    already running. When it cannot be set up, rank 0 prints one ``warning:`` line saying why.
    """
    global _state
    if comm is None or comm.Get_size() == 1 or not enabled() or _state is not None:
        return False
    rank, size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    same_host = len(set(hosts)) == 1
    srv = info = None
    if rank == 0:
        srv, info = _listen(same_host)
    info = comm.bcast(info if srv is not None else ("fail", info), root=0)
    if info[0] == "fail":
        if rank == 0:
            _say(f"warning: peer watchdog off: {info[1]}; a rank that dies may leave the others "
                 "waiting until the time limit")
        return False
    peers, errors = {}, []
    if rank == 0:
        acceptor = threading.Thread(target=_accept_all, args=(srv, size - 1, peers, errors),
                                    daemon=True)
        acceptor.start()
        why = None
    else:
        s, why = _connect(info[0], info[1], rank)
        if s is not None:
            peers[s] = 0
    whys = comm.allgather(why)
    if rank == 0:
        if not any(whys):  # every rank connected: their connections wait in the backlog
            acceptor.join(CONNECT_TIMEOUT + 1)
            if acceptor.is_alive() or errors or sorted(peers.values()) != list(range(1, size)):
                whys[0] = errors[0] if errors else "not every rank connected to rank 0"
        srv.close()
    failed = [(r, w) for r, w in enumerate(whys) if w]
    ok = comm.bcast(not failed if rank == 0 else None, root=0)
    if not ok:
        if rank == 0:
            r, w = failed[0] if failed else (0, "set-up failed")
            _say(f"warning: peer watchdog off: rank {r}: {w}; a rank that dies may leave the "
                 "others waiting until the time limit")
        for s in peers:
            s.close()
        return False
    _state = _Watchdog(rank, peers)
    _state.thread.start()
    return True


def stop():
    """Stop watching, telling the peers this rank is done (so its exit is not a death).

    Call it on every rank after its last collective; safe to call twice or without ``start``.
    """
    global _state
    state, _state = _state, None
    if state is not None:
        state.stop()


def running() -> bool:
    """Whether the watchdog runs in this process."""
    return _state is not None


atexit.register(stop)
