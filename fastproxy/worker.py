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
import resource
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastproxy.acl import AddressSet
from fastproxy.config import Config, Listener, ServerSection
from fastproxy.context import ModeHandler, Session, WorkerContext
from fastproxy.log import setup_error_log
from fastproxy.modes.forward import ForwardMode
from fastproxy.modes.preamble import Preamble
from fastproxy.modes.reverse import ReverseMode
from fastproxy.modes.tcp import TcpMode
from fastproxy.reactor import EVENT_READ, Reactor, Timer
from fastproxy.service import tell_status
from fastproxy.stats.shm import C, Segment, SlotState

log = logging.getLogger("fastproxy")

ACCEPT_BATCH = 64
ACCEPT_ERROR_PAUSE = 0.25
HEARTBEAT_INTERVAL = 1.0
# Connect and idle timeouts are checked by one sweep over the sessions this
# often, instead of one timer per connection (cheaper per connection; a
# timeout fires up to this much late).
SWEEP_INTERVAL = 0.25
LOG_FLUSH_INTERVAL = 0.2
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
        self._proxy_senders = (AddressSet(listener.proxy_protocol_from)
                               if listener.proxy_protocol else None)

    def resume(self) -> None:
        if not self.active and self.fd >= 0:
            self.worker.reactor.register(self.fd, EVENT_READ, self._on_readable)
            self.active = True

    def pause(self) -> None:
        if self.active:
            self.worker.reactor.unregister(self.fd)
            self.active = False

    def _on_readable(self, _mask: int) -> None:
        if self.active:   # not an event polled before this pass paused or closed it
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
                senders = self._proxy_senders
                if senders is None:
                    self.handler.accepted(conn, addr)
                elif addr[0] not in senders:
                    Preamble.refuse(worker.ctx, conn)
                else:
                    Preamble(worker.ctx, self.handler, conn, addr,
                             self.listener.timeouts.client_header).start()
            except Exception:
                log.exception("error starting a session")
                c[C.internal_errors] += 1
                conn.close()
        return accepted

    def close(self) -> None:
        self.pause()
        self.sock.close()
        self.fd = -1


FDS_RESERVED = 64   # listeners, logs, the resolver's pipe, health and admin sockets, slack


def set_descriptor_limit(server: ServerSection, pipe_cap: int) -> None:
    """Set this worker's soft descriptor limit: ``server.rlimit_nofile``, or
    (0) as far as ``max_connections`` needs, up to the hard limit. A connection
    may take two descriptors (client and upstream), a splice pipe two, and
    FDS_RESERVED stay free; a limit that cannot hold ``max_connections`` is
    logged (as nginx warns about worker_connections). Running out anyway
    pauses accepting (``Acceptor.accept_batch``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * server.max_connections + 2 * pipe_cap + FDS_RESERVED
    target = server.rlimit_nofile or max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot set the descriptor limit to %d: %s", target, exc)
    fits = max(0, (soft - 2 * pipe_cap - FDS_RESERVED) // 2)
    if fits < server.max_connections:
        log.warning("descriptor limit %d holds %d proxied connections, not max_connections = "
                    "%d; raise the hard limit (LimitNOFILE=, ulimit -Hn) or server.rlimit_nofile",
                    soft, fits, server.max_connections)


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
        set_descriptor_limit(spec.config.server, spec.pipe_cap)
        # Opens the access log, still privileged.
        self.ctx = WorkerContext(self.reactor, spec.config, spec.segment, spec.stats_index,
                                 spec.server_indexes, spec.pipe_cap, spec.pipe_size,
                                 self.session_ended)
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
        tell_status(spec.status_fd)
        self.reactor.run()
        self.ctx.close()
        return 0

    def _build_acceptors(self) -> None:
        for listener, sock in self.spec.sockets:
            if listener.mode == "tcp":
                handler: ModeHandler = TcpMode(self.ctx, listener)
            elif listener.mode == "http":
                handler = ReverseMode(self.ctx, listener)
            elif listener.mode == "forward":
                handler = ForwardMode(self.ctx, listener)
            else:
                raise NotImplementedError(f"mode {listener.mode!r} is not available yet")
            acceptor = Acceptor(self, sock, handler, listener)
            self.acceptors.append(acceptor)
            acceptor.resume()

    def _on_loop_error(self, _exc: BaseException, callback: Callable[..., Any]) -> None:
        """A callback raised (the reactor logged it): count it and abort what
        it belongs to, a session or a relay (whose end closes its session),
        so that no descriptor of it stays open; the loop goes on."""
        self.ctx.c[C.internal_errors] += 1
        owner = Reactor.owner_of(callback)
        if owner is not None and hasattr(owner, "abort"):
            self._abort_quietly(owner)  # type: ignore[arg-type]

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
        self.draining = self.ctx.draining = True
        self.ctx.slot.set_state(SlotState.DRAINING)
        for acceptor in self.acceptors:
            # Take what the kernel already queued for this slot before closing.
            while acceptor.accept_batch(ACCEPT_BATCH) == ACCEPT_BATCH:
                pass
            acceptor.close()
        self.reactor.call_later(self.spec.config.server.graceful_timeout, self.stop_now)
        for session in list(self.ctx.sessions):
            try:
                session.drain()
            except Exception:
                log.exception("draining a session failed; the session is closed")
                self._abort_quietly(session)
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
        """Timeouts of every session, then idle-pool expiry; re-armed first, so
        that nothing a session raises (EMFILE from a retry's socket(), a bug)
        ends the timeouts of the whole worker: that session is aborted, the
        sweep goes on."""
        self.reactor.call_later(SWEEP_INTERVAL, self._sweep)
        now = self.reactor.now
        for session in list(self.ctx.sessions):
            try:
                session.check_timeouts(now)
            except Exception:
                log.exception("timeout check failed; the session is closed")
                self.ctx.c[C.internal_errors] += 1
                self._abort_quietly(session)
        self.ctx.idle.expire(now)

    def _abort_quietly(self, session: Session) -> None:
        try:
            session.abort()
        except Exception:
            log.exception("closing a failed session failed")
        if session in self.ctx.sessions:  # it could not say so itself
            self.ctx.session_closed(session)

    def _flush_logs(self) -> None:
        self.ctx.access.flush()
        self.reactor.call_later(LOG_FLUSH_INTERVAL, self._flush_logs)

    def _reopen_logs(self) -> None:
        self.ctx.access.flush()
        self.ctx.access.reopen()
