"""TCP (L4) mode: pick a server, connect without blocking, relay both ways.

A session walks the balancer's candidate list through a ``dialer.Dialer``
(the same connect-and-retry rule as the HTTP modes): the first server is the
choice, each of the next ``retries`` ones is tried when a connect fails
(refused, unreachable, or no answer within ``timeouts.connect``). When no
candidate connects the client is closed with a reset, as nginx ``stream``
and HAProxy ``mode tcp`` do, and the failure is counted.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from fastproxy.modes.dialer import Dialer
from fastproxy.relay import Relay, set_reset
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.config import Listener
    from fastproxy.context import WorkerContext
    from fastproxy.upstream.runtime import UpstreamRuntime

log = logging.getLogger("fastproxy")


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

    __slots__ = ("mode", "ctx", "client", "addr", "upstream", "dialer", "relay", "started",
                 "closed", "initial")

    def __init__(self, mode: TcpMode, client: socket.socket, addr: tuple[str, int],
                 initial: bytes = b"") -> None:
        self.mode = mode
        self.initial = initial  # bytes read before the session (after a PROXY header)
        self.ctx = mode.ctx
        self.client = client
        self.addr = addr
        self.upstream: UpstreamRuntime = mode.upstream
        self.dialer: Dialer | None = None
        self.relay: Relay | None = None
        self.started = self.ctx.reactor.now
        self.closed = False

    def start(self) -> None:
        ctx = self.ctx
        ctx.session_opened(self)
        candidates = self.upstream.candidates(self.addr[0])
        if not candidates:
            ctx.c[C.upstream_no_server] += 1
            self._fail(503)
            return
        self.dialer = Dialer(ctx.reactor, ctx.slot, self.upstream, candidates,
                             self._connected, self._failed)
        try:
            self.dialer.next()
        except OSError:
            self.abort()

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's periodic sweep."""
        if self.relay is not None:
            if self.relay.idle_expired(now):
                self.ctx.c[C.idle_timeouts] += 1
                self.relay.close("idle")
        elif self.dialer is not None and not self.closed:
            try:
                self.dialer.check_timeout(now, self.mode.listener.timeouts.connect)
            except OSError:
                self.abort()

    def _connected(self, sock: socket.socket, server: int, registered_mask: int,
                   reused: bool) -> None:
        ctx = self.ctx
        self.relay = Relay(ctx.reactor, ctx.pool, ctx.c, self.client, sock,
                           self._on_relay_closed, self.mode.listener.timeouts.idle)
        self.relay.start(registered_mask, to_upstream=self.initial)

    def _failed(self, timed_out: bool) -> None:
        self._fail(502)

    # -- ending ------------------------------------------------------------------
    def _fail(self, status: int) -> None:
        set_reset(self.client)
        self.client.close()
        self._finish(status, 0, 0)

    def _on_relay_closed(self, relay: Relay, reason: str) -> None:
        self.relay = None  # no session<->relay cycle left for the GC
        assert self.dialer is not None
        self.upstream.session_closed(self.dialer.server, relay.up.moved, relay.down.moved)
        self._finish(200, relay.down.moved, relay.up.moved)

    def _finish(self, status: int, sent: int, received: int) -> None:
        if self.closed:
            return
        self.closed = True
        ctx = self.ctx
        duration = ctx.reactor.now - self.started
        ctx.slot.observe(H.session_seconds, duration)
        ctx.session_closed(self)
        if ctx.access.enabled:
            server = self.dialer.server if self.dialer is not None else -1
            upstream = self.upstream.names[server] if server >= 0 else ""
            ctx.access.tcp_session(self.addr[0], self.mode.listener.name, status, sent,
                                   received, upstream, duration)

    def drain(self) -> None:
        """The worker drains: a TCP session runs on until it ends or the deadline."""

    def abort(self) -> None:
        """Close at once (fast shutdown or drain deadline)."""
        if self.relay is not None:
            self.relay.close("error")
            return
        if self.dialer is not None:
            self.dialer.cancel()
        if not self.closed:
            self._fail(502)
