"""The rest of one large message body, moved with splice past the parser.

A known-length body still ``SPLICE_MIN`` or more bytes long once its buffered
part is gone, or a response delimited by the close of the connection, moves
``src -> pipe -> dst`` with ``relay.Mover``; every run read is reported to
the parser that would otherwise have read it (``body_consumed``, rule 4 of
``http.state``), so the parser ends the message as if it had. Measured
(bench/RESULTS.md, "splice threshold"): proxy CPU per response, copy vs
splice: 128 KiB 136 vs 151 µs, 256 KiB 249 vs 193 µs, 1 MiB 828 vs 526 µs.
"""

from __future__ import annotations

import socket

from fastproxy.http import BodyKind, RequestParser, ResponseParser
from fastproxy.relay import DONE, Mover, PipePool

SPLICE_MIN = 256 * 1024


def worth_splicing(parser: RequestParser | ResponseParser) -> bool:
    """Whether the rest of the body being parsed should move with splice."""
    if parser.buffered:
        return False
    kind = parser.body_kind
    if kind is BodyKind.LENGTH:
        remaining = parser.body_remaining
        return remaining is not None and remaining >= SPLICE_MIN
    return kind is BodyKind.CLOSE and parser.body_remaining is None


class BodySplice:
    """Methods for the owner: ``step() -> done``, ``pending`` (bytes read, not
    yet written), ``moved``, ``eof``, ``release()``. ``step`` raises OSError
    from either socket."""

    __slots__ = ("mover", "parser")

    def __init__(self, pool: PipePool, counters: memoryview, src: socket.socket,
                 dst: socket.socket, parser: RequestParser | ResponseParser, read_counter: int,
                 write_counter: int) -> None:
        self.parser = parser
        consumed = parser.body_consumed

        def read(n: int) -> None:   # not a method of self: the mover would hold a cycle
            counters[read_counter] += n
            consumed(n)

        self.mover = Mover(pool, counters, src, dst, parser.body_remaining, read, write_counter)

    def step(self) -> bool:
        """Move what can move now; True when the body is complete (the parser
        has then seen the end: call ``read_body`` to take its EndOfMessage)."""
        mover = self.mover
        if mover.step() != DONE:
            return False
        if mover.eof:
            self.parser.receive_data(b"")
        return True

    @property
    def pending(self) -> int:
        return self.mover.pending

    @property
    def moved(self) -> int:
        return self.mover.moved

    def release(self) -> None:
        self.mover.release()
