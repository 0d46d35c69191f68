"""How an exchange gets its upstream connection, and what a lost one means.

One ``Connector`` per client connection (``client.ClientConnection``); it
holds the ``Dialer`` of the exchange in progress. Rules:

1. Reuse in order: the connection attached to the client (same peer and
   server: the client's previous exchange went there), then the worker's
   idle pool, then a new connection; a CONNECT gets a connection of its own.
   ``Dialer`` walks the candidates within ``retries`` (shared with tcp mode).
2. A connection that fails while forwarding is retried only when no response
   byte came back, the request is idempotent and has no body (RFC 9110
   §9.2.2; nginx's "error"): on the same server with a fresh connection if
   the failed one was an idle one (the server had closed it), else on the
   next candidate. A chunked body counts as a body.
3. Otherwise the client gets a 502 (504 after a timeout), or a reset once
   part of the response went out.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import TYPE_CHECKING

from fastproxy.http import BodyKind
from fastproxy.http import State as ParserState
from fastproxy.modes.dialer import Dialer
from fastproxy.modes.exchange import TERMINAL, Exchange
from fastproxy.modes.exchange import Event as E
from fastproxy.modes.exchange import State as X
from fastproxy.modes.splice import BodySplice, worth_splicing
from fastproxy.modes.transport import MAX_BUFFER, READ_SIZE
from fastproxy.modes.upstream_conn import UpstreamConnection
from fastproxy.reactor import EVENT_READ, EVENT_WRITE
from fastproxy.stats.shm import C

if TYPE_CHECKING:
    from fastproxy.modes.client import ClientConnection

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Connector:
    """See the module docstring; ``dialer`` is the walk in progress, if any."""

    __slots__ = ("dialer", "splice", "resp_splice")

    def __init__(self) -> None:
        self.dialer: Dialer | None = None
        self.splice: BodySplice | None = None        # the request body, moving with splice
        self.resp_splice: BodySplice | None = None   # the response body, likewise

    def connect(self, conn: ClientConnection, ex: Exchange) -> None:
        peer = ex.peer
        up = conn.up
        tunnel = ex.request.method == b"CONNECT"
        if up is not None:
            server = ex.candidates[0]
            if up.peer is peer and up.server == server and not tunnel:
                peer.record_success(server)
                conn.use_connection((up.sock, server, up.mask, True))
                return
            conn.up = None
            up.to_pool(conn.reactor, conn.ctx.idle)
        idle = conn.ctx.idle
        name = peer.name

        def take_pooled(server: int) -> socket.socket | None:
            return idle.take((name, server))

        self.dialer = Dialer(conn.reactor, conn.ctx.slot, peer, ex.candidates,
                             partial(self._dialed, conn), partial(self._dial_failed, conn),
                             None if tunnel else take_pooled, peer.bind)
        self.dialer.next()

    @staticmethod
    def _dialed(conn: ClientConnection, sock: socket.socket, server: int, mask: int,
                reused: bool) -> None:
        if conn.busy:  # called back from within the connection's own entry point
            conn.use_connection((sock, server, mask, reused))
        else:
            conn.run(conn.use_connection, (sock, server, mask, reused))

    @staticmethod
    def _dial_failed(conn: ClientConnection, timed_out: bool) -> None:
        if conn.busy:
            conn.dial_failed(timed_out)
        else:
            conn.run(conn.dial_failed, timed_out)

    def lost(self, conn: ClientConnection, ex: Exchange, detail: str) -> None:
        """The connection failed while forwarding: retry (rule 2) or fail (rule 3)."""
        up = conn.up
        kind = ex.body_kind
        bodiless = kind is BodyKind.NONE or (kind is BodyKind.LENGTH and not ex.content_length)
        if (ex.response is None and up is not None and not up.received and bodiless
                and conn.parser.state is ParserState.DONE and ex.request.method in _IDEMPOTENT):
            conn.act(ex, E.UPSTREAM_LOST)
            return
        self.failed(conn, ex, 502, f"upstream connection failed: {detail}")

    def failed(self, conn: ClientConnection, ex: Exchange, status: int, detail: str) -> None:
        """Rule 3 (the server is marked failed for passive health)."""
        if ex.peer is not None and ex.server >= 0:
            ex.peer.record_failure(ex.server)
        if ex.response is not None:
            conn.abort()  # the client has part of a response: it must see it fail
        else:
            conn.answer(ex, conn.mode.error(status, detail))

    def retry(self, conn: ClientConnection, ex: Exchange) -> None:
        up = conn.up
        assert up is not None
        same_server = up.reused
        conn.up = None
        up.close(conn.reactor)
        dialer = self.dialer
        if dialer is None:  # it was the attached connection: the walk starts at its server
            dialer = self.dialer = Dialer(conn.reactor, conn.ctx.slot, ex.peer, ex.candidates,
                                          partial(self._dialed, conn),
                                          partial(self._dial_failed, conn), None, ex.peer.bind)
            dialer.attempts = 1
            dialer.server = up.server
        dialer.again(same_server)

    def check_timeout(self, now: float, timeout: float) -> None:
        if self.dialer is not None:
            self.dialer.check_timeout(now, timeout)

    def cancel(self) -> None:
        if self.dialer is not None:
            self.dialer.cancel()
            self.dialer = None
        for splice in (self.splice, self.resp_splice):
            if splice is not None:
                splice.release()
        self.splice = self.resp_splice = None

    # -- the upstream connection's I/O ----------------------------------------------------
    def read(self, conn: ClientConnection, ex: Exchange, up: UpstreamConnection) -> None:
        """What the server sent goes to the response parser (rule 3 on failure)."""
        try:
            data = up.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(conn, ex, exc.strerror or str(exc))
            return
        if not data:
            if not up.received:
                self.lost(conn, ex, "closed without a response")
                return
            up.eof = True
        up.received += len(data)
        conn.c[C.upstream_bytes_in] += len(data)
        up.parser.receive_data(data)

    def flush(self, conn: ClientConnection, ex: Exchange, up: UpstreamConnection) -> None:
        """Send what waits for the server; the request is sent when its body is complete."""
        if not up.out:
            if self.splice is not None:
                self.step_splice(conn)
            return
        try:
            n = up.send(up.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.lost(conn, ex, exc.strerror or str(exc))
            return
        del up.out[:n]
        up.sent += n
        conn.c[C.upstream_bytes_out] += n
        conn.last_upstream = conn.reactor.now
        if up.out or ex.state is not X.SENDING:
            return
        parser = conn.parser
        if parser.state is ParserState.DONE:
            ex.step(E.REQUEST_SENT)
        elif conn.transport.can_splice and worth_splicing(parser):
            self.splice = BodySplice(conn.ctx.pool, conn.c, conn.transport.sock, up.sock,
                                     parser, C.bytes_in, C.upstream_bytes_out)
            self.step_splice(conn)

    def step_splice(self, conn: ClientConnection) -> None:
        splice = self.splice
        up = conn.up
        ex = conn.ex
        assert splice is not None and up is not None and ex is not None
        if not splice.step():
            return
        self.splice = None
        up.sent += splice.moved
        conn.parser.read_body(up.out, chunked=False, limit=1)  # its EndOfMessage
        if not up.out and ex.state is X.SENDING:
            ex.step(E.REQUEST_SENT)

    def splice_response(self, conn: ClientConnection, ex: Exchange) -> None:
        """Move the rest of a large response body with splice, once the client has the rest."""
        up = conn.up
        if up is not None and conn.transport.can_splice and worth_splicing(up.parser):
            self.resp_splice = BodySplice(conn.ctx.pool, conn.c, up.sock, conn.transport.sock,
                                          up.parser, C.upstream_bytes_in, C.bytes_out)
            self.step_response_splice(conn, ex)

    def step_response_splice(self, conn: ClientConnection, ex: Exchange) -> None:
        splice = self.resp_splice
        up = conn.up
        assert splice is not None and up is not None
        if not splice.step():
            return
        self.resp_splice = None
        ex.sent += splice.moved
        up.received += splice.moved
        if up.parser.read_body(conn.out, chunked=False, limit=MAX_BUFFER):
            conn.act(ex, E.RESPONSE_DONE)

    def interest(self, conn: ClientConnection, ex: Exchange | None,
                 up: UpstreamConnection) -> None:
        """The upstream fd's selector interest (attached: watched for the server closing)."""
        if up.fd < 0:
            return
        if ex is None or ex.state in TERMINAL:
            want = EVENT_READ
        else:
            splice = self.splice
            want = EVENT_WRITE if up.out or (splice is not None and splice.pending) else 0
            resp = self.resp_splice
            if len(conn.out) < MAX_BUFFER and (resp is None or not resp.pending):
                want |= EVENT_READ
        if want != up.mask:
            conn.reactor.set_interest(up.fd, up.mask, want, conn.on_upstream)
            up.mask = want
