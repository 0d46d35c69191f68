"""``rewrite.edit_head`` and its helpers against the field-list composition of
``headers.py`` (the oracle): for generated heads, the single-pass rewrite gives
byte for byte the head the list operations give, for the reverse proxy and for
the forward proxy at each anonymity level; Max-Forwards, Connection options
and Upgrade protocols agree with their list versions."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    BodyKind,
    Field,
    Limits,
    Request,
    RequestParser,
    Response,
    edit_head,
    forwarded_for,
    framing_field,
    max_forwards,
)
from fastproxy.http.fields import is_special
from fastproxy.http.framing import parse_fields
from fastproxy.http.headers import IDENTIFYING
from fastproxy.http.rewrite import connection_options, upgrade_protocols
from tests.http.oracle import (
    add_forwarded_for,
    add_via,
    anonymize,
    decrement_max_forwards,
    frame_headers,
    remove_fields,
    remove_hop_by_hop,
)
from tests.http.oracle import connection_options as list_connection_options
from tests.http.oracle import upgrade_protocols as list_upgrade_protocols

PROPS = settings(max_examples=int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "400")),
                 deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CLIENTS = [b"127.0.0.1", b"::1", b"10.1.2.3", b"2001:db8::7"]
XF = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")


def fields_bytes(fields: list[Field]) -> bytes:
    return b"".join(n + b": " + v + b"\r\n" for n, v in fields)


# -- the oracle: today's compositions of list operations ------------------------------------
def reverse_oracle(request: Request, kind: BodyKind, length: int | None, client: bytes,
                   keep_upgrade: bool) -> list[Field]:
    fields = remove_hop_by_hop(request.headers, keep_upgrade=keep_upgrade)
    fields = add_forwarded_for(fields, client, proto=b"http", host=request.authority or None)
    fields = add_via(fields, request.version)
    return frame_headers(fields, kind, length)


def forward_oracle(request: Request, keep_upgrade: bool, anonymous: bool) -> list[Field]:
    fields = remove_hop_by_hop(request.headers, keep_upgrade=keep_upgrade)
    fields = remove_fields(fields, (b"proxy-authorization", b"host"))
    if anonymous:
        fields = anonymize(fields)
    return [(b"Host", request.authority), *fields]


# -- the single-pass rewrite, as the engine composes it -------------------------------------
def reverse_edit(start: bytes, request: Request, kind: BodyKind, length: int | None,
                 client: bytes, keep_upgrade: bool) -> bytes:
    authority = request.authority
    drop = frozenset((*XF, b"content-length") if authority else (*XF[:2], b"content-length"))
    append = (forwarded_for(request, client) + b"X-Forwarded-Proto: http\r\n"
              + (b"X-Forwarded-Host: " + authority + b"\r\n" if authority else b"")
              + b"Via: " + request.version + b" fastproxy\r\n" + framing_field(kind, length or 0))
    return edit_head(start, request, drop=drop, keep_upgrade=keep_upgrade, append=append)


def forward_edit(start: bytes, request: Request, keep_upgrade: bool, anonymous: bool) -> bytes:
    drop = frozenset((b"host", b"proxy-authorization", *(IDENTIFYING if anonymous else ())))
    return edit_head(start, request, drop=drop, drop_prefix=b"proxy-" if anonymous else b"",
                     keep_upgrade=keep_upgrade, prepend=b"Host: " + request.authority + b"\r\n")


# -- generated heads ------------------------------------------------------------------------
def recase(name: bytes, how: int) -> bytes:
    if how == 1:
        return name.lower()
    if how == 2:
        return name.upper()
    if how == 3:
        return bytes(c ^ 0x20 if 0x61 <= c <= 0x7a and i % 2 else c for i, c in enumerate(name))
    return name


OTHER = [b"Accept", b"User-Agent", b"X-A", b"X-B", b"Sec-WebSocket-Key", b"Close", b"Te-X",
         b"Cookie", b"Authorization", b"Via", b"Forwarded", b"X-Real-IP", b"Expect",
         b"Proxy-Authorization", b"Proxy-Foo", b"X-Forwarded-Proto", b"X-Forwarded-Host"]
HOP = [b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade", b"HTTP2-Settings"]
VALUES = [b"1", b"a b", b"", b"text/html, */*", b"caf\xc3\xa9", b"x\ty", b"websocket",
          b"h2c", b"websocket, h2c", b"H2C, foo/2", b" ,h2c, ", b"timeout=5", b"trailers"]
OPTIONS = [b"keep-alive", b"close", b"upgrade", b"x-a", b"X-B", b"cookie", b"via", b"host",
           b"x-forwarded-for", b"te", b"proxy-foo", b"http2-settings", b"sec-websocket-key",
           b"x-nothere", b"close, x-a"]


@st.composite
def heads(draw: st.DrawFn, forward: bool) -> tuple[bytes, bytes]:
    """``(start line, raw head)`` of a valid request, canonical or not."""
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"OPTIONS", b"PUT"]))
    target = b"http://example.com:8080/p?q" if forward else b"/p?q"
    fields: list[Field] = []
    if version == b"1.1" or forward or draw(st.booleans()):
        fields.append((b"Host", b"example.com:8080"))
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(OTHER + HOP + [b"X-Forwarded-For", b"Upgrade"]
                                    + [b"Connection"] * 6))
        if name == b"X-Forwarded-For":
            value = draw(st.sampled_from([b"10.0.0.1", b"10.0.0.1, 10.0.0.2", b"", b"unknown"]))
        elif name == b"Connection":
            value = b", ".join(draw(st.lists(st.sampled_from(OPTIONS), min_size=1, max_size=3)))
        else:
            value = draw(st.sampled_from(VALUES))
        fields.insert(draw(st.integers(0, len(fields))), (recase(name, draw(st.integers(0, 3))),
                                                          value))
    if draw(st.integers(0, 2)) == 0:  # an upgrade, really asked for or not
        fields.append((recase(b"Upgrade", draw(st.integers(0, 3))),
                       draw(st.sampled_from([b"websocket", b"h2c", b"WebSocket, h2c"]))))
        fields.append((b"Connection", draw(st.sampled_from([b"Upgrade", b"keep-alive"]))))
    if draw(st.integers(0, 2)) == 0:  # fields named in Connection that are not special
        named = draw(st.sampled_from([b"X-A", b"Close", b"Sec-WebSocket-Key"]))
        fields.insert(draw(st.integers(0, len(fields))), (named, b"v"))
        fields.append((b"Connection", recase(named, draw(st.integers(0, 3)))))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        fields.append((b"Content-Length", draw(st.sampled_from([b"5", b"005", b"5, 5"]))))
    elif framing == "chunked" and version == b"1.1":
        fields.append((b"Transfer-Encoding", b"chunked"))
    ows = draw(st.sampled_from([b": "] * 4 + [b":", b":\t ", b":  "]))
    head = b"".join(n + ows + v + b"\r\n" for n, v in fields)
    start = b"%s %s HTTP/%s\r\n" % (method, target, version)
    return start, start + head + b"\r\n"


def parse(raw: bytes) -> tuple[Request, BodyKind, int | None]:
    p = RequestParser(Limits())
    p.receive_data(raw)
    try:
        request = p.next_event()
    except ProtocolError:
        assume(False)
        raise
    assert isinstance(request, Request)
    return request, p.body_kind, p.content_length


def parse_back(out: bytes, start: bytes) -> list[Field]:
    assert out.startswith(start) and out.endswith(b"\r\n")
    return parse_fields(out[len(start):-2], Limits(max_fields=1000))


@PROPS
@given(heads(forward=False), st.sampled_from(CLIENTS), st.booleans())
@example((b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-A, close\r\n"
          b"x-a: 1\r\nCLOSE: 2\r\nX-Forwarded-For: 1.2.3.4\r\nUpgrade: h2c, WebSocket\r\n\r\n"),
         b"::1", True)
def test_reverse_rewrite_is_the_list_composition(head: tuple[bytes, bytes], client: bytes,
                                                 keep_upgrade: bool) -> None:
    start, raw = head
    request, kind, length = parse(raw)
    expected = reverse_oracle(request, kind, length, client, keep_upgrade)
    out = reverse_edit(start, request, kind, length, client, keep_upgrade)
    assert parse_back(out, start) == expected
    assert out == start + fields_bytes(expected) + b"\r\n"
    rare = {o for o in connection_options(request) if not is_special(o)} & {
        n.lower() for n, _ in request.headers}
    event(f"upgrade kept: {b'Connection: upgrade' in out}, a non-special field named in "
          f"Connection: {bool(rare)}")


@PROPS
@given(heads(forward=True), st.booleans(), st.booleans())
def test_forward_rewrite_is_the_list_composition(head: tuple[bytes, bytes], keep_upgrade: bool,
                                                 anonymous: bool) -> None:
    start, raw = head
    request, _, _ = parse(raw)
    expected = forward_oracle(request, keep_upgrade, anonymous)
    out = forward_edit(start, request, keep_upgrade, anonymous)
    assert parse_back(out, start) == expected
    assert out == start + fields_bytes(expected) + b"\r\n"


@PROPS
@given(heads(forward=False))
def test_list_and_head_versions_agree(head: tuple[bytes, bytes]) -> None:
    request, _, _ = parse(head[1])
    assert connection_options(request) == list_connection_options(request.headers)
    assert upgrade_protocols(request) == list_upgrade_protocols(request.headers)


@pytest.mark.parametrize("method", [b"OPTIONS", b"TRACE", b"GET"])
@pytest.mark.parametrize("values", [[], [b"3"], [b"1"], [b"0"], [b"007"], [b"-1"], [b"1, 1"],
                                    [b"2", b"2"], [b"9" * 19], [b""]])
def test_max_forwards_is_decrement_max_forwards(method: bytes, values: list[bytes]) -> None:
    fields = [(b"Host", b"h"), *((b"max-Forwards", v) for v in values), (b"X-A", b"1")]
    request = Request(method, b"/", fields)
    try:
        expected = decrement_max_forwards(method, fields)
    except ProtocolError:
        with pytest.raises(ProtocolError) as info:
            max_forwards(request)
        assert info.value.status == 400
        return
    line, answer = max_forwards(request)
    assert answer is expected[1]
    if line is None:
        assert expected[0] == fields
    else:  # the decremented field, appended instead of in place (the caller drops the old one)
        assert [f for f in expected[0] if f[0] != b"max-Forwards"] == [(b"Host", b"h"),
                                                                         (b"X-A", b"1")]
        assert line == b"Max-Forwards: " + dict(expected[0])[b"max-Forwards"] + b"\r\n"


def test_framing_field() -> None:
    assert framing_field(BodyKind.LENGTH, 0) == b"Content-Length: 0\r\n"
    assert framing_field(BodyKind.LENGTH, 1234) == b"Content-Length: 1234\r\n"
    assert framing_field(BodyKind.CHUNKED, 0) == b"Transfer-Encoding: chunked\r\n"
    for kind in (BodyKind.NONE, BodyKind.CLOSE, BodyKind.TUNNEL):
        assert framing_field(kind, 5) == b""


def test_forwarded_for() -> None:
    request = Request(b"GET", b"/", [(b"Host", b"h"), (b"X-Forwarded-For", b"10.0.0.1"),
                                     (b"x-forwarded-for", b"10.0.0.2")])
    assert forwarded_for(request, b"192.0.2.7") == \
        b"X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n"
    assert forwarded_for(Request(b"GET", b"/"), b"::1") == b"X-Forwarded-For: ::1\r\n"
    named = Request(b"GET", b"/", [(b"Connection", b"X-Forwarded-For"),
                                   (b"X-Forwarded-For", b"10.0.0.1")])
    assert forwarded_for(named, b"::1") == b"X-Forwarded-For: ::1\r\n"
    for bad in (b"1.2.3.4\r\nX-Evil: 1", b"", b"fe80::1%eth0", b"host.example"):
        with pytest.raises(ValueError):
            forwarded_for(request, bad)


def test_edit_head_on_responses_and_rare_names() -> None:
    response = Response(200, b"OK", [(b"Server", b"s"), (b"Connection", b"close, X-Secret"),
                                     (b"x-secret", b"1"), (b"Content-Length", b"5"),
                                     (b"Keep-Alive", b"timeout=5"), (b"X-Other", b"2")])
    start = b"HTTP/1.1 200 OK\r\n"
    assert edit_head(start, response) == (
        start + b"Server: s\r\nContent-Length: 5\r\nX-Other: 2\r\n\r\n")
    assert edit_head(start, response, drop=frozenset((b"x-other", b"content-length")),
                     append=b"Content-Length: 5\r\n") == (
        start + b"Server: s\r\nContent-Length: 5\r\n\r\n")
    assert edit_head(start, response, drop_prefix=b"x-") == (
        start + b"Server: s\r\nContent-Length: 5\r\n\r\n")
    assert edit_head(start, response, drop_prefix=b"se") == (
        start + b"Content-Length: 5\r\nX-Other: 2\r\n\r\n")
    hosts = Request(b"GET", b"/", [(b"Host", b"h"), (b"Hostx", b"1"), (b"A", b"2")])
    assert edit_head(b"GET / HTTP/1.1\r\n", hosts, drop_prefix=b"host") == (
        b"GET / HTTP/1.1\r\nA: 2\r\n\r\n")
    assert edit_head(start, Response(204)) == start + b"\r\n"
    assert edit_head(start, Response(204), prepend=b"A: 1\r\n", append=b"B: 2\r\n") == (
        start + b"A: 1\r\nB: 2\r\n\r\n")


def test_upgrade_lines_when_tunnelling() -> None:
    request = Request(b"GET", b"/", [(b"Host", b"h"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                                     (b"upgrade", b"h2c, WebSocket"), (b"Upgrade", b" h2c "),
                                     (b"HTTP2-Settings", b"AAM")])
    start = b"GET / HTTP/1.1\r\n"
    assert edit_head(start, request, keep_upgrade=True) == (
        start + b"Host: h\r\nupgrade: WebSocket\r\nConnection: upgrade\r\n\r\n")
    assert edit_head(start, request) == start + b"Host: h\r\n\r\n"
    assert upgrade_protocols(request) == [b"websocket"]
    assert connection_options(request) == {b"upgrade", b"http2-settings"}
