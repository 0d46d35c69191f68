"""The body half of a parser: one reader per body state, and ``read_body`` in bulk.

Theory of operation
-------------------
``BodyReader`` holds a parser's buffer and state and the readers of the
body states (rule 2 of ``state.py``: a state's reader is the only code that
consumes bytes in it): a Content-Length body (RFC 9112 §6.2), a body
delimited by the close of the connection (§6.3 rule 8), and the chunked
coding (§7.1: chunk line, chunk data, the CRLF after it, the trailer
section). ``state._Parser`` adds the head reader and the caller's driver.

A body is read one of two ways, and both move through the same states with
the same readers and raise the same errors:

- ``next_event()`` gives one ``Data`` per buffered run of bytes (per piece
  of a chunk), then ``EndOfMessage``;
- ``read_body(out, chunked=..., limit=...)`` appends the buffered body to a
  caller's ``bytearray`` in one call, without an event per piece. With
  ``chunked`` it writes the chunked coding back exactly as
  ``headers.encode_piece`` and ``encode_last_chunk`` would (each chunk line
  ``%x`` plus its extensions as received, the data, CRLF; the last chunk and
  the trailer fields less ``TRAILER_FORBIDDEN``); without it, the payload
  only. The chunk-line, CRLF and trailer steps call the very readers
  ``next_event()`` calls; the data steps share ``_advance_chunk`` with them.

``limit`` bounds the payload appended: a data step takes at most
``limit - len(out)`` bytes and no chunk line is read once ``out`` is full.
The framing written around the payload (a chunk line, a CRLF, the last chunk
and trailers) may go past ``limit``. Completing a message needs no room.

Cost (``python -m tests.http.timing``, the VM of ``heads.py``): a 1 KiB
Content-Length body buffered with its head takes ~1.6 µs through
``read_body`` (one copy into ``out`` and the end of the message), against
~4 µs for ``Data`` and ``EndOfMessage`` through ``next_event()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NoReturn

from fastproxy.errors import ProtocolError
from fastproxy.http.events import NEED_DATA, Data, EndOfMessage, Event, Signal
from fastproxy.http.framing import (
    DEFAULT_LIMITS,
    BodyKind,
    Limits,
    check_partial_head,
    fail,
    parse_chunk_line,
    parse_fields,
)
from fastproxy.http.headers import encode_last_chunk
from fastproxy.http.transitions import TRANSITIONS, ParserUsageError, State, Trigger

_END = EndOfMessage()
_CR = 0x0D
SEARCH_TAIL = 3   # bytes of an unfinished head re-searched for CRLFCRLF


class BodyReader:
    """Buffer, state and body readers of a parser; see ``state.RequestParser``."""

    __slots__ = ("limits", "body_kind", "content_length", "state", "buffer", "_eof", "_error",
                 "_scan", "_checked", "_remaining", "_chunked_total", "_chunk_size",
                 "_chunk_ext", "_chunk_started", "_leading")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.body_kind = BodyKind.NONE
        self.content_length: int | None = None
        self.state = State.IDLE
        self.buffer = bytearray()
        self._eof = False
        self._error: ProtocolError | None = None
        self._scan = 0            # where to resume the search for the end of a head
        self._checked = 0         # head bytes already checked by check_partial_head
        self._remaining = 0       # body bytes (BODY) or chunk bytes (CHUNK_DATA) left
        self._chunked_total = 0
        self._chunk_size = 0
        self._chunk_ext = b""
        self._chunk_started = False
        self._leading = 0         # empty lines skipped before a request line (state.py)

    # -- caller-facing ---------------------------------------------------------------
    @property
    def body_remaining(self) -> int | None:
        """Body bytes not yet delivered (Data or body_consumed): the rest of a
        Content-Length body in BODY, None (unknown) in UNTIL_CLOSE, else 0."""
        if self.state is State.BODY:
            return self._remaining
        return None if self.state is State.UNTIL_CLOSE else 0

    def body_consumed(self, n: int) -> None:
        """The caller relayed ``n`` raw body bytes past the parser (rule 4).

        Raises ParserUsageError unless the parser is in BODY or UNTIL_CLOSE
        with an empty buffer and ``0 <= n <= body_remaining``.
        """
        if self.buffer or n < 0 or self.state not in (State.BODY, State.UNTIL_CLOSE):
            raise ParserUsageError(f"body_consumed() in {self.state.value} with "
                                   f"{len(self.buffer)} bytes buffered")
        if self.state is State.BODY:
            if n > self._remaining:
                raise ParserUsageError(f"body_consumed({n}) > {self._remaining} remaining")
            self._remaining -= n

    def read_body(self, out: bytearray, *, chunked: bool, limit: int) -> bool:
        """Append the buffered body bytes to ``out``; True once the message is complete.

        Stops when the message ends (EndOfMessage is consumed: the parser is
        then DONE, PAUSED until ``start_next()``, or TUNNEL after a tunnel's
        head), when the buffer runs dry, or when ``len(out) >= limit`` (see
        the module docstring). ``chunked`` (for a chunked body only) keeps
        the chunked coding; otherwise the payload alone is appended.

        Raises ProtocolError as ``next_event()`` does (bytes appended before
        the fault stay in ``out``), ParserUsageError outside a body or for
        ``chunked`` with a body that is not chunked.
        """
        if self._error is not None:
            raise copy.copy(self._error)
        if chunked and self.body_kind is not BodyKind.CHUNKED:
            raise ParserUsageError(f"read_body(chunked=True) of a {self.body_kind.value} body")
        try:
            while (done := _BULK[self.state](self, out, chunked, limit)) is None:
                pass
            return done
        except ProtocolError as exc:
            self._fail_with(exc)

    # -- machinery -------------------------------------------------------------------
    def _go(self, trigger: Trigger) -> None:
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise ParserUsageError(f"{trigger.value} is illegal in state "
                                   f"{self.state.value}") from None

    def _blame(self, exc: ProtocolError) -> ProtocolError:
        return exc

    def _fail_with(self, exc: ProtocolError) -> NoReturn:
        """Enter ERROR for good (rule 3 of ``state.py``) and raise the error,
        blamed on its side (the response parser's are the upstream's)."""
        error = self._blame(exc)
        # No cycle through a traceback (it holds its frames, and they the
        # connection that owns this parser: garbage only the workers' rare
        # cyclic collections free): the error is kept untraced and raised
        # again as copies, and this frame lets go of what it raises.
        self._error = copy.copy(error)
        self._go(Trigger.FAIL)
        try:
            if error is exc:
                raise exc
            raise error from exc
        finally:
            del exc, error

    def _take(self, n: int) -> bytes:
        buf = self.buffer
        with memoryview(buf) as view:
            data = view[:n].tobytes()
        del buf[:n]
        return data

    def _move(self, out: bytearray, n: int) -> None:
        """Move the first ``n`` buffered bytes to ``out`` without a bytes copy."""
        buf = self.buffer
        if n == len(buf):
            out += buf
            buf.clear()
        else:
            with memoryview(buf) as view:
                out += view[:n]
            del buf[:n]

    def _need(self, what: str) -> Signal:
        if self._eof:
            raise fail(f"connection closed inside {what}")
        return NEED_DATA

    def _advance_chunk(self, n: int) -> bool:
        """``n`` bytes of the current chunk were delivered; True if it is complete."""
        self._remaining -= n
        self._chunk_started = True
        if self._remaining:
            return False
        self._go(Trigger.CHUNK_DATA_END)
        return True

    # -- readers, one per body state (rule 2 of state.py) ----------------------------
    def _read_body(self) -> Event | Signal:
        remaining = self._remaining
        if not remaining:
            self._go(Trigger.END)
            return _END
        if not self.buffer:
            return self._need(f"a body ({remaining} bytes missing)")
        data = self._take(min(remaining, len(self.buffer)))
        self._remaining = remaining - len(data)
        return Data(data)

    def _read_until_close(self) -> Event | Signal:
        if self.buffer:
            return Data(self._take(len(self.buffer)))
        if not self._eof:
            return NEED_DATA
        self._go(Trigger.END)
        return _END

    def _read_chunk_line(self) -> Signal | None:
        buf, limits = self.buffer, self.limits
        end = buf.find(b"\r\n")
        if end < 0:
            if b"\n" in buf or buf.find(b"\r", 0, len(buf) - 1) >= 0:
                raise fail("bare CR or LF in a chunk line")
            if len(buf) > 17 + limits.max_chunk_ext:
                raise fail("chunk line too long")
            return self._need("a chunked body")
        line = bytes(buf[:end])
        del buf[:end + 2]
        size, ext = parse_chunk_line(line, limits)
        if not size:
            self._go(Trigger.LAST_CHUNK)
            return None
        self._chunked_total += size
        if limits.max_body_bytes and self._chunked_total > limits.max_body_bytes:
            raise fail(f"chunked body exceeds {limits.max_body_bytes} bytes", 413)
        self._remaining = self._chunk_size = size
        self._chunk_ext = ext
        self._chunk_started = False
        self._go(Trigger.CHUNK)
        return None

    def _read_chunk_data(self) -> Event | Signal:
        if not self.buffer:
            return self._need("a chunk")
        start = not self._chunk_started
        data = self._take(min(self._remaining, len(self.buffer)))
        end = self._advance_chunk(len(data))
        return Data(data, start, end, self._chunk_size, self._chunk_ext)

    def _read_chunk_crlf(self) -> Signal | None:
        buf = self.buffer
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._go(Trigger.CHUNK_CRLF)
            return None
        if len(buf) >= 2 or (buf and buf[0] != _CR):
            raise fail("chunk data not followed by CRLF")
        return self._need("a chunked body")

    def _read_trailers(self) -> Event | Signal:
        buf = self.buffer
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._go(Trigger.END)
            return _END
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if buf != b"\r":
                check_partial_head(buf, self._checked, self.limits, "trailers")
            self._checked = len(buf)
            self._scan = max(len(buf) - SEARCH_TAIL, 0)
            return self._need("the trailer section")
        if end + 4 > self.limits.max_header_bytes:
            raise fail("trailer section too large", 431)
        block = bytes(buf[:end + 2])
        del buf[:end + 4]
        self._scan = self._checked = 0
        self._go(Trigger.END)
        return EndOfMessage(tuple(parse_fields(block, self.limits)))

    def _read_switching(self) -> Event:
        self._go(Trigger.END)
        return _END

    # -- read_body's steps: True complete, False stop here, None go on ---------------
    def _bulk_length(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        remaining = self._remaining
        if remaining:
            buf = self.buffer
            n = min(remaining, len(buf), limit - len(out))
            if n <= 0:
                if not buf:
                    self._need(f"a body ({remaining} bytes missing)")
                return False
            if n == len(buf):
                out += buf
                buf.clear()
            else:
                self._move(out, n)
            remaining = self._remaining = remaining - n
            if remaining:  # the buffer ran dry or out is full
                return False
        self.state = TRANSITIONS[State.BODY, Trigger.END]  # _go, inlined (we are in BODY)
        return True

    def _bulk_until_close(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        if self.buffer:
            room = limit - len(out)
            if room <= 0:
                return False
            self._move(out, min(len(self.buffer), room))
            return None
        if not self._eof:
            return False
        self._go(Trigger.END)
        return True

    def _bulk_chunk_line(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        if len(out) >= limit or self._read_chunk_line() is not None:
            return False
        if chunked and self.state is State.CHUNK_DATA:
            out += b"%x%s\r\n" % (self._chunk_size, self._chunk_ext)
        return None

    def _bulk_chunk_data(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        if not self.buffer:
            self._need("a chunk")
            return False
        room = limit - len(out)
        if room <= 0:
            return False
        n = min(self._remaining, len(self.buffer), room)
        self._move(out, n)
        if self._advance_chunk(n) and chunked:
            out += b"\r\n"
        return None

    def _bulk_chunk_crlf(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        return False if self._read_chunk_crlf() is not None else None

    def _bulk_trailers(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        event = self._read_trailers()
        if not isinstance(event, EndOfMessage):
            return False
        if chunked:
            out += encode_last_chunk(event.trailers)
        return True

    def _bulk_switching(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        self._go(Trigger.END)
        return True

    def _bulk_complete(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        return True

    def _bulk_misuse(self, out: bytearray, chunked: bool, limit: int) -> bool | None:
        raise ParserUsageError(f"read_body() in state {self.state.value}")


_BULK: dict[State, Callable[[BodyReader, bytearray, bool, int], bool | None]] = {
    State.BODY: BodyReader._bulk_length,
    State.UNTIL_CLOSE: BodyReader._bulk_until_close,
    State.CHUNK_LINE: BodyReader._bulk_chunk_line,
    State.CHUNK_DATA: BodyReader._bulk_chunk_data,
    State.CHUNK_CRLF: BodyReader._bulk_chunk_crlf,
    State.TRAILERS: BodyReader._bulk_trailers,
    State.SWITCHING: BodyReader._bulk_switching,
    State.DONE: BodyReader._bulk_complete,
    State.TUNNEL: BodyReader._bulk_complete,
    State.IDLE: BodyReader._bulk_misuse,
    State.CLOSED: BodyReader._bulk_misuse,
}
