"""A worker process: one reactor serving the listening sockets of one slot.

Lifecycle (entered in the child right after fork, left through ``os._exit``
by the caller): set up signals and the error log, build one mode handler per
listener, report ready to the master on the status pipe, run the loop.

- QUIT, or EOF on the master's *alive* pipe (the master died): drain.
  Accept what is already queued on this slot's sockets, close them, finish
  the open sessions, exit; sessions still open after ``graceful_timeout``
  are closed.
- TERM: close every session and exit at once.
- USR1: reopen the access log.
- INT, HUP, TTIN, TTOU: ignored (they are the master's).

Accepting pauses at ``max_connections`` open sessions and for a moment after
EMFILE/ENFILE, instead of spinning on a socket it cannot serve.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import pwd
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fastproxy.config import Config, Listener, Upstream
from fastproxy.log import AccessLog, setup_error_log
from fastproxy.modes.preamble import Preamble
from fastproxy.reactor import EVENT_READ, Reactor, Timer
from fastproxy.relay import PipePool
from fastproxy.resolver import Resolver
from fastproxy.stats.shm import N_SERVER_COUNTERS, C, S, Segment, SlotState, SlotView
from fastproxy.upstream.balance import make_balancer
from fastproxy.upstream.parents import all_upstreams
from fastproxy.upstream.pool import IdlePool

log = logging.getLogger("fastproxy")

ACCEPT_BATCH = 64
ACCEPT_ERROR_PAUSE = 0.25
HEARTBEAT_INTERVAL = 1.0
# Connect and idle timeouts are checked by one sweep over the sessions this
# often, instead of one timer per connection (cheaper per connection; a
# timeout fires up to this much late).
SWEEP_INTERVAL = 0.25
LOG_FLUSH_INTERVAL = 0.2
PASSIVE_FAILS = 3
PASSIVE_DOWN_SECONDS = 10.0
USABLE_TTL = 0.1  # how stale a worker's view of health verdicts may get
_ACCEPT_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class WorkerSpec:
    """What the master hands a worker at fork time."""

    config: Config
    slot: int
    generation: int
    sockets: Sequence[tuple[Listener, socket.socket]]
    segment: Segment
    stats_index: int
    status_fd: int
    alive_fd: int
    server_indexes: dict[str, int]  # "upstream/address" -> shm server index
    pipe_cap: int
    pipe_size: int


class Session(Protocol):
    def abort(self) -> None: ...
    def check_timeouts(self, now: float) -> None: ...


class ModeHandler(Protocol):
    def accepted(self, sock: socket.socket, addr: tuple[str, int],
                 initial: bytes = b"") -> None: ...


class UpstreamRuntime:
    """One upstream pool as a worker sees it: addresses, balancer, passive
    health (``PASSIVE_FAILS`` failed connects in a row keep a server out of
    rotation for ``PASSIVE_DOWN_SECONDS``) and per-server counters."""

    def __init__(self, config: Upstream, ctx: WorkerContext, shm_indexes: list[int]) -> None:
        self.config = config
        self.ctx = ctx
        self.names = [str(s.address) for s in config.servers]
        self.sockaddrs = [_resolve(s.address.host, s.address.port) for s in config.servers]
        self.shm = shm_indexes
        n = len(config.servers)
        self.active = [0] * n
        self.fails = [0] * n
        self.down_until = [0.0] * n
        self._checked: list[bool] = []
        self.marked_at = [0.0] * len(config.servers)  # unix time of each passive mark
        self._usable: list[bool] = []
        self._single = n == 1
        self._usable_until = 0.0
        self.balancer = make_balancer(config.balance,
                                      [(name, s.weight) for name, s in zip(self.names, config.servers)],
                                      active=self.active)

    def candidates(self, client_ip: str) -> list[int]:
        now = self.ctx.reactor.now
        if now >= self._usable_until:
            self._refresh_usable(now)
        if self._single:  # every balancer picks the one server when it may
            return [0] if self._usable[0] or self._checked[0] else []
        found = self.balancer.candidates(client_ip, self._usable)
        if not found:  # every server passively marked: try them anyway, as nginx does
            found = self.balancer.candidates(client_ip, self._checked)
        return found

    def _refresh_usable(self, now: float) -> None:
        """Re-read the health verdicts (shared memory) and passive marks; at
        most every USABLE_TTL, and at once after a passive mark changes."""
        segment = self.ctx.segment
        verdicts = [segment.server_health(i) for i in self.shm]
        for i, verdict in enumerate(verdicts):
            # An active check that saw the server (come back) up after it was
            # passively marked overrules the mark.
            if (self.down_until[i] > now and verdict == 1
                    and segment.server_health_since(self.shm[i]) > self.marked_at[i]):
                self.down_until[i] = 0.0
                self.fails[i] = 0
        self._checked = [v != 2 for v in verdicts]
        self._usable = [ok and until <= now for ok, until in zip(self._checked, self.down_until)]
        marks = [until for until in self.down_until if until > now]
        self._usable_until = min([now + USABLE_TTL, *marks])

    def _server(self, i: int, counter: int) -> int:
        return self.shm[i] * N_SERVER_COUNTERS + counter

    def record_failure(self, i: int) -> None:
        self.ctx.slot.servers[self._server(i, S.failures)] += 1
        self.fails[i] += 1
        if self.fails[i] >= PASSIVE_FAILS:
            self.down_until[i] = self.ctx.reactor.now + PASSIVE_DOWN_SECONDS
            self.marked_at[i] = time.time()
            self._usable_until = 0.0

    def record_success(self, i: int) -> None:
        self.fails[i] = 0
        if self.down_until[i]:
            self.down_until[i] = 0.0
            self._usable_until = 0.0
        self.active[i] += 1
        servers = self.ctx.slot.servers
        servers[self._server(i, S.sessions)] += 1
        servers[self._server(i, S.active)] += 1

    def session_closed(self, i: int, sent: int, received: int) -> None:
        self.active[i] -= 1
        servers = self.ctx.slot.servers
        servers[self._server(i, S.active)] -= 1
        servers[self._server(i, S.bytes_sent)] += sent
        servers[self._server(i, S.bytes_received)] += received


def _resolve(host: str, port: int) -> tuple[tuple[str, int], int]:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sockaddr = info[4]
    return (str(sockaddr[0]), int(sockaddr[1])), int(info[0])


class WorkerContext:
    """What every mode handler and session of a worker shares."""

    def __init__(self, worker: Worker, spec: WorkerSpec) -> None:
        self.worker = worker
        self.reactor = worker.reactor
        self.config = spec.config
        self.segment = spec.segment
        self.slot: SlotView = spec.segment.slot_view(spec.stats_index)
        self.c = self.slot.c
        self.pool = PipePool(spec.pipe_cap, spec.pipe_size, self.c)
        self.idle = IdlePool(self.reactor)
        self.resolver: Resolver | None = None  # made by the first forward listener
        self.access = AccessLog(spec.config.log)
        self.sessions: set[Session] = set()
        self.upstreams = {
            up.name: UpstreamRuntime(up, self, [spec.server_indexes[f"{up.name}/{s.address}"]
                                                for s in up.servers])
            for up in all_upstreams(spec.config).values()
        }

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.c[C.conn_active] = len(self.sessions)

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.c[C.conn_active] = len(self.sessions)
        self.c[C.conn_closed] += 1
        self.worker.session_ended()


class Acceptor:
    """Accepts on one listening socket and hands connections to a mode."""

    def __init__(self, worker: Worker, sock: socket.socket, handler: ModeHandler,
                 listener: Listener) -> None:
        self.worker = worker
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.active = False
        # What an accepted socket is wrapped with (see accept_batch).
        self._wrap = (int(sock.family), socket.SOCK_STREAM, sock.proto)

    def resume(self) -> None:
        if not self.active and self.fd >= 0:
            self.worker.reactor.register(self.fd, EVENT_READ, self._on_readable)
            self.active = True

    def pause(self) -> None:
        if self.active:
            self.worker.reactor.unregister(self.fd)
            self.active = False

    def _on_readable(self, _mask: int) -> None:
        self.accept_batch(ACCEPT_BATCH)

    def accept_batch(self, limit: int) -> int:
        """Accept up to ``limit`` connections; returns how many."""
        worker = self.worker
        c = worker.ctx.c
        accepted = 0
        while accepted < limit:
            if worker.at_capacity():
                worker.pause_accepting()
                break
            try:
                # socket.accept() minus its Python-level extras (enum
                # conversions of family and type, timeout checks): the same
                # accept4 call, wrapped with the listener's numbers.
                fd, addr = self.sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    c[C.accept_errors] += 1
                    worker.pause_accepting(ACCEPT_ERROR_PAUSE)
                    break
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            accepted += 1
            c[C.conn_accepted] += 1
            try:
                conn = socket.socket(*self._wrap, fd)
            except OSError:
                os.close(fd)  # not wrapped: nothing else owns it
                c[C.internal_errors] += 1
                continue
            try:
                conn.setblocking(False)  # TCP_NODELAY is inherited from the listener
                if self.listener.proxy_protocol:
                    Preamble(worker.ctx, self.handler, conn, addr,
                             self.listener.timeouts.client_header).start()
                else:
                    self.handler.accepted(conn, addr)
            except Exception:
                log.exception("error starting a session")
                c[C.internal_errors] += 1
                conn.close()
        return accepted

    def close(self) -> None:
        self.pause()
        self.sock.close()
        self.fd = -1


def _drop_privileges(user: str) -> None:
    """Become ``user`` (its group, no supplementary groups) for good.

    The master keeps its identity (it binds new listen addresses on reload,
    as nginx's does); a worker drops right after opening its access log, so
    a log directory writable only by root still works, and USR1 reopens the
    file as ``user`` (the directory must then be writable by it).
    """
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise PermissionError(f"could not drop privileges to {user!r}")


def _tune_gc() -> None:
    """Keep the cyclic GC off the per-connection path.

    Sessions are freed by reference counting (they hold no cycles), yet each
    one allocates enough objects to trigger generation-0 collections, which
    also age and rescan every long-lived object. Freezing what startup built
    and collecting less often cut the new-connection cost by about a fifth
    (bench/RESULTS.md); anything cyclic is still collected, just in bigger
    batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class Worker:
    """Methods for the caller: ``run() -> exit code`` (in the child only)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.reactor = Reactor()
        self.ctx: WorkerContext
        self.acceptors: list[Acceptor] = []
        self.draining = False
        self._accept_paused = False
        self._resume_timer: Timer | None = None
        self._max_connections = spec.config.server.max_connections

    # -- running -------------------------------------------------------------
    def run(self) -> int:
        spec = self.spec
        setup_error_log(spec.config.log, f"worker {spec.slot}")
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        self.reactor.handle_signals({
            signal.SIGTERM: self.stop_now,
            signal.SIGQUIT: self.drain,
            signal.SIGUSR1: self._reopen_logs,
        })
        self.reactor.on_error = self._on_loop_error
        self.ctx = WorkerContext(self, spec)  # opens the access log, still privileged
        if spec.config.server.user:
            _drop_privileges(spec.config.server.user)
        self._build_acceptors()
        self.reactor.register(spec.alive_fd, EVENT_READ, self._on_alive_pipe)
        _tune_gc()
        self._heartbeat()
        self._flush_logs()
        self._sweep()
        if os.getppid() != spec.segment.master_pid():
            self.drain()  # the master died before we got here
        os.write(spec.status_fd, b"R")
        self.reactor.run()
        self.ctx.idle.close()
        if self.ctx.resolver is not None:
            self.ctx.resolver.close()
        self.ctx.pool.close()
        self.ctx.access.close()
        return 0

    def _build_acceptors(self) -> None:
        from fastproxy.modes.forward import ForwardMode
        from fastproxy.modes.reverse import HttpMode
        from fastproxy.modes.tcp import TcpMode

        for listener, sock in self.spec.sockets:
            if listener.mode == "tcp":
                handler: ModeHandler = TcpMode(self.ctx, listener)
            elif listener.mode == "http":
                handler = HttpMode(self.ctx, listener)
            elif listener.mode == "forward":
                handler = ForwardMode(self.ctx, listener)
            else:
                raise NotImplementedError(f"mode {listener.mode!r} is not available yet")
            acceptor = Acceptor(self, sock, handler, listener)
            self.acceptors.append(acceptor)
            acceptor.resume()

    def _on_loop_error(self, exc: BaseException) -> None:
        self.ctx.c[C.internal_errors] += 1

    # -- accepting ------------------------------------------------------------------
    def at_capacity(self) -> bool:
        return len(self.ctx.sessions) >= self._max_connections

    def pause_accepting(self, seconds: float | None = None) -> None:
        if not self._accept_paused:
            self.ctx.c[C.accept_paused] += 1
        self._accept_paused = True
        for acceptor in self.acceptors:
            acceptor.pause()
        if seconds is not None and self._resume_timer is None:
            self._resume_timer = self.reactor.call_later(seconds, self._resume_after_error)

    def _resume_after_error(self) -> None:
        self._resume_timer = None
        self._resume_accepting()

    def _resume_accepting(self) -> None:
        if self.draining or not self._accept_paused or self.at_capacity():
            return
        if self._resume_timer is not None:
            return
        self._accept_paused = False
        for acceptor in self.acceptors:
            acceptor.resume()

    def session_ended(self) -> None:
        if self._accept_paused:
            self._resume_accepting()
        if self.draining and not self.ctx.sessions:
            self.reactor.stop()

    # -- stopping ----------------------------------------------------------------------
    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.ctx.slot.set_state(SlotState.DRAINING)
        for acceptor in self.acceptors:
            # Take what the kernel already queued for this slot before closing.
            while acceptor.accept_batch(ACCEPT_BATCH) == ACCEPT_BATCH:
                pass
            acceptor.close()
        self.reactor.call_later(self.spec.config.server.graceful_timeout, self.stop_now)
        if not self.ctx.sessions:
            self.reactor.stop()

    def stop_now(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        for session in list(self.ctx.sessions):
            session.abort()
        self.reactor.stop()

    def _on_alive_pipe(self, _mask: int) -> None:
        try:
            data = os.read(self.spec.alive_fd, 64)
        except BlockingIOError:
            return
        if not data:
            self.reactor.unregister(self.spec.alive_fd)
            log.warning("master is gone: draining and exiting")
            self.drain()

    # -- periodic ---------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self.ctx.slot.heartbeat(time.time())
        self.reactor.call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _sweep(self) -> None:
        now = self.reactor.now
        for session in list(self.ctx.sessions):
            session.check_timeouts(now)
        self.ctx.idle.expire(now)
        self.reactor.call_later(SWEEP_INTERVAL, self._sweep)

    def _flush_logs(self) -> None:
        self.ctx.access.flush()
        self.reactor.call_later(LOG_FLUSH_INTERVAL, self._flush_logs)

    def _reopen_logs(self) -> None:
        self.ctx.access.flush()
        self.ctx.access.reopen()
