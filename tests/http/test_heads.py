"""Heads as canonical blocks: the fast (canonical) path and the general path of
``heads.py`` give the same events and the same errors; ``block``/``special``
are exact; heads are lazy, comparable and built from fields as before."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    SPECIAL_NAMES,
    InformationalResponse,
    Limits,
    Request,
    RequestParser,
    Response,
)
from fastproxy.http import heads as heads_module
from fastproxy.http.fields import all_lines, canonical_block, fields_of, special_of
from fastproxy.http.framing import parse_fields
from fastproxy.http.heads import parse_request_head
from fastproxy.http.syntax import CANONICAL_REQUEST_HEAD, CANONICAL_RESPONSE_HEAD

PROPS = settings(max_examples=int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "400")),
                 deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BROWSER_GET = (b"GET /p?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0 (X11)\r\n"
               b"Accept: text/html,*/*;q=0.8\r\nCookie: a=1; b=2\r\nConnection: keep-alive\r\n")


def outcome(parse: Any, *args: Any) -> tuple[str, Any]:
    try:
        event, kind, length = parse(*args)
    except ProtocolError as exc:
        return "error", (exc.status, str(exc))
    return "ok", (event, event.block, event.special, kind, length)


# -- the grammar of generated heads: canonical most of the time, but not always ------------
PLAIN = [b"Accept", b"User-Agent", b"X-A", b"x-a", b"Te-X", b"Hostx", b"Cookie", b"Via",
         b"X-Forwarded-For", b"Proxy-Authorization", b"proxy-foo", b"Expect", b"Max-Forwards"]
FRAMING = [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection",
           b"connection", b"Keep-Alive", b"TE", b"Trailer", b"Upgrade"]
BAD_NAMES = [b"X_B", b"Bad Name", b"", b"X\x80"]
GOOD_VALUES = [b"h", b"example.com:8080", b"5", b"keep-alive", b"close", b"a b", b"a\tb",
               b"caf\xc3\xa9", b"\x80\xff", b"", b"[::1]", b"websocket, h2c", b"x-a, close"]
ODD_VALUES = [b"005", b"5, 5", b"chunked", b"gzip, chunked", b"Upgrade", b"100-continue",
              b"a\x7fb", b"a\x00", b"a@b", b"a\rb"]
START = [b"GET / HTTP/1.1", b"POST /a?b HTTP/1.1", b"GET / HTTP/1.0", b"OPTIONS * HTTP/1.1",
         b"GET http://h:80/x HTTP/1.1", b"CONNECT h:443 HTTP/1.1", b"GET h:443 HTTP/1.1",
         b"LONGMETHODNAME / HTTP/1.1", b"GET /" + b"a" * 40 + b" HTTP/1.1", b"GET / HTTP/2.0",
         b"G\xc3T / HTTP/1.1", b"GET  / HTTP/1.1"]
STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.0 200 OK", b"HTTP/1.1 101",
          b"HTTP/1.1 100 Continue", b"HTTP/1.1 304 ", b"HTTP/1.1 200 \xe9t\xe9", b"HTTP/1.1 99 X"]


def mostly(common: list[bytes], rare: list[bytes], odds: int = 8) -> st.SearchStrategy[bytes]:
    return st.sampled_from(common * odds + rare)


@st.composite
def field_lines(draw: st.DrawFn) -> bytes:
    """Up to 7 lines; a line is rarely non-canonical (OWS) and more rarely invalid."""
    lines = []
    for _ in range(draw(st.integers(0, 7))):
        name = draw(mostly(PLAIN, FRAMING, 4) if draw(st.integers(0, 40)) else
                    st.sampled_from(BAD_NAMES))
        value = draw(st.binary(max_size=6) if draw(st.integers(0, 20)) == 0
                     else mostly(GOOD_VALUES, ODD_VALUES))
        ows, trail = b": ", b""
        if draw(st.integers(0, 6)) == 0:
            ows = draw(st.sampled_from([b":", b":  ", b":\t", b": \t", b" : "]))
            trail = draw(st.sampled_from([b"", b" ", b"\t", b" \t "]))
        lines.append(name + ows + value + trail + b"\r\n")
    return b"".join(lines)


limits = st.sampled_from([Limits()] * 6 + [Limits(max_fields=3), Limits(max_field_line=12),
                          Limits(max_request_line=20), Limits(max_method=4),
                          Limits(max_header_bytes=80), Limits(max_body_bytes=4)])


@PROPS
@given(mostly(START[:2], START[2:], 6), field_lines(), limits)
@example(b"GET / HTTP/1.1", b"Host: h\r\nX: a \r\n", Limits())
@example(b"GET / HTTP/1.1", b"Host: h\r\nX:\r\nY: \r\n", Limits())
def test_fast_and_general_request_paths_agree(start: bytes, fields: bytes, lim: Limits) -> None:
    head = start + b"\r\n" + b"Host: h\r\n" * (b"HTTP/1.1" in start) + fields
    got = outcome(parse_request_head, head, lim)
    event(f"{got[0]}, canonical: {bool(CANONICAL_REQUEST_HEAD.fullmatch(head))}")
    assert got == outcome(heads_module._parse_request_generally, head, lim)
    if got[0] == "ok":
        request = got[1][0]
        generous = Limits(max_fields=100, max_field_line=10_000)
        host = 1 if b"HTTP/1.1" in start else 0
        assert request.headers[host:] == tuple(parse_fields(fields, generous))
        check_block(request)


@PROPS
@given(mostly(STATUS[:1], STATUS[1:], 4), field_lines(),
       st.sampled_from([b"GET", b"HEAD", b"CONNECT"]))
def test_fast_and_general_response_paths_agree(start: bytes, fields: bytes, method: bytes) -> None:
    head = start + b"\r\n" + fields
    got = outcome(heads_module.parse_response_head, head, Limits(), method)
    event(f"{got[0]}, canonical: {bool(CANONICAL_RESPONSE_HEAD.fullmatch(head))}")
    assert got == outcome(heads_module._parse_response_generally, head, Limits(), method)
    if got[0] == "ok":
        check_block(got[1][0])


def check_block(head: Request | Response | InformationalResponse) -> None:
    """``block`` is the canonical form of ``headers`` and ``special`` lists exactly its
    special lines, with spans of whole lines."""
    assert head.block == canonical_block(head.headers)
    assert fields_of(head.block) == head.headers
    expected = tuple(line for line in all_lines(head.block)
                     if line[0] in SPECIAL_NAMES or line[0].startswith(b"proxy-"))
    assert head.special == expected
    for name, value, start, end in head.special:
        assert head.block[start:end].lower() == name + b": " + value.lower() + b"\r\n"


def parsed(raw: bytes) -> Request:
    p = RequestParser()
    p.receive_data(raw + b"\r\n")
    event = p.next_event()
    assert isinstance(event, Request)
    return event


def test_non_canonical_fields_are_canonicalised() -> None:
    request = parsed(b"GET / HTTP/1.1\r\nHost:h\r\nX-A:  1 \r\nX-B:\t\r\nX-C:\ta\t b\t\r\n")
    assert request.block == b"Host: h\r\nX-A: 1\r\nX-B: \r\nX-C: a\t b\r\n"
    assert request.special == ((b"host", b"h", 0, 9),)
    assert request.headers == ((b"Host", b"h"), (b"X-A", b"1"), (b"X-B", b""), (b"X-C", b"a\t b"))


def test_a_canonical_head_keeps_its_bytes() -> None:
    request = parsed(BROWSER_GET)
    assert request.block == BROWSER_GET[BROWSER_GET.index(b"\n") + 1:]
    assert [s[0] for s in request.special] == [b"host", b"cookie", b"connection"]
    check_block(request)


def test_special_names_are_answered_without_parsing_the_block() -> None:
    request = parsed(BROWSER_GET + b"proxy-Authorization: Basic eA==\r\nX-A: 1\r\nx-a: 2\r\n")
    assert request.get(b"host") == b"www.example.com"
    assert request.get_all(b"cookie") == [b"a=1; b=2"]
    assert request.get(b"proxy-authorization") == b"Basic eA=="
    assert request.get(b"content-length") is None and request.get(b"via", b"-") == b"-"
    assert request._headers is None                        # nothing parsed yet
    assert request.get_all(b"x-a") == [b"1", b"2"]
    assert request.get(b"accept") == b"text/html,*/*;q=0.8"
    assert request._headers is not None
    assert request.lower_headers()[0] == (b"host", b"www.example.com")


def test_heads_built_from_fields_compare_equal_to_parsed_ones() -> None:
    request = parsed(b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n")
    built = Request(b"GET", b"/a", ((b"Host", b"h"), (b"X-A", b"1")), b"1.1", "origin", b"h",
                    b"", b"/a", True)
    assert built == request and hash(built) == hash(request)
    assert built.block == request.block and built.special == request.special
    assert built != Request(b"GET", b"/a", ((b"Host", b"h"),), authority=b"h", path=b"/a")
    assert Request(b"GET", b"/", [(b"Host", b"h")]).headers == ((b"Host", b"h"),)
    assert repr(Request(b"GET", b"/")) == (
        "Request(method=b'GET', target=b'/', headers=(), version=b'1.1', form='origin', "
        "authority=b'', scheme=b'', path=b'', keep_alive=True)")
    assert Response(200, b"OK", ((b"Content-Length", b"0"),)).special == (
        (b"content-length", b"0", 0, 19),)
    assert InformationalResponse(100) != Response(100)


def test_a_block_alone_is_enough() -> None:
    response = Response(200, b"OK", block=b"Server: x\r\nConnection: close\r\n")
    assert response.special == ((b"connection", b"close", 11, 30),)
    assert response.headers == ((b"Server", b"x"), (b"Connection", b"close"))
    assert response == Response(200, b"OK", ((b"Server", b"x"), (b"Connection", b"close")))


def test_heads_match_positionally() -> None:
    match parsed(b"GET /x HTTP/1.1\r\nHost: h\r\n"):
        case Request(method, target, headers):
            assert (method, target, headers) == (b"GET", b"/x", ((b"Host", b"h"),))
        case _:
            pytest.fail("no match")


def test_special_spans_in_a_head() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nTE: x\r\nTEx: y\r\nProxy-A: z\r\n"
    assert special_of(head, 16) == ((b"host", b"h", 0, 9), (b"te", b"x", 9, 16),
                                    (b"proxy-a", b"z", 24, 36))
    assert special_of(b"\n", 1) == ()
