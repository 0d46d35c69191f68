"""The express lane of the HTTP reverse proxy (``fastproxy.modes.express``), end to end.

A canonical body-less GET that arrives alone in one client read, when an idle
upstream connection to its server exists, is sent upstream at once; a whole
canonical answer in one upstream read goes straight back (``requests_express``
counts those). Everything else is demoted to the general path at the same
point. The rule checked here: both paths put the same bytes on both wires.

How a request is steered onto one path or the other, with the same bytes:

- the first request on a fresh proxy has no idle upstream connection, so it
  takes the general path; later ones find one (attached or pooled);
- a request head sent in two writes (``raw.ask_general``) is not alone in one
  client read, so it takes the general path whatever else holds.

Real processes, loopback only; every socket has a timeout, every wait a deadline.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import Backend, wait_until
from tests.integration import raw_http as raw
from tests.integration.http_backends import sha256
from tests.integration.http_helpers import HttpClient, HttpProxy, Response

GET = b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n"
GET_CLOSE = b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nConnection: close\r\n\r\n"
# What the proxy sends upstream for GET (and GET_CLOSE): the proxy's fields appended.
GET_UPSTREAM = (b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nX-Forwarded-For: 127.0.0.1\r\n"
                b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nVia: 1.1 fastproxy")


def get(target: str) -> bytes:
    """GET with ``target`` instead of ``/x``: a quick GET too."""
    return GET.replace(b"GET /x ", b"GET %s " % target.encode())


# -- helpers -------------------------------------------------------------------------------
@pytest.fixture
def start(run_http_proxy: Callable[..., HttpProxy], backend_factory: Callable[..., Backend]
          ) -> Callable[..., tuple[HttpProxy, Backend, raw.RawApp]]:
    """A proxy with one upstream ("app") of one raw backend answering with ``answer``."""
    def make(answer: raw.Answer, **kwargs: object) -> tuple[HttpProxy, Backend, raw.RawApp]:
        app = raw.RawApp(answer)
        backend = backend_factory(app)
        proxy = run_http_proxy({"app": [backend.address]}, **kwargs)
        return proxy, backend, app
    return make


def counters(proxy: HttpProxy) -> tuple[int, int]:
    """(requests, requests_express) so far. The worker counts an exchange
    before it writes the response, so after a response arrived it is counted."""
    totals = proxy.totals()
    return totals["requests"], totals["requests_express"]


def delta(proxy: HttpProxy, before: tuple[int, int]) -> tuple[int, int]:
    now = counters(proxy)
    return now[0] - before[0], now[1] - before[1]


# == 1. the express lane and the general path put the same bytes on both wires =============
def test_keepalive_express_is_byte_identical(start) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX))
    before = counters(proxy)
    with HttpClient(proxy.port) as client:
        # the 1st general, the rest express
        got = [raw.wire(raw.ask(client, GET)) for _ in range(6)]
        assert not client.at_eof(0.2)
    heads = app.only_heads()
    assert len(heads) == 6
    assert heads == [GET_UPSTREAM] * 6
    assert got == [raw.NGINX_TO_CLIENT] * 6
    head = got[0].partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection:" not in head and b"\r\nkeep-alive:" not in head
    assert head.rsplit(b"\r\n", 1)[1] == b"content-length: 12"
    assert backend.accepted == 1
    assert delta(proxy, before) == (6, 5)
    proxy.assert_healthy()


def test_connection_close_express_is_byte_identical(start) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX))
    before = counters(proxy)
    got = []
    for _ in range(6):  # the 1st general (no idle connection), the rest from the pool
        with HttpClient(proxy.port) as client:
            got.append(raw.wire(raw.ask(client, GET_CLOSE)))
            assert client.at_eof(5.0), "the proxy kept a Connection: close client open"
    heads = app.only_heads()
    assert heads == [GET_UPSTREAM] * 6  # no Connection field goes upstream
    assert got == [raw.NGINX_TO_CLOSING_CLIENT] * 6
    assert backend.accepted == 1  # the upstream connection went back to the pool each time
    assert delta(proxy, before) == (6, 5)
    proxy.assert_healthy()


def test_upstream_connection_close(start) -> None:
    response = raw.NGINX.replace(b"Connection: keep-alive", b"Connection: close")
    proxy, backend, app = start(raw.fixed(response, close=True))
    with HttpClient(proxy.port) as client:
        got = []
        for _ in range(4):
            got.append(raw.wire(raw.ask(client, GET)))
            time.sleep(0.05)
        assert not client.at_eof(0.3), "the client connection was closed"
        got.append(raw.wire(raw.ask(client, GET)))  # and it still works
    assert got == [raw.NGINX_TO_CLIENT] * 5
    assert app.only_heads() == [GET_UPSTREAM] * 5
    assert backend.accepted == 5
    proxy.assert_healthy()


# == 2. demotions: what the express lane cannot take is served as the general path serves it
def check_chunked(resp: Response) -> None:
    assert (resp.status, resp.framing, resp.body) == (200, "chunked", b"hello world")
    assert resp.raw_body == b"5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n"


def check_split(resp: Response) -> None:
    assert (resp.status, resp.body) == (200, b"split")
    assert resp.header("Content-Length") == "5"


def check_304(resp: Response) -> None:
    assert (resp.status, resp.body) == (304, b"")
    assert resp.header("Content-Length") == "1234"  # kept (RFC 9110 §8.6), no body follows
    assert resp.header("ETag") == '"x"'


def check_big(resp: Response) -> None:
    assert resp.status == 200 and resp.header("Content-Length") == str(len(raw.BIG))
    assert sha256(resp.body) == sha256(raw.BIG)


def check_huge(resp: Response) -> None:
    assert resp.status == 200 and resp.header("Content-Length") == str(len(raw.HUGE))
    assert sha256(resp.body) == sha256(raw.HUGE)


def check_hop(resp: Response) -> None:
    assert (resp.status, resp.body) == (200, b"hop")
    assert resp.header("X-Public") == "ok"
    assert not resp.has("X-Foo") and not resp.has("Connection"), resp.raw_head
    assert b"secret" not in resp.raw_head


@pytest.mark.parametrize("target,check", [
    ("/chunked", check_chunked),
    ("/split", check_split),
    ("/304", check_304),
    ("/big", check_big),
    ("/huge", check_huge),
    ("/hop", check_hop),
], ids=["chunked", "head-then-body", "304-with-length", "300KiB", "16MiB-spliced",
        "unknown-hop-by-hop"])
def test_demoted_response_is_served_as_the_general_path_serves_it(
        start, target: str, check: Callable[[Response], None]) -> None:
    proxy, backend, app = start(raw.demotion_answer)
    with HttpClient(proxy.port) as client:
        raw.check_demotion(proxy, client, GET, get(target), check,
                           {"requests": 1, "requests_express": 0})
    upstream = GET_UPSTREAM.replace(b"GET /x ", b"GET %s " % target.encode())
    heads = app.only_heads()  # the last quick GET may have needed a second try
    assert heads[:4] == [GET_UPSTREAM] + [upstream] * 3
    assert heads[4:] in ([GET_UPSTREAM], [GET_UPSTREAM] * 2)
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 3. a parked upstream connection the server closed ========================================
def one_per_connection(conn: socket.socket, head: bytes, nth: int) -> bool:
    """Answer one request (Content-Length, no Connection field), then close."""
    body = b"one " + raw.target_of(head)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return False


def test_parked_connection_closed_between_requests(start) -> None:
    proxy, backend, app = start(one_per_connection)
    with HttpClient(proxy.port) as client:
        for i in range(3):
            resp = raw.ask(client, get(f"/n{i}"))
            assert (resp.status, resp.body) == (200, f"one /n{i}".encode())
            time.sleep(0.1)  # the server's close has happened
        assert not client.at_eof(0.2)
    assert [raw.target_of(h) for h in app.only_heads()] == [b"/n0", b"/n1", b"/n2"]
    assert backend.accepted == 3
    proxy.assert_healthy()


def test_reused_connection_closed_after_the_request_is_retried(start) -> None:
    """The server closes a kept-alive connection at its next request, unanswered
    (``raw.answer_first_only``): the request is sent again on a fresh connection."""
    proxy, backend, app = start(raw.answer_first_only)
    with HttpClient(proxy.port) as client:
        for i in range(4):
            resp = raw.ask(client, get(f"/n{i}"))
            assert (resp.status, resp.body) == (200, f"ok /n{i}".encode())
        assert not client.at_eof(0.2)
    with app.lock:
        seen = [(n, raw.target_of(h)) for n, h in app.heads]
    assert seen == [(1, b"/n0"), (1, b"/n1"), (2, b"/n1"), (2, b"/n2"), (3, b"/n2"),
                    (3, b"/n3"), (4, b"/n3")]
    assert len({h for _, h in app.heads if raw.target_of(h) == b"/n1"}) == 1  # the same head again
    assert backend.accepted == 4
    proxy.assert_healthy()


# == 4. pipelining ============================================================================
def test_two_pipelined_gets_in_one_send(start) -> None:
    proxy, backend, app = start(raw.echo_target())
    with HttpClient(proxy.port) as client:
        assert raw.ask(client, get("/warm")).body == b"/warm"
        client.send(get("/p1") + get("/p2"))
        raw.read_ok(client, b"/p1", b"/p2")
        assert raw.ask(client, get("/after")).body == b"/after"
    assert [raw.target_of(h) for h in app.only_heads()] == [b"/warm", b"/p1", b"/p2", b"/after"]
    proxy.assert_healthy()


def test_request_sent_while_an_express_request_waits(start) -> None:
    proxy, backend, app = start(raw.echo_target(delay=0.3))
    with HttpClient(proxy.port) as client:
        assert raw.ask(client, get("/warm")).body == b"/warm"  # now an upstream connection is idle
        client.send(get("/d1"))   # express: sent upstream, its answer 300 ms away
        time.sleep(0.05)
        client.send(get("/d2"))   # arrives while /d1 waits
        raw.read_ok(client, b"/d1", b"/d2")
        assert raw.ask(client, get("/after")).body == b"/after"
        assert not client.at_eof(0.2)
    assert [raw.target_of(h) for h in app.only_heads()] == [b"/warm", b"/d1", b"/d2", b"/after"]
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 5. access log ============================================================================
def access_lines(proxy: HttpProxy, count: int) -> list[str]:
    path = proxy.access_log
    assert path is not None

    def enough() -> bool:
        return path.exists() and len(path.read_text().splitlines()) >= count
    wait_until(enough, 5.0, f"{count} access log lines")
    time.sleep(0.3)  # let a (wrong) extra line show up too
    return path.read_text().splitlines()


TIMES = re.compile(r"^(.* - - )\[[^\]]+\]( .*) \d+\.\d{3} (?:\d+\.\d{3}|-)$")


def mask_times(line: str, fmt: str) -> object:
    if fmt == "json":
        record = json.loads(line)
        for key in ("time", "request_time", "upstream_time"):
            record[key] = type(record[key]).__name__  # the value masked, its kind kept
        return record
    match = TIMES.match(line)
    assert match, line
    return match.group(1) + "[time]" + match.group(2)


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_access_log_line_is_the_same(start, fmt: str) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX), access=True, fmt=fmt)
    request = (b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: tester/1.0\r\n"
               b"Referer: http://ref.test/\r\n\r\n")
    before = counters(proxy)
    with HttpClient(proxy.port) as client:
        got = [raw.wire(raw.ask(client, request)) for _ in range(3)]  # general, express, express
    assert got == [raw.NGINX_TO_CLIENT] * 3
    assert delta(proxy, before) == (3, 2)
    lines = access_lines(proxy, 3)
    assert len(lines) == 3, lines
    masked = [mask_times(line, fmt) for line in lines]
    assert masked[1] == masked[0] and masked[2] == masked[0], lines
    if fmt == "json":
        first = json.loads(lines[0])
        assert (first["user_agent"], first["referer"]) == ("tester/1.0", "http://ref.test/")
        assert first["upstream"] == backend.address and first["status"] == 200
        assert first["bytes_sent"] > 0
        assert masked[0]["upstream_time"] == "float"
    else:
        assert re.search(r' "GET /x\?q=1 HTTP/1\.1" 200 \d+ "http://ref\.test/" "tester/1\.0" ',
                         lines[0]), lines[0]
        assert not lines[0].endswith(" -")  # an upstream time is logged
    proxy.assert_healthy()
