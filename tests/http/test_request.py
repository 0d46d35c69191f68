"""RequestParser contract: pausing, pipelining, splice hand-off, early rejection,
sticky errors and misuse."""

from __future__ import annotations

import gc
import weakref

import pytest

from fastproxy.errors import ProtocolError, Side
from fastproxy.http import (
    NEED_DATA,
    PAUSED,
    BodyKind,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Limits,
    ParserUsageError,
    Request,
    RequestParser,
    State,
    encode_piece,
)

GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"


def events(p: RequestParser) -> list[object]:
    out: list[object] = []
    while True:
        event = p.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
            return out


def status_of(raw: bytes, limits: Limits | None = None, eof: bool = False) -> int:
    p = RequestParser(limits or Limits())
    p.receive_data(raw)
    if eof:
        p.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        events(p)
    assert info.value.side is Side.CLIENT
    return info.value.status


def test_message_ends_paused_until_start_next() -> None:
    p = RequestParser()
    p.receive_data(GET + GET)
    first = events(p)
    assert isinstance(first[0], Request) and first[1:] == [EndOfMessage(), PAUSED]
    assert p.state is State.DONE and p.next_event() is PAUSED
    assert p.trailing_data == (GET, False)
    p.start_next()
    assert isinstance(p.next_event(), Request)


def test_connection_closed_between_messages() -> None:
    p = RequestParser()
    p.receive_data(GET)
    events(p)
    p.start_next()
    assert p.next_event() is NEED_DATA
    p.receive_data(b"")
    assert p.next_event() == ConnectionClosed() and p.state is State.CLOSED
    assert p.next_event() == ConnectionClosed()


def test_body_kind_and_content_length() -> None:
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n")
    assert isinstance(p.next_event(), Request)
    assert p.body_kind is BodyKind.LENGTH and p.body_kind == "length"
    assert p.content_length == 7 and p.body_remaining == 7
    q = RequestParser()
    q.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    q.next_event()
    assert q.body_kind is BodyKind.CHUNKED and q.content_length is None and q.body_remaining == 0
    r = RequestParser()
    r.receive_data(GET)
    r.next_event()
    assert r.body_kind is BodyKind.NONE and r.content_length is None


def test_splice_hand_off_for_a_known_length_body() -> None:
    p = RequestParser()
    p.receive_data(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    assert isinstance(p.next_event(), Request)
    assert p.next_event() == Data(b"x" * 100)      # drain what was buffered
    assert p.next_event() is NEED_DATA
    assert p.body_remaining == 900                 # relay these raw (splice) ...
    p.body_consumed(400)
    p.body_consumed(500)                           # ... and report them
    assert p.body_remaining == 0
    assert p.next_event() == EndOfMessage()
    assert p.next_event() is PAUSED


def test_body_consumed_misuse() -> None:
    p = RequestParser()
    p.receive_data(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    p.next_event()
    with pytest.raises(ParserUsageError):
        p.body_consumed(1)                         # bytes still buffered
    p.next_event()
    with pytest.raises(ParserUsageError):
        p.body_consumed(8)                         # more than remains
    with pytest.raises(ParserUsageError) as info:
        RequestParser().body_consumed(1)           # not in a body
    assert info.value.status == 500 and info.value.side is Side.INTERNAL


def test_misuse_of_transitions() -> None:
    p = RequestParser()
    with pytest.raises(ParserUsageError):
        p.start_next()
    p.receive_data(b"")
    with pytest.raises(ParserUsageError):
        p.receive_data(b"x")


def test_errors_are_sticky() -> None:
    p = RequestParser()
    p.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nX_A: 1\r\n\r\n")
    with pytest.raises(ProtocolError) as first:
        p.next_event()
    with pytest.raises(ProtocolError) as again:
        p.next_event()
    assert p.state is State.ERROR
    assert type(again.value) is type(first.value) and str(again.value) == str(first.value)
    assert again.value.status == first.value.status


def test_a_failed_parser_keeps_no_frames_alive() -> None:
    """The error a parser keeps has no traceback: one would hold the frames
    that called it, and so the connection owning the parser, in a cycle that
    only the cyclic collector frees (the workers run it rarely)."""
    class Connection:
        def __init__(self) -> None:
            self.parser = RequestParser()

        def feed(self, data: bytes) -> None:
            self.parser.receive_data(data)
            try:
                self.parser.next_event()
            except ProtocolError:
                pass

    conn = Connection()
    gone = weakref.ref(conn)
    gc.disable()
    try:
        conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX_A: 1\r\n\r\n")
        conn.feed(b"more")            # raises the kept error again
        del conn
        assert gone() is None         # freed by reference counting alone
    finally:
        gc.enable()


def test_413_at_once_before_any_body_byte() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
    assert status_of(raw, Limits(max_body_bytes=100)) == 413


def test_chunked_413_while_streaming() -> None:
    p = RequestParser(Limits(max_body_bytes=10))
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
    assert [type(e) for e in events(p)] == [Request, Data, type(NEED_DATA)]
    p.receive_data(b"3\r\n")
    with pytest.raises(ProtocolError) as info:
        p.next_event()
    assert info.value.status == 413


@pytest.mark.parametrize("raw, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),   # a TLS ClientHello
    (b"A" * 33, 501),                                          # method too long, unfinished
    (b"GET /" + b"a" * 9000, 414),                              # request line too long, unfinished
    (b"GET /\r\n", 400),                                       # HTTP/0.9, head unfinished
    (b"GET / HTTP/3.0\r\nHost", 505),
    (b"GET / HTTP/1.1\r\nHost: h\nX", 400),                    # bare LF, unfinished
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 9000, 431),             # field line too long, unfinished
    (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 9000, 431),        # head too large, unfinished
])
def test_unfinished_heads_are_refused_early(raw: bytes, status: int) -> None:
    assert status_of(raw) == status


def test_unfinished_head_that_may_still_be_valid_waits() -> None:
    p = RequestParser()
    for piece in (b"\r", b"\n", b"G", b"ET / HT", b"TP/1.1\r", b"\nHost: h\r\n", b"\r"):
        p.receive_data(piece)
        assert p.next_event() is NEED_DATA
    p.receive_data(b"\n")
    assert isinstance(p.next_event(), Request)


def test_empty_lines_between_pipelined_requests() -> None:
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx\r\n" + GET)
    assert [type(e) for e in events(p)] == [Request, Data, EndOfMessage, type(PAUSED)]
    p.start_next()
    assert isinstance(p.next_event(), Request)


def test_chunk_flags_and_exact_reframing_byte_by_byte() -> None:
    body = b"5;a=b\r\nhello\r\nb\r\nhello world\r\n0\r\n\r\n"
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    p.next_event()
    pieces: list[Data] = []
    for i in range(len(body)):
        p.receive_data(body[i:i + 1])
        for event in events(p):
            if isinstance(event, Data):
                pieces.append(event)
    assert all(len(d.data) == 1 for d in pieces)
    assert [d.chunk_start for d in pieces].count(True) == 2
    assert [d.chunk_end for d in pieces].count(True) == 2
    assert pieces[0].chunk_ext == b";a=b" and pieces[5].chunk_size == 11
    assert b"".join(encode_piece(d) for d in pieces) + b"0\r\n\r\n" == body


def test_request_field_helpers() -> None:
    p = RequestParser()
    p.receive_data(b"GET / HTTP/1.1\r\nHOST: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    request = p.next_event()
    assert isinstance(request, Request)
    assert request.get(b"host") == b"h" and request.get(b"nope") is None
    assert request.get_all(b"x-a") == [b"1", b"2"]
    assert request.lower_headers()[0] == (b"host", b"h")


def test_limits_are_configurable() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n"
    assert status_of(raw, Limits(max_fields=5)) == 431
    assert status_of(b"LONGMETHOD / HTTP/1.1\r\nHost: h\r\n\r\n", Limits(max_method=4)) == 501
    assert status_of(b"GET /abcdef HTTP/1.1\r\nHost: h\r\n\r\n", Limits(max_request_line=10)) == 414
    assert status_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=bcd\r\n",
                     Limits(max_chunk_ext=3)) == 400


def test_trailer_section_limits() -> None:
    start = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    assert status_of(start + b"X-T: 1\r\n" * 101 + b"\r\n") == 431
    assert status_of(start + b"X-T: " + b"v" * 9000, Limits()) == 431
