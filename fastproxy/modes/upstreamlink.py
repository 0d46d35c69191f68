"""The upstream side of an HTTP session: choosing and opening the upstream
connection, retrying, and keeping connections for reuse (attached to the
session between a client's requests, or in the worker's idle pool).

``UpstreamLink`` is a mixin of ``reverse.HttpSession`` (and so of the forward
mode's session); it is a module of its own to keep the session's event and
parsing logic and this connection bookkeeping each readable in one file. The
attributes and methods it relies on are declared below; the session defines
them.

Rules:

1. A connection is counted ``active`` for its server from the moment it is
   connected (or taken for reuse) until it is parked, pooled or closed:
   ``_uncount_active`` is the one place that ends it.
2. Reuse in order: the connection attached to this session (same upstream
   object and server), then the pool's most recent one, then a new connect.
3. An idempotent request without a body whose connection fails before any
   response byte is sent again: to the same server on a fresh connection if
   the failed one was reused (the server had closed it), else to the next
   candidate within ``retries``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastproxy.http import BodyKind, Request, RequestParser, ResponseParser
from fastproxy.modes.httpcommon import MAX_BUFFER, READ_SIZE, Phase
from fastproxy.reactor import EVENT_READ, EVENT_WRITE
from fastproxy.relay import Mover
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.worker import UpstreamRuntime, WorkerContext

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class UpstreamLink:
    """Upstream connection bookkeeping of an HTTP session (a mixin)."""

    # Defined by the session (reverse.HttpSession).
    ctx: WorkerContext
    phase: Phase
    parser: RequestParser
    request: Request | None
    resp: ResponseParser | None
    upstream: UpstreamRuntime | None
    up: socket.socket | None
    ufd: int
    masks: dict[int, int]
    candidates: list[int]
    attempts: int
    server: int
    reused: bool
    reuse_ok: bool
    active_counted: bool
    parked: tuple[UpstreamRuntime, int, socket.socket] | None
    upgrade: bool
    head: bytes
    uout: bytearray
    up_sent: int
    resp_bytes: int
    resp_head_sent: bool
    resp_done: bool
    resp_fed: bool
    cout: bytearray
    _step_req_mover: Callable[[], bool]
    _step_resp_mover: Callable[[], bool]
    req_done: bool
    req_mover: Mover | None
    resp_mover: Mover | None
    upstream_started: float
    last_upstream: float
    _fail: Callable[[int, str], None]
    _connected: Callable[[], None]
    _prepare_socket: Callable[[socket.socket], None]
    _on_upstream: Callable[[int], None]
    _set_mask: Callable[[int, int, object], None]
    close: Callable[..., None]

    def _next_server(self) -> None:
        assert self.upstream is not None
        limit = 1 + self.upstream.config.retries
        if self.attempts >= limit or self.attempts >= len(self.candidates):
            self._fail(502, "no upstream server could be reached")
            return
        if self.attempts:
            self.ctx.c[C.upstream_retries] += 1
        self.server = self.candidates[self.attempts]
        self.attempts += 1
        self.resp = ResponseParser()
        assert self.request is not None
        self.resp.expect(self.request.method, upgrade=self.upgrade)
        self.upstream_started = self.last_upstream = self.ctx.reactor.now
        if self.parked is not None:
            p_upstream, p_server, p_sock = self.parked
            if p_upstream is self.upstream and p_server == self.server and self.reuse_ok:
                self._unpark()
                self.reused = True
                self.up = p_sock
                self.ufd = p_sock.fileno()
                self.phase = Phase.FORWARD
                self.upstream.record_success(self.server)
                self.active_counted = True
                self._connected()
                return
            self._unpark_to_pool()
        pooled = self.ctx.idle.take((self.upstream.config.name, self.server)) if self.reuse_ok else None
        if pooled is not None:
            self.reused = True
            self._adopt(pooled, EVENT_READ)
            self.phase = Phase.FORWARD
            self.upstream.record_success(self.server)
            self.active_counted = True
            self._connected()
            return
        self.reused = False
        sockaddr, family = self.upstream.sockaddrs[self.server]
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._prepare_socket(sock)
        except OSError:
            sock.close()
            raise
        err = sock.connect_ex(sockaddr)
        self._adopt(sock, 0)
        if err in (0, errno.EINPROGRESS):
            self.phase = Phase.CONNECT
        else:
            self.ctx.c[C.upstream_connect_errors] += 1
            self._connect_failed()

    def _adopt(self, sock: socket.socket, registered_mask: int) -> None:
        self.up = sock
        self.ufd = sock.fileno()
        self.masks[self.ufd] = registered_mask
        if registered_mask:  # from the idle pool: take the callback over
            self.ctx.reactor.modify(self.ufd, registered_mask, self._on_upstream)

    def _on_connect_event(self) -> None:
        assert self.up is not None
        err = self.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.ctx.c[C.upstream_connect_errors] += 1
            self._connect_failed()
            return
        self.ctx.slot.observe(H.upstream_connect_seconds, self.ctx.reactor.now - self.upstream_started)
        assert self.upstream is not None
        self.upstream.record_success(self.server)
        self.active_counted = True
        self.phase = Phase.FORWARD
        self.last_upstream = self.ctx.reactor.now
        self._connected()

    def _connect_failed(self) -> None:
        assert self.upstream is not None
        self.upstream.record_failure(self.server)
        self._close_upstream_socket()
        self._next_server()

    def _upstream_io_error(self, exc: OSError) -> None:
        """The upstream connection failed while forwarding."""
        no_body = self.parser.body_kind is BodyKind.NONE or not self.parser.content_length
        retry = (self.resp_bytes == 0 and no_body and self.req_done
                 and self.request is not None and self.request.method in _IDEMPOTENT)
        if retry:  # nothing came back: safe to send the request again (nginx's "error")
            self._close_upstream_socket()
            self.uout = bytearray(self.head)
            if self.reused:
                self.attempts -= 1  # the server had closed a pooled connection: same server, fresh
            else:
                assert self.upstream is not None
                self.upstream.record_failure(self.server)
            self._next_server()
            return
        self._upstream_failed(502, f"upstream connection failed: {exc.strerror or exc}")

    def _upstream_failed(self, status: int, detail: str) -> None:
        if self.upstream is not None and self.server >= 0:
            self.upstream.record_failure(self.server)
        if self.resp_head_sent:
            self.close(reset=True)
        else:
            self._fail(status, detail)

    def _drop_upstream(self, reusable: bool) -> None:
        if self.up is None:
            return
        assert self.upstream is not None
        if reusable and not self.uout and self.resp_mover is None and self.req_mover is None:
            self._uncount_active()
            registered = bool(self.masks.get(self.ufd))
            self.ctx.idle.put((self.upstream.config.name, self.server), self.up,
                              self.upstream.config.keepalive, registered)
            del self.masks[self.ufd]
            self.up = None
            self.ufd = -1
        else:
            self._close_upstream_socket()

    def _park(self) -> None:
        assert self.up is not None and self.upstream is not None
        self._uncount_active()
        # Watched while parked (a body mover may have left it unwatched), so
        # that a server closing it is noticed at once, as in the idle pool.
        if self.masks.get(self.ufd) != EVENT_READ:
            self._set_mask(self.ufd, EVENT_READ, self._on_upstream)
        self.parked = (self.upstream, self.server, self.up)
        self.up = None
        self.ufd = -1

    def _unpark(self) -> tuple[UpstreamRuntime, int, socket.socket]:
        assert self.parked is not None
        parked, self.parked = self.parked, None
        return parked

    def _unpark_to_pool(self) -> None:
        if self.parked is None:
            return
        upstream, server, sock = self._unpark()
        fd = sock.fileno()
        registered = bool(self.masks.pop(fd, 0))
        self.ctx.idle.put((upstream.config.name, server), sock, upstream.config.keepalive,
                          registered)

    def _drop_parked(self) -> None:
        if self.parked is None:
            return
        sock = self._unpark()[2]
        if self.masks.pop(sock.fileno(), 0):
            self.ctx.reactor.forget(sock.fileno())
        sock.close()

    def _uncount_active(self) -> None:
        if self.active_counted and self.upstream is not None:
            self.active_counted = False
            self.upstream.session_closed(self.server, self.up_sent, self.resp_bytes)

    def _close_upstream_socket(self) -> None:
        if self.up is None:
            return
        self._uncount_active()
        if self.masks.pop(self.ufd, 0):
            self.ctx.reactor.forget(self.ufd)
        self.up.close()
        self.up = None
        self.ufd = -1

    # -- upstream I/O -----------------------------------------------------------------
    def _read_upstream(self) -> None:
        assert self.up is not None and self.resp is not None
        if self.resp_mover is not None:
            self.last_upstream = self.ctx.reactor.now
            self._step_resp_mover()
            return
        try:
            data = self.up.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._upstream_io_error(exc)
            return
        self._upstream_bytes(data)

    def _upstream_bytes(self, data: bytes) -> None:
        """What one upstream read returned (``b""`` at EOF) goes to the response parser."""
        assert self.resp is not None
        if not data and self.resp_bytes == 0:
            self._upstream_io_error(ConnectionResetError(errno.ECONNRESET, "closed without a response"))
            return
        self.last_upstream = self.ctx.reactor.now
        self.ctx.c[C.upstream_bytes_in] += len(data)
        self.resp_bytes += len(data)
        self.resp.receive_data(data)
        self.resp_fed = True

    def _flush_upstream(self) -> None:
        if self.up is None or self.phase is not Phase.FORWARD:
            return
        if self.req_mover is not None and not self.uout:
            self._step_req_mover()
            return
        if not self.uout:
            return
        try:
            n = self.up.send(self.uout)
        except BlockingIOError:
            return
        except OSError as exc:
            self._upstream_io_error(exc)
            return
        del self.uout[:n]
        self.up_sent += n
        self.ctx.c[C.upstream_bytes_out] += n
        self.last_upstream = self.ctx.reactor.now

    def _upstream_mask(self) -> int:
        if self.phase is Phase.CONNECT:
            return EVENT_WRITE
        mask = 0
        if self.uout or (self.req_mover is not None and self.req_mover.pending):
            mask |= EVENT_WRITE
        if not self.resp_done and len(self.cout) < MAX_BUFFER and (
                self.resp_mover is None or not self.resp_mover.pending):
            mask |= EVENT_READ
        return mask
