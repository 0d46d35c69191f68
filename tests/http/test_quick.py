"""The quick parsers (``fastproxy.http.quick``) against the strict path.

``quick_get`` and ``quick_response`` are a fast path: they may refuse
anything, but whatever they accept the strict parser (``state``/``framing``)
must accept too, and the bytes they produce must be exactly the bytes the
strict parser plus the header rewrite (``headers``) produce, as the reverse
session composes them:

- a GET ``quick_get`` accepts as ``(target, host, keep_alive, kept)`` is
  forwarded as ``kept + forwarded_suffix(client, host)``, which must equal
  the strict head (hop-by-hop removal, X-Forwarded-*, Via, framing), with
  the same target, authority and keep-alive, no body and nothing left over;
  ``quick_fields`` must give the strict parser's fields;
- a response ``quick_response`` accepts as ``(out, status, reusable)`` for a
  client that asked for ``keep_alive`` must be one whole Content-Length
  message, and ``out`` what ``reverse._on_response`` sends (hop-by-hop
  removal, Content-Length last, ``Connection: close`` when the client does
  not keep the connection); ``reusable`` is the strict ``keep_alive``;
- a GET ``quick_forward_get`` accepts as ``(authority, path, keep_alive,
  fields, credentials)`` must be an absolute-form ``http://`` GET to the
  strict parser too, and the head ``ForwardSession._express_plan`` builds
  from it (``forward_head``) must equal, at every anonymity level, the head
  the forward session's general path builds (``strict_forward_head``:
  ``_rewrite_headers`` within ``_begin``); ``credentials`` is the strict
  Proxy-Authorization value.

The strict composition is written out below (``strict_request``,
``strict_response``, ``strict_forward``). Heads are drawn from a grammar that mixes canonical
and non-canonical forms, so that both branches are taken often; each
property test counts them and fails if either is rare.
FASTPROXY_FUZZ_EXAMPLES=5000 runs every property with that many examples.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fastproxy import config
from fastproxy.errors import ProtocolError
from fastproxy.http import (
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Limits,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    add_forwarded_for,
    add_via,
    anonymize,
    frame_headers,
    remove_fields,
    remove_hop_by_hop,
    serialize_request,
    serialize_response,
    upgrade_protocols,
)
from fastproxy.http.headers import is_field_address
from fastproxy.http.quick import (
    Memo,
    forwarded_suffix,
    quick_fields,
    quick_forward_get,
    quick_get,
    quick_limit,
    quick_response,
    without_credentials,
)
from fastproxy.modes.forward import ForwardMode, ForwardSession, split_authority

LIMITS = Limits()
LIMIT = quick_limit(LIMITS)
MAX_FIELDS = LIMITS.max_fields
CLIENTS = [b"127.0.0.1", b"::1", b"10.1.2.3", b"::ffff:192.0.2.7"]

_EXAMPLES = int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "0"))
_NO_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def props(n: int) -> settings:
    return settings(max_examples=_EXAMPLES or n, deadline=None, database=None,
                    suppress_health_check=_NO_HEALTH)


# -- the strict composition (what the reverse session does) -----------------------------
@dataclass
class StrictRequest:
    request: Request
    kind: BodyKind
    length: int | None
    after: object          # the parser's next event after the head
    buffered: int          # bytes left unparsed after that
    expected: bytes        # the head the proxy forwards


def strict_request(data: bytes, client: bytes, limits: Limits = LIMITS) -> StrictRequest | None:
    """The strict parse and rewrite of ``data``; None when it is refused (or incomplete)."""
    parser = RequestParser(limits)
    parser.receive_data(data)
    try:
        ev = parser.next_event()
        if not isinstance(ev, Request):
            return None
        kind = parser.body_kind
        length = parser.content_length
        headers = remove_hop_by_hop(ev.headers)
        headers = add_forwarded_for(headers, client, proto=b"http", host=ev.authority or None)
        headers = add_via(headers, ev.version)
        headers = frame_headers(headers, kind, parser.content_length)
        expected = serialize_request(ev, headers, target=ev.path)
        after = parser.next_event()
    except ProtocolError:
        return None
    return StrictRequest(ev, kind, length, after, parser.buffered, expected)


@dataclass
class StrictResponse:
    response: Response
    kind: BodyKind
    length: int | None
    ended: bool            # EndOfMessage reached
    leftover: bytes        # bytes buffered after the message
    expected: bytes        # what the proxy sends to the client


def strict_response(data: bytes, limits: Limits | None = None, keep_alive: bool = True
                    ) -> StrictResponse | None:
    """The strict parse and rewrite of a response to an HTTP/1.1 GET whose
    client asked for ``keep_alive`` (as ``reverse._on_response`` does it); None when refused."""
    rp = ResponseParser() if limits is None else ResponseParser(limits)
    rp.expect(b"GET", upgrade=False)
    rp.receive_data(data)
    try:
        resp = rp.next_event()
        if not isinstance(resp, Response):
            return None  # an interim response (its final one is judged separately) or NEED_DATA
        kind, length = rp.body_kind, rp.content_length
        pieces: list[Data] = []
        ended = False
        while True:
            ev = rp.next_event()
            if isinstance(ev, Data):
                pieces.append(ev)
            elif isinstance(ev, EndOfMessage):
                ended = True
                break
            else:
                assert ev is NEED_DATA, ev
                break
    except ProtocolError:
        return None
    headers = remove_hop_by_hop(resp.headers)
    headers = frame_headers(headers, kind, length)
    if not (keep_alive and kind is not BodyKind.CLOSE):
        headers.append((b"Connection", b"close"))
    expected = serialize_response(resp, headers) + b"".join(d.data for d in pieces)
    return StrictResponse(resp, kind, length, ended, rp.trailing_data[0], expected)


# -- the properties, as functions the tests share -------------------------------------
def check_request(data: bytes, client: bytes = b"127.0.0.1", limits: Limits = LIMITS) -> str:
    """Assert the subset property for one input; return which branch was taken."""
    got = quick_get(data, quick_limit(limits), limits.max_fields)
    strict = strict_request(data, client, limits)
    if got is None:
        return "quick refuses, strict accepts" if strict is not None else "both refuse"
    target, host, keep_alive, kept = got
    assert strict is not None, f"quick_get accepted what the strict parser refuses: {data!r}"
    ev = strict.request
    assert ev.method == b"GET"
    assert ev.version == b"1.1"
    assert ev.form == "origin"
    assert ev.keep_alive is keep_alive
    assert strict.kind is BodyKind.NONE
    assert strict.length is None
    assert ev.path == target
    assert ev.target == target
    assert ev.authority == host
    assert isinstance(strict.after, EndOfMessage)
    assert strict.buffered == 0
    assert kept + forwarded_suffix(client, host) == strict.expected
    assert quick_fields(data) == ev.headers
    return "quick accepts"


def check_response(data: bytes, limits: Limits = LIMITS, parser_limits: Limits | None = None,
                   keep_alive: bool = True) -> str:
    """The same for a response; ``keep_alive``: the client's request asked for it."""
    got = quick_response(data, quick_limit(limits), limits.max_fields, keep_alive)
    strict = strict_response(data, parser_limits, keep_alive)
    strict_ok = strict is not None and strict.ended and not strict.leftover
    if got is None:
        return "quick refuses, strict accepts" if strict_ok else "both refuse"
    out, status, reusable = got
    assert strict is not None, f"quick_response accepted what the strict parser refuses: {data!r}"
    assert strict.ended, "the strict parser wants more bytes"
    assert strict.leftover == b"", "bytes after the message"
    assert strict.response.status == status
    assert strict.response.version == b"1.1"
    assert strict.response.keep_alive is reusable
    assert strict.kind is BodyKind.LENGTH
    assert strict.length == len(data) - data.index(b"\r\n\r\n") - 4
    assert out == strict.expected
    return "quick accepts"


# -- strategies ---------------------------------------------------------------------------
T = TypeVar("T")


def mostly(common: Sequence[T] | st.SearchStrategy[T], rare: Sequence[T] | st.SearchStrategy[T],
           odds: int = 4) -> st.SearchStrategy[T]:
    """``common`` about odds-1 times in odds, else ``rare``; shrinks towards common.
    (A wide range: hypothesis favours the ends of a small one.)"""
    c = common if isinstance(common, st.SearchStrategy) else st.sampled_from(list(common))
    r = rare if isinstance(rare, st.SearchStrategy) else st.sampled_from(list(rare))
    return st.integers(0, 999).flatmap(lambda i: r if i >= 1000 - 1000 // odds else c)


def rarely(odds: int) -> st.SearchStrategy[bool]:
    """True about once in ``odds``; shrinks towards False."""
    return st.integers(0, 999).map(lambda i: i >= 1000 - 1000 // odds)


def one_mostly(odds: int = 10) -> st.SearchStrategy[int]:
    """1, else 0 or 2 (a count of fields that should appear once)."""
    return st.integers(0, 999).map(lambda i: 1 if i < 1000 - 1000 // odds else i % 2 * 2)


def regex(pattern: bytes) -> st.SearchStrategy[bytes]:
    return st.from_regex(pattern, fullmatch=True)


TOKEN = regex(rb"[A-Za-z][A-Za-z0-9-]{0,10}")
ANY_TCHAR = regex(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,8}")
CANONICAL_VALUE = regex(rb"[\x21-\x7e](?:[ \x21-\x7e]{0,15}[\x21-\x7e])?")
SPECIAL_VALUES = [
    b"keep-alive", b"Keep-Alive", b"KEEP-ALIVE", b"close", b"keep-alive, upgrade",
    b"keep-alive, close", b"upgrade", b"chunked", b"gzip, chunked", b"timeout=5, max=100",
    b"0", b"5", b"005", b"5, 5", b"-1", b"+5", b"99999999999999999999", b"websocket", b"h2c",
    b"trailers", b"100-continue", b"1.1 other", b"10.0.0.1", b"example.com", b"Host",
    b"x-a", b"te", b"user-agent", b"Close", b"keep-alive, close", b"close, close",
]
ODD_VALUES = [
    b"", b" ", b" x", b"x ", b"\tx", b"x\t", b"a\tb", b"a  b", b"\x80", b"caf\xc3\xa9", b"\xff x",
    b"a\x00b", b"a\x7fb", b"a\rb", b"a\nb", b"a: b",
]
VALUE = mostly(CANONICAL_VALUE,
               st.one_of(st.sampled_from(SPECIAL_VALUES + ODD_VALUES),
                         st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                 max_size=12).map(str.encode),
                         st.binary(max_size=6)), odds=10)
SEP = mostly([b": "], [b":", b":  ", b" : ", b":\t", b": \t", b"\t:", b"::"], odds=20)
EOL = mostly([b"\r\n"], [b"\n", b"\r", b"\r\r\n", b"\r\n "], odds=40)

SPECIAL_NAMES = [
    b"Host", b"host", b"HOST", b"hOsT", b"Content-Length", b"content-length", b"CONTENT-LENGTH",
    b"Transfer-Encoding", b"transfer-encoding", b"Connection", b"connection", b"Keep-Alive",
    b"Proxy-Connection", b"TE", b"Te", b"te", b"Trailer", b"Upgrade", b"HTTP2-Settings",
    b"Expect", b"Via", b"X-Forwarded-For", b"x-forwarded-for", b"X-Forwarded-Proto",
    b"X-Forwarded-Host", b"Forwarded", b"Max-Forwards", b"X-A_B", b"tex", b"te-x", b"X-Host",
    b"Hostx", b"Content-Lengthx", b"X-Connection", b"Vias", b"Close", b"close", b"X-Close",
]
REQUEST_NAMES = [b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Cookie",
                 b"X-Request-Id", b"Referer", b"Cache-Control", b"If-None-Match", b"Authorization"]
RESPONSE_NAMES = [b"Server", b"Date", b"Content-Type", b"ETag", b"Accept-Ranges",
                  b"Last-Modified", b"Cache-Control", b"Vary", b"Set-Cookie", b"X-Powered-By"]


def field_name(common: list[bytes]) -> st.SearchStrategy[bytes]:
    return mostly(mostly(common, TOKEN), st.one_of(st.sampled_from(SPECIAL_NAMES), ANY_TCHAR),
                  odds=10)


# One canonical line with a name the proxy may act on (or one that looks like
# it): the rest of the head is usually canonical, so whether the quick parser
# may take the head turns on this line alone.
SPECIAL_LINE = st.builds(
    lambda name, value: name + b": " + value + b"\r\n",
    st.sampled_from(SPECIAL_NAMES + [b"X_A", b"x-a_b", b"Connection", b"Connection"]),
    mostly(st.sampled_from(SPECIAL_VALUES), CANONICAL_VALUE, odds=3))


@st.composite
def field_line(draw: st.DrawFn, names: st.SearchStrategy[bytes]) -> bytes:
    name = draw(names)
    if draw(rarely(40)):
        return b" " + draw(VALUE) + draw(EOL)  # obs-fold
    return name + draw(SEP) + draw(VALUE) + draw(EOL)


@st.composite
def mutate(draw: st.DrawFn, data: bytes) -> bytes:
    """Now and then, one byte-level mutation anywhere."""
    if not draw(rarely(10)):
        return data
    buf = bytearray(data)
    pos = draw(st.integers(0, len(buf)))
    byte = draw(st.sampled_from(b" \t\r\n:,_#\x00\x7f\x80\xffaA05/") | st.integers(0, 255))
    op = draw(st.sampled_from(["insert", "replace", "delete"]))
    if op == "insert":
        buf[pos:pos] = bytes([byte])
    elif op == "replace" and pos < len(buf):
        buf[pos] = byte
    else:
        del buf[pos:pos + 1]
    return bytes(buf)


HOST_VALUE = mostly(
    [b"example.com", b"localhost:8080", b"127.0.0.1:8080", b"[::1]:8080", b"api.example.org",
     b"a-b.c_d~e", b"a!$&'()*+;=.b", b"%41b", b"h:1"],
    [b"", b"a b", b"h,o", b"u@h", b"h:123456", b"caf\xc3\xa9", b"h/x", b"[::1", b"%zz",
     b" example.com", b"example.com\t", b"h:", b"[::1]x", b"h\x00"])
TARGET = mostly(
    st.one_of(st.sampled_from([b"/", b"/index.html", b"/a?b", b"/a/b/c?x=1&y=2", b"/%7Euser",
                               b"/~!$&'()*+,;=:@", b'/"q"', b"/?"]),
              regex(rb"/[\x21\x22\x24-\x7e]{0,20}")),
    [b"/a#b", b"#", b"/a b", b"/caf\xc3\xa9", b"*", b"http://example.com/x", b"http://h",
     b"example.com:443", b"", b"a", b"//x", b"/\x7f", b"/\t"])


CONNECTION_LINE = mostly(
    [b"Connection: keep-alive\r\n", b"Connection: close\r\n", b"connection: Keep-Alive\r\n",
     b"CONNECTION: CLOSE\r\n", b"Keep-Alive: timeout=5\r\n", b"X-Custom: 1\r\n"],
    [b"Connection: keep-alive, close\r\n", b"Connection: close, close\r\n",
     b"Connection: keep-alive, close\r\n", b"Connection: close, close\r\n",
     b"Connection: close, keep-alive\r\n", b"Connection: x-custom\r\n",
     b"Connection: keep-alive, upgrade\r\n", b"Connection: x-custom\r\n",
     b"Connection: Close \r\n", b"Connection:close\r\n", b"Connection: \r\n",
     b"Connection: host\r\n", b"Connection: te\r\n", b"Close: x\r\n",
     b"Transfer-Encoding: chunked\r\n", b"Upgrade: h2c\r\n", b"TE: trailers\r\n",
     b"Trailer: X\r\n", b"Proxy-Connection: keep-alive\r\n", b"HTTP2-Settings: AAA\r\n"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(mostly([b"GET"], [b"HEAD", b"POST", b"get", b"OPTIONS", b"CONNECT", b"GE T"]))
    version = draw(mostly([b"1.1"], [b"1.0", b"2.0", b"1.2", b"1.1 "], odds=6))
    line = method + b" " + draw(TARGET) + b" HTTP/" + version + draw(EOL)
    fields = draw(st.lists(field_line(field_name(REQUEST_NAMES)), max_size=7))
    hosts = draw(one_mostly())
    for _ in range(hosts):
        name = draw(mostly([b"Host"], [b"host", b"HOST", b"hOsT"]))
        host = name + draw(SEP) + draw(HOST_VALUE) + draw(EOL)
        fields.insert(draw(st.integers(0, len(fields))), host)
    for _ in range(draw(st.integers(0, 2))):
        fields.insert(draw(st.integers(0, len(fields))), draw(CONNECTION_LINE))
    if draw(rarely(3)):
        fields.insert(draw(st.integers(0, len(fields))), draw(SPECIAL_LINE))
    prefix = draw(mostly([b""], [b"\r\n", b"\n", b" "], odds=20))
    end = draw(mostly([b"\r\n"], [b"\n", b"\r\n\r\n", b""], odds=20))
    after = draw(mostly([b""], st.one_of(
        st.sampled_from([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"x", b"\r\n", b"\r\n\r\n"]),
        st.binary(min_size=1, max_size=8)), odds=10))
    return draw(mutate(prefix + line + b"".join(fields) + end + after))


STATUS = mostly([b"200", b"404", b"500", b"206", b"301", b"302", b"201", b"403", b"503"],
                [b"100", b"101", b"103", b"204", b"304", b"599", b"600", b"099", b"20", b"2000",
                 b"20x"], odds=5)
REASON = mostly([b"OK", b"Not Found", b"Internal Server Error", b"", b"Partial Content", b"x y"],
                [b"a\tb", b"\x80", b" OK", b"OK ", b"\xc3\xa9", b"a\x00"], odds=6)
CL_NAME = mostly([b"Content-Length"], [b"content-length", b"CONTENT-LENGTH", b"Content-length"])


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    version = draw(mostly([b"1.1"], [b"1.0", b"2.0", b"1.2"], odds=8))
    status = draw(STATUS)
    reason = draw(REASON)
    gap = draw(mostly([b" "], [b"", b"  ", b"\t"], odds=12)) if not reason else b" "
    line = b"HTTP/" + version + b" " + status + gap + reason + draw(EOL)
    body = draw(st.binary(max_size=40))
    n = len(body)
    fields = draw(st.lists(field_line(field_name(RESPONSE_NAMES)), max_size=7))
    for _ in range(draw(one_mostly(6))):
        value = draw(mostly([b"%d" % n], odds=3, rare=[
            b"%d" % (n + 1), b"%d" % max(n - 1, 0), b"0%d" % n, b"%d, %d" % (n, n), b"-1", b"",
            b"+%d" % n, b" %d" % n, b"%d " % n, b"0x%x" % n, b"9" * 19, b"0" * 17 + b"%d" % n]))
        fields.append(draw(CL_NAME) + draw(SEP) + value + draw(EOL))
    for _ in range(draw(st.integers(0, 2))):
        fields.append(draw(CONNECTION_LINE))
    if draw(rarely(3)):
        fields.append(draw(SPECIAL_LINE))
    fields = draw(st.permutations(fields))
    end = draw(mostly([b"\r\n"], [b"\n", b""], odds=20))
    after = draw(mostly([b""], st.one_of(
        st.sampled_from([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"x", b"\r\n"]),
        st.binary(min_size=1, max_size=8)), odds=10))
    return draw(mutate(line + b"".join(fields) + end + body + after))


# -- the property tests -------------------------------------------------------------------
def _enough(seen: Counter[str], total_min: int) -> None:
    """Both branches were really taken (and strict-only inputs exist, so the
    subset is a proper one worth having)."""
    total = sum(seen.values())
    print(dict(seen))  # shown with -s
    assert total >= total_min, seen
    assert seen["quick accepts"] >= total // 10, seen
    assert seen["quick refuses, strict accepts"] >= total // 20, seen
    assert seen["both refuse"] >= total // 20, seen


def test_quick_get_is_a_strict_subset_with_the_same_bytes() -> None:
    seen: Counter[str] = Counter()

    @props(500)
    @given(data=request_heads(), client=st.sampled_from(CLIENTS))
    @example(data=b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", client=b"::1")
    @example(data=b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", client=b"::1")
    def prop(data: bytes, client: bytes) -> None:
        outcome = check_request(data, client)
        event(outcome)
        seen[outcome] += 1

    prop()
    _enough(seen, 500)


def test_quick_response_is_a_strict_subset_with_the_same_bytes() -> None:
    seen: Counter[str] = Counter()

    @props(500)
    @given(data=response_heads(), keep_alive=mostly([True], [False], odds=3))
    @example(data=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", keep_alive=False)
    @example(data=b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n"
             b"Keep-Alive: timeout=5\r\nX: y\r\n\r\n", keep_alive=True)
    @example(data=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
             keep_alive=True)
    def prop(data: bytes, keep_alive: bool) -> None:
        outcome = check_response(data, keep_alive=keep_alive)
        event(outcome)
        seen[outcome] += 1

    prop()
    _enough(seen, 500)


# The same properties with few degrees of freedom: an otherwise canonical head
# with up to three lines the proxy may act on, so that every special name and
# every framing or connection value meets the quick parsers' decisions often.
def recase(name: bytes, how: int) -> bytes:
    return (name, name.lower(), name.upper(), name.title())[how]


TOUCHY_LINE = st.builds(
    lambda name, how, value: recase(name, how) + b": " + value + b"\r\n",
    st.sampled_from(SPECIAL_NAMES + [b"Host", b"Connection", b"Content-Length", b"X_A",
                                     b"Close", b"Keep-Alive", b"Date"]),
    st.integers(0, 3),
    st.sampled_from(SPECIAL_VALUES + [b"h", b"example.com:80", b"keep-alive", b"close", b"1",
                                      b"x y"]))
# Connection lines, and the fields their options may name.
TOUCHY_CONNECTION = st.builds(
    lambda how, value: recase(b"Connection", how) + b": " + value + b"\r\n",
    st.integers(0, 3),
    st.sampled_from([b"close", b"keep-alive", b"CLOSE", b"Keep-Alive", b"keep-alive, close",
                     b"close, close", b"x-a", b"close, x-a", b"te", b"host", b"upgrade"]))
TOUCHY_NAMED = st.sampled_from([b"Close: 1\r\n", b"close: 1\r\n", b"X-A: 1\r\n",
                                b"x-a: 1\r\n", b"Te: trailers\r\n"])


def touchy_fields(draw: st.DrawFn, fields: list[bytes]) -> list[bytes]:
    extra = draw(st.lists(TOUCHY_LINE, max_size=2))
    if draw(st.booleans()):
        extra.append(draw(TOUCHY_CONNECTION))
    if draw(st.booleans()):
        extra.append(draw(TOUCHY_NAMED))
    for line in extra:
        fields.insert(draw(st.integers(0, len(fields))), line)
    return fields


@st.composite
def touchy_gets(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"1.1"] * 5 + [b"1.0"]))
    target = draw(st.sampled_from([b"/", b"/", b"/", b"/a?b=c", b"/a#b", b"*", b"http://h/"]))
    fields = [b"Host: h\r\n"] if draw(st.integers(0, 5)) else []
    fields += [b"Accept: */*\r\n"] * draw(st.integers(0, 2))
    fields = touchy_fields(draw, fields)
    return b"GET " + target + b" HTTP/" + version + b"\r\n" + b"".join(fields) + b"\r\n"


@st.composite
def touchy_responses(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"1.1"] * 5 + [b"1.0"]))
    status = draw(st.sampled_from([b"200", b"200", b"200", b"404", b"204", b"304", b"101"]))
    body = draw(st.sampled_from([b"", b"x", b"hello"]))
    n = len(body)
    fields = [b"Server: s\r\n"] * draw(st.integers(0, 2))
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        name = recase(b"Content-Length", draw(st.sampled_from([0, 0, 0, 1, 2, 3])))
        value = draw(st.sampled_from([b"%d" % n, b"%d" % n, b"%d" % n, b"0%d" % n, b"00",
                                      b"%d, %d" % (n, n), b"%d" % (n + 1), b"0", b"5"]))
        fields.append(name + b": " + value + b"\r\n")
    fields = touchy_fields(draw, draw(st.permutations(fields)))
    return (b"HTTP/" + version + b" " + status + b" OK\r\n" + b"".join(fields) + b"\r\n"
            + body)


def test_special_fields_in_canonical_heads() -> None:
    seen: Counter[str] = Counter()

    @props(1000)
    @given(get=touchy_gets(), response=touchy_responses(), keep_alive=st.booleans(),
           client=st.sampled_from(CLIENTS))
    def prop(get: bytes, response: bytes, keep_alive: bool, client: bytes) -> None:
        a = check_request(get, client)
        b = check_response(response, keep_alive=keep_alive)
        event(f"request: {a}")
        event(f"response: {b}")
        seen["request: " + a] += 1
        seen["response: " + b] += 1

    prop()
    print(dict(seen))
    assert seen["request: quick accepts"] >= 50, seen
    assert seen["response: quick accepts"] >= 50, seen


@st.composite
def small_limits(draw: st.DrawFn) -> Limits:
    return Limits(max_fields=draw(st.integers(0, 6)),
                  max_header_bytes=draw(st.integers(20, 400)),
                  max_request_line=draw(st.integers(10, 400)),
                  max_field_line=draw(st.integers(5, 400)))


def test_quick_parsers_respect_small_limits() -> None:
    seen: Counter[str] = Counter()

    @props(300)
    @given(limits=small_limits(), request=request_heads(), response=response_heads(),
           keep_alive=st.booleans())
    def prop(limits: Limits, request: bytes, response: bytes, keep_alive: bool) -> None:
        a = check_request(request, b"127.0.0.1", limits)
        # The general path reads responses with the default limits, but the
        # quick response must also stay within the strict parser's limits.
        b = check_response(response, limits, parser_limits=limits, keep_alive=keep_alive)
        c = check_response(response, limits, keep_alive=keep_alive)
        event(f"request: {a}")
        event(f"response: {b}")
        seen[a] += 1
        seen[b] += 1
        seen[c] += 1

    prop()
    print(dict(seen))
    assert seen["quick accepts"] >= 40, seen


TRICKY = b" \t\r\n:;,=\"0159aAfFxX-_@/*?#\x00\x0b\x0c\x7f\x80\xa0\xff"


def garbage(starts: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, or one of ``starts`` followed by tricky bytes."""
    tails = st.lists(st.sampled_from(list(TRICKY)) | st.integers(0, 255), max_size=60).map(bytes)
    return st.one_of(st.binary(max_size=200),
                     st.tuples(st.sampled_from(starts), tails).map(lambda t: t[0] + t[1]))


@props(300)
@given(garbage([b"GET / HTTP/1.1\r\nHost: h\r\n", b"GET /", b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", b"HTTP/1.1 "]))
def test_quick_parsers_never_raise_on_arbitrary_bytes(data: bytes) -> None:
    check_request(data)
    check_request(data + b"\r\n\r\n")
    check_response(data)
    check_response(data, keep_alive=False)
    for limit, fields in ((0, 0), (1, 1), (LIMIT, MAX_FIELDS), (1 << 40, 1 << 40)):
        quick_get(data, limit, fields)
        quick_response(data, limit, fields)
        quick_response(data, limit, fields, False)


# -- explicit examples: what must be accepted -------------------------------------------
WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
CURL = (b"GET /index.html HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n\r\n")
HEY = (b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: api.example.org\r\n"
       b"User-Agent: hey/0.0.1\r\nAccept-Encoding: gzip\r\n\r\n")
REQUESTS = (b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
            b"User-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\n"
            b"Accept: */*\r\nConnection: keep-alive\r\n\r\n")
NGINX_BODY = b"<html><body>hello</body></html>\n"
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
         b"Content-Type: text/html\r\nContent-Length: %d\r\n"
         b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive\r\n"
         b'ETag: "65920480-20"\r\nAccept-Ranges: bytes\r\n\r\n' % len(NGINX_BODY)) + NGINX_BODY


@pytest.mark.parametrize("data", [WRK, CURL, HEY, REQUESTS],
                         ids=["wrk", "curl", "hey", "requests"])
@pytest.mark.parametrize("client", [b"127.0.0.1", b"::1"])
def test_typical_gets_are_quick(data: bytes, client: bytes) -> None:
    assert quick_get(data, LIMIT, MAX_FIELDS) is not None
    assert check_request(data, client) == "quick accepts"


def test_quick_get_output() -> None:
    got = quick_get(CURL, LIMIT, MAX_FIELDS)
    assert got == (b"/index.html", b"localhost:8080", True, CURL[:-2])
    assert got[3] + forwarded_suffix(b"::1", got[1]) == (
        b"GET /index.html HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: localhost:8080\r\nVia: 1.1 fastproxy\r\n\r\n")
    assert quick_fields(CURL) == ((b"Host", b"localhost:8080"), (b"User-Agent", b"curl/8.5.0"),
                                  (b"Accept", b"*/*"))


@pytest.mark.parametrize(("line", "keep_alive"), [
    (b"Connection: keep-alive\r\n", True), (b"Connection: close\r\n", False),
    (b"connection: Keep-Alive\r\n", True), (b"CONNECTION: CLOSE\r\n", False)])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_quick_get_drops_one_connection_line(line: bytes, keep_alive: bool, where: int) -> None:
    fields = [b"Host: h\r\n", b"Accept: */*\r\n"]
    fields.insert(where, line)
    data = b"GET / HTTP/1.1\r\n" + b"".join(fields) + b"\r\n"
    got = quick_get(data, LIMIT, MAX_FIELDS)
    assert got is not None
    assert got[2] is keep_alive
    assert got[3] == b"GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n"
    assert check_request(data) == "quick accepts"


@pytest.mark.parametrize("keep_alive", [True, False])
def test_nginx_response_is_quick_and_rewritten(keep_alive: bool) -> None:
    got = quick_response(NGINX, LIMIT, MAX_FIELDS, keep_alive)
    assert got is not None
    out, status, reusable = got
    assert (status, reusable) == (200, True)
    assert check_response(NGINX, keep_alive=keep_alive) == "quick accepts"
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Connection: keep-alive" not in lines
    names = [line.split(b":")[0] for line in lines[1:]]
    assert names == [b"Server", b"Date", b"Content-Type", b"Last-Modified", b"ETag",
                     b"Accept-Ranges", b"Content-Length"] + ([] if keep_alive else [b"Connection"])
    assert lines[7] == b"Content-Length: %d" % len(NGINX_BODY)
    assert keep_alive or lines[8] == b"Connection: close"
    assert body == NGINX_BODY


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",                       # unchanged
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nServer: x\r\n\r\n",    # moved last
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",                       # respelled
    b"HTTP/1.1 200 OK\r\nX: 1\r\nCONTENT-LENGTH: 2\r\nY: 2\r\n\r\nhi",
    b"HTTP/1.1 500 \r\nContent-Length: 0\r\n\r\n",                           # empty reason
    b"HTTP/1.1 200 a  b \r\nContent-Length: 0\r\n\r\n",                      # spaces kept
    (b"HTTP/1.1 599 x\r\nKeep-Alive: timeout=5\r\nConnection: Keep-Alive\r\n"
     b"Content-Length: 1\r\n\r\nz"),
    (b"HTTP/1.1 206 Partial Content\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
     b"Content-Length: 3\r\nContent-Range: bytes 0-2/9\r\n\r\nabc"),
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",   # not reusable
    b"HTTP/1.1 200 OK\r\nConnection: CLOSE\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\r\n\r\n",                 # body is CRLFCRLF
])
def test_responses_that_are_quick(data: bytes, keep_alive: bool) -> None:
    assert check_response(data, keep_alive=keep_alive) == "quick accepts"
    reusable = quick_response(data, LIMIT, MAX_FIELDS, keep_alive)[2]  # type: ignore[index]
    assert reusable is (b"close" not in data.lower())


# -- explicit examples: what must be refused --------------------------------------------
@pytest.mark.parametrize("data", [
    # consecutive fields the proxy acts on
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nClose: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection:close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: 1\r\n\r\n",                       # no Host
    b"GET / HTTP/1.1\r\nHost: \r\n\r\n",                     # empty Host
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nKeep-Alive: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nx-forwarded-host: evil\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 other\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nMax-Forwards: 0\r\n\r\n",
    # non-canonical forms the strict parser accepts
    b"GET / HTTP/1.1\r\nHost:h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX:  a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \x80\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    # bytes after the head
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nx",
    # what the strict parser refuses too
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX_A: 1\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n",
    b"",
])
def test_requests_that_are_not_quick(data: bytes) -> None:
    assert quick_get(data, LIMIT, MAX_FIELDS) is None
    check_request(data)


@pytest.mark.parametrize("data", [
    # consecutive special lines
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n"),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n"
     b"Content-Length: 1\r\n\r\nx"),
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nClose: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, upgrade\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-a\r\nX-A: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTE: trailers\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nUpgrade: h2c\r\n\r\nx",
    # Content-Length
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nX: a \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 01\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length:1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1 \r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nx",      # body incomplete
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",     # bytes after the body
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",                 # no Content-Length
    # statuses and versions
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 600 x\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 a\tb\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 \xe9\r\nContent-Length: 1\r\n\r\nx",
    # field syntax
    b"HTTP/1.1 200 OK\r\nX: \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nX_A: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
    b"",
])
@pytest.mark.parametrize("keep_alive", [True, False])
def test_responses_that_are_not_quick(data: bytes, keep_alive: bool) -> None:
    assert quick_response(data, LIMIT, MAX_FIELDS, keep_alive) is None
    check_response(data, keep_alive=keep_alive)


# -- limits ---------------------------------------------------------------------------
def _padded_get(size: int) -> bytes:
    """A quick GET head of exactly ``size`` bytes, no line over 4000 bytes."""
    base = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    fields = b""
    missing = size - len(base)
    while missing > 0:
        pad = min(missing, 3000)
        if pad < 7:  # too short for a field of its own: lengthen the target instead
            return base[:5] + b"a" * pad + base[5:-2] + fields + b"\r\n"
        fields += b"X: " + b"v" * (pad - 5) + b"\r\n"
        missing -= pad
    return base[:-2] + fields + b"\r\n"


def _padded_response(size: int) -> bytes:
    """A quick response whose head is exactly ``size`` bytes (body 'ok')."""
    base = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    fields = b""
    missing = size - len(base)
    while missing > 0:
        pad = min(missing, 3000)
        if pad < 7:
            return base[:15] + b"K" * pad + base[15:-2] + fields + b"\r\nok"
        fields += b"X: " + b"v" * (pad - 5) + b"\r\n"
        missing -= pad
    return base[:-2] + fields + b"\r\nok"


@pytest.mark.parametrize("size", [LIMIT - 6, LIMIT - 1, LIMIT])
def test_heads_up_to_the_limit_are_quick(size: int) -> None:
    request = _padded_get(size)
    response = _padded_response(size)
    assert len(request) == size
    assert len(response) == size + 2
    assert check_request(request) == "quick accepts"
    assert check_response(response) == "quick accepts"


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT + 2, 3 * LIMIT])
def test_heads_over_the_limit_are_not_quick(size: int) -> None:
    request = _padded_get(size)
    response = _padded_response(size)
    assert quick_get(request, LIMIT, MAX_FIELDS) is None
    assert quick_response(response, LIMIT, MAX_FIELDS) is None
    # every line is short: the strict parser takes them (it allows 64 KiB heads)
    assert check_request(request) == "quick refuses, strict accepts"
    assert check_response(response) == "quick refuses, strict accepts"


def test_field_count_limit() -> None:
    limits = Limits(max_fields=3)
    limit = quick_limit(limits)
    get = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"
    more = get[:-2] + b"C: 3\r\n\r\n"
    assert quick_get(get, limit, 3) is not None
    assert check_request(get, b"::1", limits) == "quick accepts"
    assert quick_get(more, limit, 3) is None
    assert strict_request(more, b"::1", limits) is None  # 431
    assert check_request(more, b"::1", limits) == "both refuse"
    # a Connection line counts, though it is not forwarded
    get = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nB: 2\r\n\r\n"
    assert check_request(get, b"::1", limits) == "quick accepts"
    assert check_request(get[:-2] + b"C: 3\r\n\r\n", b"::1", limits) == "both refuse"

    resp = b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"
    more = resp.replace(b"A: 1\r\n", b"A: 1\r\nB: 2\r\n")
    assert check_response(resp, limits, parser_limits=limits) == "quick accepts"
    assert quick_response(more, limit, 3) is None
    assert strict_response(more, limits) is None  # 431 (502 upstream)
    assert check_response(more, limits, parser_limits=limits) == "both refuse"
    # the general path reads responses with the default limits
    assert check_response(more, limits) == "quick refuses, strict accepts"


def test_quick_limit_is_the_smallest_head_limit() -> None:
    assert LIMIT == 8192
    assert quick_limit(Limits(max_header_bytes=1024)) == 1024
    assert quick_limit(Limits(max_field_line=100, max_request_line=200)) == 100


# -- the caller's guards ------------------------------------------------------------
@pytest.mark.parametrize("address", ["fe80::1%eth0", "fe80::1%2", "unix", ""])
def test_client_addresses_forwarded_suffix_cannot_take(address: str) -> None:
    """``forwarded_suffix`` writes any address; the strict path refuses one
    outside [0-9A-Fa-f.:] (an IPv6 link-local address with a zone id, as
    accept() reports it), so the session must keep such clients off the
    express lane: ``is_field_address`` says which."""
    assert not is_field_address(address)
    with pytest.raises(ValueError):
        strict_request(WRK, address.encode())


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:192.0.2.7", "2001:db8::1"])
def test_client_addresses_forwarded_suffix_takes(address: str) -> None:
    assert is_field_address(address)
    assert check_request(WRK, address.encode()) == "quick accepts"
    assert check_request(REQUESTS, address.encode()) == "quick accepts"


def test_tiny_max_method_turns_the_quick_path_off() -> None:
    limits = Limits(max_method=2)  # the strict parser answers GET with 501
    assert quick_limit(limits) == 0
    assert quick_get(WRK, quick_limit(limits), limits.max_fields) is None
    assert check_request(WRK, b"127.0.0.1", limits) == "both refuse"
    assert check_request(WRK, b"127.0.0.1", Limits(max_method=3)) == "quick accepts"


# == quick_forward_get: the forward proxy's express lane ================================
# The strict composition is what a ForwardSession's general path does with a
# request: ``HttpSession._begin`` around ``ForwardSession._rewrite_headers``
# (no parent proxy, so the target sent is the path). ``forward_head`` is the
# head ``ForwardSession._express_plan`` builds from what quick_forward_get
# returns; ``express_session`` runs the real ``_express_plan`` too, so that the
# copy below cannot drift from it.
LEVELS = ("elite", "anonymous", "transparent")
FORWARD_CLIENTS = (b"127.0.0.1", b"::1")


@dataclass
class StrictForward:
    request: Request
    kind: BodyKind
    length: int | None
    after: object          # the parser's next event after the head
    buffered: int          # bytes left unparsed after that
    upgrade: bool          # ``HttpSession.upgrade`` for this request


def strict_forward(data: bytes, limits: Limits = LIMITS) -> StrictForward | None:
    """The strict parse of ``data``; None when it is refused (or incomplete)."""
    parser = RequestParser(limits)
    parser.receive_data(data)
    try:
        ev = parser.next_event()
        if not isinstance(ev, Request):
            return None
        kind, length = parser.body_kind, parser.content_length
        after = parser.next_event()
    except ProtocolError:
        return None
    return StrictForward(ev, kind, length, after, parser.buffered,
                         bool(upgrade_protocols(ev.headers)))


def strict_forward_head(strict: StrictForward, level: str, client: bytes) -> bytes:
    """The head the general path forwards at anonymity ``level`` for ``client``
    (``_begin``: ``_rewrite_headers``, ``frame_headers``, ``serialize_request``)."""
    ev = strict.request
    headers = remove_hop_by_hop(ev.headers, keep_upgrade=strict.upgrade)
    headers = remove_fields(headers, (b"proxy-authorization", b"host"))
    headers.insert(0, (b"Host", ev.authority))
    if level == "elite":
        headers = anonymize(headers)
    elif level == "anonymous":
        headers = add_via(anonymize(headers), ev.version)
    else:
        headers = [(n, v) for n, v in headers if not n.lower().startswith(b"proxy-")]
        headers = add_forwarded_for(add_via(headers, ev.version), client)
    headers = frame_headers(headers, strict.kind, strict.length)
    return serialize_request(ev, headers, target=ev.path)


def forward_head(found: tuple[bytes, bytes, bool, bytes, bytes | None], level: str,
                 client: bytes) -> bytes:
    """The head ``ForwardSession._express_plan`` sends for what quick_forward_get returned."""
    authority, path, _, fields, _ = found
    anonymity_suffix = b"" if level == "elite" else b"Via: 1.1 fastproxy\r\n"
    return (b"GET " + path + b" HTTP/1.1\r\nHost: " + authority + b"\r\n" + fields
            + anonymity_suffix + (b"X-Forwarded-For: " + client + b"\r\n\r\n"
                                  if level == "transparent" else b"\r\n"))


class _CachedResolver:
    """Every name is in the worker's DNS cache."""

    @staticmethod
    def peek(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        return [(socket.AF_INET, ("192.0.2.1", port))]


_SESSIONS: dict[tuple[str, bytes], ForwardSession] = {}


def express_session(level: str, client: bytes) -> ForwardSession:
    """A ForwardSession holding only what ``_express_plan`` reads: a real
    ForwardMode at ``level`` (default listener limits, no parent proxy, no
    egress rotation, no users, no destination denied) whose every name is
    cached, and the client address."""
    session = _SESSIONS.get((level, client))
    if session is None:
        forward = config.Forward(anonymity=level, deny_destinations=())
        ctx = SimpleNamespace(config=SimpleNamespace(forward=forward),
                              resolver=_CachedResolver())
        mode = ForwardMode(ctx, SimpleNamespace(limits=config.Limits()))  # type: ignore[arg-type]
        session = object.__new__(ForwardSession)
        session.mode = mode
        session.addr = (client.decode(), 40000)
        _SESSIONS[(level, client)] = session
    return session


def check_forward(data: bytes, limits: Limits = LIMITS) -> str:
    """Assert the subset property of quick_forward_get for one input, at every
    anonymity level and for both clients; return which branch was taken."""
    got = quick_forward_get(data, quick_limit(limits), limits.max_fields)
    strict = strict_forward(data, limits)
    if got is None:
        return "quick refuses, strict accepts" if strict is not None else "both refuse"
    authority, path, keep_alive, fields, credentials = got
    assert strict is not None, (
        f"quick_forward_get accepted what the strict parser refuses: {data!r}")
    ev = strict.request
    assert ev.method == b"GET"
    assert ev.version == b"1.1"
    assert ev.form == "absolute"
    assert ev.scheme == b"http"
    assert ev.authority == authority
    assert ev.path == path
    assert ev.keep_alive is keep_alive
    assert strict.kind is BodyKind.NONE
    assert isinstance(strict.after, EndOfMessage)
    assert strict.buffered == 0
    assert credentials == ev.get(b"proxy-authorization")
    try:
        split_authority(authority, 80)
        usable = True
    except ProtocolError:  # e.g. port 0: the express lane leaves it to the general path
        usable = False
    for level in LEVELS:
        for client in FORWARD_CLIENTS:
            head = forward_head(got, level, client)
            assert head == strict_forward_head(strict, level, client), (level, client, data)
            if limits == LIMITS:
                plan = express_session(level, client)._express_plan(data)
                assert (plan is not None) is usable, (level, client, data)
                if plan is not None:
                    assert plan[2] == head, (level, client, data)
                    assert plan[3] is keep_alive
    return "quick accepts"


# -- strategies: absolute-form targets and the fields a forward proxy acts on --------------
SCHEME = mostly([b"http://"], [b"HTTP://", b"Http://", b"https://", b"ftp://", b"ws://",
                               b"http:/", b"http:", b"//", b"http:///"], odds=8)
AUTHORITY = mostly(
    [b"example.com", b"example.com:8080", b"127.0.0.1:8080", b"127.0.0.1", b"[::1]:8080",
     b"[::1]", b"localhost:3128", b"api.example.org", b"a-b.c_d~e", b"%41b", b"a!$&'()*+;=.b",
     b"h:1", b"[2001:db8::1]:443", b"h:0", b"h:99999"],
    [b"u@h", b"u:p@h:80", b"@h", b"h:123456", b"h:", b"h::80", b"h:8o", b"h:-1", b"[::1",
     b"[::1]x", b"[::1]:", b"::1", b"::1:8080", b"h,o", b"", b"caf\xc3\xa9", b"h h", b"h\x00",
     b"[fe80::1%25eth0]:80", b"%zz", b"h#x", b"[]", b"[::1]:123456", b"h\"x", b"h<x>"], odds=8)
FORWARD_PATH = mostly(
    st.one_of(st.sampled_from([b"", b"/", b"/x", b"/index.html", b"/a?b=c", b"/a/b/c?x=1&y=2",
                               b"/%7Euser", b"/~!$&'()*+,;=:@", b'/"q"', b"/?", b"//x",
                               b"/http://h/"]),
              regex(rb"/[\x21\x22\x24-\x7e]{0,20}")),
    [b"?q", b"?", b"#f", b"/a#b", b"/a b", b"/caf\xc3\xa9", b"/\x7f", b"/\t", b"@x", b":80/x",
     b"x", b"/ "], odds=8)
FORWARD_NAMES = [
    b"Proxy-Connection", b"Proxy-Authorization", b"Proxy-Foo", b"Proxy-", b"Keep-Alive", b"Via",
    b"X-Forwarded-For", b"Forwarded", b"X-Real-IP", b"X-Forwarded-Proto", b"X-Forwarded-Host",
    b"Connection", b"Host", b"Proxyx", b"X-Proxy-Foo", b"Proxy", b"Vias", b"X-Real-IPs",
    b"Close", b"TE", b"Upgrade", b"Content-Length", b"Transfer-Encoding", b"Expect",
    b"Max-Forwards", b"Trailer", b"HTTP2-Settings"]
FORWARD_VALUES = [
    b"keep-alive", b"Keep-Alive", b"close", b"upgrade", b"x-custom", b"keep-alive, close",
    b"Basic dXNlcjpwYXNz", b"Bearer t", b"1.1 other", b"10.0.0.1", b"for=192.0.2.1",
    b"timeout=5, max=100", b"h", b"example.com:8080", b"0", b"chunked", b"trailers",
    b"websocket", b"proxy-foo", b"via"]
# One canonical line named as something the forward proxy removes or refuses
# (or looks like it), with a value that matters to some of them.
FORWARD_LINE = st.builds(
    lambda name, how, value: recase(name, how) + b": " + value + b"\r\n",
    st.sampled_from(FORWARD_NAMES), st.integers(0, 3), st.sampled_from(FORWARD_VALUES))
# The fields the anonymity levels remove or keep (and names like them).
IDENTIFYING_LINE = st.builds(
    lambda name, how, value: recase(name, how) + b": " + value + b"\r\n",
    st.sampled_from([b"Via", b"X-Forwarded-For", b"Forwarded", b"X-Real-IP", b"X-Real-IPs",
                     b"X-Via"]),
    st.integers(0, 3), st.sampled_from([b"1.1 other", b"10.0.0.1", b"for=192.0.2.1"]))
# What clients of a forward proxy send about the connection.
FORWARD_CONNECTION = mostly(
    [b"Proxy-Connection: Keep-Alive\r\n", b"Proxy-Connection: keep-alive\r\n",
     b"Connection: keep-alive\r\n", b"Connection: close\r\n", b"Keep-Alive: timeout=5\r\n",
     b"Proxy-Connection: close\r\n", b"Proxy-Foo: bar\r\n", b"proxy-connection: Keep-Alive\r\n"],
    CONNECTION_LINE, odds=3)
CREDENTIALS = mostly([b"Basic dXNlcjpwYXNz", b"Basic YTpi", b"Bearer t0k3n", b"Basic x y"],
                     VALUE, odds=6)


def proxy_authorization_count() -> st.SearchStrategy[int]:
    """0 or 1 Proxy-Authorization fields, now and then 2."""
    return st.integers(0, 999).map(lambda i: 0 if i < 500 else 1 if i < 900 else 2)


def insert_somewhere(draw: st.DrawFn, fields: list[bytes], line: bytes) -> None:
    fields.insert(draw(st.integers(0, len(fields))), line)


@st.composite
def forward_heads(draw: st.DrawFn) -> bytes:
    method = draw(mostly([b"GET"], [b"HEAD", b"POST", b"get", b"OPTIONS", b"CONNECT", b"PUT"],
                         odds=8))
    authority = draw(AUTHORITY)
    if draw(rarely(12)):  # origin, asterisk and authority forms
        target = draw(st.sampled_from([b"/", b"/x", b"*", authority or b"h:443",
                                       b"example.com:443", b"[::1]:8080"]))
    else:
        target = draw(SCHEME) + authority + draw(FORWARD_PATH)
    version = draw(mostly([b"1.1"], [b"1.0", b"2.0", b"1.1 "], odds=8))
    line = method + b" " + target + b" HTTP/" + version + draw(EOL)
    fields = draw(st.lists(field_line(field_name(REQUEST_NAMES)), max_size=5))
    for _ in range(draw(one_mostly())):  # Host, usually the target's authority
        name = draw(mostly([b"Host"], [b"host", b"HOST", b"hOsT"]))
        value = draw(mostly([authority], HOST_VALUE, odds=3))
        insert_somewhere(draw, fields, name + draw(SEP) + value + draw(EOL))
    for _ in range(draw(proxy_authorization_count())):
        name = draw(mostly([b"Proxy-Authorization"],
                           [b"proxy-authorization", b"PROXY-AUTHORIZATION"]))
        insert_somewhere(draw, fields, name + draw(SEP) + draw(CREDENTIALS) + draw(EOL))
    for _ in range(draw(st.integers(0, 2))):
        insert_somewhere(draw, fields, draw(FORWARD_CONNECTION))
    if draw(rarely(3)):
        for _ in range(draw(st.integers(1, 2))):
            insert_somewhere(draw, fields, draw(FORWARD_LINE | IDENTIFYING_LINE))
    prefix = draw(mostly([b""], [b"\r\n", b"\n", b" "], odds=20))
    end = draw(mostly([b"\r\n"], [b"\n", b"\r\n\r\n", b""], odds=20))
    after = draw(mostly([b""], st.one_of(
        st.sampled_from([b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", b"x", b"\r\n"]),
        st.binary(min_size=1, max_size=8)), odds=12))
    return draw(mutate(prefix + line + b"".join(fields) + end + after))


@st.composite
def touchy_forward_gets(draw: st.DrawFn) -> bytes:
    """A canonical absolute-form GET but for a few lines the forward proxy acts on."""
    authority = draw(st.sampled_from([b"h", b"127.0.0.1:8080", b"[::1]:8080", b"example.com",
                                      b"h:0", b"u@h"]))
    scheme = draw(st.sampled_from([b"http://"] * 6 + [b"HTTP://", b"https://"]))
    path = draw(st.sampled_from([b"", b"/", b"/a?b=c"]))
    fields = [b"Accept: */*\r\n"] * draw(st.integers(0, 2))
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2]))):
        host = draw(st.sampled_from([authority, authority, b"h", b"other:81"]))
        insert_somewhere(draw, fields, b"Host: " + host + b"\r\n")
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        value = draw(st.sampled_from([b"Basic dXNlcjpwYXNz", b"Basic YTpi"]))
        name = recase(b"Proxy-Authorization", draw(st.integers(0, 3)))
        insert_somewhere(draw, fields, name + b": " + value + b"\r\n")
    extra = draw(st.lists(FORWARD_LINE, max_size=2 if draw(rarely(4)) else 1))
    if draw(st.booleans()):
        extra.append(draw(st.sampled_from([b"Proxy-Connection: Keep-Alive\r\n",
                                           b"Keep-Alive: timeout=5\r\n", b"Proxy-Foo: 1\r\n"])))
    connection = draw(st.sampled_from(["none", "close", "keep-alive", "other"]))
    if connection == "close":
        extra.append(recase(b"Connection", draw(st.integers(0, 3))) + b": close\r\n")
    elif connection == "keep-alive":
        extra.append(b"Connection: keep-alive\r\n")
    elif connection == "other":
        extra.append(draw(TOUCHY_CONNECTION))
    if draw(rarely(4)):
        extra.append(draw(TOUCHY_NAMED))
    if draw(rarely(3)):
        extra.append(draw(IDENTIFYING_LINE))
    for line in extra:
        insert_somewhere(draw, fields, line)
    return b"GET " + scheme + authority + path + b" HTTP/1.1\r\n" + b"".join(fields) + b"\r\n"


# -- the property tests -------------------------------------------------------------------
def test_quick_forward_get_is_a_strict_subset_with_the_same_bytes() -> None:
    seen: Counter[str] = Counter()

    @props(500)
    @given(data=forward_heads())
    @example(data=b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    @example(data=b"GET http://h HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic YTpi\r\n"
             b"Proxy-Connection: Keep-Alive\r\nConnection: close\r\n\r\n")
    def prop(data: bytes) -> None:
        outcome = check_forward(data)
        event(outcome)
        seen[outcome] += 1

    prop()
    _enough(seen, 500)


def test_forward_fields_in_canonical_heads() -> None:
    seen: Counter[str] = Counter()

    @props(600)
    @given(data=touchy_forward_gets())
    def prop(data: bytes) -> None:
        outcome = check_forward(data)
        event(outcome)
        seen[outcome] += 1
        got = quick_forward_get(data, LIMIT, MAX_FIELDS)
        if got is not None:
            for what, taken in (("with credentials", got[4] is not None),
                                ("not keep-alive", not got[2]),
                                ("fields removed", b"\nproxy-" in data.lower()
                                 or b"\nkeep-alive:" in data.lower())):
                if taken:
                    event(f"quick accepts {what}")
                    seen[f"quick accepts {what}"] += 1

    prop()
    print(dict(seen))
    assert seen["quick accepts"] >= 60, seen
    assert seen["quick refuses, strict accepts"] >= 60, seen
    assert seen["quick accepts with credentials"] >= 15, seen
    assert seen["quick accepts not keep-alive"] >= 8, seen
    assert seen["quick accepts fields removed"] >= 20, seen


@st.composite
def forward_limits(draw: st.DrawFn) -> Limits:
    """Limits about as large as the heads drawn: most fit, some do not."""
    def size(low: int) -> int:
        return draw(mostly(st.integers(120, 400), st.integers(low, 120), odds=3))

    return Limits(max_fields=draw(mostly(st.integers(3, 8), st.integers(0, 2), odds=2)),
                  max_header_bytes=size(30), max_request_line=size(15), max_field_line=size(10),
                  max_method=draw(mostly([3], [2], odds=10)))


def test_quick_forward_get_respects_small_limits() -> None:
    seen: Counter[str] = Counter()

    @props(200)
    @given(limits=forward_limits(), data=touchy_forward_gets() | forward_heads())
    def prop(limits: Limits, data: bytes) -> None:
        outcome = check_forward(data, limits)
        event(outcome)
        seen[outcome] += 1
        if (outcome != "quick accepts"
                and quick_forward_get(data, LIMIT, MAX_FIELDS) is not None):
            event("refused for the limits")
            seen["refused for the limits"] += 1

    prop()
    print(dict(seen))
    assert seen["quick accepts"] >= 15, seen
    assert seen["refused for the limits"] >= 10, seen


@props(300)
@given(garbage([b"GET http://h/ HTTP/1.1\r\nHost: h\r\n", b"GET http://",
                b"GET http://[::1]:8080", b"GET http://h/ HTTP/1.1\r\nHost: h\r\nProxy-",
                b"GET http://h HTTP/1.1\r\n"]))
def test_quick_forward_get_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    check_forward(data)
    check_forward(data + b"\r\n\r\n")
    for limit, fields in ((0, 0), (1, 1), (LIMIT, MAX_FIELDS), (1 << 40, 1 << 40)):
        quick_forward_get(data, limit, fields)
        quick_forward_get(data + b"\r\n\r\n", limit, fields)


# -- explicit examples ----------------------------------------------------------------------
CURL_FORWARD = (b"GET http://127.0.0.1:8080/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                b"User-Agent: curl/8\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n")
REQUESTS_FORWARD = (b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                    b"User-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\n"
                    b"Accept: */*\r\nConnection: keep-alive\r\n"
                    b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n")


@pytest.mark.parametrize("level", LEVELS)
def test_curl_through_the_forward_proxy(level: str) -> None:
    got = quick_forward_get(CURL_FORWARD, LIMIT, MAX_FIELDS)
    assert got == (b"127.0.0.1:8080", b"/x", True, b"User-Agent: curl/8\r\nAccept: */*\r\n", None)
    assert check_forward(CURL_FORWARD) == "quick accepts"
    tail = {"elite": b"\r\n", "anonymous": b"Via: 1.1 fastproxy\r\n\r\n",
            "transparent": b"Via: 1.1 fastproxy\r\nX-Forwarded-For: ::1\r\n\r\n"}[level]
    head = (b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"
            + tail)
    assert forward_head(got, level, b"::1") == head
    plan = express_session(level, b"::1")._express_plan(CURL_FORWARD)
    assert plan is not None
    assert plan[2:] == (head, True)


@pytest.mark.parametrize("level", LEVELS)
def test_requests_through_the_forward_proxy(level: str) -> None:
    got = quick_forward_get(REQUESTS_FORWARD, LIMIT, MAX_FIELDS)
    assert got == (b"example.com", b"/path?q=1", True,
                   b"User-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\n"
                   b"Accept: */*\r\n", b"Basic dXNlcjpwYXNz")
    assert check_forward(REQUESTS_FORWARD) == "quick accepts"
    head = express_session(level, b"127.0.0.1")._express_plan(REQUESTS_FORWARD)
    assert head is not None
    assert b"Proxy-Authorization" not in head[2]
    assert head[2] == forward_head(got, level, b"127.0.0.1")


def test_express_sessions_are_the_default_forward_mode() -> None:
    for level in LEVELS:
        mode = express_session(level, b"::1").mode
        assert (quick_limit(mode.limits), mode.limits.max_fields) == (LIMIT, MAX_FIELDS)
        assert mode.anonymity_suffix == (b"" if level == "elite" else b"Via: 1.1 fastproxy\r\n")
        assert not mode.parents and not mode.sources and not mode.auth.required


@pytest.mark.parametrize(("data", "keep_alive", "credentials"), [
    (CURL_FORWARD, True, None),
    (REQUESTS_FORWARD, True, b"Basic dXNlcjpwYXNz"),
    (b"GET http://h HTTP/1.1\r\nHost: h\r\n\r\n", True, None),                    # path "/"
    (b"GET http://[::1]:8080/a?b HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", True, None),
    (b"GET http://h/ HTTP/1.1\r\nHost: other:81\r\n\r\n", True, None),            # Host replaced
    (b"GET http://h/ HTTP/1.1\r\nhost: h\r\nCONNECTION: CLOSE\r\n\r\n", False, None),
    (b"GET http://h/ HTTP/1.1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
     b"Host: h\r\nProxy-Foo: 1\r\nProxy-: 2\r\nX-Forwarded-Proto: http\r\n\r\n", True, None),
    (b"GET http://h/ HTTP/1.1\r\nproxy-authorization: Bearer t\r\nHost: h\r\n"
     b"Proxy-Connection: close\r\n\r\n", True, b"Bearer t"),
    (b"GET http://h:0/ HTTP/1.1\r\nHost: h\r\n\r\n", True, None),     # parsed, not admitted
    (b"GET http://a!$&'()*+;=.b/ HTTP/1.1\r\nHost: x\r\n\r\n", True, None),
])
def test_forward_gets_that_are_quick(data: bytes, keep_alive: bool,
                                     credentials: bytes | None) -> None:
    got = quick_forward_get(data, LIMIT, MAX_FIELDS)
    assert got is not None
    assert got[2] is keep_alive
    assert got[4] == credentials
    assert check_forward(data) == "quick accepts"


@pytest.mark.parametrize(("data", "strict_accepts"), [
    # fields the strict path applies the anonymity level to, or acts on
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nVia: 1.1 other\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nForwarded: for=192.0.2.1\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nx-real-ip: 10.0.0.1\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic YTpi\r\n"
     b"Proxy-Authorization: Basic YTpj\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
     True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: x-a\r\nX-A: 1\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: close\r\n\r\n",
     True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\nClose: 1\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nMax-Forwards: 1\r\n\r\n", True),
    # targets and methods
    (b"GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET HTTP://h/ HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),                                # origin form
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", True),
    (b"HEAD http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.0\r\nHost: h\r\n\r\n", True),
    (b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", False),                     # userinfo
    (b"GET http://u:p@h/ HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http://h:123456/ HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http://h:/ HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http://[::1/ HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"get http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", True),           # a method, not GET
    # Host
    (b"GET http://h/ HTTP/1.1\r\nAccept: */*\r\n\r\n", False),                  # missing
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", False),           # twice
    (b"GET http://h/ HTTP/1.1\r\nHost: u@h\r\n\r\n", False),
    (b"GET http://h/ HTTP/1.1\r\nHost: \r\n\r\n", True),                        # empty
    # non-canonical forms, bytes after the head
    (b"GET http://h/ HTTP/1.1\r\nHost:h\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nProxy-Authorization:  Basic YTpi\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n", True),
    (b"\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\nx", True),
    (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n", False),
    (b"", False),
])
def test_forward_gets_that_are_not_quick(data: bytes, strict_accepts: bool) -> None:
    assert quick_forward_get(data, LIMIT, MAX_FIELDS) is None
    assert check_forward(data) == ("quick refuses, strict accepts" if strict_accepts
                                   else "both refuse")


def test_forward_limits() -> None:
    def padded(size: int) -> bytes:  # _padded_get with an absolute-form target
        return _padded_get(size - len(b"http://h")).replace(b"GET /", b"GET http://h/", 1)

    for size in (LIMIT - 6, LIMIT - 1, LIMIT):
        assert len(padded(size)) == size
        assert check_forward(padded(size)) == "quick accepts"
    for size in (LIMIT + 1, 3 * LIMIT):
        assert quick_forward_get(padded(size), LIMIT, MAX_FIELDS) is None
        assert check_forward(padded(size)) == "quick refuses, strict accepts"
    # the field count includes the lines quick_forward_get removes
    limits = Limits(max_fields=3)
    get = (b"GET http://h/ HTTP/1.1\r\nHost: h\r\nProxy-Connection: keep-alive\r\n"
           b"Proxy-Authorization: Basic YTpi\r\n\r\n")
    more = get[:-2] + b"Keep-Alive: 5\r\n\r\n"
    assert quick_forward_get(get, quick_limit(limits), 3) is not None
    assert check_forward(get, limits) == "quick accepts"
    assert quick_forward_get(more, quick_limit(limits), 3) is None
    assert check_forward(more, limits) == "both refuse"
    assert check_forward(more) == "quick accepts"
    limits = Limits(max_method=2)
    assert check_forward(CURL_FORWARD, limits) == "both refuse"


# -- the memo of parsed heads --------------------------------------------------------------
def test_memo_calls_the_function_once_per_head_and_stays_bounded() -> None:
    calls: list[bytes] = []

    def parse(data: bytes) -> int:
        calls.append(data)
        return len(data)

    memo = Memo(parse, size=2, longest=8)
    assert [memo(b"a"), memo(b"a"), memo(b"bb"), memo(b"a")] == [1, 1, 2, 1]
    assert calls == [b"a", b"bb"]
    memo(b"ccc")  # a third head empties the full memo first
    assert list(memo.entries) == [b"ccc"]
    assert memo(b"x" * 9) == 9 and memo(b"x" * 9) == 9  # longer than longest: not kept
    assert calls[-2:] == [b"x" * 9, b"x" * 9]


def test_forward_memo_keeps_no_credentials() -> None:
    """A request with Proxy-Authorization is parsed each time and never kept
    (no password stays in memory as plain text); one without is kept."""
    mode = express_session("elite", b"127.0.0.1").mode
    plain = (b"GET http://127.0.0.1:8080/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
             b"User-Agent: t\r\n\r\n")
    authed = plain.replace(b"User-Agent", b"proxy-AUTHORIZATION: Basic YTpi\r\nUser-Agent")
    assert mode.quick_requests(authed)[4] == b"Basic YTpi"
    assert mode.quick_requests(plain)[4] is None
    assert authed not in mode.quick_requests.entries
    assert plain in mode.quick_requests.entries
    assert not without_credentials(authed) and without_credentials(plain)
