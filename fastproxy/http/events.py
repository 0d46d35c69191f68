"""The events a parser emits: slotted head classes and frozen body dataclasses.

A message is always the sequence ``head, Data*, EndOfMessage``, where the head
is a ``Request`` or a ``Response`` (a response may be preceded by any number
of ``InformationalResponse`` events, RFC 9110 §15.2). ``ConnectionClosed`` is
emitted when the peer closes the connection between messages.

Byte strings are ``bytes`` exactly as they were received: field names keep
their case (use ``get``/``get_all``/``lower_headers`` to look them up without
it), field values are stripped of the optional whitespace around them (SP and
HTAB only, RFC 9110 §5.5) and are otherwise unchanged (obs-text included).

Heads are lazy (theory in ``fields.py``): a head holds its field section as
one canonical ``block`` and the ``special`` lines a proxy acts on, and builds
the ``headers`` tuple only on first access. ``get``/``get_all`` of a special
name read ``special`` and never parse the block. A head built from
``headers`` (tests, the proxy's own answers) computes its block and special
lines from them; a head built by the parser passes ``block`` and
``special``, and may pass ``headers`` too when it already has the list (then
they must agree). Heads compare equal when their public fields are equal;
they are immutable by convention (no ``__setattr__`` guard: it would slow
down every construction).

``NEED_DATA`` and ``PAUSED`` are the two non-event answers of
``next_event()``, as in h11: "feed me more bytes" and "this message is done;
call ``start_next()`` (or take the connection over) before the next one".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from fastproxy.http.fields import (
    SPECIAL_NAMES,
    SPECIAL_PREFIX,
    Field,
    Headers,
    Special,
    canonical_block,
    fields_of,
    special_of,
)
from fastproxy.http.framing import value_tokens

__all__ = ["NEED_DATA", "PAUSED", "SPECIAL_NAMES", "ConnectionClosed", "Data", "EndOfMessage",
           "Event", "Field", "Headers", "InformationalResponse", "Request", "Response",
           "Signal", "Special"]


class Signal(enum.Enum):
    """The answers of ``next_event()`` that are not events."""

    NEED_DATA = "need-data"
    PAUSED = "paused"


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


def _connection_options(special: Special) -> frozenset[bytes]:
    options = _NO_OPTIONS
    for name, value, _, _ in special:
        if name == b"connection":
            options = options | value_tokens(value)
    return options


_NO_OPTIONS: frozenset[bytes] = frozenset()


class _Head:
    """Field storage and look-ups shared by the three heads (names given in lowercase)."""

    __slots__ = ("block", "special", "options", "_headers")
    _PUBLIC: ClassVar[tuple[str, ...]] = ()
    block: bytes
    special: Special
    options: frozenset[bytes]  # the lowercase Connection options (RFC 9110 §7.6.1)
    _headers: Headers | None

    def _set_fields(self, headers: Iterable[Field], block: bytes | None,
                    special: Special | None) -> None:
        if special is not None and block is not None and not headers:  # the parser's case
            self.block = block
            self.special = special
            self._headers = None
            self.options = _connection_options(special)
            return
        if block is None:
            fields = tuple(headers)
            block = canonical_block(fields)
            self._headers = fields
        else:
            self._headers = tuple(headers) or None
        self.block = block
        self.special = special = special_of(b"\n" + block, 1) if special is None else special
        self.options = _connection_options(special)

    @property
    def headers(self) -> Headers:
        """The ``(name, value)`` pairs in order, built from ``block`` on first access."""
        headers = self._headers
        if headers is None:
            headers = self._headers = fields_of(self.block)
        return headers

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of field ``name`` (lowercase), or ``default``."""
        if name in SPECIAL_NAMES or name.startswith(SPECIAL_PREFIX):
            for key, value, _, _ in self.special:
                if key == name:
                    return value
            return default
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of field ``name`` (lowercase), in order."""
        if name in SPECIAL_NAMES or name.startswith(SPECIAL_PREFIX):
            return [value for key, value, _, _ in self.special if key == name]
        return [value for key, value in self.headers if key.lower() == name]

    def lower_headers(self) -> list[Field]:
        """The fields with lowercase names, in order."""
        return [(key.lower(), value) for key, value in self.headers]

    def _public(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._PUBLIC])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Head) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._public() == other._public()

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, self._public()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._PUBLIC)
        return f"{self.__class__.__name__}({fields})"


class Request(_Head):
    """A request head (RFC 9112 §3).

    ``form`` is the request-target form (RFC 9112 §3.2): ``"origin"``,
    ``"absolute"``, ``"authority"`` (CONNECT only) or ``"asterisk"`` (OPTIONS
    only). ``authority`` is the target's authority for the absolute and
    authority forms, else the Host field's value (``b""`` when absent).
    ``scheme`` is the absolute form's scheme in lowercase (``b""`` otherwise)
    and ``path`` the target in origin-form (path and query, ``b"/"`` for an
    absolute target with an empty path; ``b"*"`` and ``b""`` for the asterisk
    and authority forms). ``keep_alive`` is the connection persistence the
    client asked for (RFC 9112 §9.3). ``block`` and ``special``: see the
    module docstring.
    """

    __slots__ = ("method", "target", "version", "form", "authority", "scheme", "path",
                 "keep_alive")
    __match_args__ = ("method", "target", "headers", "version", "form", "authority", "scheme",
                      "path", "keep_alive")
    _PUBLIC = __match_args__

    def __init__(self, method: bytes, target: bytes, headers: Iterable[Field] = (),
                 version: bytes = b"1.1", form: str = "origin", authority: bytes = b"",
                 scheme: bytes = b"", path: bytes = b"", keep_alive: bool = True, *,
                 block: bytes | None = None, special: Special | None = None) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.form = form
        self.authority = authority
        self.scheme = scheme
        self.path = path
        self.keep_alive = keep_alive
        self._set_fields(headers, block, special)


class InformationalResponse(_Head):
    """An interim 1xx response other than 101 (e.g. 100 Continue, 103 Early Hints)."""

    __slots__ = ("status", "reason", "version")
    __match_args__ = ("status", "reason", "headers", "version")
    _PUBLIC = __match_args__

    def __init__(self, status: int, reason: bytes = b"", headers: Iterable[Field] = (),
                 version: bytes = b"1.1", *, block: bytes | None = None,
                 special: Special | None = None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self._set_fields(headers, block, special)


class Response(_Head):
    """A final response head (RFC 9112 §4); 101 Switching Protocols is final.

    ``keep_alive`` is false when the server asked to close or when the body
    is delimited by the close of the connection.
    """

    __slots__ = ("status", "reason", "version", "keep_alive")
    __match_args__ = ("status", "reason", "headers", "version", "keep_alive")
    _PUBLIC = __match_args__

    def __init__(self, status: int, reason: bytes = b"", headers: Iterable[Field] = (),
                 version: bytes = b"1.1", keep_alive: bool = True, *,
                 block: bytes | None = None, special: Special | None = None) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.keep_alive = keep_alive
        self._set_fields(headers, block, special)


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
