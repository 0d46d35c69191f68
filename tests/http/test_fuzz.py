"""Property tests: hostile bytes only ever raise ProtocolError; accepted input parses
the same however it is split; re-serialising what was parsed parses the same again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    Request,
    RequestParser,
    Response,
    ResponseParser,
    encode_piece,
    serialize_request,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
SEEDS = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.http")) if len(p.read_bytes()) < 2000]
TRICKY = b" \t\r\n:;,=\"0159aAfFxX-_@/*?#\x00\x0b\x0c\x7f\x80\xa0\xff"
# FASTPROXY_FUZZ_EXAMPLES=20000 for a long run.
FUZZ = settings(max_examples=int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def parse(raw: bytes, cuts: list[int] | None = None, response: bool = False
          ) -> tuple[list[tuple[Any, BodyKind | None]], int | None]:
    """Events (each head paired with the body kind decided for it) and the error
    status; Data merged per chunk so that different splits compare equal."""
    p: RequestParser | ResponseParser = ResponseParser() if response else RequestParser()
    if isinstance(p, ResponseParser):
        for _ in range(8):
            p.expect(b"GET")
    bounds = sorted({c % (len(raw) + 1) for c in cuts or []}) + [len(raw)]
    events: list[tuple[Any, BodyKind | None]] = []
    start = 0
    try:
        for end in [*bounds, -1]:
            if end == start:
                continue
            p.receive_data(raw[start:end] if end >= 0 else b"")   # b"" at the end: EOF
            start = end
            if _drain(p, events):
                break
    except ProtocolError as exc:
        return events, exc.status
    return events, None


def _drain(p: RequestParser | ResponseParser, events: list[tuple[Any, BodyKind | None]]) -> bool:
    while True:
        event = p.next_event()
        if event is NEED_DATA:
            return False
        if event is PAUSED:
            if p.state.value == "tunnel":
                return True
            p.start_next()
            continue
        if isinstance(event, ConnectionClosed):
            return True
        _merge(events, event, p.body_kind if isinstance(event, (Request, Response)) else None)


def _merge(events: list[tuple[Any, BodyKind | None]], event: Any, kind: BodyKind | None) -> None:
    if isinstance(event, Data) and events and isinstance(events[-1][0], Data):
        last = events[-1][0]
        if not last.chunk_end:
            events[-1] = (Data(last.data + event.data, last.chunk_start, event.chunk_end,
                               last.chunk_size, last.chunk_ext), None)
            return
    events.append((event, kind))


def same(a: tuple[list[Any], int | None], b: tuple[list[Any], int | None]) -> bool:
    """The same events, and both failing or both not. (With several faults in one
    input, streaming reports the first in byte order, a whole head the first in
    check order: 400 against 431, say. Both refuse the input.)"""
    return a[0] == b[0] and (a[1] is None) == (b[1] is None)


def reserialize(events: list[tuple[Any, BodyKind | None]]) -> bytes:
    """Write parsed requests back out: head as parsed, body re-framed exactly."""
    out: list[bytes] = []
    kind: BodyKind | None = None
    for event, head_kind in events:
        if isinstance(event, Request):
            kind = head_kind
            out.append(serialize_request(event, version=event.version))
        elif isinstance(event, Data):
            out.append(encode_piece(event) if kind is BodyKind.CHUNKED else event.data)
        elif isinstance(event, EndOfMessage) and kind is BodyKind.CHUNKED:
            out.append(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in event.trailers)
                       + b"\r\n")
    return b"".join(out)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus input with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(TRICKY) | st.integers(0, 255))
        op = draw(st.sampled_from(["insert", "replace", "delete", "duplicate"]))
        if op == "insert":
            data[pos:pos] = bytes([byte])
        elif op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 3))]
        else:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 40))]
    return bytes(data)


cuts = st.lists(st.integers(0, 10_000), max_size=8)


@FUZZ
@given(st.binary(max_size=400), cuts)
def test_random_bytes_only_raise_protocol_error(raw: bytes, where: list[int]) -> None:
    parse(raw, where)
    parse(raw, where, response=True)


@FUZZ
@given(st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: h\r\n",
                        b"HTTP/1.1 200 OK\r\n"]), st.binary(max_size=300), cuts)
def test_random_tails_only_raise_protocol_error(prefix: bytes, tail: bytes, where: list[int]) -> None:
    parse(prefix + tail, where)
    parse(prefix + tail, where, response=True)


@FUZZ
@given(mutated(), cuts)
@example(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"\\\"\"\r\nabc\r\n0\r\n\r\n",
         [5, 60])
def test_mutated_requests_parse_the_same_whole_or_split_and_round_trip(raw: bytes,
                                                                       where: list[int]) -> None:
    whole = parse(raw)
    assert same(parse(raw, where), whole)
    events, status = whole
    if status is None and events:
        again = parse(reserialize(events))
        assert again == (events, None)


@FUZZ
@given(mutated())
def test_mutated_requests_byte_by_byte(raw: bytes) -> None:
    assert same(parse(raw, list(range(len(raw)))), parse(raw))


token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^`|~",
                min_size=1, max_size=12).map(str.encode)
path = st.text("abcxyz0189-._~!$&'()*+,;=:@/?%", max_size=20).map(str.encode)
value = st.binary(max_size=30).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f)
                                   .strip(b" \t"))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Well-formed requests built from the grammar, with any framing."""
    fields = draw(st.lists(st.tuples(token, value), max_size=6))
    fields = [(n, v) for n, v in fields if n.lower() not in
              (b"host", b"content-length", b"transfer-encoding", b"connection")]
    body = draw(st.binary(max_size=50))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    head = b"%s /%s HTTP/1.1\r\nHost: h\r\n" % (draw(token), draw(path))
    head += b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 9), max_size=5))
        chunks, rest = [], body
        for size in sizes:
            piece, rest = rest[:size], rest[size:]
            if piece:
                chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    return head + b"\r\n"


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3), cuts)
def test_generated_pipelines_parse_and_round_trip(batch: list[bytes], where: list[int]) -> None:
    raw = b"".join(batch)
    events, status = parse(raw, where)
    assert status is None
    assert sum(isinstance(e, EndOfMessage) for e, _ in events) == len(batch)
    assert reserialize(events) == raw
