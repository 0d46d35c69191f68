"""ResponseParser: bodies by method and status (RFC 9112 §6.3), interim responses,
tunnels, close-delimited bodies, pipelined expectations, and 502 on every fault."""

from __future__ import annotations

import pytest

from fastproxy.errors import ProtocolError, Side
from fastproxy.http import (
    NEED_DATA,
    PAUSED,
    BodyKind,
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    ParserUsageError,
    Response,
    ResponseParser,
    State,
)
from tests.http.helpers import completed, pieces, run


def parse(raw: bytes, method: bytes = b"GET", *, upgrade: bool = False, eof: bool = False,
          step: int | None = None) -> tuple[ResponseParser, list[object]]:
    """Feed one response (whole or ``step`` bytes at a time); stop at PAUSED."""
    p = ResponseParser()
    p.expect(method, upgrade=upgrade)
    events: list[object] = []
    for piece in [*pieces(raw, step), *([b""] if eof else [])]:
        p.receive_data(piece)
        while (event := p.next_event()) not in (NEED_DATA, PAUSED):
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
    return p, events


def fails(raw: bytes, method: bytes = b"GET", **kwargs: bool) -> ProtocolError:
    p = ResponseParser()
    p.expect(method, **kwargs)
    p.receive_data(raw)
    with pytest.raises(ProtocolError) as info:
        while p.next_event() not in (NEED_DATA, PAUSED):
            pass
    assert info.value.status == 502 and info.value.side is Side.UPSTREAM
    return info.value


def test_content_length_body() -> None:
    p, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert events == [Response(200, b"OK", ((b"Content-Length", b"5"),)), Data(b"hello"),
                      EndOfMessage()]
    assert p.body_kind is BodyKind.LENGTH and p.content_length == 5 and p.state is State.DONE


def test_head_response_has_no_body() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    p, events = parse(raw, b"HEAD")
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert p.body_kind is BodyKind.NONE and p.content_length is None
    _p2, events2 = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HEAD")
    assert [type(e) for e in events2] == [Response, EndOfMessage]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    p, events = parse(raw + b"HTTP/1.1 200 OK\r\n")
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert p.trailing_data[0] == b"HTTP/1.1 200 OK\r\n"


def test_interim_responses_come_before_the_final_one() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
           b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    for step in (None, 1):
        p, events = parse(raw, b"POST", step=step)
        assert events[0] == InformationalResponse(100, b"Continue")
        assert events[1] == InformationalResponse(103, b"Early Hints",
                                                  ((b"Link", b"</s.css>; rel=preload"),))
        assert isinstance(events[2], Response) and events[2].status == 201
        assert events[3] == EndOfMessage() and p.pending == 0


def test_close_delimited_body() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome bytes"
    p, events = parse(raw, eof=True)
    assert isinstance(events[0], Response) and events[0].keep_alive is False
    assert events[1:] == [Data(b"some bytes"), EndOfMessage()]
    assert p.next_event() is PAUSED
    p.start_next()
    assert p.next_event() == ConnectionClosed()


def test_close_delimited_body_can_be_spliced() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(b"HTTP/1.0 200 OK\r\n\r\n")
    assert isinstance(p.next_event(), Response) and p.body_kind is BodyKind.CLOSE
    assert p.next_event() is NEED_DATA and p.body_remaining is None
    p.body_consumed(123456)
    p.receive_data(b"")
    assert p.next_event() == EndOfMessage()


def test_chunked_with_trailers() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
           b"4\r\nwiki\r\n5;e=1\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n")
    for step in (None, 1, 3):
        _p, events = parse(raw, step=step)
        body = b"".join(e.data for e in events if isinstance(e, Data))
        assert body == b"wikipedia" and events[-1] == EndOfMessage(((b"X-Sum", b"9"),))


def test_connect_200_switches_to_a_tunnel() -> None:
    raw = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01tls bytes"
    p, events = parse(raw, b"CONNECT")
    assert [type(e) for e in events] == [Response, EndOfMessage]
    assert p.state is State.TUNNEL and p.body_kind is BodyKind.TUNNEL
    assert p.next_event() is PAUSED and p.trailing_data == (b"\x16\x03\x01tls bytes", False)
    with pytest.raises(ParserUsageError):
        p.start_next()


def test_connect_refused_is_an_ordinary_response() -> None:
    p, events = parse(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", b"CONNECT")
    assert events[1] == Data(b"no") and p.state is State.DONE


def test_101_switches_only_when_an_upgrade_was_requested() -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes"
    p, events = parse(raw, upgrade=True)
    assert isinstance(events[0], Response) and events[0].status == 101
    assert p.state is State.TUNNEL and p.trailing_data[0] == b"frames"
    fails(raw)


def test_pipelined_responses_follow_the_expect_queue() -> None:
    p = ResponseParser()
    p.expect(b"HEAD")
    p.expect(b"GET")
    out = run(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", parser=p)
    bodies = [m["body"] for m in completed(out)]
    assert bodies == ["", "abc"] and p.pending == 0


def test_keep_alive_of_responses() -> None:
    _, e1 = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    _, e2 = parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    _, e3 = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [e[0].keep_alive for e in (e1, e2, e3)] == [False, True, False]  # type: ignore[attr-defined]


def test_status_line_without_reason_is_tolerated() -> None:
    _, events = parse(b"HTTP/1.1 204\r\n\r\n")
    assert events[0] == Response(204, b"")


def test_upstream_closing_before_answering() -> None:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(b"")
    assert p.next_event() == ConnectionClosed() and p.pending == 1


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 600 High\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
])
def test_bad_responses_are_502(raw: bytes) -> None:
    p = ResponseParser()
    p.expect(b"GET")
    out = run(raw, parser=p, eof=True)
    assert out.status == 502, raw


def test_response_without_a_request_is_502() -> None:
    p = ResponseParser()
    p.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        p.next_event()
    assert info.value.status == 502 and "without a request" in str(info.value)
