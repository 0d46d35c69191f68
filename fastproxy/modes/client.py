"""One client connection of an HTTP listener, driving its exchanges one at a time.

Theory of operation
-------------------
A ``ClientConnection`` owns the client's transport, the ``RequestParser`` of
what the client sends (pipelined requests wait in its buffer, so responses
leave in order), the bytes waiting for the client, and the upstream
connection of the current exchange, kept attached between the client's
requests (``upstream_conn``). It runs one ``Exchange`` at a time; the
exchange's progress is its transition table (``exchange.TRANSITIONS``) and
each action the table names is one method here (``_ACTIONS``). What a mode
decides (admission, routing, the fields a forwarded head gets) comes from
its phase steps (``phases``), called by ``httpmode.HttpMode``.

Every entry (a socket event, the worker's sweep, a step that finished
waiting) parses and acts as far as the buffered bytes go, then writes what
accumulated with one ``send`` per side and sets the selector interest. A
ProtocolError is answered with its status; an OSError aborts; any other
exception is logged once, counted as ``internal_errors`` and aborts this
connection only.

Rules:

1. A request reaches no upstream before its head and the body bytes at hand
   are parsed: a framing error found then answers the client and sends
   nothing. An error found later in a streamed body resets the upstream
   connection, so no backend sees a complete request.
2. A body that arrived with its head leaves with it (``read_body`` appends it
   behind the head); chunked bodies are re-framed a whole read at a time;
   large bodies move with splice (``splice.BodySplice``).
3. Reuse in order: the connection attached to this client (same peer and
   server), then the worker's pool, then a new connection (``dialer``).
4. A request is sent again only when no response byte came back, it is
   idempotent and it has no body (RFC 9110 §9.2.2; nginx's "error").
5. After a final answer that leaves request bytes unread, the connection is
   closed lingeringly (``transport.linger_close``).
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastproxy.errors import ProtocolError
from fastproxy.http import BodyKind, ConnectionClosed, InformationalResponse, Request, Response
from fastproxy.http import State as ParserState
from fastproxy.http.rewrite import edit_head, upgrade_protocols
from fastproxy.modes.connector import Connector
from fastproxy.modes.exchange import Action, Answer, Exchange
from fastproxy.modes.exchange import Event as E
from fastproxy.modes.exchange import State as X
from fastproxy.modes.phases import PENDING
from fastproxy.modes.splice import BodySplice, worth_splicing
from fastproxy.modes.transport import MAX_BUFFER, READ_SIZE, PlainTransport
from fastproxy.modes.upstream_conn import UpstreamConnection
from fastproxy.reactor import EVENT_READ, EVENT_WRITE
from fastproxy.relay import Relay
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.modes.httpmode import HttpMode

log = logging.getLogger("fastproxy")

_RESPONSE_CLASS = {1: C.responses_1xx, 2: C.responses_2xx, 3: C.responses_3xx,
                   4: C.responses_4xx, 5: C.responses_5xx}
_DONE = ParserState.DONE


class Conn(enum.Enum):
    """The client connection's own lifecycle (exchanges have theirs)."""

    __hash__ = object.__hash__

    OPEN = "open"            # reading requests, running exchanges
    CLOSING = "closing"      # writing a last answer, then close
    TUNNEL = "tunnel"        # a Relay owns both sockets
    CLOSED = "closed"        # closed, or lingering (the transport owns the fd)


class ClientConnection:
    """See the module docstring. For the steps: ``resume(ex)``,
    ``deliver_peer(ex, peer_or_answer)``; for the worker: ``abort()``,
    ``check_timeouts(now)`` (in ``lifecycle``)."""

    __slots__ = ("mode", "ctx", "reactor", "c", "transport", "addr", "client_ip", "parser",
                 "out", "mask", "state", "ex", "up", "connector", "resp_splice",
                 "relay", "eof", "last_client", "last_upstream", "head_started", "served",
                 "busy")

    def __init__(self, mode: HttpMode, sock: socket.socket, addr: tuple[str, int]) -> None:
        ctx = mode.ctx
        self.mode = mode
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.c = ctx.c
        self.transport = PlainTransport(sock)
        self.addr = addr
        self.client_ip = addr[0]
        self.parser = mode.new_parser()
        self.out = bytearray()
        self.mask = 0
        self.state = Conn.OPEN
        self.ex: Exchange | None = None
        self.up: UpstreamConnection | None = None   # the exchange's, or attached between requests
        self.connector = Connector()
        self.resp_splice: BodySplice | None = None
        self.relay: Relay | None = None
        self.eof = False          # the client sent FIN
        now = self.reactor.now
        self.last_client = self.last_upstream = self.head_started = now
        self.served = 0
        self.busy = False         # inside an entry point (a dialer's callbacks then act directly)

    # -- entry points ---------------------------------------------------------------
    def start(self, initial: bytes = b"") -> None:
        self.ctx.session_opened(self)
        self.reactor.register(self.transport.fd, EVENT_READ, self._on_client)
        self.mask = EVENT_READ
        if initial:  # bytes that came with a PROXY header
            self.parser.receive_data(initial)
            self.run(None)

    def run(self, work: Callable[[Any], None] | None, arg: Any = None) -> None:
        """Do ``work(arg)``, drive, write, set the interest; errors as in the module docstring."""
        state = self.state
        if state is Conn.CLOSED or state is Conn.TUNNEL:
            return
        self.busy = True
        try:
            if work is not None:
                work(arg)
            self._drive()
        except BlockingIOError:
            pass
        except ProtocolError as exc:
            self.mode.lifecycle.protocol_error(self, exc)
        except OSError:
            self.abort()
        except Exception:
            log.exception("internal error in an HTTP connection from %s", self.client_ip)
            self.c[C.internal_errors] += 1
            self.abort()
        self.busy = False
        state = self.state
        if state is Conn.OPEN or state is Conn.CLOSING:
            self._interest()

    def _on_client(self, mask: int) -> None:
        self.run(self._client_event, mask)

    def _client_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._flush_client()
        if not mask & EVENT_READ or self.state is not Conn.OPEN:
            return
        self.last_client = self.reactor.now
        if self.connector.splice is not None:
            self.connector.step_splice(self)
            return
        data = self.transport.recv(READ_SIZE)
        if data:
            self.c[C.bytes_in] += len(data)
            if self.ex is None and not self.parser.buffered:
                self.head_started = self.last_client
        else:
            # The client may shut its side after a complete request: the answer
            # still goes out; a request left incomplete fails in the parser.
            self.eof = True
        self.parser.receive_data(data)

    def on_upstream(self, mask: int) -> None:
        if self.ex is None:  # the attached connection closed or spoke: drop it
            up = self.up
            if up is not None:
                self.up = None
                up.close(self.reactor)
            return
        self.run(self._upstream_event, mask)

    def _upstream_event(self, mask: int) -> None:
        ex = self.ex
        up = self.up
        if ex is None or up is None or ex.finished or ex.state is X.CONNECTING:
            return
        if mask & EVENT_WRITE:
            self.connector.flush(self, ex, up)
        if mask & EVENT_READ and self.up is up:
            self.last_upstream = self.reactor.now
            if self.resp_splice is not None:
                self._step_resp_splice(ex)
            else:
                self.connector.read(self, ex, up)

    def resume(self, ex: Exchange) -> None:
        """A request filter that returned PENDING is done: run the filters again."""
        if self.ex is ex and ex.state is X.ADMITTING:
            self.run(self._filter_request, ex)

    def deliver_peer(self, ex: Exchange, found: Any) -> None:
        """What an upstream_peer step that returned PENDING found: a peer or an Answer."""
        if self.ex is ex and ex.state is X.CHOOSING:
            self.run(self._peer_found, (ex, found))

    # -- driving -------------------------------------------------------------------------
    def _drive(self) -> None:
        """Parse and act as far as the buffered bytes go, then write once per side."""
        while self.state is Conn.OPEN:
            ex = self.ex
            if ex is None:
                event = self.parser.next_event()
                if type(event) is Request:
                    self._begin(event)
                    continue
                if type(event) is ConnectionClosed:
                    self.mode.lifecycle.close_when_flushed(self)
                break
            progress = False
            state = ex.state
            if state is X.SENDING:
                progress = self._pump_request(ex)
                state = ex.state
            if self.ex is ex and (state is X.AWAITING or state is X.RELAYING
                                  or state is X.SENDING):
                progress = self._pump_response(ex) or progress
            if self.ex is not ex:
                continue  # the exchange ended: a pipelined request may be waiting
            if not progress:
                break
        if self._flush() and self.state is Conn.OPEN:
            self._drive()  # a full buffer got room: go on

    def _flush(self) -> bool:
        """Write what accumulated for either side; True when a full buffer got room."""
        up = self.up
        full = len(self.out) >= MAX_BUFFER or (up is not None and len(up.out) >= MAX_BUFFER)
        if self.out:
            self._flush_client()
        ex = self.ex
        if ex is not None and up is not None and up.out and self.up is up and not ex.finished:
            self.connector.flush(self, ex, up)
        if not full:
            return False
        up = self.up
        return len(self.out) < MAX_BUFFER and (up is None or len(up.out) < MAX_BUFFER)

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
        """Body bytes at hand go behind the head in the upstream buffer; True on progress."""
        up = self.up
        parser = self.parser
        if self.connector.splice is not None or up is None or parser.state is _DONE:
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
            if not rp.buffered and not up.eof:
                return False
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
        if self.resp_splice is not None or len(out) >= MAX_BUFFER:
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
        ex.peer = found
        ex.candidates = found.candidates(self.client_ip)
        if not ex.candidates:
            self.c[C.upstream_no_server] += 1
            self._answer(ex, self.mode.error(503, "no healthy server"))
            return
        self._act(ex, ex.step(E.PEER_CHOSEN))

    def _connect(self, ex: Exchange) -> None:
        self.connector.connect(self, ex)

    def _retry(self, ex: Exchange) -> None:
        self.connector.retry(self, ex)

    def on_dialed(self, sock: socket.socket, server: int, mask: int, reused: bool) -> None:
        if self.busy:
            self.use_connection((sock, server, mask, reused))
        else:
            self.run(self.use_connection, (sock, server, mask, reused))

    def use_connection(self, arg: tuple[socket.socket, int, int, bool]) -> None:
        sock, server, mask, reused = arg
        ex = self.ex
        assert ex is not None
        up = self.up
        if up is not None and up.sock is sock:
            up.reuse()
        else:
            up = self.up = UpstreamConnection(sock, ex.peer, server, mask, reused)
            self.reactor.modify(up.fd, mask, self.on_upstream)
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

    def on_dial_failed(self, timed_out: bool) -> None:
        if self.busy:
            self._dial_failed(timed_out)
        else:
            self.run(self._dial_failed, timed_out)

    def _dial_failed(self, timed_out: bool) -> None:
        ex = self.ex
        if ex is not None and not ex.finished:
            self._answer(ex, self.mode.error(502, "no upstream server could be reached"))

    def _send_request(self, ex: Exchange) -> None:
        up = self.up
        assert up is not None
        up.out += self.mode.request_head(self, ex)
        self._pump_request(ex)

    def _send_response_head(self, ex: Exchange) -> None:
        response = ex.response
        up = self.up
        assert response is not None and up is not None
        ex.upstream_time = self.reactor.now - ex.upstream_started
        self._count_status(response.status)
        rp = up.parser
        kind = rp.body_kind
        if kind is BodyKind.TUNNEL:  # 101 to an Upgrade, or a parent's 2xx to CONNECT
            self._act(ex, ex.step(E.TUNNEL))
            return
        self.out += self.mode.response_head(self, ex, kind, rp.content_length)

    def _finish(self, ex: Exchange) -> None:
        now = self.reactor.now
        self.ctx.slot.observe(H.request_seconds, now - ex.started)
        self.mode.ended(self, ex)
        up = self.up
        assert up is not None and ex.response is not None
        request_done = self.parser.state is _DONE
        self.served += 1
        self.ex = None
        self.connector.done()
        if ex.response.keep_alive and request_done and up.reusable():
            up.release()
            if not ex.keep_alive or self.eof:
                self.up = None
                up.to_pool(self.reactor, self.ctx.idle)
        else:
            self.up = None
            up.close(self.reactor)
        if not (request_done and ex.keep_alive) or self.eof:
            self.mode.lifecycle.close_when_flushed(self)
            return
        self.parser.start_next()
        self.head_started = self.last_client = now

    def _send_answer(self, ex: Exchange) -> None:
        answer = ex.answer
        assert answer is not None
        self.release_exchange(reset=True)
        self.out += answer.data
        self._count_status(answer.status)
        self.mode.ended(self, ex)
        self.ex = None
        close = answer.close
        if not close:  # keep the connection only if the request had no body to skip
            kind = ex.body_kind
            if kind is BodyKind.NONE or (kind is BodyKind.LENGTH and not ex.content_length):
                self.parser.read_body(bytearray(), chunked=False, limit=0)
            close = self.parser.state is not _DONE or not ex.keep_alive or self.eof
        if close:
            self.mode.lifecycle.close_when_flushed(self)
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

    # -- failures upstream ----------------------------------------------------------------
    def upstream_lost(self, ex: Exchange, detail: str) -> None:
        """The upstream connection failed while forwarding (``connector``, rules 2-3)."""
        if self.connector.lost(self, ex):
            self._act(ex, ex.step(E.UPSTREAM_LOST))
            return
        self.upstream_failed(ex, 502, f"upstream connection failed: {detail}")

    def upstream_failed(self, ex: Exchange, status: int, detail: str) -> None:
        if ex.peer is not None and ex.server >= 0:
            ex.peer.record_failure(ex.server)
        if ex.response is not None:
            self.abort()  # the client has part of a response: it must see it fail
        else:
            self._answer(ex, self.mode.error(status, detail))

    def release_exchange(self, reset: bool) -> None:
        """Stop whatever the exchange had under way upstream."""
        self.connector.cancel()
        if self.resp_splice is not None:
            self.resp_splice.release()
            self.resp_splice = None
        up = self.up
        if up is not None and up.active:
            self.up = None
            up.close(self.reactor, reset=reset)

    # -- bodies moved with splice ------------------------------------------------------------
    def _step_resp_splice(self, ex: Exchange) -> None:
        splice = self.resp_splice
        up = self.up
        assert splice is not None and up is not None
        if not splice.step():
            return
        self.resp_splice = None
        ex.sent += splice.moved
        up.received += splice.moved
        if up.parser.read_body(self.out, chunked=False, limit=MAX_BUFFER):
            self._act(ex, ex.step(E.RESPONSE_DONE))

    # -- writing -----------------------------------------------------------------------------
    def _flush_client(self) -> None:
        out = self.out
        if not out:
            if self.resp_splice is not None and self.ex is not None:
                self._step_resp_splice(self.ex)
            return
        n = self.transport.send(out)
        del out[:n]
        self.c[C.bytes_out] += n
        self.last_client = self.reactor.now
        if out:
            return
        if self.state is Conn.CLOSING:
            self.mode.lifecycle.close_now(self)
            return
        ex = self.ex
        up = self.up
        if (ex is not None and ex.state is X.RELAYING and up is not None and not ex.chunked_out
                and self.transport.can_splice and worth_splicing(up.parser)):
            self.resp_splice = BodySplice(self.ctx.pool, self.c, up.sock, self.transport.sock,
                                          up.parser, C.upstream_bytes_in, C.bytes_out)
            self._step_resp_splice(ex)

    def _interest(self) -> None:
        ex = self.ex
        up = self.up
        out = self.out
        mask = EVENT_WRITE if out or (self.resp_splice is not None
                                      and self.resp_splice.pending) else 0
        if self.state is Conn.OPEN and not self.eof:
            if ex is None:
                if len(out) < MAX_BUFFER:
                    mask |= EVENT_READ
            elif self.connector.splice is not None:
                if not self.connector.splice.pending:
                    mask |= EVENT_READ
            elif self.parser.buffered < MAX_BUFFER and (up is None or len(up.out) < MAX_BUFFER):
                mask |= EVENT_READ  # body bytes, or the client leaving
        if mask != self.mask:
            self.reactor.set_interest(self.transport.fd, self.mask, mask, self._on_client)
            self.mask = mask
        if self.up is not None:
            self.connector.interest(self, ex, self.up)

    # -- answers ---------------------------------------------------------------------------
    def _answer(self, ex: Exchange, answer: Answer) -> None:
        ex.answer = answer
        self._act(ex, ex.step(E.ANSWER))

    def answer(self, ex: Exchange, answer: Answer) -> None:
        """Answer the client for ``ex`` (the exchange ends, as its table allows)."""
        self._answer(ex, answer)

    def _count_status(self, status: int) -> None:
        counter = _RESPONSE_CLASS.get(status // 100)
        if counter is not None:
            self.c[counter] += 1

    def count_status(self, status: int) -> None:
        self._count_status(status)

    # -- the end of the connection (``lifecycle`` decides when) -------------------------------
    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweep."""
        self.mode.lifecycle.check_timeouts(self, now)

    def abort(self) -> None:
        """Close both sides at once with a reset (errors, fast shutdown, drain deadline)."""
        self.mode.lifecycle.abort(self)

    def closed(self) -> None:
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
        self.closed()


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
