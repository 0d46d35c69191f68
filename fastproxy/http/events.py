"""The events a parser emits, one frozen, slotted dataclass per kind.

A message is always the sequence ``head, Data*, EndOfMessage``, where the head
is a ``Request`` or a ``Response`` (a response may be preceded by any number
of ``InformationalResponse`` events, RFC 9110 §15.2). ``ConnectionClosed`` is
emitted when the peer closes the connection between messages.

Byte strings are ``bytes`` exactly as they were received: field names keep
their case (use ``get``/``get_all``/``lower_headers`` to look them up without
it), field values are stripped of the optional whitespace around them (SP and
HTAB only, RFC 9110 §5.5) and are otherwise unchanged (obs-text included).

``NEED_DATA`` and ``PAUSED`` are the two non-event answers of
``next_event()``, as in h11: "feed me more bytes" and "this message is done;
call ``start_next()`` (or take the connection over) before the next one".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Field = tuple[bytes, bytes]
Headers = tuple[Field, ...]


class Signal(enum.Enum):
    """The answers of ``next_event()`` that are not events."""

    NEED_DATA = "need-data"
    PAUSED = "paused"


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class _HeadMixin:
    """Case-insensitive look-ups over ``self.headers`` (names given in lowercase)."""

    __slots__ = ()
    headers: Headers

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of field ``name`` (lowercase), or ``default``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of field ``name`` (lowercase), in order."""
        return [value for key, value in self.headers if key.lower() == name]

    def lower_headers(self) -> list[Field]:
        """The fields with lowercase names, in order."""
        return [(key.lower(), value) for key, value in self.headers]


@dataclass(frozen=True, slots=True)
class Request(_HeadMixin):
    """A request head (RFC 9112 §3).

    ``form`` is the request-target form (RFC 9112 §3.2): ``"origin"``,
    ``"absolute"``, ``"authority"`` (CONNECT only) or ``"asterisk"`` (OPTIONS
    only). ``authority`` is the target's authority for the absolute and
    authority forms, else the Host field's value (``b""`` when absent).
    ``scheme`` is the absolute form's scheme in lowercase (``b""`` otherwise)
    and ``path`` the target in origin-form (path and query, ``b"/"`` for an
    absolute target with an empty path; ``b"*"`` and ``b""`` for the asterisk
    and authority forms). ``keep_alive`` is the connection persistence the
    client asked for (RFC 9112 §9.3).
    """

    method: bytes
    target: bytes
    headers: Headers = ()
    version: bytes = b"1.1"
    form: str = "origin"
    authority: bytes = b""
    scheme: bytes = b""
    path: bytes = b""
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class InformationalResponse(_HeadMixin):
    """An interim 1xx response other than 101 (e.g. 100 Continue, 103 Early Hints)."""

    status: int
    reason: bytes = b""
    headers: Headers = ()
    version: bytes = b"1.1"


@dataclass(frozen=True, slots=True)
class Response(_HeadMixin):
    """A final response head (RFC 9112 §4); 101 Switching Protocols is final.

    ``keep_alive`` is false when the server asked to close or when the body
    is delimited by the close of the connection.
    """

    status: int
    reason: bytes = b""
    headers: Headers = ()
    version: bytes = b"1.1"
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a message body, never empty.

    For a chunked body, each piece lies within one chunk: ``chunk_start`` is
    true on the first piece of a chunk and ``chunk_end`` on its last;
    ``chunk_size`` is the whole chunk's size and ``chunk_ext`` its extensions
    exactly as received (``b";name=value..."``), repeated on every piece of
    the chunk, so that ``headers.encode_piece`` can re-frame the body with
    the original chunk boundaries and extensions. For other bodies the chunk
    fields keep their defaults.
    """

    data: bytes
    chunk_start: bool = False
    chunk_end: bool = False
    chunk_size: int = 0
    chunk_ext: bytes = b""


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end of a message; ``trailers`` are the chunked trailer fields as received."""

    trailers: Headers = ()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly between messages."""


Event = Request | InformationalResponse | Response | Data | EndOfMessage | ConnectionClosed
