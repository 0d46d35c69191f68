"""How an HTTP client connection ends: timeouts, errors, closing.

``Lifecycle`` is one object per HTTP mode, holding no per-connection state;
the connection (``client.ClientConnection``) calls it when its time may be
up or something failed:

- ``check_timeouts(conn, now)`` (the worker's sweep): ``client_header``
  while a head is arriving (408) and before the first request, ``idle``
  between requests and while a request body stalls, ``connect`` while
  admission, the peer choice or a connect waits (504 or the next candidate),
  ``upstream_read`` while the upstream is silent (504, or a reset once the
  response began). An attached upstream connection goes to the pool once
  its client has been idle for ``PARK_SECONDS``.
- ``protocol_error(conn, exc)``: a client's framing error is answered with
  its status, then the connection closes; an upstream's is a 502.
- ``close_when_flushed`` / ``close_now``: after a final answer. When request
  bytes were left unread the close lingers (``transport.linger_close``), so
  the kernel does not answer them with a RST that can destroy the answer
  before the client reads it (nginx's lingering_close).
- ``abort(conn)``: both sides closed at once with a reset.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from fastproxy.config import Timeouts
from fastproxy.errors import ProtocolError, Side
from fastproxy.http import BodyKind, Request
from fastproxy.http import State as ParserState
from fastproxy.modes.exchange import Exchange
from fastproxy.modes.exchange import State as X
from fastproxy.modes.transport import LINGER_SECONDS, linger_close
from fastproxy.modes.upstream_conn import PARK_SECONDS
from fastproxy.relay import Relay
from fastproxy.stats.shm import C

if TYPE_CHECKING:
    from fastproxy.modes.client import ClientConnection

_QUIET_STATES = frozenset((ParserState.IDLE, ParserState.DONE, ParserState.CLOSED))
DRAIN_LINGER = 0.5   # long enough for a request crossing the FIN; short: a drain waits for it
_NO_REQUEST = Request(b"-", b"-")  # what the log shows for a head that never parsed


class Conn(enum.Enum):
    """The client connection's own lifecycle (exchanges have theirs)."""

    __hash__ = object.__hash__

    OPEN = "open"            # reading requests, running exchanges
    CLOSING = "closing"      # writing a last answer, then close
    TUNNEL = "tunnel"        # a Relay owns both sockets
    CLOSED = "closed"        # closed, or lingering (the transport owns the fd)


class Lifecycle:
    """See the module docstring."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts

    # -- timeouts ----------------------------------------------------------------------
    def check_timeouts(self, conn: ClientConnection, now: float) -> None:
        if conn.state is Conn.TUNNEL:
            relay = conn.relay
            if relay is not None and relay.idle_expired(now):
                conn.c[C.idle_timeouts] += 1
                relay.close("idle")
            return
        conn.run(self._check, (conn, now))

    def _check(self, arg: tuple[ClientConnection, float]) -> None:
        conn, now = arg
        timeouts = self.timeouts
        if conn.state is Conn.CLOSING:
            if now - conn.last_client >= timeouts.idle:
                self.abort(conn)
            return
        ex = conn.ex
        if ex is None:
            up = conn.up
            if up is not None and now - conn.last_client >= PARK_SECONDS:
                conn.up = None  # an idle client keeps no upstream connection
                up.to_pool(conn.reactor, conn.ctx.idle)
            if conn.parser.buffered:  # a head has begun: slowloris guard
                if now - conn.head_started >= timeouts.client_header:
                    self.refuse(conn, 408, "request head not received in time")
            elif now - conn.last_client >= (timeouts.idle if conn.served
                                            else timeouts.client_header):
                self.close_now(conn)  # nothing sent: close quietly, as nginx does
            return
        state = ex.state
        if state is X.ADMITTING or state is X.CHOOSING:
            if now - ex.started >= timeouts.connect:
                conn.answer(ex, conn.mode.error(504, "no upstream chosen in time"))
        elif state is X.CONNECTING:
            conn.connector.check_timeout(now, timeouts.connect)
        elif state is X.SENDING or state is X.AWAITING or state is X.RELAYING:
            if now - conn.last_upstream >= timeouts.upstream_read:
                conn.connector.failed(conn, ex, 504, "upstream timed out")
            elif (conn.parser.state is not ParserState.DONE
                  and now - conn.last_client >= timeouts.idle):
                self.abort(conn)

    # -- errors ------------------------------------------------------------------------
    def protocol_error(self, conn: ClientConnection, exc: ProtocolError) -> None:
        ex = conn.ex
        if exc.side is Side.UPSTREAM and ex is not None:
            conn.connector.failed(conn, ex, 502, str(exc))
            return
        conn.c[C.client_errors] += 1
        if ex is not None and ex.response is not None:
            self.abort(conn)  # part of a response went out: the client must see it fail
            return
        if ex is not None and not ex.finished:
            conn.answer(ex, conn.mode.error(exc.status, str(exc)))
            return
        self.refuse(conn, exc.status, str(exc))

    def refuse(self, conn: ClientConnection, status: int, detail: str) -> None:
        """Answer a head that never became a request, then close."""
        conn.ex = None
        ex = Exchange(_NO_REQUEST, BodyKind.NONE, None, conn.head_started,
                      hooks=conn.mode.phases.for_method(_NO_REQUEST.method))
        ex.answer = answer = conn.mode.error(status, detail)
        conn.out += answer.data
        conn.count_status(status)
        conn.mode.ended(conn, ex)
        self.close_when_flushed(conn)

    def drain(self, conn: ClientConnection) -> None:
        """The worker drains (reload, QUIT): an idle keep-alive connection is
        closed at once with a FIN; one with an exchange under way gets
        ``Connection: close`` on its response (if the head has not left yet,
        ``HttpMode.response_head``) and is closed after it, and so does one
        whose next request has arrived and is not read yet, and one that has
        not served a request yet (just accepted: its client is about to send
        the first request, which a client may not retry if it is a POST; the
        header timeout bounds it).

        The idle one lingers briefly (its input read and dropped until the
        client's EOF or DRAIN_LINGER): a request the client sent as the FIN
        was on its way then meets an open socket and the client reads a
        clean EOF, which HTTP clients retry on a new connection; a closed
        socket would answer it with a reset."""
        if conn.state is Conn.OPEN and conn.served and conn.ex is None and not conn.out \
                and not conn.parser.buffer and not conn.transport.has_input():
            self.close_now(conn, linger=DRAIN_LINGER)

    # -- closing -----------------------------------------------------------------------
    def close_when_flushed(self, conn: ClientConnection) -> None:
        conn.state = Conn.CLOSING
        if not conn.out:
            self.close_now(conn)

    def close_now(self, conn: ClientConnection, linger: float = 0.0) -> None:
        """Close after a complete answer (lingering when request bytes were left
        unread, or for ``linger`` seconds when asked)."""
        if conn.state is Conn.CLOSED:
            return
        self._release_upstream(conn)
        conn.state = Conn.CLOSED
        parser = conn.parser
        transport = conn.transport
        if (linger or parser.buffered or parser.state not in _QUIET_STATES) and not conn.eof:
            linger_close(conn.reactor, transport, bool(conn.mask), conn.closed,
                         linger or LINGER_SECONDS)
            return
        if conn.mask:
            conn.reactor.forget(transport.fd)
        transport.close()
        conn.closed()

    def abort(self, conn: ClientConnection) -> None:
        if conn.state is Conn.TUNNEL:
            if conn.relay is not None:
                conn.relay.close("error")
            return
        if conn.state is Conn.CLOSED:
            return
        self._release_upstream(conn)
        conn.state = Conn.CLOSED
        if conn.mask:
            conn.reactor.forget(conn.transport.fd)
        conn.transport.reset()
        conn.closed()

    # -- leaving HTTP ------------------------------------------------------------------
    def tunnel(self, conn: ClientConnection, ex: Exchange) -> None:
        """Hand both sockets to a byte relay (an upgrade, a CONNECT), with what
        each side still has to get."""
        up = conn.up
        assert up is not None
        if ex.response is None:  # CONNECT to the destination: the step queued its answer
            conn.count_status(200)
        else:
            conn.out += conn.mode.tunnel_head(conn, ex)
        conn.c[C.tunnels] += 1
        conn.mode.ended(conn, ex)
        to_client = bytes(conn.out) + up.parser.trailing_data[0]
        to_upstream = bytes(up.out) + conn.parser.trailing_data[0]
        conn.out.clear()
        up.out.clear()
        conn.state = Conn.TUNNEL

        def closed(relay: Relay, reason: str) -> None:
            conn.relay = None
            up.sent, up.received = relay.up.moved, relay.down.moved
            up.release()
            up.fd = -1
            conn.up = None
            conn.state = Conn.CLOSED
            conn.closed()

        relay = Relay(conn.reactor, conn.ctx.pool, conn.c, conn.transport.sock, up.sock,
                      closed, self.timeouts.idle)
        conn.relay = relay
        relay.start(up.mask, client_registered_mask=conn.mask,
                    to_upstream=to_upstream, to_client=to_client)

    @staticmethod
    def _release_upstream(conn: ClientConnection) -> None:
        conn.release_exchange(reset=True)
        up = conn.up
        if up is not None:  # attached between requests: still good for the pool
            conn.up = None
            if up.reusable():
                up.to_pool(conn.reactor, conn.ctx.idle)
            else:
                up.close(conn.reactor)
