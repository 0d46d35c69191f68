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

Rules (reuse and retries: ``connector``; endings: ``lifecycle``):

1. A request reaches no upstream before its head and the body bytes at hand
   are parsed: a framing error found then answers the client and sends
   nothing. An error found later in a streamed body resets the upstream
   connection, so no backend sees a complete request.
2. A body that arrived with its head leaves with it (``read_body`` appends it
   behind the head); chunked bodies are re-framed a whole read at a time;
   large bodies move with splice (``splice.BodySplice``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastproxy.errors import ProtocolError
from fastproxy.http import BodyKind, ConnectionClosed, InformationalResponse, Request, Response
from fastproxy.http import State as ParserState
from fastproxy.http.rewrite import edit_head, upgrade_protocols
from fastproxy.modes.connector import Connector
from fastproxy.modes.exchange import TERMINAL, TRANSITIONS, Action, Answer, Exchange
from fastproxy.modes.exchange import Event as E
from fastproxy.modes.exchange import State as X
from fastproxy.modes.lifecycle import Conn
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


class ClientConnection:
    """See the module docstring. For the steps: ``resume(ex)``,
    ``deliver_peer(ex, peer_or_answer)``; for the worker: ``abort()``,
    ``check_timeouts(now)`` (in ``lifecycle``)."""

    __slots__ = ("mode", "ctx", "reactor", "c", "transport", "client_ip", "parser",
                 "out", "mask", "state", "ex", "up", "connector",
                 "relay", "eof", "last_client", "last_upstream", "head_started", "served",
                 "busy")

    def __init__(self, mode: HttpMode, sock: socket.socket, addr: tuple[str, int]) -> None:
        ctx = mode.ctx
        self.mode = mode
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.c = ctx.c
        self.transport = PlainTransport(sock)
        self.client_ip = addr[0]
        self.parser = mode.new_parser()
        self.out = bytearray()
        self.mask = 0
        self.state = Conn.OPEN
        self.ex: Exchange | None = None
        self.up: UpstreamConnection | None = None   # the exchange's, or attached between requests
        self.connector = Connector()
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
            if self.ex is None and not self.parser.buffer:
                self.head_started = self.last_client
        else:  # after a complete request the answer still goes out (half-close)
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
        if ex is None or up is None or ex.state in TERMINAL or ex.state is X.CONNECTING:
            return
        connector = self.connector
        if mask & EVENT_WRITE:
            connector.flush(self, ex, up)
        if mask & EVENT_READ and self.up is up:
            self.last_upstream = self.reactor.now
            if connector.resp_splice is not None:
                connector.step_response_splice(self, ex)
            else:
                connector.read(self, ex, up)

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
        parser = self.parser
        while self.state is Conn.OPEN:
            ex = self.ex
            if ex is None:
                if not parser.buffer and not self.eof:
                    break
                event = parser.next_event()
                if type(event) is Request:
                    self._begin(event)
                    continue
                if type(event) is ConnectionClosed:
                    self.mode.lifecycle.close_when_flushed(self)
                break
            # only bytes at hand (or an EOF) can make progress; actions pump the rest
            progress = False
            state = ex.state
            if state is X.SENDING and parser.state is not _DONE and (parser.buffer or self.eof):
                progress = self._pump_request(ex)
                state = ex.state
            up = self.up
            if (self.ex is ex and up is not None and (up.parser.buffer or up.eof)
                    and (state is X.AWAITING or state is X.RELAYING or state is X.SENDING)):
                progress = self._pump_response(ex) or progress
            if self.ex is not ex:
                continue  # the exchange ended: a pipelined request may be waiting
            if not progress:
                break
        # Write what accumulated, one send per side; go on if a full buffer got room.
        up = self.up
        full = len(self.out) >= MAX_BUFFER or (up is not None and len(up.out) >= MAX_BUFFER)
        if self.out:
            self._flush_client()
        ex = self.ex
        if (ex is not None and up is not None and up.out and self.up is up
                and ex.state not in TERMINAL):
            self.connector.flush(self, ex, up)
        if full and self.state is Conn.OPEN:
            up = self.up
            if len(self.out) < MAX_BUFFER and (up is None or len(up.out) < MAX_BUFFER):
                self._drive()

    def _begin(self, request: Request) -> None:
        self.c[C.requests] += 1
        parser = self.parser
        ex = Exchange(request, parser.body_kind, parser.content_length, self.reactor.now,
                      b"upgrade" in request.options and bool(upgrade_protocols(request)),
                      self.mode.phases.for_method(request.method))
        self.ex = ex
        self.act(ex, E.HEAD_PARSED)

    def act(self, ex: Exchange, event: E) -> None:
        """Step the exchange and carry out the action its table names."""
        try:  # ex.step, inlined on the hot path; it raises IllegalTransition
            ex.state, action = TRANSITIONS[ex.state, event]
        except KeyError:
            action = ex.step(event)
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
            if not rp.buffer and not up.eof:
                return False
            event = rp.next_event()
            kind = type(event)
            if kind is Response:
                ex.response = event  # type: ignore[assignment]
                self.act(ex, E.RESPONSE_HEAD)
                if self.ex is not ex or ex.state is not X.RELAYING:
                    return True
                # the body at hand (or none at all: 304, HEAD) goes with the head
            elif kind is InformationalResponse:
                info: InformationalResponse = event  # type: ignore[assignment]
                self.out += edit_head(b"HTTP/1.1 %d %s\r\n" % (info.status, info.reason), info)
                self.c[C.responses_1xx] += 1
                return True
            else:
                return False
        out = self.out
        if self.connector.resp_splice is not None or len(out) >= MAX_BUFFER:
            return False
        before = len(out)
        done = rp.read_body(out, chunked=ex.chunked_out, limit=MAX_BUFFER)
        ex.sent += len(out) - before
        if done:
            self.act(ex, E.RESPONSE_DONE)
            return True
        return len(out) != before

    # -- actions (named by the exchange's transition table) ------------------------------
    def _filter_request(self, ex: Exchange) -> None:
        self.mode.filter_request(self, ex)

    def _choose_peer(self, ex: Exchange) -> None:
        self.mode.choose_peer(self, ex)

    def _peer_found(self, arg: tuple[Exchange, Any]) -> None:
        self.mode.peer_found(self, *arg)

    def _connect(self, ex: Exchange) -> None:
        self.connector.connect(self, ex)

    def _retry(self, ex: Exchange) -> None:
        self.connector.retry(self, ex)

    def use_connection(self, arg: tuple[socket.socket, int, int, bool]) -> None:
        sock, server, mask, reused = arg
        ex = self.ex
        assert ex is not None
        up = self.up
        if up is not None and up.sock is sock:
            up.reuse()
        else:
            up = self.up = UpstreamConnection(sock, ex.peer, server, mask, reused,
                                              self.mode.response_memo)
            self.reactor.modify(up.fd, mask, self.on_upstream)
        up.parser.expect(ex.request.method, upgrade=ex.upgrade)
        ex.server = server
        ex.upstream_started = self.last_upstream = self.reactor.now
        for connected in ex.hooks.connected:
            greeting = connected(self, ex)
            if greeting is not None:  # the step answers the client and tunnels
                self.out += greeting
                self.act(ex, E.TUNNEL)
                return
        self.act(ex, E.CONNECTED)

    def dial_failed(self, timed_out: bool) -> None:
        ex = self.ex
        if ex is not None and ex.state not in TERMINAL:
            self.answer(ex, self.mode.error(502, "no upstream server could be reached"))

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
        counter = _RESPONSE_CLASS.get(response.status // 100)
        if counter is not None:
            self.c[counter] += 1
        rp = up.parser
        kind = rp.body_kind
        if kind is BodyKind.TUNNEL:  # 101 to an Upgrade, or a parent's 2xx to CONNECT
            self.act(ex, E.TUNNEL)
            return
        self.out += self.mode.response_head(self, ex, kind, rp.content_length)

    def _finish(self, ex: Exchange) -> None:
        now = self.reactor.now
        self.ctx.slot.observe(H.request_seconds, now - ex.started)
        for log_step in ex.hooks.logging:
            log_step(self, ex)
        up = self.up
        assert up is not None and ex.response is not None
        request_done = self.parser.state is _DONE
        self.served += 1
        self.ex = None
        self.connector.dialer = None  # the walk is over
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
        self.count_status(answer.status)
        self.mode.ended(self, ex)
        self.ex = None
        close = answer.close or self.ctx.draining
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
        self.mode.lifecycle.tunnel(self, ex)

    def _release(self, ex: Exchange) -> None:
        self.abort()

    def release_exchange(self, reset: bool) -> None:
        """Stop whatever the exchange had under way upstream."""
        self.connector.cancel()
        up = self.up
        if up is not None and up.active:
            self.up = None
            up.close(self.reactor, reset=reset)

    # -- writing -----------------------------------------------------------------------------
    def _flush_client(self) -> None:
        out = self.out
        if not out:
            if self.connector.resp_splice is not None and self.ex is not None:
                self.connector.step_response_splice(self, self.ex)
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
        if ex is not None and ex.state is X.RELAYING and not ex.chunked_out:
            self.connector.splice_response(self, ex)

    def _interest(self) -> None:
        ex = self.ex
        up = self.up
        out = self.out
        resp = self.connector.resp_splice
        mask = EVENT_WRITE if out or (resp is not None and resp.pending) else 0
        if self.state is Conn.OPEN and not self.eof:
            if ex is None:
                if len(out) < MAX_BUFFER:
                    mask |= EVENT_READ
            elif self.connector.splice is not None:
                if not self.connector.splice.pending:
                    mask |= EVENT_READ
            elif len(self.parser.buffer) < MAX_BUFFER and (up is None or len(up.out) < MAX_BUFFER):
                mask |= EVENT_READ  # body bytes, or the client leaving
        if mask != self.mask:
            self.reactor.set_interest(self.transport.fd, self.mask, mask, self._on_client)
            self.mask = mask
        if self.up is not None:
            self.connector.interest(self, ex, self.up)

    # -- answers ---------------------------------------------------------------------------
    def answer(self, ex: Exchange, answer: Answer) -> None:
        """Answer the client for ``ex`` (the exchange ends, as its table allows)."""
        ex.answer = answer
        self.act(ex, E.ANSWER)

    def count_status(self, status: int) -> None:
        counter = _RESPONSE_CLASS.get(status // 100)
        if counter is not None:
            self.c[counter] += 1

    # -- the end of the connection (``lifecycle`` decides when) -------------------------------
    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweep."""
        self.mode.lifecycle.check_timeouts(self, now)

    def abort(self) -> None:
        """Close both sides at once with a reset (errors, fast shutdown, drain deadline)."""
        self.mode.lifecycle.abort(self)

    def drain(self) -> None:
        """The worker drains (reload, QUIT): see ``Lifecycle.drain``."""
        self.mode.lifecycle.drain(self)

    def closed(self) -> None:
        self.ctx.session_closed(self)


_ACTIONS: dict[Action, Callable[[ClientConnection, Exchange], None]] = {
    Action.NONE: lambda conn, ex: None,
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
