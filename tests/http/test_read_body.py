"""``read_body`` against ``next_event()``: the same bytes (payload, or the chunked
coding as ``encode_piece``/``encode_last_chunk`` re-frame it), the same
completion, the same errors, however the input is split and whatever the
limit; plus the splice hand-off and the contract's edges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    NEED_DATA,
    PAUSED,
    BodyKind,
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Limits,
    ParserUsageError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    State,
    encode_last_chunk,
    encode_piece,
)

PROPS = settings(max_examples=int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "300")),
                 deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CORPUS = Path(__file__).resolve().parent / "corpus"
SEEDS = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.http"))]
Parser = RequestParser | ResponseParser
Run = tuple[list[tuple[object, bytes]], tuple[int, str] | None, bytes]


def make(response: bool, limits: Limits) -> Parser:
    if not response:
        return RequestParser(limits)
    p = ResponseParser(limits)
    for _ in range(8):
        p.expect(b"GET")
    return p


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({c % (len(raw) + 1) for c in cuts}) + [len(raw)]
    pieces, start = [], 0
    for end in bounds:
        if end > start:
            pieces.append(raw[start:end])
            start = end
    return pieces


def by_events(raw: bytes, cuts: list[int], chunked: bool, response: bool = False,
              limits: Limits = Limits()) -> Run:
    """Each message's head and body bytes as ``next_event()`` gives them, the
    error (status, message) if any, and what is left buffered."""
    p = make(response, limits)
    messages: list[tuple[object, bytes]] = []
    try:
        for piece in [*split(raw, cuts), b""]:
            p.receive_data(piece)
            while (ev := p.next_event()) is not NEED_DATA:
                if ev is PAUSED:
                    if p.state is State.TUNNEL:
                        return messages, None, p.trailing_data[0]
                    p.start_next()
                elif isinstance(ev, ConnectionClosed):
                    return messages, None, p.trailing_data[0]
                elif isinstance(ev, (Request, Response)):
                    messages.append((ev, b""))
                elif isinstance(ev, Data):
                    body = encode_piece(ev) if chunked and p.body_kind is BodyKind.CHUNKED \
                        else ev.data
                    messages[-1] = (messages[-1][0], messages[-1][1] + body)
                elif isinstance(ev, EndOfMessage):
                    if chunked and p.body_kind is BodyKind.CHUNKED:
                        messages[-1] = (messages[-1][0],
                                        messages[-1][1] + encode_last_chunk(ev.trailers))
                    messages[-1] = (messages[-1][0], messages[-1][1] + b"<end>")
    except ProtocolError as exc:
        return messages, (exc.status, str(exc)), p.trailing_data[0]
    return messages, None, p.trailing_data[0]


def by_read_body(raw: bytes, cuts: list[int], chunked: bool, limit: int, response: bool = False,
                 limits: Limits = Limits()) -> Run:
    """The same through ``read_body`` into a buffer the caller drains after each call."""
    p = make(response, limits)
    messages: list[tuple[object, bytes]] = []
    out = bytearray()
    in_body = False
    try:
        for piece in [*split(raw, cuts), b""]:
            p.receive_data(piece)
            while True:
                if not in_body:
                    ev = p.next_event()
                    if ev is NEED_DATA:
                        break
                    if ev is PAUSED:
                        if p.state is State.TUNNEL:
                            return messages, None, p.trailing_data[0]
                        p.start_next()
                        continue
                    if isinstance(ev, ConnectionClosed):
                        return messages, None, p.trailing_data[0]
                    if isinstance(ev, InformationalResponse):
                        continue
                    messages.append((ev, b""))
                    in_body = True
                before = (p.buffered, p.state)
                try:
                    done = p.read_body(out, chunked=chunked and p.body_kind is BodyKind.CHUNKED,
                                       limit=limit)
                finally:
                    if not chunked:
                        assert len(out) <= limit
                    messages[-1] = (messages[-1][0], messages[-1][1] + bytes(out))
                    out.clear()
                if done:
                    assert p.state in (State.DONE, State.TUNNEL)
                    messages[-1] = (messages[-1][0], messages[-1][1] + b"<end>")
                    in_body = False
                elif (p.buffered, p.state) == before:
                    break
    except ProtocolError as exc:
        return messages, (exc.status, str(exc)), p.trailing_data[0]
    return messages, None, p.trailing_data[0]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Pipelined requests with Content-Length and chunked bodies (extensions,
    trailers, forbidden trailers), some of them broken or cut."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        body = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            out.append(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
            continue
        chunks, rest = [], body
        while rest:
            size = draw(st.integers(1, 12))
            ext = draw(st.sampled_from([b"", b"", b";a=b", b';q="x y"']))
            chunks.append(b"%x%s\r\n%s\r\n" % (len(rest[:size]), ext, rest[:size]))
            rest = rest[size:]
        trailers = draw(st.sampled_from([b"", b"X-Sum: 9\r\n", b"Content-Length: 3\r\nX-T: 1\r\n"]))
        out.append(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"".join(chunks) + b"0\r\n" + trailers + b"\r\n")
    raw = b"".join(out)
    if draw(st.integers(0, 4)) == 0:  # damage it
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + draw(st.sampled_from([b"", b"x", b"\r", b"\n", b";"])) + \
            raw[pos + draw(st.integers(0, 2)):]
    return raw


cuts = st.lists(st.integers(0, 10_000), max_size=8)
limit = st.sampled_from([1, 3, 7, 64, 1 << 20])


@PROPS
@given(bodies(), cuts, st.booleans(), limit)
@example(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5;a=b\r\nhello\r\n0\r\nX-Sum: 9\r\nHost: x\r\n\r\n", [60, 61, 70], True, 2)
def test_read_body_gives_what_next_event_gives(raw: bytes, where: list[int], chunked: bool,
                                               most: int) -> None:
    assert by_read_body(raw, where, chunked, most) == by_events(raw, where, chunked)


@PROPS
@given(st.sampled_from(SEEDS), cuts, st.booleans(), limit)
def test_read_body_on_the_corpus(raw: bytes, where: list[int], chunked: bool, most: int) -> None:
    assert by_read_body(raw, where, chunked, most) == by_events(raw, where, chunked)


@PROPS
@given(st.binary(max_size=60), cuts, limit, st.booleans())
def test_read_body_on_responses(body: bytes, where: list[int], most: int, chunked: bool) -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"%x;n=%d\r\n%s\r\n" % (len(body[i:i + 7]), i, body[i:i + 7])
                      for i in range(0, len(body), 7))
           + b"0\r\nX-Sum: 1\r\n\r\nHTTP/1.0 200 OK\r\n\r\n" + body)
    assert by_read_body(raw, where, chunked, most, response=True) == \
        by_events(raw, where, chunked, response=True)


def test_content_length_body_with_its_head_in_one_call() -> None:
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET")
    assert isinstance(p.next_event(), Request)
    out = bytearray(b"head;")
    assert p.read_body(out, chunked=False, limit=1 << 16) is True
    assert out == b"head;hello" and p.state is State.DONE and p.next_event() is PAUSED
    assert p.read_body(out, chunked=False, limit=1 << 16) is True   # still complete
    assert p.trailing_data == (b"GET", False)


def test_chunked_output_is_the_reframed_body() -> None:
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;a=b\r\nhel")
    p.next_event()
    out = bytearray()
    assert p.read_body(out, chunked=True, limit=100) is False
    assert out == b"5;a=b\r\nhel"
    p.receive_data(b"lo\r\n0\r\nX-Sum: 9\r\nTransfer-Encoding: x\r\n\r\n")
    assert p.read_body(out, chunked=True, limit=100) is True
    assert out == b"5;a=b\r\nhello\r\n0\r\nX-Sum: 9\r\n\r\n"


def test_limit_bounds_the_payload() -> None:
    p = RequestParser()
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
    p.next_event()
    out = bytearray(b"xx")
    assert p.read_body(out, chunked=False, limit=6) is False and out == b"xx0123"
    assert p.read_body(out, chunked=False, limit=6) is False and out == b"xx0123"  # full
    out.clear()
    assert p.read_body(out, chunked=False, limit=0) is False and out == b""
    assert p.read_body(out, chunked=False, limit=100) is True and out == b"456789"


def test_a_body_less_message_completes_with_no_room() -> None:
    p = RequestParser()
    p.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    p.next_event()
    assert p.read_body(bytearray(), chunked=False, limit=0) is True and p.state is State.DONE


def test_splice_hand_off() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    p.next_event()
    out = bytearray()
    assert p.read_body(out, chunked=False, limit=1 << 16) is False and len(out) == 100
    assert p.body_remaining == 900
    p.body_consumed(900)
    assert p.read_body(out, chunked=False, limit=1 << 16) is True and len(out) == 100


def test_close_delimited_body_ends_at_eof() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(b"HTTP/1.0 200 OK\r\n\r\nsome")
    p.next_event()
    out = bytearray()
    assert p.read_body(out, chunked=False, limit=100) is False and out == b"some"
    p.body_consumed(10)
    p.receive_data(b"")
    assert p.read_body(out, chunked=False, limit=100) is True and p.state is State.DONE


def test_tunnel_head_completes_into_tunnel() -> None:
    p = ResponseParser()
    p.expect(b"CONNECT")
    p.receive_data(b"HTTP/1.1 200 OK\r\n\r\n\x16\x03")
    p.next_event()
    assert p.read_body(bytearray(), chunked=False, limit=100) is True
    assert p.state is State.TUNNEL and p.trailing_data[0] == b"\x16\x03"


def test_errors_are_the_parser_errors_and_sticky() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX")
    p.next_event()
    out = bytearray()
    with pytest.raises(ProtocolError) as first:
        p.read_body(out, chunked=True, limit=100)
    assert first.value.status == 502 and out == b"5\r\nabcde\r\n"
    with pytest.raises(ProtocolError) as again:
        p.read_body(out, chunked=True, limit=100)
    assert same_error(again.value, first.value)
    with pytest.raises(ProtocolError) as by_event:
        p.next_event()
    assert same_error(by_event.value, first.value)


def same_error(a: ProtocolError, b: ProtocolError) -> bool:
    """The same error again (a copy: the parser keeps it without a traceback)."""
    return (type(a) is type(b) and str(a) == str(b) and a.status == b.status
            and a.side is b.side)


def test_misuse() -> None:
    p = RequestParser()
    with pytest.raises(ParserUsageError):
        p.read_body(bytearray(), chunked=False, limit=10)        # no head yet
    p.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n")
    p.next_event()
    with pytest.raises(ParserUsageError):
        p.read_body(bytearray(), chunked=True, limit=10)         # not a chunked body
    assert p.read_body(bytearray(), chunked=False, limit=10) is False
