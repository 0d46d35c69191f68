"""Write the HTTP request corpus: ``{valid,invalid,smuggling}/NNN.http`` and ``NNN.json``.

Run ``python tests/http/corpus/make_corpus.py`` after editing the cases; the
test suite checks that the files on disk match this script exactly.

The cases are written here, not as raw files, so that every CR and LF is
explicit. In each ``NNN.json``, every byte string is latin-1 decoded:

- ``description``: what the case covers (and the SPEC rule it exercises);
- ``messages``: the messages expected to complete (``EndOfMessage``) in order,
  each with ``method``, ``target``, ``version``, ``headers`` (``[name, value]``
  as received), ``body`` (all Data joined), ``trailers``, and optionally
  ``form``, ``authority``, ``path``, ``scheme``, ``keep_alive``;
- ``status``: the ProtocolError status expected after those messages, or
  null when the whole input parses;
- ``limits``: overrides of ``fastproxy.http.Limits`` fields;
- ``eof``: whether the peer closes the connection after sending the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Case:
    category: str
    description: str
    raw: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    eof: bool = False


def head(*lines: bytes) -> bytes:
    """A head: each line followed by CRLF, then the empty line."""
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def get(target: bytes = b"/", *fields: bytes, version: bytes = b"1.1") -> bytes:
    return head(b"GET " + target + b" HTTP/" + version, b"Host: a.example", *fields)


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return head(b"POST /p HTTP/1.1", b"Host: a.example", *fields) + body


def s(b: bytes) -> str:
    return b.decode("latin-1")


def msg(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
        version: bytes = b"1.1", trailers: tuple[tuple[bytes, bytes], ...] = (),
        **extra: Any) -> dict[str, Any]:
    m = {"method": s(method), "target": s(target), "version": s(version),
         "headers": [[s(n), s(v)] for n, v in headers], "body": s(body),
         "trailers": [[s(n), s(v)] for n, v in trailers]}
    m.update({k: s(v) if isinstance(v, bytes) else v for k, v in extra.items()})
    return m


HOST = (b"Host", b"a.example")


def get_msg(target: bytes = b"/", *fields: tuple[bytes, bytes], **extra: Any) -> dict[str, Any]:
    return msg(b"GET", target, [HOST, *fields], **extra)


def post_msg(*fields: tuple[bytes, bytes], body: bytes = b"", **extra: Any) -> dict[str, Any]:
    return msg(b"POST", b"/p", [HOST, *fields], body, **extra)


CHUNKED = (b"Transfer-Encoding", b"chunked")
TE = b"Transfer-Encoding: chunked"


def valid_cases() -> list[Case]:
    v = "valid"
    ua = b"Mozilla/5.0 (X11; Linux x86_64)"
    return [
        Case(v, "simple GET", get(), [get_msg(form="origin", authority=b"a.example", path=b"/")]),
        Case(v, "OWS (SP and HTAB only) around values is trimmed; inner HTAB kept",
             get(b"/", b"User-Agent:  " + ua + b" \t", b"X-Tab:\ta\tb\t"),
             [get_msg(b"/", (b"User-Agent", ua), (b"X-Tab", b"a\tb"))]),
        Case(v, "HTTP/1.0 without Host is allowed, not persistent",
             head(b"GET /old HTTP/1.0"),
             [msg(b"GET", b"/old", [], version=b"1.0", keep_alive=False, authority=b"")]),
        Case(v, "POST with Content-Length body", post(b"Content-Length: 5", body=b"hello"),
             [post_msg((b"Content-Length", b"5"), body=b"hello")]),
        Case(v, "Content-Length with leading zeros is decimal: 005 is 5",
             post(b"Content-Length: 005", body=b"hello"),
             [post_msg((b"Content-Length", b"005"), body=b"hello")]),
        Case(v, "identical Content-Length list 5, 5 collapses to 5",
             post(b"Content-Length: 5, 5", body=b"hello"),
             [post_msg((b"Content-Length", b"5, 5"), body=b"hello")]),
        Case(v, "two identical Content-Length fields collapse",
             post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
             [post_msg((b"Content-Length", b"5"), (b"Content-Length", b"5"), body=b"hello")]),
        Case(v, "chunked body, two chunks", post(TE, body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
             [post_msg(CHUNKED, body=b"hello world")]),
        Case(v, "valid chunk extensions (token and quoted-string) are accepted",
             post(TE, body=b'5;name=val;flag\r\nhello\r\n3;q="a \\"b\\" c"\r\nabc\r\n0;last\r\n\r\n'),
             [post_msg(CHUNKED, body=b"helloabc")]),
        Case(v, "chunked body with trailers",
             post(TE, body=b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\nX-Other: a b\r\n\r\n"),
             [post_msg(CHUNKED, body=b"abc",
                       trailers=((b"X-Checksum", b"42"), (b"X-Other", b"a b")))]),
        Case(v, "codings are case-insensitive; hex digits in either case",
             post(b"Transfer-Encoding: ChUnKeD", body=b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n"),
             [post_msg((b"Transfer-Encoding", b"ChUnKeD"), body=b"0123456789" * 2)]),
        Case(v, "empty list elements in Transfer-Encoding are dropped: ', chunked'",
             post(b"Transfer-Encoding: , chunked,", body=b"1\r\nx\r\n0\r\n\r\n"),
             [post_msg((b"Transfer-Encoding", b", chunked,"), body=b"x")]),
        Case(v, "two empty lines before the request line are ignored (RFC 9112 §2.2)",
             b"\r\n\r\n" + get(), [get_msg()]),
        Case(v, "four empty lines (the limit) before the request line",
             b"\r\n" * 4 + get(), [get_msg()]),
        Case(v, "pipelined GETs in one buffer", get(b"/1") + get(b"/2"),
             [get_msg(b"/1"), get_msg(b"/2")]),
        Case(v, "pipelined POST with body then GET",
             post(b"Content-Length: 3", body=b"abc") + get(b"/next"),
             [post_msg((b"Content-Length", b"3"), body=b"abc"), get_msg(b"/next")]),
        Case(v, "absolute-form is recorded (forward proxy)",
             head(b"GET http://Example.com:8080/a/b?q=1 HTTP/1.1", b"Host: example.com:8080"),
             [msg(b"GET", b"http://Example.com:8080/a/b?q=1", [(b"Host", b"example.com:8080")],
                  form="absolute", authority=b"Example.com:8080", path=b"/a/b?q=1", scheme=b"http")]),
        Case(v, "absolute-form with an empty path forwards as /",
             head(b"GET HTTP://example.com HTTP/1.1", b"Host: example.com"),
             [msg(b"GET", b"HTTP://example.com", [(b"Host", b"example.com")],
                  form="absolute", path=b"/", scheme=b"http")]),
        Case(v, "absolute-form with a query and no path",
             head(b"GET http://example.com?x=1 HTTP/1.1", b"Host: example.com"),
             [msg(b"GET", b"http://example.com?x=1", [(b"Host", b"example.com")],
                  form="absolute", path=b"/?x=1")]),
        Case(v, "CONNECT with authority-form",
             head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"),
             [msg(b"CONNECT", b"example.com:443", [(b"Host", b"example.com:443")],
                  form="authority", authority=b"example.com:443", path=b"")]),
        Case(v, "CONNECT to an IPv6 literal",
             head(b"CONNECT [2001:db8::1]:443 HTTP/1.1", b"Host: [2001:db8::1]:443"),
             [msg(b"CONNECT", b"[2001:db8::1]:443", [(b"Host", b"[2001:db8::1]:443")],
                  form="authority", authority=b"[2001:db8::1]:443")]),
        Case(v, "OPTIONS with asterisk-form", head(b"OPTIONS * HTTP/1.1", b"Host: a.example"),
             [msg(b"OPTIONS", b"*", [HOST], form="asterisk", path=b"*")]),
        Case(v, "lowercase method is a token: passed on",
             head(b"get / HTTP/1.1", b"Host: a.example"), [msg(b"get", b"/", [HOST])]),
        Case(v, "unknown method is a token: passed on",
             head(b"PURGE /cache HTTP/1.1", b"Host: a.example"), [msg(b"PURGE", b"/cache", [HOST])]),
        Case(v, "obs-text 0x80-0xFF in a value is passed on unchanged",
             get(b"/", b"X-Name: caf\xe9 \xff\x80"), [get_msg(b"/", (b"X-Name", b"caf\xe9 \xff\x80"))]),
        Case(v, "empty field value", get(b"/", b"X-Empty:", b"X-Blank:   "),
             [get_msg(b"/", (b"X-Empty", b""), (b"X-Blank", b""))]),
        Case(v, "Host with a port", head(b"GET / HTTP/1.1", b"Host: a.example:8080"),
             [msg(b"GET", b"/", [(b"Host", b"a.example:8080")], authority=b"a.example:8080")]),
        Case(v, "Host as an IPv6 literal", head(b"GET / HTTP/1.1", b"Host: [::1]:80"),
             [msg(b"GET", b"/", [(b"Host", b"[::1]:80")], authority=b"[::1]:80")]),
        Case(v, "GET with a body is passed on", get(b"/", b"Content-Length: 2") + b"hi",
             [get_msg(b"/", (b"Content-Length", b"2"), body=b"hi")]),
        Case(v, "Expect: 100-continue is passed on",
             post(b"Expect: 100-continue", b"Content-Length: 1", body=b"x"),
             [post_msg((b"Expect", b"100-continue"), (b"Content-Length", b"1"), body=b"x")]),
        Case(v, "WebSocket upgrade request", get(b"/ws", b"Connection: Upgrade", b"Upgrade: websocket",
                                                 b"Sec-WebSocket-Version: 13"),
             [get_msg(b"/ws", (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
                      (b"Sec-WebSocket-Version", b"13"), keep_alive=True)]),
        Case(v, "Connection: close is not persistent", get(b"/", b"Connection: close"),
             [get_msg(b"/", (b"Connection", b"close"), keep_alive=False)]),
        Case(v, "HTTP/1.0 with Connection: keep-alive is persistent",
             head(b"GET / HTTP/1.0", b"Connection: Keep-Alive"),
             [msg(b"GET", b"/", [(b"Connection", b"Keep-Alive")], version=b"1.0", keep_alive=True)]),
        Case(v, "an empty Host is valid in HTTP/1.1 (RFC 9112 §3.2)", head(b"GET / HTTP/1.1", b"Host:"),
             [msg(b"GET", b"/", [(b"Host", b"")], authority=b"")]),
        Case(v, "Content-Length: 0", post(b"Content-Length: 0"), [post_msg((b"Content-Length", b"0"))]),
        Case(v, "a 32-byte method (the limit)", head(b"M" * 32 + b" / HTTP/1.1", b"Host: a.example"),
             [msg(b"M" * 32, b"/", [HOST])]),
        Case(v, "a field line of exactly 8192 bytes (the limit)",
             get(b"/", b"X-Big: " + b"v" * (8192 - 7)), [get_msg(b"/", (b"X-Big", b"v" * 8185))]),
        Case(v, "100 field lines (the limit)", get(b"/", *[b"X-F%d: %d" % (i, i) for i in range(99)]),
             [get_msg(b"/", *[(b"X-F%d" % i, b"%d" % i) for i in range(99)])]),
        Case(v, "16 hex digits with leading zeros is a valid chunk size",
             post(TE, body=b"000000000000000a\r\n0123456789\r\n0\r\n\r\n"),
             [post_msg(CHUNKED, body=b"0123456789")]),
        Case(v, "Upgrade: h2c and HTTP2-Settings parse (the proxy drops them)",
             get(b"/", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__"),
             [get_msg(b"/", (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
                      (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"))]),
        Case(v, "percent-encoding and sub-delims in the target",
             get(b"/a%20b/c;p=1?x=%7B1%7D&y=a|b~c'd!e"), [get_msg(b"/a%20b/c;p=1?x=%7B1%7D&y=a|b~c'd!e")]),
        Case(v, "field names use every tchar except _",
             get(b"/", b"X-!#$%&'*+.^`|~09az: ok"), [get_msg(b"/", (b"X-!#$%&'*+.^`|~09az", b"ok"))]),
        Case(v, "POST body split across chunk sizes of one byte",
             post(TE, body=b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"), [post_msg(CHUNKED, body=b"abc")]),
        Case(v, "HTTP/1.0 POST with Content-Length",
             head(b"POST /form HTTP/1.0", b"Content-Length: 3") + b"a=1",
             [msg(b"POST", b"/form", [(b"Content-Length", b"3")], b"a=1", version=b"1.0")]),
        Case(v, "the client closes after a complete request", get(b"/bye"), [get_msg(b"/bye")], eof=True),
        Case(v, "large body with max_body_bytes equal to its length",
             post(b"Content-Length: 100", body=b"z" * 100),
             [post_msg((b"Content-Length", b"100"), body=b"z" * 100)], limits={"max_body_bytes": 100}),
    ]


def invalid_cases() -> list[Case]:
    i = "invalid"
    ok = get_msg(b"/1")
    return [
        # limits
        Case(i, "method longer than 32 bytes -> 501", head(b"M" * 33 + b" / HTTP/1.1", b"Host: a"), status=501),
        Case(i, "request line longer than 8 KiB -> 414", get(b"/" + b"a" * 8200), status=414),
        Case(i, "a field line longer than 8 KiB -> 431", get(b"/", b"X-Big: " + b"v" * 8186), status=431),
        Case(i, "more than 100 field lines -> 431", get(b"/", *[b"X-F%d: 1" % n for n in range(100)]),
             status=431),
        Case(i, "head larger than max_header_bytes -> 431", get(b"/", b"X-A: " + b"a" * 600),
             status=431, limits={"max_header_bytes": 512}),
        Case(i, "Content-Length over max_body_bytes -> 413 before the body",
             post(b"Content-Length: 11"), status=413, limits={"max_body_bytes": 10}),
        Case(i, "chunked body over max_body_bytes -> 413 while streaming",
             post(TE, body=b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"), status=413,
             limits={"max_body_bytes": 10}),
        Case(i, "chunk extensions longer than 4 KiB -> 400",
             post(TE, body=b"1;x=" + b"e" * 4100 + b"\r\na\r\n0\r\n\r\n"), status=400),
        # request line
        Case(i, "HTTP/0.9 request line (no version)", b"GET /\r\n\r\n", status=400),
        Case(i, "HTTP/2.0 version -> 505", head(b"GET / HTTP/2.0", b"Host: a"), status=505),
        Case(i, "HTTP/1.2 version -> 505", head(b"GET / HTTP/1.2", b"Host: a"), status=505),
        Case(i, "HTTP/2 prior-knowledge preface -> 505", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", status=505),
        Case(i, "lowercase http/1.1", head(b"GET / http/1.1", b"Host: a"), status=400),
        Case(i, "version without minor", head(b"GET / HTTP/1", b"Host: a"), status=400),
        Case(i, "two spaces after the method", head(b"GET  / HTTP/1.1", b"Host: a"), status=400),
        Case(i, "control byte in the target", head(b"GET /a\x01b HTTP/1.1", b"Host: a"), status=400),
        Case(i, "obs-text in the target", head(b"GET /caf\xc3\xa9 HTTP/1.1", b"Host: a"), status=400),
        Case(i, "method is not a token", head(b"GE@T / HTTP/1.1", b"Host: a"), status=400),
        Case(i, "trailing space after the version", head(b"GET / HTTP/1.1 ", b"Host: a"), status=400),
        Case(i, "space inside the target", head(b"GET /a b HTTP/1.1", b"Host: a"), status=400),
        Case(i, "bare LF ends the request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", status=400),
        Case(i, "bare CR inside the request line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", status=400),
        Case(i, "five empty lines before the request line", b"\r\n" * 5 + get(), status=400),
        Case(i, "bare LF before the request line", b"\n" + get(), status=400),
        # Host and target
        Case(i, "HTTP/1.1 without Host", head(b"GET / HTTP/1.1"), status=400),
        Case(i, "two Host fields", head(b"GET / HTTP/1.1", b"Host: a", b"Host: a"), status=400),
        Case(i, "Host with userinfo", head(b"GET / HTTP/1.1", b"Host: user@a.example"), status=400),
        Case(i, "Host with a space inside", head(b"GET / HTTP/1.1", b"Host: a .example"), status=400),
        Case(i, "Host that is a list", head(b"GET / HTTP/1.1", b"Host: a.example,b.example"), status=400),
        Case(i, "Host with an empty port", head(b"GET / HTTP/1.1", b"Host: a.example:"), status=400),
        Case(i, "absolute-form with userinfo",
             head(b"GET http://user:pw@a.example/ HTTP/1.1", b"Host: a.example"), status=400),
        Case(i, "absolute-form with an empty host", head(b"GET http:///p HTTP/1.1", b"Host: a"),
             status=400),
        Case(i, "authority-form without CONNECT", head(b"GET a.example:80 HTTP/1.1", b"Host: a"),
             status=400),
        Case(i, "asterisk-form without OPTIONS", head(b"GET * HTTP/1.1", b"Host: a"), status=400),
        Case(i, "CONNECT with an origin-form target", head(b"CONNECT / HTTP/1.1", b"Host: a"), status=400),
        Case(i, "CONNECT without a port", head(b"CONNECT a.example HTTP/1.1", b"Host: a"), status=400),
        Case(i, "CONNECT with a body",
             head(b"CONNECT a.example:443 HTTP/1.1", b"Host: a", b"Content-Length: 3") + b"abc",
             status=400),
        Case(i, "fragment in the target", head(b"GET /a#frag HTTP/1.1", b"Host: a"), status=400),
        # field syntax
        Case(i, "obs-fold (continuation line)", get(b"/", b"X-A: one", b" two"), status=400),
        Case(i, "whitespace before the colon", get(b"/", b"X-A : one"), status=400),
        Case(i, "whitespace before the first field line",
             b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", status=400),
        Case(i, "field line without a colon", get(b"/", b"X-A one"), status=400),
        Case(i, "underscore in a field name", get(b"/", b"X_A: one"), status=400),
        Case(i, "non-token byte in a field name", get(b"/", b"X@A: one"), status=400),
        Case(i, "empty field name", get(b"/", b": one"), status=400),
        Case(i, "NUL in a value", get(b"/", b"X-A: o\x00ne"), status=400),
        Case(i, "bare CR in a value", get(b"/", b"X-A: o\rne"), status=400),
        Case(i, "DEL in a value", get(b"/", b"X-A: o\x7fne"), status=400),
        Case(i, "VT is not whitespace: a control byte", get(b"/", b"X-A:\x0bone"), status=400),
        Case(i, "FF is not whitespace: a control byte", get(b"/", b"X-A: one\x0c"), status=400),
        Case(i, "bare LF between field lines", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", status=400),
        Case(i, "head ended by bare LFs", b"GET / HTTP/1.1\r\nHost: a\n\n", status=400),
        # framing
        Case(i, "Content-Length and Transfer-Encoding together",
             post(b"Content-Length: 3", TE, body=b"0\r\n\r\n"), status=400),
        Case(i, "Content-Length +5", post(b"Content-Length: +5", body=b"hello"), status=400),
        Case(i, "Content-Length -1", post(b"Content-Length: -1"), status=400),
        Case(i, "empty Content-Length", post(b"Content-Length:"), status=400),
        Case(i, "Content-Length 0x5", post(b"Content-Length: 0x5", body=b"hello"), status=400),
        Case(i, "Content-Length with a space inside", post(b"Content-Length: 1 0", body=b"x" * 10),
             status=400),
        Case(i, "Content-Length list of different values", post(b"Content-Length: 5, 6", body=b"hello!"),
             status=400),
        Case(i, "two Content-Length fields with different values",
             post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), status=400),
        Case(i, "Content-Length list with an empty element", post(b"Content-Length: 5,", body=b"hello"),
             status=400),
        Case(i, "Content-Length of 20 digits -> 413", post(b"Content-Length: 99999999999999999999"),
             status=413),
        Case(i, "Transfer-Encoding gzip alone (last coding not chunked)", post(b"Transfer-Encoding: gzip"),
             status=400),
        Case(i, "Transfer-Encoding chunked, gzip", post(b"Transfer-Encoding: chunked, gzip"), status=400),
        Case(i, "Transfer-Encoding chunked, chunked", post(b"Transfer-Encoding: chunked, chunked"),
             status=400),
        Case(i, "Transfer-Encoding gzip, chunked -> 501",
             post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), status=501),
        Case(i, "Transfer-Encoding deflate, chunked -> 501",
             post(b"Transfer-Encoding: deflate, chunked", body=b"0\r\n\r\n"), status=501),
        Case(i, "Transfer-Encoding x-gzip then chunked in two fields -> 501",
             post(b"Transfer-Encoding: x-gzip", TE, body=b"0\r\n\r\n"), status=501),
        Case(i, "unknown coding before chunked -> 501",
             post(b"Transfer-Encoding: foo, chunked", body=b"0\r\n\r\n"), status=501),
        Case(i, "Transfer-Encoding in an HTTP/1.0 request",
             head(b"POST / HTTP/1.0", TE) + b"0\r\n\r\n", status=400),
        Case(i, "Transfer-Encoding with no coding", post(b"Transfer-Encoding: , ,"), status=400),
        Case(i, "Connection names Content-Length",
             post(b"Connection: Content-Length", b"Content-Length: 1", body=b"x"), status=400),
        Case(i, "Connection names Transfer-Encoding",
             post(b"Connection: close, transfer-encoding", TE, body=b"0\r\n\r\n"), status=400),
        # chunk lines
        Case(i, "chunk size with 0x prefix", post(TE, body=b"0x5\r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "chunk size with a sign", post(TE, body=b"+5\r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "space before the chunk size", post(TE, body=b" 5\r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "space after the chunk size", post(TE, body=b"5 \r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "space between chunk size and ;", post(TE, body=b"5 ;a=b\r\nhello\r\n0\r\n\r\n"),
             status=400),
        Case(i, "17 hex digits in a chunk size", post(TE, body=b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
             status=400),
        Case(i, "chunk data longer than its size", post(TE, body=b"3\r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "bare LF ends a chunk line", post(TE, body=b"5\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "bare LF after chunk data", post(TE, body=b"5\r\nhello\n0\r\n\r\n"), status=400),
        Case(i, "bare LF in the trailer section", post(TE, body=b"0\r\nX-T: 1\n\r\n"), status=400),
        Case(i, "obs-fold in a trailer", post(TE, body=b"0\r\nX-T: 1\r\n 2\r\n\r\n"), status=400),
        Case(i, "chunk extension with whitespace", post(TE, body=b"5;a = b\r\nhello\r\n0\r\n\r\n"),
             status=400),
        Case(i, "chunk line without a size", post(TE, body=b";a=b\r\nhello\r\n0\r\n\r\n"), status=400),
        Case(i, "empty chunk line", post(TE, body=b"\r\n"), status=400),
        # closes and pipelines
        Case(i, "closed inside a Content-Length body", post(b"Content-Length: 10", body=b"short"),
             status=400, eof=True),
        Case(i, "closed inside a head", b"GET / HTTP/1.1\r\nHost: a", status=400, eof=True),
        Case(i, "closed inside a chunked body", post(TE, body=b"5\r\nhel"), status=400, eof=True),
        Case(i, "a bad request after a good one fails only the second",
             get(b"/1") + head(b"GET / HTTP/1.1", b"X_Bad: 1"), [ok], status=400),
        Case(i, "a bad chunked body after a good one fails only the second",
             get(b"/1") + post(TE, body=b"zz\r\n"), [ok], status=400),
    ]


def smuggling_cases() -> list[Case]:
    x = "smuggling"
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a.example\r\n\r\n"
    chunked_smuggle = b"0\r\n\r\n" + smuggled
    return [
        Case(x, "CL.TE: Content-Length first, then chunked",
             post(b"Content-Length: 6", TE, body=chunked_smuggle), status=400),
        Case(x, "TE.CL: chunked first, then Content-Length",
             post(TE, b"Content-Length: 4", body=b"5c\r\n" + smuggled + b"\r\n0\r\n\r\n"), status=400),
        Case(x, "TE.TE: chunked and xchunked in two fields",
             post(TE, b"Transfer-Encoding: xchunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: xchunked alone with Content-Length",
             post(b"Content-Length: 4", b"Transfer-Encoding: xchunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: xchunked alone", post(b"Transfer-Encoding: xchunked", body=chunked_smuggle),
             status=400),
        Case(x, "TE.TE: space before the colon",
             post(b"Content-Length: 4", b"Transfer-Encoding : chunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: obs-folded Transfer-Encoding",
             post(b"Content-Length: 4", b"Transfer-Encoding:", b" chunked", body=chunked_smuggle),
             status=400),
        Case(x, "TE.TE: leading space on the field line (fold onto Host)",
             post(b"Content-Length: 4", b" Transfer-Encoding: chunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: vertical tab after chunked",
             post(b"Transfer-Encoding: chunked\x0b", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: vertical tab before chunked",
             post(b"Transfer-Encoding:\x0bchunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: form feed before chunked",
             post(b"Transfer-Encoding:\x0cchunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: NBSP (0xA0) before chunked is not whitespace",
             post(b"Transfer-Encoding: \xa0chunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: chunked named twice in two fields",
             post(TE, TE, body=chunked_smuggle), status=400),
        Case(x, "TE.TE: Transfer_Encoding with underscore plus Content-Length",
             post(b"Content-Length: 4", b"Transfer_Encoding: chunked", body=chunked_smuggle), status=400),
        Case(x, "TE.TE: quoted coding", post(b'Transfer-Encoding: "chunked"', body=chunked_smuggle),
             status=400),
        Case(x, "TE.TE: chunked then identity", post(b"Transfer-Encoding: chunked, identity",
                                                     body=chunked_smuggle), status=400),
        Case(x, "TE.TE: identity then chunked is an unknown coding -> 501",
             post(b"Transfer-Encoding: identity, chunked", body=chunked_smuggle), status=501),
        Case(x, "TE.TE: 'chunk' is not 'chunked'", post(b"Transfer-Encoding: chunk", body=chunked_smuggle),
             status=400),
        Case(x, "TE.TE: tab OWS is real whitespace: parsed as chunked, nothing smuggled",
             post(b"Transfer-Encoding:\tchunked\t", body=b"0\r\n\r\n"),
             [post_msg((b"Transfer-Encoding", b"chunked"))]),
        Case(x, "TE.TE: bare CR after the value",
             post(b"Transfer-Encoding: chunked\r", body=chunked_smuggle), status=400),
        Case(x, "CL.CL: two different Content-Length fields",
             post(b"Content-Length: 0", b"Content-Length: 44", body=smuggled), status=400),
        Case(x, "CL.CL: a list of two lengths", post(b"Content-Length: 0,44", body=smuggled), status=400),
        Case(x, "CL with NBSP prefix", post(b"Content-Length: \xa044", body=smuggled), status=400),
        Case(x, "CL with a trailing form feed", post(b"Content-Length: 44\x0c", body=smuggled), status=400),
        Case(x, "CL in scientific notation", post(b"Content-Length: 4e1", body=smuggled), status=400),
        Case(x, "0.CL: space before the colon of Content-Length",
             get(b"/", b"Content-Length : 44") + smuggled, status=400),
        Case(x, "Content-Length: 0 followed by a pipelined request is two requests",
             get(b"/1", b"Content-Length: 0") + smuggled,
             [get_msg(b"/1", (b"Content-Length", b"0")),
              msg(b"GET", b"/admin", [HOST])]),
        Case(x, "chunk size overflow (18 hex digits)",
             post(TE, body=b"ffffffffffffffffff\r\n" + smuggled), status=400),
        Case(x, "17-digit zero chunk size", post(TE, body=b"00000000000000000\r\n\r\n" + smuggled),
             status=400),
        Case(x, "TERM.EXT: bare LF inside a chunk extension",
             post(TE, body=b"2;\nxx\r\n0\r\n\r\n" + smuggled), status=400),
        Case(x, "EXT.TERM: LF inside a quoted chunk extension",
             post(TE, body=b'2;a="\n"\r\nxx\r\n0\r\n\r\n'), status=400),
        Case(x, "TE.0: chunk data followed by bytes other than CRLF",
             post(TE, body=b"2\r\nxxGET /admin HTTP/1.1\r\n\r\n0\r\n\r\n"), status=400),
        Case(x, "Connection: Content-Length (hop-by-hop abuse)",
             post(b"Connection: Content-Length", b"Content-Length: 44", body=smuggled), status=400),
        Case(x, "HTTP/1.0 with Transfer-Encoding and Content-Length",
             head(b"POST / HTTP/1.0", b"Content-Length: 5", TE) + chunked_smuggle, status=400),
        Case(x, "bare LF in the request line",
             b"GET / HTTP/1.1\nHost: a\r\nContent-Length: 5\r\n\r\nhello", status=400),
        Case(x, "CR inside a field name", get(b"/", b"X\rY: z"), status=400),
        Case(x, "Host twice with different case", head(b"GET / HTTP/1.1", b"Host: a", b"host: b"),
             status=400),
        Case(x, "tab before the colon of Host", head(b"GET / HTTP/1.1", b"Host\t: a"), status=400),
        Case(x, "framing fields in trailers are parsed as trailers only (dropped on re-framing)",
             post(TE, body=b"0\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"),
             [post_msg(CHUNKED, trailers=((b"Content-Length", b"44"),
                                          (b"Transfer-Encoding", b"chunked")))]),
        Case(x, "Content-Length: 0 then garbage is a bad second request",
             get(b"/1", b"Content-Length: 0") + b"GPOST / HTTP/1.1\r\n\r\n",
             [get_msg(b"/1", (b"Content-Length", b"0"))], status=400),
        Case(x, "Expect: 100-continue with an oversized body -> 413 at once",
             post(b"Expect: 100-continue", b"Content-Length: 1000"), status=413,
             limits={"max_body_bytes": 100}),
        Case(x, "absolute-form wins over a different Host (recorded for the proxy)",
             head(b"GET http://b.example/x HTTP/1.1", b"Host: a.example"),
             [msg(b"GET", b"http://b.example/x", [HOST], form="absolute", authority=b"b.example",
                  path=b"/x")]),
    ]


def all_cases() -> list[Case]:
    return valid_cases() + invalid_cases() + smuggling_cases()


def expected_json(case: Case) -> str:
    data = {"description": case.description, "messages": case.messages, "status": case.status,
            "limits": case.limits, "eof": case.eof}
    return json.dumps(data, indent=1, ensure_ascii=True) + "\n"


def rendered() -> dict[str, bytes]:
    """Every corpus file as ``{relative path: content}``."""
    files: dict[str, bytes] = {}
    counters: dict[str, int] = {}
    for case in all_cases():
        counters[case.category] = number = counters.get(case.category, 0) + 1
        stem = f"{case.category}/{number:03d}"
        files[stem + ".http"] = case.raw
        files[stem + ".json"] = expected_json(case).encode()
    return files


def main() -> None:
    for category in ("valid", "invalid", "smuggling"):
        for old in (HERE / category).glob("*.*"):
            old.unlink()
    for name, content in rendered().items():
        path = HERE / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {len(rendered()) // 2} cases under {HERE}")


if __name__ == "__main__":
    main()
