"""Active health checks of upstream servers, run by the master, verdicts in shm.

Theory of operation
-------------------
Checks run once per host, in the master. Per-worker checks would cost N
workers x S servers probes per interval, and the workers could disagree. The
master probes each server on its reactor without blocking and writes the
verdict to the segment's server table (``Segment.set_server_health``).
Workers read it with one memory load per pick and skip DOWN servers.

1. ``HealthState`` is pure, and ``_TRANSITIONS`` is its table. A server
   starts UNKNOWN, which workers treat as usable. UNKNOWN goes UP on one
   success. UP or UNKNOWN goes DOWN after ``fall`` failures in a row. DOWN
   goes UP after ``rise`` successes in a row.
2. A probe (``_Server._start``) is a non-blocking connect that passes when the
   socket is writable with SO_ERROR 0 (connect(2), EINPROGRESS). With ``path``,
   it then sends ``GET path`` (Connection: close) and reads up to the status
   line, ``MAX_STATUS_READ`` bytes at most; 2xx and 3xx pass. The whole probe
   must finish within ``timeout``. Its socket is closed on every path
   (verdict, timeout, stop, exception: ``_guard``).
3. The first check of a server comes after a random delay within
   ``interval``, so that servers do not fire together. Then one check is due
   every ``interval``, and a probe still running at that time is not doubled.
4. ``configure`` (start and every reload) resolves names with a blocking
   ``getaddrinfo``, as workers do. A failed resolution fails every check
   until the next reload. Servers whose "upstream/address" stays keep their
   state. Removed servers stop. Servers of upstreams without ``health`` are
   written as UNKNOWN.
5. After fork, the child calls ``detach()``: it closes the inherited probe
   sockets (else they outlive the master's close) without touching epoll.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping

from fastproxy.config import Address, Upstream
from fastproxy.config import Health as HealthConfig
from fastproxy.errors import ProtocolError
from fastproxy.http.framing import status_line
from fastproxy.reactor import EVENT_READ, EVENT_WRITE, Reactor, Timer
from fastproxy.stats.shm import Health, Segment

log = logging.getLogger("fastproxy")

MAX_STATUS_READ = 4096          # bytes read from an HTTP check's response, at most


class HealthState:
    """Rise/fall counters of one server. Pure: ``record(ok, now) -> changed``. ``fails``
    and ``successes`` count the current run of equal results (one of them is 0)."""

    __slots__ = ("changed_at", "fails", "fall", "health", "rise", "successes")

    def __init__(self, rise: int, fall: int) -> None:
        self.rise, self.fall = rise, fall
        self.health = Health.UNKNOWN
        self.fails = self.successes = 0
        self.changed_at = 0.0

    def record(self, ok: bool, now: float) -> bool:
        """Count one check result. Returns True if ``health`` changed."""
        if ok:
            self.successes, self.fails = self.successes + 1, 0
        else:
            self.fails, self.successes = self.fails + 1, 0
        rule = _TRANSITIONS.get((self.health, ok))
        if rule is None or (self.successes or self.fails) < rule[1](self):
            return False
        self.health, self.changed_at = rule[0], now
        return True


# (state, check ok) -> (next state, run length needed); absent pairs change nothing.
_TRANSITIONS: dict[tuple[Health, bool], tuple[Health, Callable[[HealthState], int]]] = {
    (Health.UNKNOWN, True): (Health.UP, lambda s: 1),
    (Health.UNKNOWN, False): (Health.DOWN, lambda s: s.fall),
    (Health.UP, False): (Health.DOWN, lambda s: s.fall),
    (Health.DOWN, True): (Health.UP, lambda s: s.rise),
}


Target = tuple[int, tuple[object, ...]] | str     # (family, sockaddr), or why it is unusable


class _Server:
    """One checked server: its schedule, its probe (at most one in flight), its
    state. The probe's verdict goes to ``verdict(server, ok, reason)``."""

    def __init__(self, reactor: Reactor, name: str, index: int, config: HealthConfig,
                 verdict: Callable[[_Server, bool, str], None]) -> None:
        self.reactor = reactor
        self.name = name                # "upstream app server 127.0.0.1:9000"
        self.index = index
        self.config = config
        self.verdict = verdict
        self.state = HealthState(config.rise, config.fall)
        self.target: Target = "not resolved"
        self.request = b""              # b"" = TCP connect check
        self.timer: Timer | None = None
        self.deadline: Timer | None = None  # set while a probe is in flight
        self.sock: socket.socket | None = None
        self.unsent, self.buf = b"", bytearray()    # the probe's request left, response read

    def schedule(self, delay: float) -> None:
        self.timer = self.reactor.call_later(delay, self._tick)

    def _tick(self) -> None:
        self.schedule(self.config.interval)
        if self.deadline is None:       # rule 3: a probe still running is not doubled
            self._start()

    def _start(self) -> None:
        if isinstance(self.target, str):
            self.verdict(self, False, self.target)
            return
        self.deadline = self.reactor.call_later(self.config.timeout, self._expired)
        self.unsent, self.buf = self.request, bytearray()
        try:
            self.sock = socket.socket(self.target[0], socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            err = self.sock.connect_ex(self.target[1])
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, "")
        except OSError as exc:
            self._finish(False, _reason(exc))
            return
        self.reactor.register(self.sock.fileno(), EVENT_WRITE, self._guard(self._on_connect))

    def _guard(self, step: Callable[[socket.socket], None]) -> Callable[[int], None]:
        """Wrap an I/O step: any error gives a verdict and closes the socket."""
        def callback(_mask: int) -> None:
            if self.sock is None:       # stopped earlier in this reactor pass
                return
            try:
                step(self.sock)
            except OSError as exc:
                self._finish(False, _reason(exc))
            except BaseException:
                self._finish(False, "internal error")
                raise
        return callback

    def _on_connect(self, sock: socket.socket) -> None:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, "")
        if not self.unsent:
            self._finish(True, "connected")
        else:
            self.reactor.modify(sock.fileno(), EVENT_WRITE, self._guard(self._on_writable))

    def _on_writable(self, sock: socket.socket) -> None:
        self.unsent = self.unsent[sock.send(self.unsent):]
        if not self.unsent:
            self.reactor.modify(sock.fileno(), EVENT_READ, self._guard(self._on_readable))

    def _on_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(MAX_STATUS_READ - len(self.buf))
        except BlockingIOError:
            return
        self.buf += data
        end = self.buf.find(b"\r\n")
        if end >= 0:
            try:
                status = status_line(bytes(self.buf[:end]))[1]
            except ProtocolError:
                self._finish(False, "malformed status line")
                return
            self._finish(200 <= status < 400, f"HTTP status {status}")
        elif not data:
            self._finish(False, "connection closed before the status line")
        elif len(self.buf) >= MAX_STATUS_READ:
            self._finish(False, f"no status line in {MAX_STATUS_READ} bytes")

    def _expired(self) -> None:
        self._finish(False, f"timed out after {self.config.timeout:g}s")

    def _finish(self, ok: bool, reason: str) -> None:
        self._close_probe()
        self.verdict(self, ok, reason)

    def _close_probe(self, forked: bool = False) -> None:
        """Cancel the deadline, close the socket. ``forked``: leave the shared selector alone."""
        if self.deadline is not None and not forked:
            self.deadline.cancel()
        self.deadline = None
        if self.sock is not None:
            fd = self.sock.fileno()
            if not forked and self.reactor.is_registered(fd):
                self.reactor.unregister(fd)
            self.sock.close()
            self.sock = None

    def stop(self, forked: bool = False) -> None:
        """Stop checking: no more ticks, no verdict for the probe in flight."""
        if self.timer is not None and not forked:
            self.timer.cancel()
        self.timer = None
        self._close_probe(forked)


def _reason(exc: OSError) -> str:
    """ "connection refused" rather than "[Errno 111] Connection refused"."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc) or type(exc).__name__


class HealthChecker:
    """Checks of every upstream with ``health``, run on the master's reactor.

    Methods for the caller: ``configure(upstreams, server_indexes)`` at start and
    after every reload, ``close()`` at shutdown, ``detach()`` in a forked child;
    ``states``: "upstream/address" -> ``HealthState`` (read-only). ``clock`` is the
    wall time written to the segment. Raises nothing: a failure is a verdict.
    """

    def __init__(self, reactor: Reactor, segment: Segment,
                 clock: Callable[[], float] = time.time) -> None:
        self.reactor, self.segment, self.clock = reactor, segment, clock
        self._servers: dict[str, _Server] = {}

    @property
    def states(self) -> dict[str, HealthState]:
        return {key: server.state for key, server in self._servers.items()}

    def configure(self, upstreams: Mapping[str, Upstream],
                  server_indexes: Mapping[str, int]) -> None:
        """Check the servers of upstreams that have ``health`` (rule 4). ``server_indexes``:
        "upstream/address" -> segment server index; servers missing from it are skipped."""
        wanted: dict[str, tuple[str, Address, int, HealthConfig]] = {}
        for up in upstreams.values():
            for entry in up.servers:
                key = f"{up.name}/{entry.address}"
                index = server_indexes.get(key)
                if index is None:
                    continue
                if up.health is None:
                    self.segment.set_server_health(index, Health.UNKNOWN, self.clock())
                else:
                    wanted[key] = (up.name, entry.address, index, up.health)
        for key in self._servers.keys() - wanted.keys():
            self._servers.pop(key).stop()
        for key, (upstream, address, index, config) in wanted.items():
            self._apply(key, upstream, address, index, config)

    def _apply(self, key: str, upstream: str, address: Address, index: int,
               config: HealthConfig) -> None:
        """Add the server ``key``, or update it in place and keep its state."""
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server(
                self.reactor, f"upstream {upstream} server {address}", index, config, self._verdict)
            self.segment.set_server_health(index, Health.UNKNOWN, self.clock())
        elif server.config.interval != config.interval:
            server.stop()
        server.index, server.config = index, config
        server.state.rise, server.state.fall = config.rise, config.fall
        try:                                 # rule 4: blocking, once per configure
            info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
            server.target = info[0], tuple(info[4])
        except (OSError, UnicodeError) as exc:
            server.target = f"cannot resolve {address.host}: {exc}"
        server.request = b"" if config.path is None else (
            f"GET {config.path} HTTP/1.1\r\nHost: {address}\r\n"
            "User-Agent: fastproxy-health\r\nConnection: close\r\n\r\n").encode("latin-1")
        if server.timer is None:
            server.schedule(random.uniform(0.0, config.interval))   # rule 3: jitter

    def _verdict(self, server: _Server, ok: bool, reason: str) -> None:
        state, now = server.state, self.clock()
        before = state.health
        changed = state.record(ok, now)
        self.segment.set_server_health(server.index, state.health, now,
                                       state.fails, state.successes)
        if not changed:
            return
        if state.health is Health.DOWN:
            log.warning("%s is DOWN (%d failed checks: %s)", server.name, state.fails, reason)
        else:  # a new server's first UP is routine; a recovery is news
            log.log(logging.INFO if before is Health.UNKNOWN else logging.WARNING,
                    "%s is UP (%d successful checks)", server.name, state.successes)

    def close(self) -> None:
        """Stop every check: cancel the timers, close the sockets."""
        for server in self._servers.values():
            server.stop()
        self._servers.clear()

    def detach(self) -> None:
        """In a forked child: close inherited probe sockets, leave the selector alone."""
        for server in self._servers.values():
            server.stop(forked=True)
        self._servers.clear()
