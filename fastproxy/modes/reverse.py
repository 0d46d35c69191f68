"""HTTP reverse proxy mode: parse, route, forward, stream back, keep alive.

Theory of operation
-------------------
One ``HttpSession`` per client connection runs the exchanges on it one at
a time (pipelined requests wait in the parser's buffer, so responses leave
in order). An exchange:

1. *head*: bytes go into a ``RequestParser`` until it yields a Request (the
   parser applies the strict RFC 9112 policy; any ProtocolError is answered
   with its status and the connection closed, so nothing after a bad head
   can reach an upstream);
2. *route*: the first route matching host and path prefix, else the
   listener's upstream; the balancer's candidates are tried in order,
   taking an idle pooled connection to a candidate when there is one;
3. *forward*: the rewritten head (hop-by-hop fields removed,
   X-Forwarded-*, Via, our framing) and the body go up; the response comes
   back through a ``ResponseParser`` and down to the client. Bodies of known
   length above ``SPLICE_MIN`` bypass the parsers and move with splice
   (``relay.Mover``); the rest are copied, chunked bodies re-framed with
   their original chunk boundaries and extensions;
4. *finish*: the upstream connection returns to the pool when both
   messages were complete and the server keeps it alive; the client
   connection is kept alive unless either side asked to close.

Size: about 770 lines, over the 500 budget, because one exchange's state
(two parsers, two buffers, two movers, timeouts) is a single object whose
transitions are easiest to check side by side; the upstream connection's
bookkeeping lives apart, in ``upstreamlink``.

A 101 answer to an Upgrade request hands both sockets to a ``Relay``.
Reads on a side pause while the other side's output buffer holds
``MAX_BUFFER`` bytes (back-pressure). Timeouts are checked by the worker's
sweep: client_header (408), idle (keep-alive), connect (next server),
upstream_read (504, or abort once the response has begun).
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    NEED_DATA,
    BodyKind,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Field,
    InformationalResponse,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    add_forwarded_for,
    add_via,
    decrement_max_forwards,
    encode_last_chunk,
    encode_piece,
    frame_headers,
    remove_fields,
    remove_hop_by_hop,
    serialize_request,
    serialize_response,
    upgrade_protocols,
)
from fastproxy.http.headers import is_field_address
from fastproxy.http.quick import Memo, quick_get, quick_limit, quick_response_head
from fastproxy.modes.express import ExpressLane
from fastproxy.modes.httpcommon import (
    MAX_BUFFER,
    READ_SIZE,
    CompiledRoute,
    Phase,
    access_line,
    error_response,
    host_of,
    max_forwards_answer,
    parser_limits,
)
from fastproxy.reactor import EVENT_READ, EVENT_WRITE
from fastproxy.relay import DONE, Mover, Relay, set_reset
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from fastproxy.config import Listener
    from fastproxy.worker import UpstreamRuntime, WorkerContext

log = logging.getLogger("fastproxy")

# Known-length bodies from this size bypass the parser and move with splice.
# Measured (bench/RESULTS.md, "splice threshold"): proxy CPU per response,
# copy vs splice: 128 KiB 136 vs 151 us, 256 KiB 249 vs 193 us, 1 MiB 828 vs
# 526 us, 4 MiB 3743 vs 2211 us.
SPLICE_MIN = 256 * 1024
# A client idle this long between requests gives its attached upstream
# connection back to the pool, where ``keepalive`` bounds the idle ones.
PARK_SECONDS = 1.0
_RESPONSE_CLASS = {1: C.responses_1xx, 2: C.responses_2xx, 3: C.responses_3xx,
                   4: C.responses_4xx, 5: C.responses_5xx}


class HttpMode:
    """Per-listener handler for ``mode = "http"``."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        self.ctx = ctx
        self.listener = listener
        self.limits = parser_limits(listener.limits)
        self.quick_requests = self.quick_memo(quick_get)
        self.quick_responses = (self.quick_memo(quick_response_head, keep_alive=False),
                                self.quick_memo(quick_response_head, keep_alive=True))
        self.routes = [CompiledRoute.from_config(r) for r in listener.routes]
        assert listener.upstream is not None
        self.default = ctx.upstreams[listener.upstream]

    def accepted(self, sock: socket.socket, addr: tuple[str, int], initial: bytes = b"") -> None:
        session = HttpSession(self, sock, addr)
        if initial:
            session.parser.receive_data(initial)
        session.start()

    def quick_memo(self, function: Callable[..., Any], keep: Callable[[bytes], bool] | None = None,
                   **kwargs: Any) -> Memo:
        """A memo of a quick function (``http.quick``) under this listener's limits."""
        return Memo(functools.partial(function, limit=quick_limit(self.limits),
                                      max_fields=self.limits.max_fields, **kwargs), keep=keep)

    def route(self, request: Request) -> UpstreamRuntime:
        return self.route_to(request.authority, request.path)

    def route_to(self, authority: bytes, path: bytes) -> UpstreamRuntime:
        if not self.routes:
            return self.default
        host = host_of(authority)
        for route in self.routes:
            if route.matches(host, path):
                return self.ctx.upstreams[route.upstream]
        return self.default


class HttpSession(ExpressLane):
    """One client connection; see the module docstring."""

    def __init__(self, mode: HttpMode, client: socket.socket, addr: tuple[str, int]) -> None:
        self.mode = mode
        self.ctx = mode.ctx
        self.client = client
        self.cfd = client.fileno()
        self.addr = addr
        self.parser = RequestParser(mode.limits)
        self.cout = bytearray()
        self.uout = bytearray()
        self.masks: dict[int, int] = {}
        self.phase = Phase.HEAD
        now = self.ctx.reactor.now
        self.last_client = self.last_upstream = self.head_started = now
        self.client_eof = False
        self.req_fed = True   # the request parser may have an event to give
        self.served = 0
        self._relay: Relay | None = None
        # The upstream connection of the last exchange, kept attached while
        # the client is between requests: the next request to the same
        # server reuses it without a trip through the idle pool.
        self.parked: tuple[UpstreamRuntime, int, socket.socket] | None = None
        # The express exchange in flight: (client bytes, head sent, candidates, keep-alive).
        self.express: tuple[bytes, bytes, list[int], bool] | None = None
        self._xsuffix = (b"", b"")  # (host, the fields appended for it), per client
        # Quick GETs take the express lane, unless the client address is one
        # add_forwarded_for refuses (e.g. with a zone id): the general path decides then.
        self._express_ok = is_field_address(addr[0])
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.request: Request | None = None
        self.response: Response | None = None
        self.upstream: UpstreamRuntime | None = None
        self.up: socket.socket | None = None
        self.ufd = -1
        self.resp: ResponseParser | None = None
        self.candidates: list[int] = []
        self.attempts = 0
        self.server = -1
        self.reused = False
        self.req_done = False
        self.resp_done = False
        self.req_chunked = False
        self.resp_chunked = False
        self.req_mover: Mover | None = None
        self.resp_mover: Mover | None = None
        self.resp_bytes = 0
        self.resp_head_sent = False
        self.upgrade = False
        self.exchange_started = self.ctx.reactor.now
        self.upstream_started = 0.0
        self.upstream_time: float | None = None
        self.client_keepalive = False
        self.resp_fed = False         # the response parser may have an event to give
        self.active_counted = False   # this exchange holds one of the server's "active"
        self.head = b""               # the forwarded request head (for a retry)
        self.reuse_ok = True          # may take a pooled/parked upstream connection
        self.readmitted = False       # _begin runs again for a request already counted
        self.out_headers: list = []   # type: ignore[type-arg]  # the forwarded fields
        self.up_sent = 0
        self.prechosen: tuple[UpstreamRuntime, list[int]] | None = None  # see _express_request

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.ctx.session_opened(self)
        self._set_mask(self.cfd, EVENT_READ, self._on_client)
        if self.parser.buffered:  # bytes that came with a PROXY header
            self._on_client(0)

    def close(self, reset: bool = False) -> None:
        if self.phase is Phase.CLOSED:
            return
        if self.phase is not Phase.TUNNEL:
            self._drop_upstream(reusable=False)
            self._unpark_to_pool()
            self._release_movers()
            if self.masks.get(self.cfd):
                self.ctx.reactor.forget(self.cfd)
            if reset:
                set_reset(self.client)
            self.client.close()
        self.phase = Phase.CLOSED
        self.ctx.session_closed(self)

    def abort(self) -> None:
        if self.phase is Phase.TUNNEL and self._relay is not None:
            self._relay.close("error")
        else:
            self.close(reset=True)

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's periodic sweep (not from a socket event)."""
        if self.phase is Phase.EXPRESS:
            # The only timeout an express exchange can meet is upstream_read's.
            if now - self.last_upstream < self.mode.listener.timeouts.upstream_read:
                return
            self._demote()
        if self.phase is Phase.TUNNEL:
            self._check_timeouts(now)
        else:
            self._run(self._check_timeouts, now)

    def _check_timeouts(self, now: float) -> None:
        timeouts = self.mode.listener.timeouts
        if self.phase is Phase.HEAD:
            if self.parked is not None and now - self.last_client >= PARK_SECONDS:
                self._unpark_to_pool()  # an idle client keeps no upstream connection
            if self.parser.buffered:  # a head has begun: slowloris guard
                if now - self.head_started >= timeouts.client_header:
                    self._fail(408, "request head not received in time")
            elif now - self.last_client >= (timeouts.idle if self.served else timeouts.client_header):
                self.close()  # nothing sent: close quietly, as nginx does
        elif self.phase is Phase.CONNECT:
            if now - self.last_upstream < timeouts.connect:
                return
            if self.up is None:  # still resolving or checking credentials
                self._fail(504, "no upstream chosen in time")
                return
            self.ctx.c[C.upstream_connect_timeouts] += 1
            self._connect_failed()
        elif self.phase is Phase.FORWARD:
            if now - self.last_upstream >= timeouts.upstream_read:
                self._upstream_failed(504, "upstream timed out")
            elif not self.req_done and now - self.last_client >= timeouts.idle:
                self.close(reset=True)
        elif self.phase is Phase.CLOSING and now - self.last_client >= timeouts.idle:
            self.close(reset=True)
        elif self.phase is Phase.TUNNEL and self._relay is not None:
            if self._relay.idle_expired(now):
                self.ctx.c[C.idle_timeouts] += 1
                self._relay.close("idle")

    # -- events -----------------------------------------------------------------
    def _run(self, step: Callable[..., None], *args: Any) -> None:
        """Every entry into the session (socket events, the sweep, resolver
        answers) goes through here: do ``step(*args)``, drive the parsers,
        then set the selector interest. A ProtocolError is answered with its
        status; any other OSError aborts both connections."""
        if self.phase in (Phase.CLOSED, Phase.TUNNEL):
            return
        try:
            step(*args)
            self._drive()
        except ProtocolError as exc:
            self._protocol_error(exc)
        except OSError:
            self.close(reset=True)
        self._update_interest()

    def _on_client(self, mask: int) -> None:
        phase = self.phase
        if (phase is Phase.HEAD and mask == EVENT_READ and self._express_ok
                and not self.cout and not self.parser.buffered):
            try:
                data = self.client.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close(reset=True)
                return
            if not (data and self._express_request(data)):
                self._run(self._client_bytes, data)
            return
        if phase is Phase.EXPRESS:
            self._demote()
        self._run(self._client_event, mask)

    def _client_event(self, mask: int) -> None:
        if mask & EVENT_WRITE:
            self._flush_client()
        if mask & EVENT_READ and self.phase not in (Phase.CLOSED, Phase.TUNNEL):
            self._read_client()

    def _on_upstream(self, mask: int) -> None:
        if self.phase is Phase.EXPRESS:
            self._express_response()
            return
        if self.phase is Phase.HEAD:  # the parked connection closed or spoke: drop it
            self._drop_parked()
            return
        self._run(self._upstream_event, mask)

    def _upstream_event(self, mask: int) -> None:
        if self.phase is Phase.CONNECT:
            self._on_connect_event()
            return
        if mask & EVENT_WRITE:
            self._flush_upstream()
        if mask & EVENT_READ and self.phase is Phase.FORWARD:
            self._read_upstream()

    def _read_client(self) -> None:
        if self.req_mover is not None:
            self.last_client = self.ctx.reactor.now
            self._step_req_mover()
            return
        try:
            data = self.client.recv(READ_SIZE)
        except BlockingIOError:
            return
        self._client_bytes(data)

    def _client_bytes(self, data: bytes) -> None:
        """What one client read returned (``b""`` at EOF) goes to the request parser."""
        self.last_client = self.ctx.reactor.now
        if not data:
            self.client_eof = True
            if self.phase is not Phase.HEAD and not self.req_done:
                self.close(reset=True)  # gone mid-request: free the upstream now
                return
        else:
            if self.phase is Phase.HEAD and not self.parser.buffered:
                self.head_started = self.ctx.reactor.now
            self.ctx.c[C.bytes_in] += len(data)
        self.parser.receive_data(data)
        self.req_fed = True

    # -- driving the parsers --------------------------------------------------------
    def _drive(self) -> None:
        """Parse as far as the buffered bytes go, then write.

        Parsing comes first so that a request whose whole body arrived with
        its head is validated before a byte of it is sent upstream: a
        framing error then reaches no backend (SPEC). A body that streams in
        over several reads is forwarded as it comes; an error found later in
        it resets the upstream connection, so no backend ever sees a
        complete request.
        """
        while self.phase not in (Phase.CLOSED, Phase.TUNNEL):
            progress = self._drive_request()
            if self.phase is Phase.FORWARD and self.resp is not None:
                progress = self._drive_response() or progress
            if progress:
                continue
            full = len(self.uout) >= MAX_BUFFER or len(self.cout) >= MAX_BUFFER
            if self.cout:
                self._flush_client()
            if self.uout and self.phase is Phase.FORWARD:
                self._flush_upstream()
            if not full or len(self.uout) >= MAX_BUFFER or len(self.cout) >= MAX_BUFFER:
                return  # parsing stopped for want of bytes, not of buffer room

    def _drive_request(self) -> bool:
        if self.phase is Phase.HEAD:
            if not self.req_fed:
                return False
            event = self.parser.next_event()
            if isinstance(event, Request):
                self._begin(event)
                return True
            if isinstance(event, ConnectionClosed):
                self._close_after_flush()
            self.req_fed = False  # nothing more until the client sends bytes
            return False
        if self.phase is not Phase.FORWARD or self.req_done or self.req_mover is not None:
            return False
        progress = False
        while len(self.uout) < MAX_BUFFER:
            event = self.parser.next_event()
            if isinstance(event, Data):
                self.uout += encode_piece(event) if self.req_chunked else event.data
            elif isinstance(event, EndOfMessage):
                if self.req_chunked:
                    self.uout += encode_last_chunk(event.trailers)
                self.req_done = True
                return True
            else:
                if (event is NEED_DATA and not self.uout and self.up is not None
                        and self._splice_worthy(self.parser)):
                    self.req_mover = Mover(self.ctx.pool, self.ctx.c, self.client, self.up,
                                           self.parser.body_remaining, self._req_read,
                                           C.upstream_bytes_out)
                    return self._step_req_mover() or progress
                return progress
            progress = True
        return progress

    def _drive_response(self) -> bool:
        assert self.resp is not None
        if self.resp_done or self.resp_mover is not None or not self.resp_fed:
            return False
        progress = False
        while len(self.cout) < MAX_BUFFER:
            event = self.resp.next_event()
            if isinstance(event, Response):
                self._on_response(event)
                if self.phase is Phase.TUNNEL:
                    return False
            elif isinstance(event, InformationalResponse):
                self.cout += serialize_response(event, remove_hop_by_hop(event.headers))
            elif isinstance(event, Data):
                self.cout += encode_piece(event) if self.resp_chunked else event.data
            elif isinstance(event, EndOfMessage):
                if self.resp_chunked:
                    self.cout += encode_last_chunk(event.trailers)
                self._response_complete()
                return True
            else:
                self.resp_fed = False  # nothing more until bytes arrive or cout drains
                if event is NEED_DATA and not self.cout and self._splice_worthy(self.resp):
                    assert self.up is not None
                    self.resp_mover = Mover(self.ctx.pool, self.ctx.c, self.up, self.client,
                                            self.resp.body_remaining, self._resp_read,
                                            C.bytes_out)
                    return self._step_resp_mover() or progress
                return progress
            progress = True
        return progress

    @staticmethod
    def _splice_worthy(parser: RequestParser | ResponseParser) -> bool:
        remaining = parser.body_remaining
        if parser.body_kind is BodyKind.CLOSE:
            return True
        return parser.body_kind is BodyKind.LENGTH and remaining is not None and remaining >= SPLICE_MIN

    # -- an exchange ------------------------------------------------------------------
    def _begin(self, request: Request) -> None:
        ctx = self.ctx
        if self.readmitted:  # the same request again, after a deferred admission check
            self.readmitted = False
        else:
            ctx.c[C.requests] += 1
            self.exchange_started = ctx.reactor.now
        self.request = request
        self.phase = Phase.CONNECT  # until a server is connected (or an answer is queued)
        self.last_upstream = ctx.reactor.now
        if not self._admit(request):
            return
        headers: Sequence[Field] = request.headers
        if request.method in (b"OPTIONS", b"TRACE"):
            headers, answer_here = decrement_max_forwards(request.method, request.headers)
            if answer_here:
                self._answer_locally(request)
                return
        self.upgrade = bool(upgrade_protocols(request.headers))
        kind = self.parser.body_kind
        self.req_chunked = kind is BodyKind.CHUNKED
        headers = frame_headers(self._rewrite_headers(request, headers), kind,
                                self.parser.content_length)
        self.out_headers = headers
        self.head = serialize_request(request, headers, target=self._forward_target(request))
        self.uout = bytearray(self.head)
        self.req_done = kind is BodyKind.NONE or (kind is BodyKind.LENGTH
                                                   and not self.parser.content_length)
        if self.req_done:
            self.parser.next_event()  # EndOfMessage of a body-less request
        self._choose_upstream(request)

    # -- hooks a subclass (the forward mode) overrides ----------------------------------
    def _admit(self, request: Request) -> bool:
        """Refuse what this mode does not serve; False when already answered."""
        if request.method == b"CONNECT":
            raise ProtocolError("CONNECT is not served by a reverse proxy", status=501)
        return True

    def _rewrite_headers(self, request: Request, headers: Sequence[Field]) -> list[Field]:
        headers = remove_hop_by_hop(headers, keep_upgrade=self.upgrade)
        if request.form == "absolute":  # the target wins over Host (SPEC)
            headers = remove_fields(headers, (b"host",))
            headers.insert(0, (b"Host", request.authority))
        headers = add_forwarded_for(headers, self.addr[0].encode(), proto=b"http",
                                    host=request.authority or None)
        return add_via(headers, request.version)

    def _forward_target(self, request: Request) -> bytes:
        return request.path

    def _prepare_socket(self, sock: socket.socket) -> None:
        """Called on each new upstream socket before connect (e.g. bind)."""

    def _connected(self) -> None:
        """Called once the upstream connection is usable for this exchange."""

    def _choose_upstream(self, request: Request) -> None:
        if self.prechosen is not None:  # the express lane consulted the balancer already
            self.upstream, self.candidates = self.prechosen
            self.prechosen = None
        else:
            self.upstream = self.mode.route(request)
            self.candidates = self.upstream.candidates(self.addr[0])
        if not self.candidates:
            self.ctx.c[C.upstream_no_server] += 1
            self._fail(503, "no healthy server")
            return
        self._next_server()

    def _answer_locally(self, request: Request) -> None:
        """OPTIONS/TRACE with Max-Forwards: 0 (RFC 9110 §7.6.2)."""
        self.cout += max_forwards_answer(request)
        self.ctx.c[C.responses_2xx] += 1
        self._log(200, 0)
        self.parser.next_event()
        self._next_request(request.keep_alive)

    # -- responses ------------------------------------------------------------------
    def _on_response(self, response: Response) -> None:
        assert self.resp is not None and self.request is not None
        self.response = response
        self.upstream_time = self.ctx.reactor.now - self.upstream_started
        status_class = _RESPONSE_CLASS.get(response.status // 100)
        if status_class is not None:
            self.ctx.c[status_class] += 1
        if (response.status == 101 and self.upgrade) or (
                self.request.method == b"CONNECT" and 200 <= response.status < 300):
            self._start_tunnel(response)  # an upgrade, or a parent proxy's tunnel
            return
        kind = self.resp.body_kind
        headers = remove_hop_by_hop(response.headers)
        if kind is BodyKind.CHUNKED and self.request.version == b"1.0":
            kind = BodyKind.CLOSE  # no chunked towards HTTP/1.0 (RFC 9112 §6.1): until close
        keep = self.request.keep_alive and kind is not BodyKind.CLOSE
        if kind is BodyKind.CLOSE:
            headers = frame_headers(headers, kind)
        else:
            headers = frame_headers(headers, kind, self.resp.content_length)
        if not keep:
            headers.append((b"Connection", b"close"))
        elif self.request.version == b"1.0":
            headers.append((b"Connection", b"keep-alive"))
        self.resp_chunked = kind is BodyKind.CHUNKED
        self.client_keepalive = keep
        self.cout += serialize_response(response, headers)
        self.resp_head_sent = True

    def _response_complete(self) -> None:
        assert self.response is not None and self.request is not None
        self.resp_done = True
        ctx = self.ctx
        ctx.slot.observe(H.request_seconds, ctx.reactor.now - self.exchange_started)
        reusable = (self.response.keep_alive and self.req_done
                    and self.resp is not None and not self.resp.buffered)
        self._log(self.response.status, self.resp_bytes)
        if reusable and self.client_keepalive and not self.client_eof:
            self._park()
        else:
            self._drop_upstream(reusable)
        self.served += 1
        if not self.req_done:
            self._close_after_flush()
            return
        self._next_request(self.client_keepalive)

    def _next_request(self, keep_alive: bool) -> None:
        if not keep_alive or self.client_eof:
            self._close_after_flush()
            return
        self.parser.start_next()
        self.req_fed = True  # pipelined bytes may already wait
        self._reset_exchange()
        self.phase = Phase.HEAD
        self.head_started = self.last_client = self.ctx.reactor.now

    def _start_tunnel(self, response: Response) -> None:
        assert self.resp is not None and self.up is not None
        head = serialize_response(response, remove_hop_by_hop(response.headers, keep_upgrade=True))
        self.resp.next_event()  # EndOfMessage; the parser is now in TUNNEL
        self.ctx.c[C.tunnels] += 1
        self._log(response.status, 0)
        self._tunnel(head + self.resp.trailing_data[0])

    def _tunnel(self, to_client: bytes) -> None:
        """Hand both sockets to a Relay, with what each side still has to get."""
        assert self.up is not None
        to_client = bytes(self.cout) + to_client
        to_upstream = bytes(self.uout) + self.parser.trailing_data[0]
        masks = dict(self.masks)
        self.phase = Phase.TUNNEL
        relay = Relay(self.ctx.reactor, self.ctx.pool, self.ctx.c, self.client, self.up,
                      self._on_tunnel_closed, self.mode.listener.timeouts.idle)
        self._relay = relay
        relay.start(masks.get(self.ufd, 0), client_registered_mask=masks.get(self.cfd, 0),
                    to_upstream=to_upstream, to_client=to_client)

    def _on_tunnel_closed(self, relay: Relay, reason: str) -> None:
        self._relay = None
        if self.upstream is not None and self.server >= 0:
            self.upstream.session_closed(self.server, relay.up.moved, relay.down.moved)
        self.phase = Phase.CLOSED
        self.ctx.session_closed(self)

    # -- errors ------------------------------------------------------------------------
    def _protocol_error(self, exc: ProtocolError) -> None:
        if exc.side.value == "upstream":
            self._upstream_failed(502, str(exc))
            return
        self.ctx.c[C.client_errors] += 1
        self._fail(exc.status, str(exc))

    def _fail(self, status: int, detail: str) -> None:
        """Answer ``status`` (unless a response already began), then close."""
        self._drop_upstream(reusable=False)
        self._release_movers()
        self.resp = None
        if self.resp_head_sent:
            self.close(reset=True)
            return
        self.cout += error_response(status, detail if status < 500 else "")
        status_class = _RESPONSE_CLASS.get(status // 100)
        if status_class is not None:
            self.ctx.c[status_class] += 1
        self._log(status, 0)
        self._close_after_flush()

    def _close_after_flush(self) -> None:
        self.phase = Phase.CLOSING
        if not self.cout:
            self.close()

    # -- body movers, output --------------------------------------------------------------
    def _release_movers(self) -> None:
        for mover in (self.req_mover, self.resp_mover):
            if mover is not None:
                mover.release()
        self.req_mover = self.resp_mover = None

    # -- body movers --------------------------------------------------------------------
    def _req_read(self, n: int) -> None:
        self.ctx.c[C.bytes_in] += n
        self.parser.body_consumed(n)

    def _resp_read(self, n: int) -> None:
        assert self.resp is not None
        self.ctx.c[C.upstream_bytes_in] += n
        self.resp_bytes += n
        self.resp.body_consumed(n)

    def _step_req_mover(self) -> bool:
        """True when the body is complete."""
        assert self.req_mover is not None
        if self.req_mover.step() != DONE:
            return False
        self.req_mover = None
        event = self.parser.next_event()
        assert isinstance(event, EndOfMessage)
        self.req_done = True
        return True

    def _step_resp_mover(self) -> bool:
        """True when the response is complete (the session has moved on)."""
        assert self.resp_mover is not None and self.resp is not None
        if self.resp_mover.step() != DONE:
            return False
        if self.resp_mover.eof:
            self.resp.receive_data(b"")
            self.resp_fed = True
        self.resp_mover = None
        event = self.resp.next_event()
        assert isinstance(event, EndOfMessage)
        self._response_complete()
        return True

    # -- output and interest ------------------------------------------------------------
    def _flush_client(self) -> None:
        if self.resp_mover is not None and not self.cout:
            self._step_resp_mover()
            return
        if not self.cout:
            return
        try:
            n = self.client.send(self.cout)
        except BlockingIOError:
            return
        except OSError:
            self.close(reset=True)
            return
        del self.cout[:n]
        self.ctx.c[C.bytes_out] += n
        if not self.cout:
            if self.phase is Phase.CLOSING:
                self.close()
            else:
                self.resp_fed = True  # room again: the response may go on (or splice)

    def _update_interest(self) -> None:
        if self.phase in (Phase.CLOSED, Phase.TUNNEL):
            return
        self._set_mask(self.cfd, self._client_mask(), self._on_client)
        if self.up is not None:
            self._set_mask(self.ufd, self._upstream_mask(), self._on_upstream)

    def _client_mask(self) -> int:
        mask = 0
        if self.cout or (self.resp_mover is not None and self.resp_mover.pending):
            mask |= EVENT_WRITE
        if self.client_eof or self.phase is Phase.CLOSING:
            return mask
        if self.phase is Phase.HEAD or self.req_mover is not None and not self.req_mover.pending:
            mask |= EVENT_READ
        elif self.phase in (Phase.FORWARD, Phase.CONNECT) and len(self.uout) < MAX_BUFFER \
                and self.parser.buffered < MAX_BUFFER and self.req_mover is None:
            mask |= EVENT_READ   # body bytes, or watching for the client leaving
        return mask

    def _set_mask(self, fd: int, mask: int, callback: object) -> None:
        old = self.masks.get(fd, 0)
        if mask == old and old:
            return
        reactor = self.ctx.reactor
        if not mask:
            if old:
                reactor.unregister(fd)
        elif not old:
            reactor.register(fd, mask, callback)  # type: ignore[arg-type]
        else:
            reactor.modify(fd, mask, callback)  # type: ignore[arg-type]
        self.masks[fd] = mask

    # -- log ------------------------------------------------------------------------------
    def _log(self, status: int, sent: int) -> None:
        access = self.ctx.access
        if not access.enabled:
            return
        request = self.request
        upstream = ""
        if self.upstream is not None and self.server >= 0:
            upstream = self.upstream.names[self.server]
        record, line = access_line(
            access.format, client=self.addr[0],
            method=request.method if request else b"-",
            target=request.target if request else b"-",
            version=request.version if request else b"1.1", status=status, sent=sent,
            referer=request.get(b"referer") if request else None,
            agent=request.get(b"user-agent") if request else None, upstream=upstream,
            request_time=self.ctx.reactor.now - self.exchange_started,
            upstream_time=self.upstream_time)
        access.line(record, line)
