"""The parsers' transition table: role-independent states, triggers and legal moves.

A parser (``state.py``) is always in one ``State``; its readers (``state.py``
for heads, ``body.py`` for bodies) change state only through ``TRANSITIONS``
(state, trigger) -> state. A pair missing from the table is a bug or a
caller's misuse: ``ParserUsageError`` (500, internal). See the rules in
``state.py``; body framing per RFC 9112 §6 and §7.1.
"""

from __future__ import annotations

import enum

from fastproxy.errors import ProxyError, Side
from fastproxy.http.framing import BodyKind


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
HEAD_TRIGGERS = {
    BodyKind.NONE: T.HEAD_SIZED, BodyKind.LENGTH: T.HEAD_SIZED,
    BodyKind.CHUNKED: T.HEAD_CHUNKED, BodyKind.CLOSE: T.HEAD_CLOSE,
    BodyKind.TUNNEL: T.HEAD_TUNNEL,
}
