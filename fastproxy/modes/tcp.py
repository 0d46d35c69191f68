"""TCP (L4) mode: pick a server, connect without blocking, relay both ways.

A session walks the balancer's candidate list: the first server is the
choice, each of the next ``retries`` ones is tried when a connect fails
(refused, unreachable, or no answer within ``timeouts.connect``). When no
candidate connects the client is closed with a reset, as nginx ``stream``
and HAProxy ``mode tcp`` do, and the failure is counted.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

from fastproxy.reactor import EVENT_WRITE
from fastproxy.relay import Relay, set_reset
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.config import Listener
    from fastproxy.worker import UpstreamRuntime, WorkerContext

log = logging.getLogger("fastproxy")

_HIST_SESSION = H.session_seconds
_HIST_CONNECT = H.upstream_connect_seconds


class TcpMode:
    """Per-listener handler: ``accepted(sock, addr)`` starts a session."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        self.ctx = ctx
        self.listener = listener
        assert listener.upstream is not None
        self.upstream = ctx.upstreams[listener.upstream]

    def accepted(self, sock: socket.socket, addr: tuple[str, int], initial: bytes = b"") -> None:
        TcpSession(self, sock, addr, initial).start()


class TcpSession:
    """One client connection: connecting, then relaying, then closed."""

    __slots__ = ("mode", "ctx", "client", "addr", "upstream", "candidates", "attempts",
                 "server", "conn", "relay", "started", "connect_started", "closed", "initial")

    def __init__(self, mode: TcpMode, client: socket.socket, addr: tuple[str, int],
                 initial: bytes = b"") -> None:
        self.mode = mode
        self.initial = initial  # bytes read before the session (after a PROXY header)
        self.ctx = mode.ctx
        self.client = client
        self.addr = addr
        self.upstream: UpstreamRuntime = mode.upstream
        self.candidates: list[int] = []
        self.attempts = 0
        self.server = -1
        self.conn: socket.socket | None = None
        self.relay: Relay | None = None
        self.started = self.ctx.reactor.now
        self.connect_started = 0.0
        self.closed = False

    def start(self) -> None:
        self.ctx.session_opened(self)
        self.candidates = self.upstream.candidates(self.addr[0])
        if not self.candidates:
            self.ctx.c[C.upstream_no_server] += 1
            self._fail(503)
            return
        self._connect_next()

    # -- connecting ------------------------------------------------------------
    def _connect_next(self) -> None:
        limit = 1 + self.upstream.config.retries
        if self.attempts >= limit or self.attempts >= len(self.candidates):
            self._fail(502)
            return
        if self.attempts:
            self.ctx.c[C.upstream_retries] += 1
        self.server = self.candidates[self.attempts]
        self.attempts += 1
        sockaddr, family = self.upstream.sockaddrs[self.server]
        conn = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        self.connect_started = self.ctx.reactor.now
        err = conn.connect_ex(sockaddr)
        if err == errno.EINPROGRESS:
            reactor = self.ctx.reactor
            reactor.register(conn.fileno(), EVENT_WRITE, self._on_connect_event)
        elif err == 0:
            self._connected(0)
        else:
            self._connect_failed(C.upstream_connect_errors)

    def _on_connect_event(self, _mask: int) -> None:
        assert self.conn is not None
        err = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.ctx.reactor.forget(self.conn.fileno())  # closed just after
            self._connect_failed(C.upstream_connect_errors)
        else:
            self._connected(EVENT_WRITE)  # still registered: the relay modifies it

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's periodic sweep."""
        if self.relay is not None:
            if self.relay.idle_expired(now):
                self.ctx.c[C.idle_timeouts] += 1
                self.relay.close("idle")
        elif self.conn is not None and now - self.connect_started >= self.mode.listener.timeouts.connect:
            self._on_connect_timeout()

    def _on_connect_timeout(self) -> None:
        if self.conn is not None:
            self.ctx.reactor.forget(self.conn.fileno())  # closed just after
            self._connect_failed(C.upstream_connect_timeouts)

    def _connect_failed(self, counter: int) -> None:
        self.ctx.c[counter] += 1
        self.upstream.record_failure(self.server)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self._connect_next()

    def _connected(self, registered_mask: int) -> None:
        assert self.conn is not None
        ctx = self.ctx
        ctx.slot.observe(_HIST_CONNECT, ctx.reactor.now - self.connect_started)
        self.upstream.record_success(self.server)
        self.relay = Relay(ctx.reactor, ctx.pool, ctx.c, self.client, self.conn,
                           self._on_relay_closed, self.mode.listener.timeouts.idle)
        self.conn = None  # owned by the relay now
        self.relay.start(registered_mask, to_upstream=self.initial)

    # -- ending ------------------------------------------------------------------
    def _fail(self, status: int) -> None:
        set_reset(self.client)
        self.client.close()
        self._finish(status, 0, 0)

    def _on_relay_closed(self, relay: Relay, reason: str) -> None:
        self.relay = None  # no session<->relay cycle left for the GC
        self.upstream.session_closed(self.server, relay.up.moved, relay.down.moved)
        self._finish(200, relay.down.moved, relay.up.moved)

    def _finish(self, status: int, sent: int, received: int) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        duration = ctx.reactor.now - self.started
        ctx.slot.observe(_HIST_SESSION, duration)
        ctx.session_closed(self)
        if ctx.access.enabled:
            upstream = self.upstream.names[self.server] if self.server >= 0 else ""
            ctx.access.tcp_session(self.addr[0], self.mode.listener.name, status, sent,
                                   received, upstream, duration)

    def abort(self) -> None:
        """Close at once (fast shutdown or drain deadline)."""
        if self.relay is not None:
            self.relay.close("error")
            return
        if self.conn is not None:
            self.ctx.reactor.forget(self.conn.fileno())
            self.conn.close()
            self.conn = None
        self._fail(502)
