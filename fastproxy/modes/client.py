"""One client connection of an HTTP listener, driving its exchanges one at a time.

Theory of operation
-------------------
A ``ClientConnection`` owns the client's transport, the ``RequestParser`` of
what the client sends (pipelined requests wait in its buffer, so responses
leave in order), the bytes waiting for the client, and, between requests, the
upstream connection of the last exchange (``upstream_conn``). It runs one
``Exchange`` at a time; the exchange's progress is its transition table
(``exchange.TRANSITIONS``) and every action that table names is one method
here (``_ACTIONS``). What a mode decides (admission, routing, the fields a
forwarded head gets) comes from the mode's phase steps (``phases``).

Every entry point (a socket event, the worker's timeout sweep, a step that
finished waiting) goes through ``_run``: do the work, drive the exchange as
far as the buffered bytes allow, write what is pending (one ``send`` per
side for all that accumulated), set the selector interest. A ProtocolError
is answered with its status; an OSError aborts; any other exception is logged
once, counted as ``internal_errors`` and aborts this connection only.

Bodies: bytes that arrived with a head leave with it in one ``send``
(``read_body`` appends them to the head in the output buffer); chunked
bodies are re-framed a whole read at a time. A known-length body still
``SPLICE_MIN`` or more bytes long once the buffered part is gone moves with
splice (``relay.Mover``), as does a response delimited by the close.

Rules:

1. A request reaches no upstream before its head and the body bytes at hand
   are parsed: a framing error found then answers the client and sends
   nothing. An error found later in a streamed body resets the upstream
   connection, so no backend sees a complete request.
2. A request is sent again only when no response byte came back, it is
   idempotent and it has no body (RFC 9110 §9.2.2; nginx's "error").
3. After a final answer that leaves request bytes unread, the connection is
   closed lingeringly (``transport.linger_close``).
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastproxy.errors import ProtocolError, Side
from fastproxy.http import (
    BodyKind,
    ConnectionClosed,
    InformationalResponse,
    Request,
    RequestParser,
    Response,
)
from fastproxy.http import State as ParserState
from fastproxy.http.rewrite import edit_head, upgrade_protocols
from fastproxy.modes.dialer import Dialer
from fastproxy.modes.exchange import Action, Answer, Exchange
from fastproxy.modes.exchange import Event as E
from fastproxy.modes.exchange import State as X
from fastproxy.modes.httpcommon import error_response
from fastproxy.modes.phases import PENDING
from fastproxy.modes.transport import PlainTransport, linger_close
from fastproxy.modes.upstream_conn import PARK_SECONDS, UpstreamConnection
from fastproxy.reactor import EVENT_READ, EVENT_WRITE
from fastproxy.relay import DONE, Mover, Relay
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.modes.httpmode import HttpMode

log = logging.getLogger("fastproxy")

READ_SIZE = 65536
MAX_BUFFER = 256 * 1024   # stop reading a side while the other side's output holds this
# Known-length bodies from this size move with splice. Measured (bench/RESULTS.md,
# "splice threshold"): proxy CPU per response, copy vs splice: 128 KiB 136 vs
# 151 us, 256 KiB 249 vs 193 us, 1 MiB 828 vs 526 us.
SPLICE_MIN = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_RESPONSE_CLASS = {1: C.responses_1xx, 2: C.responses_2xx, 3: C.responses_3xx,
                   4: C.responses_4xx, 5: C.responses_5xx}
_DONE = ParserState.DONE


class Conn(enum.Enum):
    """The client connection's own lifecycle (exchanges have theirs)."""

    OPEN = "open"            # reading requests, running exchanges
    CLOSING = "closing"      # writing a last answer, then close
    TUNNEL = "tunnel"        # a Relay owns both sockets
    CLOSED = "closed"        # closed, or lingering (the transport owns the fd)


class ClientConnection:
    """See the module docstring. Methods for the steps: ``resume(ex)``,
    ``deliver_peer(ex, peer_or_answer)``; for the worker: ``abort()``,
    ``check_timeouts(now)``."""

    __slots__ = ("mode", "ctx", "reactor", "c", "transport", "addr", "client_ip", "parser",
                 "out", "mask", "state", "ex", "up", "dialer", "req_mover", "resp_mover",
                 "relay", "eof", "last_client", "last_upstream", "head_started", "served",
                 "busy", "_up_cb")

    def __init__(self, mode: HttpMode, sock: socket.socket, addr: tuple[str, int]) -> None:
        ctx = mode.ctx
        self.mode = mode
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.c = ctx.c
        self.transport = PlainTransport(sock)
        self.addr = addr
        self.client_ip = addr[0]
        self.parser = RequestParser(mode.limits)
        self.out = bytearray()
        self.mask = 0
        self.state = Conn.OPEN
        self.ex: Exchange | None = None
        self.up: UpstreamConnection | None = None   # the exchange's, or parked between requests
        self.dialer: Dialer | None = None
        self.req_mover: Mover | None = None
        self.resp_mover: Mover | None = None
        self.relay: Relay | None = None
        self.eof = False          # the client sent FIN
        now = self.reactor.now
        self.last_client = self.last_upstream = self.head_started = now
        self.served = 0
        self.busy = False         # inside _run (callbacks from a dialer then act directly)
        self._up_cb = self._on_upstream

    # -- entry points ---------------------------------------------------------------
    def start(self, initial: bytes = b"") -> None:
        self.ctx.session_opened(self)
        self.reactor.register(self.transport.fd, EVENT_READ, self._on_client)
        self.mask = EVENT_READ
        if initial:  # bytes that came with a PROXY header
            self.parser.receive_data(initial)
            self._run(None)

    def _run(self, work: Callable[[Any], None] | None, arg: Any = None) -> None:
        if self.state is Conn.CLOSED or self.state is Conn.TUNNEL:
            return
        self.busy = True
        try:
            if work is not None:
                work(arg)
            if self.state is Conn.OPEN:
                self._drive()
        except ProtocolError as exc:
            self._protocol_error(exc)
        except OSError:
            self.abort()
        except Exception:
            log.exception("internal error in an HTTP connection from %s", self.client_ip)
            self.c[C.internal_errors] += 1
            self.abort()
        self.busy = False
        if self.state is Conn.OPEN or self.state is Conn.CLOSING:
            self._interest()

    def _on_client(self, mask: int) -> None:
        self._run(self._client_event, mask)

    def _client_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._flush_client()
        if mask & EVENT_READ and self.state is Conn.OPEN:
            self._read_client()

    def _on_upstream(self, mask: int) -> None:
        if self.ex is None:  # the parked connection closed or spoke: drop it
            up = self.up
            if up is not None:
                self.up = None
                up.close(self.reactor)
            return
        self._run(self._upstream_event, mask)

    def _upstream_event(self, mask: int) -> None:
        ex = self.ex
        if ex is None or ex.state is X.CONNECTING:
            return
        if mask & EVENT_WRITE:
            self._flush_upstream(ex)
        if mask & EVENT_READ and self.up is not None and not ex.finished:
            self._read_upstream(ex)

    def resume(self, ex: Exchange) -> None:
        """A request filter that returned PENDING is done: run the filters again."""
        if self.ex is ex and ex.state is X.ADMITTING:
            self._run(self._filter_request, ex)

    def deliver_peer(self, ex: Exchange, found: Any) -> None:
        """What an upstream_peer step that returned PENDING found: a peer or an Answer."""
        if self.ex is ex and ex.state is X.CHOOSING:
            self._run(self._peer_found, (ex, found))

    # -- reading ---------------------------------------------------------------------
    def _read_client(self) -> None:
        if self.req_mover is not None:
            self.last_client = self.reactor.now
            self._step_req_mover()
            return
        try:
            data = self.transport.recv(READ_SIZE)
        except BlockingIOError:
            return
        self.last_client = self.reactor.now
        if not data:
            # The client may shut its side after a complete request: the answer
            # still goes out. A request left incomplete fails in the parser.
            self.eof = True
        else:
            self.c[C.bytes_in] += len(data)
            if self.ex is None and not self.parser.buffered:
                self.head_started = self.last_client
        self.parser.receive_data(data)

    def _read_upstream(self, ex: Exchange) -> None:
        up = self.up
        assert up is not None
        if self.resp_mover is not None:
            self.last_upstream = self.reactor.now
            self._step_resp_mover(ex)
            return
        try:
            data = up.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._upstream_lost(ex, exc.strerror or str(exc))
            return
        if not data and not up.received:
            self._upstream_lost(ex, "closed without a response")
            return
        self.last_upstream = self.reactor.now
        up.received += len(data)
        self.c[C.upstream_bytes_in] += len(data)
        up.parser.receive_data(data)

    # -- driving -------------------------------------------------------------------------
    def _drive(self) -> None:
        """Parse and act as far as the buffered bytes go, then write once per side."""
        while self.state is Conn.OPEN or self.state is Conn.CLOSING:
            progress = False
            ex = self.ex
            if ex is None:
                if self.state is Conn.OPEN:
                    event = self.parser.next_event()
                    if type(event) is Request:
                        self._begin(event)
                        continue
                    if type(event) is ConnectionClosed:
                        self._close_when_flushed()
            else:
                if ex.state is X.SENDING:
                    progress = self._pump_request(ex)
                if self.ex is ex and ex.state in _RESPONDING:
                    progress = self._pump_response(ex) or progress
                if self.ex is not ex:
                    continue  # the exchange ended: a pipelined request may be waiting
            if progress:
                continue
            if not self._flush() or self.state is not Conn.OPEN:
                return

    def _flush(self) -> bool:
        """Write what accumulated for either side; True when a full buffer got room."""
        up = self.up
        ex = self.ex
        full = len(self.out) >= MAX_BUFFER or (up is not None and len(up.out) >= MAX_BUFFER)
        if self.out:
            self._flush_client()
        if ex is not None and up is not None and up.out and not ex.finished:
            self._flush_upstream(ex)
        up = self.up
        return full and len(self.out) < MAX_BUFFER and (up is None or len(up.out) < MAX_BUFFER)

    def _begin(self, request: Request) -> None:
        self.c[C.requests] += 1
        parser = self.parser
        ex = Exchange(request, parser.body_kind, parser.content_length, self.reactor.now,
                      bool(upgrade_protocols(request)))
        self.ex = ex
        self._act(ex, ex.step(E.HEAD_PARSED))

    def _act(self, ex: Exchange, action: Action) -> None:
        _ACTIONS[action](self, ex)

    def _pump_request(self, ex: Exchange) -> bool:
        """Body bytes at hand go into the upstream buffer; True on progress."""
        up = self.up
        parser = self.parser
        if self.req_mover is not None or up is None or parser.state is _DONE:
            return False
        out = up.out
        if len(out) >= MAX_BUFFER:
            return False
        before = len(out)
        done = parser.read_body(out, chunked=ex.body_kind is BodyKind.CHUNKED, limit=MAX_BUFFER)
        if done and not out:
            ex.step(E.REQUEST_SENT)
        return done or len(out) != before

    def _pump_response(self, ex: Exchange) -> bool:
        up = self.up
        if up is None:
            return False
        rp = up.parser
        if ex.response is None:
            event = rp.next_event()
            kind = type(event)
            if kind is Response:
                ex.response = event  # type: ignore[assignment]
                self._act(ex, ex.step(E.RESPONSE_HEAD))
                return True
            if kind is InformationalResponse:
                info: InformationalResponse = event  # type: ignore[assignment]
                self.out += edit_head(b"HTTP/1.1 %d %s\r\n" % (info.status, info.reason), info)
                self.c[C.responses_1xx] += 1
                return True
            return False
        out = self.out
        if self.resp_mover is not None or len(out) >= MAX_BUFFER:
            return False
        before = len(out)
        done = rp.read_body(out, chunked=ex.chunked_out, limit=MAX_BUFFER)
        ex.sent += len(out) - before
        if done:
            self._act(ex, ex.step(E.RESPONSE_DONE))
            return True
        return len(out) != before

    # -- actions (named by the exchange's transition table) ------------------------------
    def _filter_request(self, ex: Exchange) -> None:
        filters = self.mode.request_filters
        while ex.cursor < len(filters):
            verdict = filters[ex.cursor](self, ex)
            if verdict is None:
                ex.cursor += 1
            elif verdict is PENDING:
                ex.step(E.PENDING)
                return
            else:
                self._answer(ex, verdict)
                return
        self._act(ex, ex.step(E.ADMITTED))

    def _choose_peer(self, ex: Exchange) -> None:
        for choose in self.mode.peer_steps:
            found = choose(self, ex)
            if found is PENDING:
                ex.step(E.PENDING)
                return
            if found is not None:
                self._peer_found((ex, found))
                return
        self._answer(ex, self.mode.error(502, "no upstream for this request"))

    def _peer_found(self, arg: tuple[Exchange, Any]) -> None:
        ex, found = arg
        if isinstance(found, Answer):
            self._answer(ex, found)
            return
        candidates = found.candidates(self.client_ip)
        if not candidates:
            self.c[C.upstream_no_server] += 1
            self._answer(ex, self.mode.error(503, "no healthy server"))
            return
        ex.peer = found
        reuse = ex.request.method != b"CONNECT"  # a tunnel gets a connection of its own
        self.dialer = Dialer(self.reactor, self.ctx.slot, found, candidates, self._on_dialed,
                             self._on_dial_failed, self._take_idle if reuse else None,
                             found.bind)
        self._act(ex, ex.step(E.PEER_CHOSEN))

    def _connect(self, ex: Exchange) -> None:
        dialer = self.dialer
        assert dialer is not None
        self._park_to_pool_unless(ex.peer if dialer.take_idle is not None else None)
        dialer.next()

    def _retry(self, ex: Exchange) -> None:
        assert self.dialer is not None and self.up is not None
        same_server = self.up.reused  # the server had closed an idle connection
        self.up.close(self.reactor)
        self.up = None
        self.dialer.again(same_server)

    def _send_request(self, ex: Exchange) -> None:
        up = self.up
        assert up is not None
        up.out += self.mode.request_head(self, ex)
        self._pump_request(ex)

    def _send_response_head(self, ex: Exchange) -> None:
        response = ex.response
        up = self.up
        assert response is not None and up is not None
        now = self.reactor.now
        ex.upstream_time = now - ex.upstream_started
        self._count_status(response.status)
        kind = up.parser.body_kind
        if kind is BodyKind.TUNNEL:  # 101 to an Upgrade, or a parent's 2xx to CONNECT
            self._act(ex, ex.step(E.TUNNEL))
            return
        self.out += self.mode.response_head(self, ex, kind, up.parser.content_length)

    def _finish(self, ex: Exchange) -> None:
        ctx = self.ctx
        now = self.reactor.now
        ctx.slot.observe(H.request_seconds, now - ex.started)
        self.mode.ended(self, ex)
        request_done = self.parser.state is _DONE
        up = self.up
        assert up is not None and ex.response is not None
        if ex.response.keep_alive and request_done and up.reusable():
            up.release()
            if not (ex.keep_alive and not self.eof):
                self.up = None
                up.to_pool(self.reactor, ctx.idle)
        else:
            self.up = None
            up.close(self.reactor)
        self.served += 1
        self.ex = None
        self.dialer = None
        if not (request_done and ex.keep_alive) or self.eof:
            self._close_when_flushed()
            return
        self.parser.start_next()
        self.head_started = self.last_client = now

    def _send_answer(self, ex: Exchange) -> None:
        answer = ex.answer
        assert answer is not None
        self._release_exchange(reset=True)
        self.out += answer.data
        self._count_status(answer.status)
        self.mode.ended(self, ex)
        self.ex = None
        self.dialer = None
        close = answer.close
        if not close:  # keep the connection only if the request had no body to skip
            kind = ex.body_kind
            if kind is BodyKind.NONE or (kind is BodyKind.LENGTH and not ex.content_length):
                self.parser.read_body(bytearray(), chunked=False, limit=0)
            close = self.parser.state is not _DONE or not ex.keep_alive or self.eof
        if close:
            self._close_when_flushed()
            return
        self.parser.start_next()
        self.head_started = self.last_client = self.reactor.now

    def _start_tunnel(self, ex: Exchange) -> None:
        up = self.up
        assert up is not None
        if ex.response is None:  # CONNECT to the destination: the step queued its answer
            self._count_status(200)
        else:
            self.out += self.mode.tunnel_head(self, ex)
        self.c[C.tunnels] += 1
        self.mode.ended(self, ex)
        to_client = bytes(self.out) + up.parser.trailing_data[0]
        to_upstream = bytes(up.out) + self.parser.trailing_data[0]
        self.out.clear()
        up.out.clear()
        self.state = Conn.TUNNEL
        relay = Relay(self.reactor, self.ctx.pool, self.c, self.transport.sock, up.sock,
                      self._on_tunnel_closed, self.mode.timeouts.idle)
        self.relay = relay
        relay.start(up.mask, client_registered_mask=self.mask,
                    to_upstream=to_upstream, to_client=to_client)

    def _release(self, ex: Exchange) -> None:
        self.abort()

    def _nothing(self, ex: Exchange) -> None:
        pass

    # -- connections to the upstream ------------------------------------------------------
    def _take_idle(self, server: int) -> socket.socket | None:
        ex = self.ex
        assert ex is not None
        up = self.up
        if up is not None:
            if up.peer is ex.peer and up.server == server:
                return up.sock
            self._park_to_pool_unless(None)
        return self.ctx.idle.take((ex.peer.name, server))

    def _park_to_pool_unless(self, peer: Any) -> None:
        """Give the parked connection to the pool unless it goes to ``peer``."""
        up = self.up
        if up is not None and up.peer is not peer and not up.active:
            self.up = None
            up.to_pool(self.reactor, self.ctx.idle)

    def _on_dialed(self, sock: socket.socket, server: int, mask: int, reused: bool) -> None:
        if self.busy:
            self._use_connection((sock, server, mask, reused))
        else:
            self._run(self._use_connection, (sock, server, mask, reused))

    def _use_connection(self, arg: tuple[socket.socket, int, int, bool]) -> None:
        sock, server, mask, reused = arg
        ex = self.ex
        assert ex is not None
        up = self.up
        if up is not None and up.sock is sock:
            up.reuse(mask)
        else:
            up = self.up = UpstreamConnection(sock, ex.peer, server, mask, reused)
        self.reactor.modify(up.fd, mask, self._up_cb)
        up.parser.expect(ex.request.method, upgrade=ex.upgrade)
        ex.server = server
        ex.upstream_started = self.last_upstream = self.reactor.now
        for connected in self.mode.connected_hooks:
            greeting = connected(self, ex)
            if greeting is not None:  # the step answers the client and tunnels
                self.out += greeting
                self._act(ex, ex.step(E.TUNNEL))
                return
        self._act(ex, ex.step(E.CONNECTED))

    def _on_dial_failed(self, timed_out: bool) -> None:
        if self.busy:
            self._dial_failed(timed_out)
        else:
            self._run(self._dial_failed, timed_out)

    def _dial_failed(self, timed_out: bool) -> None:
        ex = self.ex
        if ex is not None and not ex.finished:
            self._answer(ex, self.mode.error(502, "no upstream server could be reached"))

    def _upstream_lost(self, ex: Exchange, detail: str) -> None:
        """The upstream connection failed while forwarding (rule 2)."""
        up = self.up
        assert up is not None
        kind = ex.body_kind
        bodiless = kind is BodyKind.NONE or (kind is BodyKind.LENGTH and not ex.content_length)
        if (ex.response is None and not up.received and bodiless
                and self.parser.state is _DONE and ex.request.method in _IDEMPOTENT):
            self._act(ex, ex.step(E.UPSTREAM_LOST))
            return
        self._upstream_failed(ex, 502, f"upstream connection failed: {detail}")

    def _upstream_failed(self, ex: Exchange, status: int, detail: str) -> None:
        if ex.peer is not None and ex.server >= 0:
            ex.peer.record_failure(ex.server)
        if ex.response is not None:
            self.abort()  # the client has part of a response: it must see it fail
        else:
            self._answer(ex, self.mode.error(status, detail))

    def _release_exchange(self, reset: bool) -> None:
        """Stop whatever the exchange had under way upstream."""
        if self.dialer is not None:
            self.dialer.cancel()
        for mover in (self.req_mover, self.resp_mover):
            if mover is not None:
                mover.release()
        self.req_mover = self.resp_mover = None
        up = self.up
        if up is not None and up.active:
            self.up = None
            up.close(self.reactor, reset=reset)

    # -- body movers (splice) ---------------------------------------------------------------
    def _maybe_splice_request(self, ex: Exchange) -> None:
        parser = self.parser
        remaining = parser.body_remaining
        if (parser.body_kind is BodyKind.LENGTH and remaining is not None
                and remaining >= SPLICE_MIN and not parser.buffered and self.up is not None
                and self.transport.can_splice):
            self.req_mover = Mover(self.ctx.pool, self.c, self.transport.sock, self.up.sock,
                                   remaining, self._req_body_read, C.upstream_bytes_out)
            self._step_req_mover()

    def _req_body_read(self, n: int) -> None:
        self.c[C.bytes_in] += n
        self.parser.body_consumed(n)

    def _step_req_mover(self) -> None:
        mover = self.req_mover
        assert mover is not None
        if mover.step() != DONE:
            return
        self.req_mover = None
        up = self.up
        ex = self.ex
        assert up is not None and ex is not None
        up.sent += mover.moved
        self.parser.read_body(up.out, chunked=False, limit=MAX_BUFFER)  # the end of the body
        if not up.out and ex.state is X.SENDING:
            ex.step(E.REQUEST_SENT)

    def _maybe_splice_response(self, ex: Exchange) -> None:
        up = self.up
        if up is None or ex.state is not X.RELAYING or up.parser.buffered or ex.chunked_out:
            return
        rp = up.parser
        remaining = rp.body_remaining
        if rp.body_kind is BodyKind.LENGTH:
            if remaining is None or remaining < SPLICE_MIN:
                return
        elif rp.body_kind is not BodyKind.CLOSE or up.parser.state is _DONE:
            return
        if not self.transport.can_splice:
            return
        self.resp_mover = Mover(self.ctx.pool, self.c, up.sock, self.transport.sock, remaining,
                                self._resp_body_read, C.bytes_out)
        self._step_resp_mover(ex)

    def _resp_body_read(self, n: int) -> None:
        up = self.up
        assert up is not None
        self.c[C.upstream_bytes_in] += n
        up.received += n
        up.parser.body_consumed(n)

    def _step_resp_mover(self, ex: Exchange) -> None:
        mover = self.resp_mover
        assert mover is not None and self.up is not None
        if mover.step() != DONE:
            return
        self.resp_mover = None
        ex.sent += mover.moved
        rp = self.up.parser
        if mover.eof:
            rp.receive_data(b"")
        if rp.read_body(self.out, chunked=False, limit=MAX_BUFFER):
            self._act(ex, ex.step(E.RESPONSE_DONE))

    # -- writing -----------------------------------------------------------------------------
    def _flush_client(self) -> None:
        out = self.out
        if not out:
            if self.resp_mover is not None and self.ex is not None:
                self._step_resp_mover(self.ex)
            return
        try:
            n = self.transport.send(out)
        except BlockingIOError:
            return
        del out[:n]
        self.c[C.bytes_out] += n
        self.last_client = self.reactor.now
        if out:
            return
        if self.state is Conn.CLOSING:
            self._close_now()
        elif self.ex is not None:
            self._maybe_splice_response(self.ex)

    def _flush_upstream(self, ex: Exchange) -> None:
        up = self.up
        assert up is not None
        if not up.out:
            if self.req_mover is not None:
                self._step_req_mover()
            return
        try:
            n = up.send(up.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._upstream_lost(ex, exc.strerror or str(exc))
            return
        del up.out[:n]
        up.sent += n
        self.c[C.upstream_bytes_out] += n
        self.last_upstream = self.reactor.now
        if not up.out and ex.state is X.SENDING:
            if self.parser.state is _DONE:
                ex.step(E.REQUEST_SENT)
            else:
                self._maybe_splice_request(ex)

    def _interest(self) -> None:
        ex = self.ex
        mask = EVENT_WRITE if self.out or (self.resp_mover is not None
                                           and self.resp_mover.pending) else 0
        if self.state is Conn.OPEN and not self.eof:
            if ex is None:
                if not self.out or len(self.out) < MAX_BUFFER:
                    mask |= EVENT_READ
            elif self.req_mover is not None:
                if not self.req_mover.pending:
                    mask |= EVENT_READ
            elif self.parser.buffered < MAX_BUFFER and (
                    self.up is None or len(self.up.out) < MAX_BUFFER):
                mask |= EVENT_READ  # body bytes, or the client leaving
        if mask != self.mask:
            self._set_mask(self.transport.fd, self.mask, mask, self._on_client)
            self.mask = mask
        up = self.up
        if up is None or up.fd < 0:
            return
        if ex is None or ex.finished:
            want = EVENT_READ  # parked: watch for the server closing it
        else:
            want = 0
            if up.out or (self.req_mover is not None and self.req_mover.pending):
                want = EVENT_WRITE
            if len(self.out) < MAX_BUFFER and (self.resp_mover is None
                                               or not self.resp_mover.pending):
                want |= EVENT_READ
        if want != up.mask:
            self._set_mask(up.fd, up.mask, want, self._up_cb)
            up.mask = want

    def _set_mask(self, fd: int, old: int, new: int, callback: Callable[[int], None]) -> None:
        reactor = self.reactor
        if not new:
            reactor.unregister(fd)
        elif not old:
            reactor.register(fd, new, callback)
        else:
            reactor.modify(fd, new, callback)

    # -- answers and errors -----------------------------------------------------------------
    def _answer(self, ex: Exchange, answer: Answer) -> None:
        ex.answer = answer
        self._act(ex, ex.step(E.ANSWER))

    def _count_status(self, status: int) -> None:
        counter = _RESPONSE_CLASS.get(status // 100)
        if counter is not None:
            self.c[counter] += 1

    def _protocol_error(self, exc: ProtocolError) -> None:
        ex = self.ex
        if exc.side is Side.UPSTREAM and ex is not None:
            self._upstream_failed(ex, 502, str(exc))
            return
        self.c[C.client_errors] += 1
        if ex is not None and ex.response is not None:
            self.abort()
            return
        if ex is not None and not ex.finished:
            self._answer(ex, self.mode.error(exc.status, str(exc)))
            return
        self._refuse(exc.status, str(exc))

    def _refuse(self, status: int, detail: str) -> None:
        """Answer a head that never became a request, then close."""
        self.ex = None
        ex = Exchange(_NO_REQUEST, BodyKind.NONE, None, self.head_started)
        ex.answer = answer = self.mode.error(status, detail)
        self.out += answer.data
        self._count_status(status)
        self.mode.ended(self, ex)
        self._close_when_flushed()

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweep (not from a socket event)."""
        if self.state is Conn.TUNNEL:
            relay = self.relay
            if relay is not None and relay.idle_expired(now):
                self.c[C.idle_timeouts] += 1
                relay.close("idle")
            return
        self._run(self._check_timeouts, now)

    def _check_timeouts(self, now: float) -> None:
        timeouts = self.mode.timeouts
        ex = self.ex
        if self.state is Conn.CLOSING:
            if now - self.last_client >= timeouts.idle:
                self.abort()
            return
        if ex is None:
            if self.up is not None and now - self.last_client >= PARK_SECONDS:
                self._park_to_pool_unless(None)  # an idle client keeps no upstream connection
            if self.parser.buffered:  # a head has begun: slowloris guard
                if now - self.head_started >= timeouts.client_header:
                    self._refuse(408, "request head not received in time")
            elif now - self.last_client >= (timeouts.idle if self.served else
                                          timeouts.client_header):
                self._close_now()  # nothing sent: close quietly, as nginx does
            return
        state = ex.state
        if state is X.ADMITTING or state is X.CHOOSING:
            if now - ex.started >= timeouts.connect:
                self._answer(ex, self.mode.error(504, "no upstream chosen in time"))
        elif state is X.CONNECTING:
            assert self.dialer is not None
            self.dialer.check_timeout(now, timeouts.connect)
        elif state in (X.SENDING, X.AWAITING, X.RELAYING):
            if now - self.last_upstream >= timeouts.upstream_read:
                self._upstream_failed(ex, 504, "upstream timed out")
            elif self.parser.state is not _DONE and now - self.last_client >= timeouts.idle:
                self.abort()

    # -- closing -----------------------------------------------------------------------------
    def _close_when_flushed(self) -> None:
        self.state = Conn.CLOSING
        if not self.out:
            self._close_now()

    def _close_now(self) -> None:
        """Close after a complete answer (lingering when request bytes were left unread)."""
        if self.state is Conn.CLOSED:
            return
        self._release_exchange(reset=True)
        self._park_to_pool_unless(None)
        self.state = Conn.CLOSED
        parser = self.parser
        unread = parser.buffered or parser.state not in _QUIET_STATES
        if unread and not self.eof:
            linger_close(self.reactor, self.transport, bool(self.mask), self._closed)
            return
        if self.mask:
            self.reactor.forget(self.transport.fd)
        self.transport.close()
        self._closed()

    def abort(self) -> None:
        """Close both sides at once with a reset (errors, fast shutdown, drain deadline)."""
        if self.state is Conn.TUNNEL:
            if self.relay is not None:
                self.relay.close("error")
            return
        if self.state is Conn.CLOSED:
            return
        self._release_exchange(reset=True)
        up = self.up
        if up is not None:
            self.up = None
            up.close(self.reactor)
        self.state = Conn.CLOSED
        if self.mask:
            self.reactor.forget(self.transport.fd)
        self.transport.reset()
        self._closed()

    def _closed(self) -> None:
        self.ctx.session_closed(self)

    def _on_tunnel_closed(self, relay: Relay, reason: str) -> None:
        self.relay = None
        up = self.up
        if up is not None:
            up.sent, up.received = relay.up.moved, relay.down.moved
            up.release()
            up.fd = -1
            self.up = None
        self.state = Conn.CLOSED
        self._closed()


_RESPONDING = (X.SENDING, X.AWAITING, X.RELAYING)
_NO_REQUEST = Request(b"-", b"-")  # what the log shows for a head that never parsed
_QUIET_STATES = frozenset((ParserState.IDLE, ParserState.DONE, ParserState.CLOSED))
_ACTIONS: dict[Action, Callable[[ClientConnection, Exchange], None]] = {
    Action.NONE: ClientConnection._nothing,
    Action.FILTER_REQUEST: ClientConnection._filter_request,
    Action.CHOOSE_PEER: ClientConnection._choose_peer,
    Action.CONNECT: ClientConnection._connect,
    Action.RETRY: ClientConnection._retry,
    Action.SEND_REQUEST: ClientConnection._send_request,
    Action.SEND_RESPONSE_HEAD: ClientConnection._send_response_head,
    Action.FINISH: ClientConnection._finish,
    Action.SEND_ANSWER: ClientConnection._send_answer,
    Action.START_TUNNEL: ClientConnection._start_tunnel,
    Action.RELEASE: ClientConnection._release,
}
