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
``EndOfMessage`` (for CLOSE, after ``receive_data(b"")``). ``read_body``
(``body.py``) drains the buffered part the same way, in one call.

The work is split in three modules: ``transitions`` (the table),
``body`` (``BodyReader``: the buffer, the body readers, ``read_body``) and
this one (the head reader and the caller's driver).

Tunnels: a 2xx answer to CONNECT and a 101 answer (to a request the caller
declared with ``expect(method, upgrade=True)``) are ``Response`` then
``EndOfMessage``, after which the response parser is in TUNNEL for good and
answers ``PAUSED``; ``trailing_data`` holds the first tunnelled bytes. A
request parser whose CONNECT or Upgrade request was accepted is simply
abandoned the same way: take its ``trailing_data`` and relay raw bytes.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable

from fastproxy.errors import ProtocolError, Side
from fastproxy.http.body import SEARCH_TAIL, BodyReader
from fastproxy.http.events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Event,
    InformationalResponse,
    Request,
    Response,
    Signal,
)
from fastproxy.http.framing import DEFAULT_LIMITS, BodyKind, Limits, Role, check_partial_head, fail
from fastproxy.http.heads import parse_request_head, parse_response_head
from fastproxy.http.memo import HeadMemo
from fastproxy.http.transitions import (
    HEAD_TRIGGERS,
    TRANSITIONS,
    ParserUsageError,
    State,
    Trigger,
)

__all__ = ["TRANSITIONS", "ParserUsageError", "RequestParser", "ResponseParser", "State",
           "Trigger"]

_CLOSED = ConnectionClosed()
_CR_LF = (0x0D, 0x0A)


class _Parser(BodyReader):
    """Shared driver; see the module docstring. Not for direct use."""

    __slots__ = ()

    _role: Role = "request"

    # -- caller-facing ---------------------------------------------------------------
    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed, and whether the peer has closed."""
        return bytes(self.buffer), self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (what the caller should bound)."""
        return len(self.buffer)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` records its EOF."""
        if not data:
            self._eof = True
        elif self._eof:
            raise ParserUsageError("receive_data() after EOF")
        else:
            self.buffer += data

    def next_event(self) -> Event | Signal:
        """The next event, NEED_DATA or PAUSED. Raises ProtocolError (rule 3)."""
        if self._error is not None:
            raise copy.copy(self._error)   # untraced: see BodyReader._fail_with
        try:
            while True:
                result = _READERS[self.state](self)
                if result is not None:
                    return result
        except ProtocolError as exc:
            self._fail_with(exc)

    def start_next(self) -> None:
        """Leave DONE and parse the next message on the connection (rule 1)."""
        try:  # _go inlined on the hot path; it raises the error of a misuse
            self.state = TRANSITIONS[self.state, Trigger.START_NEXT]
        except KeyError:
            self._go(Trigger.START_NEXT)
        self.body_kind = BodyKind.NONE
        self.content_length = None
        self._leading = self._scan = self._checked = 0

    # -- machinery -------------------------------------------------------------------
    def _on_head(self, head: bytes) -> Event:
        raise NotImplementedError

    def _begin_body(self, kind: BodyKind, length: int) -> None:
        self.body_kind = kind
        self.content_length = length if kind is BodyKind.LENGTH else None
        self._remaining = length
        self._chunked_total = 0
        trigger = HEAD_TRIGGERS[kind]
        try:  # _go inlined on the hot path
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            self._go(trigger)

    # -- the head reader (rule 2); the body readers are in body.py -------------------
    def _read_head(self) -> Event | Signal | None:
        buf = self.buffer
        if self._role == "request" and buf and buf[0] in _CR_LF and self._skip_empty_lines():
            return self._need("a request head") if buf else self._read_eof()
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if not buf:
                return self._read_eof()
            check_partial_head(buf, self._checked, self.limits, self._role)
            self._checked = len(buf)
            self._scan = max(len(buf) - SEARCH_TAIL, 0)
            return self._need("a message head")
        head = bytes(buf[:end + 2])  # (a slice copy is cheaper than a view for a head)
        del buf[:end + 4]
        self._scan = self._checked = 0
        return self._on_head(head)

    def _skip_empty_lines(self) -> bool:
        """Drop CRLFs before a request line (RFC 9112 §2.2); True if the buffer
        holds nothing more to parse yet."""
        buf = self.buffer
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
        self._go(Trigger.EOF)
        return _CLOSED

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

    Methods for the caller: ``receive_data``, ``next_event``, ``read_body``,
    ``start_next``, ``body_consumed``; attributes ``state``, ``body_kind``,
    ``content_length``, ``body_remaining``, ``buffered``, ``trailing_data``
    and ``buffer`` (the bytes not yet parsed: read it, never change it).
    Raises ProtocolError with the status to answer (400, 413, 414, 431, 501,
    505), ParserUsageError (500) on misuse.
    """

    _role: Role = "request"
    __slots__ = ("_memo",)

    def __init__(self, limits: Limits = DEFAULT_LIMITS, memo: HeadMemo | None = None) -> None:
        super().__init__(limits)
        self._memo = memo

    def _on_head(self, head: bytes) -> Request:
        memo = self._memo
        parsed = memo.get(head) if memo is not None else None
        if parsed is None:
            parsed = parse_request_head(head, self.limits)
            if memo is not None:
                memo.put(head, head, parsed, parsed[0].special)
        request, kind, length = parsed
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
    __slots__ = ("_expected", "_memo")

    def __init__(self, limits: Limits = DEFAULT_LIMITS, memo: HeadMemo | None = None) -> None:
        super().__init__(limits)
        self._expected: deque[tuple[bytes, bool]] = deque()
        self._memo = memo

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
        memo = self._memo
        parsed = memo.get((head, method)) if memo is not None else None
        if parsed is None:
            parsed = parse_response_head(head, self.limits, method)
            if memo is not None:
                memo.put((head, method), head, parsed, parsed[0].special)
        event, kind, length = parsed
        if isinstance(event, InformationalResponse):
            self._go(Trigger.INTERIM)
            return event
        if event.status == 101 and not upgrade:
            raise fail("101 Switching Protocols to a request without Upgrade")
        self._expected.popleft()
        self._begin_body(kind, length)
        return event

    def _blame(self, exc: ProtocolError) -> ProtocolError:
        return ProtocolError(f"upstream: {exc}", status=502, side=Side.UPSTREAM)
