"""Header-list operations for forwarding, serialisation and chunked re-framing."""

from __future__ import annotations

import pytest

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    BodyKind,
    Data,
    InformationalResponse,
    Request,
    Response,
    encode_chunk,
    encode_last_chunk,
    encode_piece,
    serialize_request,
    serialize_response,
)
from tests.http.oracle import (
    add_forwarded_for,
    add_via,
    anonymize,
    connection_options,
    decrement_max_forwards,
    frame_headers,
    remove_hop_by_hop,
    upgrade_protocols,
)

F = list[tuple[bytes, bytes]]


def names(fields: F) -> list[bytes]:
    return [n for n, _ in fields]


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    fields = [(b"Host", b"h"), (b"Connection", b"keep-alive, X-Secret, host"),
              (b"Keep-Alive", b"timeout=5"), (b"Proxy-Connection", b"keep-alive"),
              (b"TE", b"trailers"), (b"Trailer", b"X-Sum"), (b"Transfer-Encoding", b"chunked"),
              (b"Upgrade", b"websocket"), (b"X-Secret", b"1"), (b"x-secret", b"2"),
              (b"Accept", b"*/*")]
    assert connection_options(fields) == {b"keep-alive", b"x-secret", b"host"}
    assert remove_hop_by_hop(fields) == [(b"Host", b"h"), (b"Accept", b"*/*")]


def test_h2c_upgrade_and_http2_settings_are_dropped() -> None:
    fields = [(b"Host", b"h"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
              (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")]
    assert upgrade_protocols(fields) == []
    assert remove_hop_by_hop(fields, keep_upgrade=True) == [(b"Host", b"h")]


def test_websocket_upgrade_is_kept_when_tunnelling() -> None:
    fields = [(b"Host", b"h"), (b"Connection", b"keep-alive, Upgrade"),
              (b"Upgrade", b"websocket, h2c"), (b"Sec-WebSocket-Key", b"k")]
    assert upgrade_protocols(fields) == [b"websocket"]
    assert remove_hop_by_hop(fields, keep_upgrade=True) == [
        (b"Host", b"h"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k"),
        (b"Connection", b"upgrade")]
    assert upgrade_protocols([(b"Upgrade", b"websocket")]) == []   # no Connection: upgrade


def test_via() -> None:
    assert add_via([(b"Via", b"1.0 other")]) == [(b"Via", b"1.0 other"), (b"Via", b"1.1 fastproxy")]
    assert add_via([], b"1.0") == [(b"Via", b"1.0 fastproxy")]


def test_x_forwarded_for_appends_or_replaces() -> None:
    fields = [(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2"),
              (b"X-Forwarded-Proto", b"ftp")]
    out = add_forwarded_for(fields, b"192.0.2.7", proto=b"http", host=b"h")
    assert out == [(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2, 192.0.2.7"),
                   (b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Host", b"h")]
    out = add_forwarded_for(fields, b"2001:db8::1", replace=True)
    assert (b"X-Forwarded-For", b"2001:db8::1") in out and (b"X-Forwarded-Proto", b"ftp") in out
    with pytest.raises(ValueError):
        add_forwarded_for([], b"1.2.3.4\r\nX-Evil: 1")
    with pytest.raises(ValueError):
        add_forwarded_for([], b"1.2.3.4", host=b"a\r\nb")


def test_anonymize_strips_identifying_fields() -> None:
    fields = [(b"Host", b"h"), (b"Via", b"1.1 a"), (b"X-Forwarded-For", b"1.2.3.4"),
              (b"Forwarded", b"for=1.2.3.4"), (b"X-Real-IP", b"1.2.3.4"),
              (b"Proxy-Authorization", b"Basic eA=="), (b"proxy-foo", b"1"), (b"Accept", b"*/*")]
    assert anonymize(fields) == [(b"Host", b"h"), (b"Accept", b"*/*")]


def test_max_forwards() -> None:
    fields = [(b"Host", b"h"), (b"Max-Forwards", b"3")]
    assert decrement_max_forwards(b"OPTIONS", fields) == ([(b"Host", b"h"), (b"Max-Forwards", b"2")],
                                                          False)
    assert decrement_max_forwards(b"TRACE", [(b"Max-Forwards", b"0")]) == (
        [(b"Max-Forwards", b"0")], True)
    assert decrement_max_forwards(b"GET", [(b"Max-Forwards", b"0")]) == ([(b"Max-Forwards", b"0")],
                                                                         False)
    assert decrement_max_forwards(b"TRACE", [(b"Host", b"h")]) == ([(b"Host", b"h")], False)
    with pytest.raises(ProtocolError):
        decrement_max_forwards(b"TRACE", [(b"Max-Forwards", b"-1")])


def test_frame_headers() -> None:
    fields = [(b"Host", b"h"), (b"Content-Length", b"005, 5")]
    assert frame_headers(fields, BodyKind.LENGTH, 5) == [(b"Host", b"h"), (b"Content-Length", b"5")]
    assert frame_headers([(b"Host", b"h")], BodyKind.CHUNKED) == [
        (b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    assert frame_headers(fields, BodyKind.NONE) == fields      # HEAD/304 keep Content-Length
    assert frame_headers(fields, BodyKind.CLOSE) == [(b"Host", b"h")]


def test_serialize_request_and_response() -> None:
    request = Request(b"GET", b"http://h/x", ((b"Host", b"h"),), b"1.0")
    assert serialize_request(request) == b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n"
    assert serialize_request(request, [(b"Host", b"h"), (b"Via", b"1.0 fastproxy")], target=b"/x",
                             version=b"1.0") == \
        b"GET /x HTTP/1.0\r\nHost: h\r\nVia: 1.0 fastproxy\r\n\r\n"
    response = Response(404, b"Not Found", ((b"Content-Length", b"0"),))
    assert serialize_response(response) == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert serialize_response(InformationalResponse(100, b"Continue")) == \
        b"HTTP/1.1 100 Continue\r\n\r\n"


def test_chunk_encoding() -> None:
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 255, b";a=b") == b"ff;a=b\r\n" + b"x" * 255 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert encode_piece(Data(b"abc")) == b"3\r\nabc\r\n"
    assert encode_piece(Data(b"ab", True, False, 5, b";x")) == b"5;x\r\nab"
    assert encode_piece(Data(b"cde", False, True, 5, b";x")) == b"cde\r\n"


def test_last_chunk_drops_forbidden_trailers() -> None:
    trailers = [(b"X-Sum", b"9"), (b"Content-Length", b"44"), (b"Transfer-Encoding", b"chunked"),
                (b"Host", b"evil"), (b"Connection", b"close"), (b"Trailer", b"X")]
    assert encode_last_chunk(trailers) == b"0\r\nX-Sum: 9\r\n\r\n"
    assert encode_last_chunk() == b"0\r\n\r\n"
