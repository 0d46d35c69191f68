"""The per-direction HTTP/1.1 parsers: bytes in, events out, as a transition table.

Theory of operation
-------------------
A parser reads one direction of one connection: ``RequestParser`` what a
client sends, ``ResponseParser`` what a server sends. It handles many
messages in sequence (keep-alive, pipelining) and never touches a socket:

    parser.receive_data(chunk)            # b"" means the peer closed (EOF)
    while (event := parser.next_event()) not in (NEED_DATA, PAUSED):
        ...                               # Request/Response, Data..., EndOfMessage

Rule 1: *every message ends in PAUSED.* After ``EndOfMessage`` the parser is
DONE and ``next_event()`` answers ``PAUSED`` until the caller calls
``start_next()``: the caller finishes the exchange (or decides to tunnel)
before the next pipelined message is parsed, and bytes that follow the
message stay buffered (``trailing_data``) meanwhile. Stop reading the socket
while paused: the buffer is the caller's backpressure.

Rule 2: *a state's reader is the only code that consumes bytes in it.*
``_READERS`` maps each state to one method; a reader returns an event, a
signal, or None when it changed state without producing an event (a chunk
line, the CRLF after chunk data). Every state change goes through
``TRANSITIONS``; a change missing there is a bug or a caller's misuse and
raises ``ParserUsageError`` (500, internal).

Rule 3: *the first protocol error is final.* The parser enters ERROR and
raises the same ``ProtocolError`` from every later ``next_event()``. The
response parser reports every error as 502 from the upstream side.

Rule 4: *a known-length body may bypass the parser* (splice). After the head
``body_kind`` says how the body is delimited and ``content_length`` its
length. To relay the rest of a LENGTH (or CLOSE) body without parsing it,
drain the buffered part with ``next_event()`` until ``NEED_DATA``, relay
``body_remaining`` raw bytes yourself and report each run with
``body_consumed(n)``; the next ``next_event()`` then returns
``EndOfMessage`` (for CLOSE, after ``receive_data(b"")``).

Tunnels: a 2xx answer to CONNECT and a 101 answer (to a request the caller
declared with ``expect(method, upgrade=True)``) are ``Response`` then
``EndOfMessage``, after which the response parser is in TUNNEL for good and
answers ``PAUSED``; ``trailing_data`` holds the first tunnelled bytes. A
request parser whose CONNECT or Upgrade request was accepted is simply
abandoned the same way: take its ``trailing_data`` and relay raw bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from fastproxy.errors import ProtocolError, ProxyError, Side
from fastproxy.http.events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Request,
    Response,
    Signal,
)
from fastproxy.http.framing import (
    DEFAULT_LIMITS,
    BodyKind,
    Limits,
    Role,
    check_partial_head,
    fail,
    parse_chunk_line,
    parse_fields,
    parse_request_head,
    parse_response_head,
)


class ParserUsageError(ProxyError):
    """The caller drove a parser against its contract (a bug on our side)."""

    status = 500
    side = Side.INTERNAL


class State(enum.Enum):
    # Members are singletons compared by identity; the C-level identity hash
    # spares the per-lookup Python call of Enum.__hash__ (it halved the cost
    # of the TRANSITIONS and _READERS look-ups on the hot path).
    __hash__ = object.__hash__

    IDLE = "idle"                # expecting a head (or the peer's close)
    BODY = "body"                # Content-Length body; no body is a body of 0 bytes
    CHUNK_LINE = "chunk-line"    # expecting chunk-size [ chunk-ext ] CRLF
    CHUNK_DATA = "chunk-data"
    CHUNK_CRLF = "chunk-crlf"    # expecting the CRLF after chunk data
    TRAILERS = "trailers"        # after the last chunk: trailer fields, empty line
    UNTIL_CLOSE = "until-close"  # response body delimited by the connection's close
    SWITCHING = "switching"      # head of a tunnel answered; EndOfMessage next
    DONE = "done"                # message complete: PAUSED until start_next()
    TUNNEL = "tunnel"            # the connection no longer speaks HTTP
    CLOSED = "closed"            # the peer closed between messages
    ERROR = "error"


class Trigger(enum.Enum):
    __hash__ = object.__hash__

    INTERIM = "interim"              # a 1xx head; another head follows
    HEAD_SIZED = "head-sized"        # head of a message with no body or a Content-Length
    HEAD_CHUNKED = "head-chunked"
    HEAD_CLOSE = "head-close"
    HEAD_TUNNEL = "head-tunnel"
    CHUNK = "chunk"                  # a chunk line with a size > 0
    LAST_CHUNK = "last-chunk"
    CHUNK_DATA_END = "chunk-data-end"
    CHUNK_CRLF = "chunk-crlf"
    END = "end"                      # EndOfMessage emitted
    EOF = "eof"                      # ConnectionClosed emitted
    START_NEXT = "start-next"        # caller: parse the next message
    FAIL = "fail"


S, T = State, Trigger
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.IDLE, T.INTERIM): S.IDLE,
    (S.IDLE, T.HEAD_SIZED): S.BODY,
    (S.IDLE, T.HEAD_CHUNKED): S.CHUNK_LINE,
    (S.IDLE, T.HEAD_CLOSE): S.UNTIL_CLOSE,
    (S.IDLE, T.HEAD_TUNNEL): S.SWITCHING,
    (S.IDLE, T.EOF): S.CLOSED,
    (S.BODY, T.END): S.DONE,
    (S.CHUNK_LINE, T.CHUNK): S.CHUNK_DATA,
    (S.CHUNK_LINE, T.LAST_CHUNK): S.TRAILERS,
    (S.CHUNK_DATA, T.CHUNK_DATA_END): S.CHUNK_CRLF,
    (S.CHUNK_CRLF, T.CHUNK_CRLF): S.CHUNK_LINE,
    (S.TRAILERS, T.END): S.DONE,
    (S.UNTIL_CLOSE, T.END): S.DONE,
    (S.SWITCHING, T.END): S.TUNNEL,
    (S.DONE, T.START_NEXT): S.IDLE,
    **{(state, T.FAIL): S.ERROR for state in State if state is not S.ERROR},
}
_HEAD_TRIGGERS = {
    BodyKind.NONE: T.HEAD_SIZED, BodyKind.LENGTH: T.HEAD_SIZED,
    BodyKind.CHUNKED: T.HEAD_CHUNKED, BodyKind.CLOSE: T.HEAD_CLOSE,
    BodyKind.TUNNEL: T.HEAD_TUNNEL,
}
_END = EndOfMessage()
_CLOSED = ConnectionClosed()
_CR, _CR_LF = 0x0D, (0x0D, 0x0A)
_SEARCH_TAIL = 3   # bytes of an unfinished head re-searched for CRLFCRLF


class _Parser:
    """Shared driver; see the module docstring. Not for direct use."""

    _role: Role = "request"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.body_kind = BodyKind.NONE
        self.content_length: int | None = None
        self._state = State.IDLE
        self._buf = bytearray()
        self._eof = False
        self._error: ProtocolError | None = None
        self._scan = 0            # where to resume the search for the end of a head
        self._checked = 0         # head bytes already checked by check_partial_head
        self._leading = 0         # empty lines skipped before this request line
        self._remaining = 0       # body bytes (BODY) or chunk bytes (CHUNK_DATA) left
        self._chunked_total = 0
        self._chunk_size = 0
        self._chunk_ext = b""
        self._chunk_started = False

    # -- caller-facing ---------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed, and whether the peer has closed."""
        return bytes(self._buf), self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (what the caller should bound)."""
        return len(self._buf)

    @property
    def body_remaining(self) -> int | None:
        """Body bytes not yet delivered (Data or body_consumed): the rest of a
        Content-Length body in BODY, None (unknown) in UNTIL_CLOSE, else 0."""
        if self._state is State.BODY:
            return self._remaining
        return None if self._state is State.UNTIL_CLOSE else 0

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` records its EOF."""
        if not data:
            self._eof = True
        elif self._eof:
            raise ParserUsageError("receive_data() after EOF")
        else:
            self._buf += data

    def next_event(self) -> Event | Signal:
        """The next event, NEED_DATA or PAUSED. Raises ProtocolError (rule 3)."""
        if self._error is not None:
            raise self._error
        try:
            while True:
                result = _READERS[self._state](self)
                if result is not None:
                    return result
        except ProtocolError as exc:
            error = self._blame(exc)
            self._error = error
            self._go(T.FAIL)
            if error is exc:
                raise
            raise error from exc

    def start_next(self) -> None:
        """Leave DONE and parse the next message on the connection (rule 1)."""
        self._go(T.START_NEXT)
        self.body_kind = BodyKind.NONE
        self.content_length = None
        self._leading = self._scan = self._checked = 0

    def body_consumed(self, n: int) -> None:
        """The caller relayed ``n`` raw body bytes past the parser (rule 4).

        Raises ParserUsageError unless the parser is in BODY or UNTIL_CLOSE
        with an empty buffer and ``0 <= n <= body_remaining``.
        """
        if self._buf or n < 0 or self._state not in (State.BODY, State.UNTIL_CLOSE):
            raise ParserUsageError(f"body_consumed() in {self._state.value} with "
                                   f"{len(self._buf)} bytes buffered")
        if self._state is State.BODY:
            if n > self._remaining:
                raise ParserUsageError(f"body_consumed({n}) > {self._remaining} remaining")
            self._remaining -= n

    # -- machinery -------------------------------------------------------------------
    def _go(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise ParserUsageError(f"{trigger.value} is illegal in state "
                                   f"{self._state.value}") from None

    def _blame(self, exc: ProtocolError) -> ProtocolError:
        return exc

    def _on_head(self, head: bytes) -> Event:
        raise NotImplementedError

    def _begin_body(self, kind: BodyKind, length: int) -> None:
        self.body_kind = kind
        self.content_length = length if kind is BodyKind.LENGTH else None
        self._remaining = length
        self._chunked_total = 0
        self._go(_HEAD_TRIGGERS[kind])

    def _take(self, n: int) -> bytes:
        buf = self._buf
        with memoryview(buf) as view:
            data = view[:n].tobytes()
        del buf[:n]
        return data

    def _need(self, what: str) -> Signal:
        if self._eof:
            raise fail(f"connection closed inside {what}")
        return NEED_DATA

    # -- readers, one per state (rule 2) ---------------------------------------------
    def _read_head(self) -> Event | Signal | None:
        buf = self._buf
        if self._role == "request" and buf and buf[0] in _CR_LF and self._skip_empty_lines():
            return self._need("a request head") if buf else self._read_eof()
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if not buf:
                return self._read_eof()
            check_partial_head(buf, self._checked, self.limits, self._role)
            self._checked = len(buf)
            self._scan = max(len(buf) - _SEARCH_TAIL, 0)
            return self._need("a message head")
        with memoryview(buf) as view:
            head = view[:end + 2].tobytes()
        del buf[:end + 4]
        self._scan = self._checked = 0
        return self._on_head(head)

    def _skip_empty_lines(self) -> bool:
        """Drop CRLFs before a request line (RFC 9112 §2.2); True if the buffer
        holds nothing more to parse yet."""
        buf = self._buf
        while buf[:2] == b"\r\n":
            self._leading += 1
            if self._leading > self.limits.max_leading_crlf:
                raise fail("too many empty lines before the request line")
            del buf[:2]
        self._scan = self._checked = 0
        if buf[:1] == b"\n" or (buf[:1] == b"\r" and len(buf) > 1):
            raise fail("bare CR or LF before the request line")
        return buf == b"\r" or not buf

    def _read_eof(self) -> Event | Signal:
        if not self._eof:
            return NEED_DATA
        self._go(T.EOF)
        return _CLOSED

    def _read_body(self) -> Event | Signal:
        remaining = self._remaining
        if not remaining:
            self._go(T.END)
            return _END
        if not self._buf:
            return self._need(f"a body ({remaining} bytes missing)")
        data = self._take(min(remaining, len(self._buf)))
        self._remaining = remaining - len(data)
        return Data(data)

    def _read_until_close(self) -> Event | Signal:
        if self._buf:
            return Data(self._take(len(self._buf)))
        if not self._eof:
            return NEED_DATA
        self._go(T.END)
        return _END

    def _read_chunk_line(self) -> Signal | None:
        buf, limits = self._buf, self.limits
        end = buf.find(b"\r\n")
        if end < 0:
            if b"\n" in buf or buf.find(b"\r", 0, len(buf) - 1) >= 0:
                raise fail("bare CR or LF in a chunk line")
            if len(buf) > 17 + limits.max_chunk_ext:
                raise fail("chunk line too long")
            return self._need("a chunked body")
        with memoryview(buf) as view:
            line = view[:end].tobytes()
        del buf[:end + 2]
        size, ext = parse_chunk_line(line, limits)
        if not size:
            self._go(T.LAST_CHUNK)
            return None
        self._chunked_total += size
        if limits.max_body_bytes and self._chunked_total > limits.max_body_bytes:
            raise fail(f"chunked body exceeds {limits.max_body_bytes} bytes", 413)
        self._remaining = self._chunk_size = size
        self._chunk_ext = ext
        self._chunk_started = False
        self._go(T.CHUNK)
        return None

    def _read_chunk_data(self) -> Event | Signal:
        if not self._buf:
            return self._need("a chunk")
        data = self._take(min(self._remaining, len(self._buf)))
        self._remaining -= len(data)
        start = not self._chunk_started
        self._chunk_started = True
        end = not self._remaining
        if end:
            self._go(T.CHUNK_DATA_END)
        return Data(data, start, end, self._chunk_size, self._chunk_ext)

    def _read_chunk_crlf(self) -> Signal | None:
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._go(T.CHUNK_CRLF)
            return None
        if len(buf) >= 2 or (buf and buf[0] != _CR):
            raise fail("chunk data not followed by CRLF")
        return self._need("a chunked body")

    def _read_trailers(self) -> Event | Signal:
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._go(T.END)
            return _END
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if buf != b"\r":
                check_partial_head(buf, self._checked, self.limits, "trailers")
            self._checked = len(buf)
            self._scan = max(len(buf) - _SEARCH_TAIL, 0)
            return self._need("the trailer section")
        if end + 4 > self.limits.max_header_bytes:
            raise fail("trailer section too large", 431)
        with memoryview(buf) as view:
            block = view[:end + 2].tobytes()
        del buf[:end + 4]
        self._scan = self._checked = 0
        self._go(T.END)
        return EndOfMessage(tuple(parse_fields(block, self.limits)))

    def _read_switching(self) -> Event:
        self._go(T.END)
        return _END

    def _read_paused(self) -> Signal:
        return PAUSED

    def _read_closed(self) -> Event:
        return _CLOSED


_READERS: dict[State, Callable[[_Parser], Event | Signal | None]] = {
    State.IDLE: _Parser._read_head,
    State.BODY: _Parser._read_body,
    State.CHUNK_LINE: _Parser._read_chunk_line,
    State.CHUNK_DATA: _Parser._read_chunk_data,
    State.CHUNK_CRLF: _Parser._read_chunk_crlf,
    State.TRAILERS: _Parser._read_trailers,
    State.UNTIL_CLOSE: _Parser._read_until_close,
    State.SWITCHING: _Parser._read_switching,
    State.DONE: _Parser._read_paused,
    State.TUNNEL: _Parser._read_paused,
    State.CLOSED: _Parser._read_closed,
}


class RequestParser(_Parser):
    """Parses the requests a client sends on one connection.

    Methods for the caller: ``receive_data``, ``next_event``, ``start_next``,
    ``body_consumed``; attributes ``state``, ``body_kind``,
    ``content_length``, ``body_remaining``, ``trailing_data``.
    Raises ProtocolError with the status to answer (400, 413, 414, 431, 501,
    505), ParserUsageError (500) on misuse.
    """

    _role: Role = "request"

    def _on_head(self, head: bytes) -> Request:
        request, kind, length = parse_request_head(head, self.limits)
        self._begin_body(kind, length)
        return request


class ResponseParser(_Parser):
    """Parses the responses a server sends on one connection.

    Call ``expect(method, upgrade=...)`` once per request sent, in order: it
    tells the parser that a response to HEAD has no body, that a 2xx to
    CONNECT and (with ``upgrade``) a 101 switch to a tunnel. Otherwise as
    ``RequestParser``; every ProtocolError is 502, side UPSTREAM.
    """

    _role: Role = "response"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._expected: deque[tuple[bytes, bool]] = deque()

    def expect(self, method: bytes, *, upgrade: bool = False) -> None:
        """Queue the request whose response comes next (after earlier ones)."""
        self._expected.append((method, upgrade))

    @property
    def pending(self) -> int:
        """Requests expected whose final response has not begun."""
        return len(self._expected)

    def _on_head(self, head: bytes) -> Response | InformationalResponse:
        if not self._expected:
            raise fail("response without a request")
        method, upgrade = self._expected[0]
        event, kind, length = parse_response_head(head, self.limits, method)
        if isinstance(event, InformationalResponse):
            self._go(T.INTERIM)
            return event
        if event.status == 101 and not upgrade:
            raise fail("101 Switching Protocols to a request without Upgrade")
        self._expected.popleft()
        self._begin_body(kind, length)
        return event

    def _blame(self, exc: ProtocolError) -> ProtocolError:
        return ProtocolError(f"upstream: {exc}", status=502, side=Side.UPSTREAM)
