"""HTTP reverse-proxy mode (``mode = "http"``) end to end, through a real master:
body framing and integrity, keep-alive and the upstream pool, header rules,
routing, pipelining, error pages, strict parsing (smuggling), limits,
100-continue, upgrades, slow and vanishing clients, access log, balancing,
retries and stats. Loopback only; every socket has a timeout, every wait a
deadline; no assertion depends on how fast anything is."""

from __future__ import annotations

import collections
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from tests.conftest import TIMEOUT, free_port, wait_until
from tests.integration.http_backends import (
    WS_GREETING,
    HttpBackend,
    Recorder,
    chunk_plan,
    close_after_each_handler,
    close_delimited_handler,
    close_without_answer_handler,
    continue_handler,
    encode_chunked,
    garbage_handler,
    head_field,
    payload,
    read_head,
    sha256,
    silent_handler,
    upload_sink_handler,
    websocket_echo_handler,
)
from tests.integration.http_helpers import (
    HttpClient,
    HttpProxy,
    HttpProxyRunner,
    build_request,
    exchange,
    raw_exchange,
)

MiB = 1 << 20
SIZES = [1, 1000, 100_000, 1_000_000, 8 * MiB]
SIZE_IDS = ["1B", "1000B", "100kB", "1MB", "8MiB"]
HOP_BY_HOP = ("connection", "keep-alive", "te", "trailer", "proxy-connection", "upgrade",
              "http2-settings", "transfer-encoding")


@pytest.fixture
def app(http_backend_factory: Callable[..., HttpBackend]) -> HttpBackend:
    return http_backend_factory("app")


@pytest.fixture
def proxy(run_http_proxy: Callable[..., HttpProxy], app: HttpBackend) -> HttpProxy:
    return run_http_proxy({"app": [app.address]})


def dead_address() -> str:
    """A loopback port with nothing listening."""
    return f"127.0.0.1:{free_port()}"


# == 1. body integrity for every framing ==================================================
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_content_length_response_body(proxy: HttpProxy, app: HttpBackend, size: int) -> None:
    with HttpClient(proxy.port, timeout=30.0) as client:
        resp = client.request("GET", f"/bytes/{size}")
        assert resp.status == 200
        assert resp.framing == "length"
        assert resp.header("Content-Length") == str(size)
        assert len(resp.body) == size
        assert sha256(resp.body) == sha256(payload(size))
        # The framing left the connection exactly at the next response.
        follow = client.request("GET", "/after")
        assert (follow.status, follow.body) == (200, b"app GET /after")
    assert app.snapshot()[0] == 1
    proxy.assert_healthy()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_chunked_response_body(proxy: HttpProxy, size: int) -> None:
    with HttpClient(proxy.port, timeout=30.0) as client:
        resp = client.request("GET", f"/chunked/{size}")
        assert resp.status == 200
        assert resp.framing == "chunked"
        assert not resp.has("Content-Length")
        assert len(resp.body) == size
        assert sha256(resp.body) == sha256(payload(size))
        # Chunk boundaries and extensions are passed on unchanged (SPEC).
        expected_wire = b"".join(encode_chunked(payload(size), b"X-Checksum: %s\r\n"
                                                % sha256(payload(size)).encode()))
        assert resp.raw_body == expected_wire
        assert ("X-Checksum", sha256(payload(size))) in resp.trailers
        follow = client.request("GET", "/after")
        assert (follow.status, follow.body) == (200, b"app GET /after")
    proxy.assert_healthy()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_close_delimited_response_body(run_http_proxy, backend_factory, size: int) -> None:
    backend = backend_factory(close_delimited_handler(size))
    proxy = run_http_proxy({"app": [backend.address]})
    with HttpClient(proxy.port, timeout=30.0) as client:
        resp = client.request("GET", "/stream")
        assert resp.status == 200
        assert resp.framing == "close"  # no length: the close ends the body
        assert "close" in (resp.header("Connection") or "").lower()
        assert len(resp.body) == size
        assert sha256(resp.body) == sha256(payload(size))
        assert client.at_eof()
    proxy.assert_healthy()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_post_content_length_body(proxy: HttpProxy, app: HttpBackend, size: int) -> None:
    body = payload(size)
    with HttpClient(proxy.port, timeout=30.0) as client:
        resp = client.request("POST", "/hash", body=body)
        assert resp.status == 200
        assert resp.body == f"{size} {sha256(body)}".encode()
        assert resp.header("X-Body-Framing") == "length"
        follow = client.request("GET", "/after")
        assert (follow.status, follow.body) == (200, b"app GET /after")
    assert app.requests[0].header("Content-Length") == str(size)
    proxy.assert_healthy()


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_post_chunked_body(proxy: HttpProxy, app: HttpBackend, size: int) -> None:
    body = payload(size)
    head = build_request("POST", "/hash", headers=[("Transfer-Encoding", "chunked")])
    with HttpClient(proxy.port, timeout=30.0) as client:
        client.send(head)
        for piece in encode_chunked(body, b"X-Trailer: t1\r\n"):
            client.send(piece)
        resp = client.read_response()
        assert resp.status == 200
        assert resp.body == f"{size} {sha256(body)}".encode()
        follow = client.request("GET", "/after")
        assert (follow.status, follow.body) == (200, b"app GET /after")
    seen = app.requests[0]
    assert seen.framing == "chunked" and seen.complete
    # Valid chunk extensions and trailers are passed on unchanged (SPEC).
    expected_exts = [ext for *_, ext in chunk_plan(size) if ext]
    assert seen.chunk_exts == expected_exts
    assert ("X-Trailer", "t1") in seen.trailers
    proxy.assert_healthy()


@pytest.mark.parametrize("method,target,status", [
    ("HEAD", "/bytes/1000", 200),
    ("HEAD", "/chunked/1000", 200),
    ("GET", "/status/204", 204),
    ("GET", "/status/304", 304),
], ids=["HEAD-length", "HEAD-chunked", "204", "304"])
def test_bodyless_responses_keep_connection_usable(proxy: HttpProxy, app: HttpBackend,
                                                   method: str, target: str, status: int) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        for _ in range(2):
            resp = client.request(method, target)
            assert resp.status == status
            assert resp.body == b""
            if target == "/bytes/1000":
                assert resp.header("Content-Length") == "1000"  # HEAD keeps it (RFC 9110 §8.6)
            # Nothing extra was sent after the head: the next response parses cleanly.
            follow = client.request("GET", "/after")
            assert (follow.status, follow.body) == (200, b"app GET /after")
    assert app.snapshot()[0] == 1
    proxy.assert_healthy()


def test_http10_client_gets_no_chunked_response(proxy: HttpProxy) -> None:
    """RFC 9112 §6.1: Transfer-Encoding must not be sent to an HTTP/1.0
    client; the body has to be delimited some other way (close)."""
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/chunked/1000", version="HTTP/1.0")
        assert resp.status == 200
        assert not resp.has("Transfer-Encoding"), resp.raw_head
        assert resp.body == payload(1000)


# == 2. keep-alive and the upstream pool ===================================================
def test_keepalive_50_requests_one_client(proxy: HttpProxy, app: HttpBackend) -> None:
    with HttpClient(proxy.port) as client:
        for i in range(50):
            resp = client.request("GET", f"/n/{i}")
            assert (resp.status, resp.body) == (200, f"app GET /n/{i}".encode())
            assert "close" not in (resp.header("Connection") or "").lower()
    accepted, _, handled = app.snapshot()
    assert handled == 50
    assert 1 <= accepted <= 2, f"{accepted} upstream connections for 50 keep-alive requests"


def test_pool_reused_across_50_clients(proxy: HttpProxy, app: HttpBackend) -> None:
    for i in range(50):
        resp = exchange(proxy.port, "GET", f"/c/{i}")
        assert (resp.status, resp.body) == (200, f"app GET /c/{i}".encode())
    accepted, _, handled = app.snapshot()
    assert handled == 50
    assert 1 <= accepted <= 2, f"{accepted} upstream connections for 50 clients (workers=1)"


def test_client_connection_close_and_http10(proxy: HttpProxy) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/x", headers=[("Connection", "close")])
        assert resp.status == 200
        assert (resp.header("Connection") or "").lower() == "close"
        assert client.at_eof()
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/x", version="HTTP/1.0")
        assert resp.status == 200
        assert client.at_eof()
    with HttpClient(proxy.port, timeout=5.0) as client:
        for _ in range(2):
            resp = client.request("GET", "/x", version="HTTP/1.0",
                                  headers=[("Connection", "keep-alive")])
            assert resp.status == 200
            assert (resp.header("Connection") or "").lower() == "keep-alive"


def test_server_closing_pooled_connections_is_invisible(run_http_proxy, backend_factory) -> None:
    """A server that closes every connection after one response (without
    saying so): idempotent requests on a pooled connection the server had
    closed are retried on a fresh one, never answered 502."""
    backend = backend_factory(close_after_each_handler)
    proxy = run_http_proxy({"app": [backend.address]})
    with HttpClient(proxy.port) as client:
        for i in range(20):
            resp = client.request("GET", f"/r/{i}")
            assert (resp.status, resp.body) == (200, b"ok"), i
    proxy.assert_healthy()


def test_upstream_connection_close_keeps_client_alive(run_http_proxy, backend_factory) -> None:
    """The server closes after each response and says so: the proxy opens a
    new upstream connection per request, the client keeps its own."""
    backend = backend_factory(_answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                           b"Connection: close\r\n\r\nok"))
    proxy = run_http_proxy({"app": [backend.address]})
    with HttpClient(proxy.port, timeout=5.0) as client:
        for i in range(10):
            resp = client.request("GET", f"/c/{i}")
            assert (resp.status, resp.body) == (200, b"ok")
            assert "close" not in (resp.header("Connection") or "").lower()
    assert backend.accepted == 10
    proxy.assert_healthy()


class ClosesWhenIdle:
    """A server with a short keep-alive timeout, as a handler: it answers one
    request (body read) per connection; once the test has its response (a
    ``close_idle`` release) it closes its side (FIN) of the now idle
    connection, then reads until the proxy closes its end too and counts that
    in ``dropped``."""

    def __init__(self) -> None:
        self.close_idle = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.dropped = 0

    def __call__(self, conn: socket.socket, backend: object) -> None:
        head, rest = read_head(conn)
        length = int(head_field(head, b"content-length") or b"0")
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                return
            rest += data
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if not self.close_idle.acquire(timeout=TIMEOUT):
            return
        conn.shutdown(socket.SHUT_WR)
        try:
            while conn.recv(65536):
                pass
        except ConnectionResetError:
            pass                    # closed by the proxy all the same
        with self.lock:
            self.dropped += 1


def test_pooled_connection_closed_by_server_is_not_reused(run_http_proxy, backend_factory) -> None:
    """An idle pooled connection the server closed is dropped at once (the
    pool watches it), so even a POST, which is never retried, gets through.
    Each POST is sent once the proxy has closed its end of the connection the
    server closed, the drop itself (not a pause) ordering the two."""
    server = ClosesWhenIdle()
    backend = backend_factory(server)
    proxy = run_http_proxy({"app": [backend.address]})
    for i in range(4):
        resp = exchange(proxy.port, "POST", f"/p/{i}", body=b"data")
        assert (resp.status, resp.body) == (200, b"ok"), i
        server.close_idle.release()
        wait_until(lambda n=i + 1: server.dropped == n, TIMEOUT,
                   f"the proxy to drop pooled connection #{i + 1} the server closed")
    assert backend.accepted == 4
    assert proxy.totals()["responses_5xx"] == 0


def test_idle_keepalive_client_closed_quietly(run_http_proxy, app: HttpBackend) -> None:
    proxy = run_http_proxy({"app": [app.address]}, timeouts={"idle": 1.0})
    with HttpClient(proxy.port, timeout=5.0) as client:
        assert client.request("GET", "/once").status == 200
        assert client.at_eof(5.0)  # no 408 for a connection between requests
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 5.0, "no session left")


# == 3. header rules =========================================================================
def test_forwarded_headers_added(proxy: HttpProxy, app: HttpBackend) -> None:
    resp = exchange(proxy.port, "GET", "/headers", host="www.test.local:8080",
                    headers=[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
                             ("X-Forwarded-Host", "spoofed.example")])
    assert resp.status == 200
    seen = app.last()
    assert seen.all("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["www.test.local:8080"]
    assert seen.all("Host") == ["www.test.local:8080"]
    vias = seen.all("Via")
    assert vias == [f"1.1 {socket.gethostname()}"]   # server.name unset: the host name
    assert seen.version == "HTTP/1.1"


def test_forwarded_for_without_incoming(proxy: HttpProxy, app: HttpBackend) -> None:
    assert exchange(proxy.port, "GET", "/").status == 200
    assert app.last().all("X-Forwarded-For") == ["127.0.0.1"]


def test_request_hop_by_hop_fields_removed(proxy: HttpProxy, app: HttpBackend) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/headers", headers=[
            ("Connection", "close, X-Secret"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "X-Foo"), ("Proxy-Connection", "keep-alive"),
            ("X-Secret", "s3cr3t"), ("X-Keep", "yes")])
        assert resp.status == 200
        assert client.at_eof()  # Connection: close was honoured on the client side
    seen = app.last()
    names = {n.lower() for n, _ in seen.headers}
    for name in (*HOP_BY_HOP, "x-secret"):
        assert name not in names, f"{name} forwarded: {seen.headers}"
    assert seen.header("X-Keep") == "yes"


def test_h2c_upgrade_dropped(proxy: HttpProxy, app: HttpBackend) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/headers", headers=[
            ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
        assert resp.status == 200  # answered in HTTP/1.1, no 101
        names = {n.lower() for n, _ in app.last().headers}
        assert not names & {"upgrade", "http2-settings", "connection"}, app.last().headers
        follow = client.request("GET", "/after")  # still HTTP/1.1 on this connection
        assert follow.status == 200
        # HTTP2-Settings is dropped even when Connection does not name it.
        client.request("GET", "/headers", headers=[("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
        assert app.last().header("HTTP2-Settings") is None


def test_response_hop_by_hop_fields_removed(proxy: HttpProxy) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/hop")
        assert (resp.status, resp.body) == (200, b"hop")
        assert resp.header("X-Public") == "ok"
        assert not resp.has("Keep-Alive"), resp.raw_head
        assert not resp.has("X-Internal"), resp.raw_head
        assert "x-internal" not in (resp.header("Connection") or "").lower()
        assert client.request("GET", "/after").status == 200


# == 4. routing ================================================================================
ROUTES = [
    {"host": "api.example.com", "path_prefix": "/v1/", "upstream": "api"},
    {"host": "*.example.com", "upstream": "wild"},
    {"path_prefix": "/static/", "upstream": "static"},
]


@pytest.mark.parametrize("host,target,expected", [
    ("api.example.com", "/v1/users", "api"),
    ("api.example.com:8080", "/v1/users", "api"),
    ("API.Example.COM", "/v1/x", "api"),
    ("api.example.com", "/v2/users", "wild"),      # host matches route 1, path does not
    ("www.example.com", "/v1/users", "wild"),
    ("a.b.example.com", "/", "wild"),
    ("example.com", "/v1/users", "app"),           # "*.example.com" needs a subdomain
    ("evilexample.com", "/", "app"),
    ("other.test", "/static/a.css", "static"),
    ("other.test", "/v1/users", "app"),
])
def test_routing(run_http_proxy, http_backend_factory, host: str, target: str,
                 expected: str) -> None:
    backends = {n: http_backend_factory(n) for n in ("app", "api", "wild", "static")}
    proxy = run_http_proxy({n: [b.address] for n, b in backends.items()}, routes=ROUTES,
                           upstream="app")
    resp = exchange(proxy.port, "GET", target, host=host)
    assert resp.status == 200
    assert resp.header("X-Backend") == expected
    for name, backend in backends.items():
        assert backend.snapshot()[2] == (1 if name == expected else 0)


def test_routing_absolute_form_target_wins(run_http_proxy, http_backend_factory) -> None:
    app, api = http_backend_factory("app"), http_backend_factory("api")
    proxy = run_http_proxy({"app": [app.address], "api": [api.address]},
                           routes=[{"host": "api.example.com", "upstream": "api"}], upstream="app")
    resp = exchange(proxy.port, "GET", "http://api.example.com/v1/x?q=1", host="other.test")
    assert resp.status == 200 and resp.header("X-Backend") == "api"
    seen = api.last()
    assert seen.all("Host") == ["api.example.com"]
    assert seen.target == "/v1/x?q=1"  # origin-form upstream


def test_routing_many_requests_one_connection(run_http_proxy, http_backend_factory) -> None:
    """Each request on a keep-alive connection is routed by itself."""
    backends = {n: http_backend_factory(n) for n in ("app", "api", "wild", "static")}
    proxy = run_http_proxy({n: [b.address] for n, b in backends.items()}, routes=ROUTES,
                           upstream="app")
    plan = [("api.example.com", "/v1/a", "api"), ("x.example.com", "/", "wild"),
            ("other", "/", "app"), ("other", "/static/x", "static"),
            ("api.example.com", "/v1/b", "api")] * 3
    with HttpClient(proxy.port) as client:
        for host, target, expected in plan:
            resp = client.request("GET", target, host=host)
            assert resp.header("X-Backend") == expected, (host, target)


# == 5. pipelining =================================================================================
def test_pipelined_requests_answered_in_order(proxy: HttpProxy, app: HttpBackend) -> None:
    data = (build_request("GET", "/p/1") + build_request("POST", "/hash", body=b"abc")
            + build_request("GET", "/p/3"))
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(data)
        first, second, third = (client.read_response() for _ in range(3))
        assert (first.status, first.body) == (200, b"app GET /p/1")
        assert (second.status, second.body) == (200, f"3 {sha256(b'abc')}".encode())
        assert (third.status, third.body) == (200, b"app GET /p/3")
        assert client.request("GET", "/p/4").body == b"app GET /p/4"
    assert [s.target for s in app.requests] == ["/p/1", "/hash", "/p/3", "/p/4"]


def test_pipelined_big_batch(proxy: HttpProxy) -> None:
    data = b"".join(build_request("GET", f"/b/{i}") for i in range(40))
    with HttpClient(proxy.port, timeout=10.0) as client:
        client.send(data)
        for i in range(40):
            assert client.read_response().body == f"app GET /b/{i}".encode()


def test_pipelined_after_spliced_request_body(proxy: HttpProxy, app: HttpBackend) -> None:
    """A request body big enough to be spliced is followed, in the same send,
    by the next pipelined request: not a byte of it may be taken for the body."""
    body = payload(300_000)
    with HttpClient(proxy.port, timeout=10.0) as client:
        client.send(build_request("POST", "/hash", body=body) + build_request("GET", "/p/last"))
        first, second = client.read_response(), client.read_response()
    assert first.body == f"{len(body)} {sha256(body)}".encode()
    assert second.body == b"app GET /p/last"


def test_pipelined_after_spliced_response_body(proxy: HttpProxy, app: HttpBackend) -> None:
    for i in range(5):
        with HttpClient(proxy.port, timeout=4.0) as client:
            client.send(build_request("GET", "/bytes/300000") + build_request("GET", f"/p/{i}"))
            first = client.read_response()
            assert first.body == payload(300_000)
            second = client.read_response()
            assert second.body == f"app GET /p/{i}".encode()


def test_concurrent_clients_get_their_own_responses(proxy: HttpProxy, app: HttpBackend) -> None:
    errors: list[str] = []

    def client_thread(n: int) -> None:
        try:
            with HttpClient(proxy.port, timeout=20.0) as client:
                for i in range(20):
                    if i % 5 == 4:
                        resp = client.request("GET", f"/bytes/{200_000 + n}")
                        ok = resp.body == payload(200_000 + n)
                    else:
                        resp = client.request("GET", f"/t{n}/{i}")
                        ok = resp.body == f"app GET /t{n}/{i}".encode()
                    if resp.status != 200 or not ok:
                        errors.append(f"client {n} request {i}: {resp.status}")
        except (OSError, EOFError) as exc:
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client_thread, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert app.snapshot()[0] <= 8
    proxy.assert_healthy()


# == 6. error pages ===================================================================================
def test_backend_down_502_and_proxy_stays_up(run_http_proxy) -> None:
    proxy = run_http_proxy({"app": {"servers": [dead_address()], "retries": 1}})
    workers = proxy.worker_pids()
    before = proxy.totals()
    for _ in range(5):
        resp, closed = raw_exchange(proxy.port, build_request("GET", "/"))
        assert resp is not None and resp.status == 502
        assert closed
    after = proxy.totals()
    assert after["responses_5xx"] - before["responses_5xx"] == 5
    assert after["upstream_connect_errors"] - before["upstream_connect_errors"] >= 5
    proxy.assert_healthy(workers)


def test_all_servers_down_with_retries_502(run_http_proxy) -> None:
    proxy = run_http_proxy({"app": {"servers": [dead_address(), dead_address()], "retries": 1}})
    workers = proxy.worker_pids()
    before = proxy.totals()
    for _ in range(4):
        assert exchange(proxy.port, "GET", "/").status == 502
    after = proxy.totals()
    assert after["responses_5xx"] - before["responses_5xx"] == 4
    assert after["upstream_connect_errors"] - before["upstream_connect_errors"] >= 4
    proxy.assert_healthy(workers)




def test_upstream_read_timeout_504(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(silent_handler)
    proxy = run_http_proxy({"app": {"servers": [backend.address], "retries": 0}},
                           timeouts={"upstream_read": 1.0, "idle": 2.0})
    before = proxy.totals()
    with HttpClient(proxy.port, timeout=10.0) as client:
        client.send(build_request("GET", "/slow"))
        resp = client.read_response()
        assert resp.status == 504
        assert client.at_eof()
    assert proxy.totals()["responses_5xx"] - before["responses_5xx"] == 1
    # The proxy gave the upstream connection up (the backend sees its close).
    wait_until(lambda: not backend._conns, 5.0, "upstream connection closed")
    proxy.assert_healthy()


def test_garbage_from_backend_502(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(garbage_handler)
    proxy = run_http_proxy({"app": [backend.address]})
    before = proxy.totals()
    resp, closed = raw_exchange(proxy.port, build_request("GET", "/"))
    assert resp is not None and resp.status == 502 and closed
    assert b"HELLO" not in resp.raw_head + resp.body
    assert proxy.totals()["responses_5xx"] - before["responses_5xx"] == 1
    proxy.assert_healthy()


def test_backend_closing_without_answer_502(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(close_without_answer_handler)
    proxy = run_http_proxy({"app": [backend.address]})
    resp, closed = raw_exchange(proxy.port, build_request("GET", "/"))
    assert resp is not None and resp.status == 502 and closed
    proxy.assert_healthy()


class Blackhole:
    """A loopback address whose accept queue is full: the kernel drops new
    SYNs, so a connect to it neither succeeds nor fails (a connect timeout)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self.listener.getsockname())
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in (*self.fillers, self.listener):
            sock.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    yield hole
    hole.close()


def test_connect_timeout_tries_next_server(run_http_proxy, http_backend_factory,
                                           blackhole: Blackhole) -> None:
    live = http_backend_factory("live")
    proxy = run_http_proxy({"app": {"servers": [blackhole.address, live.address], "retries": 1}},
                           timeouts={"connect": 0.5, "idle": 2.0})
    with HttpClient(proxy.port, timeout=8.0) as client:
        resp = client.request("GET", "/after-timeout")
    assert (resp.status, resp.header("X-Backend")) == (200, "live")
    assert proxy.totals()["upstream_connect_timeouts"] >= 1


def test_connect_timeout_single_server_502(run_http_proxy, blackhole: Blackhole) -> None:
    proxy = run_http_proxy({"app": {"servers": [blackhole.address], "retries": 0}},
                           timeouts={"connect": 0.5, "idle": 2.0})
    resp, closed = raw_exchange(proxy.port, build_request("GET", "/"), timeout=8.0)
    assert resp is not None and resp.status == 502 and closed


def _answer_with(raw: bytes):
    """A raw backend answering any one request with ``raw``, then closing."""
    def handler(conn: socket.socket, backend: object) -> None:
        read_head(conn)
        conn.sendall(raw)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
    return handler


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
], ids=["cl-and-te", "cl-list", "obs-fold", "bare-lf", "unrequested-101", "bad-chunk-size",
        "bad-status"])
def test_malformed_upstream_response_502(run_http_proxy, backend_factory, raw: bytes) -> None:
    backend = backend_factory(_answer_with(raw))
    proxy = run_http_proxy({"app": [backend.address]})
    try:
        resp, closed = raw_exchange(proxy.port, build_request("GET", "/"))
    except (ConnectionResetError, EOFError):
        resp, closed = None, True
    if b"bad-chunk" in raw or b"zz\r\n" in raw:
        # The head was valid and may already be on its way: an abort is the
        # only honest end, never a complete response.
        assert resp is None or resp.status == 502
    else:
        assert resp is not None and resp.status == 502 and closed
    proxy.assert_healthy()


# == 7. strict parsing / smuggling ===================================================================
@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpProxy, HttpBackend]]:
    """One proxy and backend for the many parsing cases (they only read counts)."""
    backend = HttpBackend("strict")
    runner = HttpProxyRunner(tmp_path_factory.mktemp("strict"))
    try:
        proxy = runner.start({"app": [backend.address]})
        (worker,) = proxy.worker_pids()
        assert exchange(proxy.port, "GET", "/warm-up").status == 200
        fds = psutil.Process(worker).num_fds()
        yield proxy, backend
        wait_until(lambda: proxy.totals()["conn_active"] == 0, 5.0, "no session left")
        proxy.assert_healthy([worker])
        # No descriptor leaked by all the rejected requests (pooled upstream
        # connections may come and go: a little slack).
        assert psutil.Process(worker).num_fds() <= fds + 2
    finally:
        runner.stop_all()
        backend.close()


H = "Host: a.test\r\n"
SMUGGLING = [
    ("cl-and-te", f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG", 400),
    ("te-xchunked", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-twice", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-two-fields", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-then-gzip", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip-chunked", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te-http10", f"POST / HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("cl-list-differs", f"POST / HTTP/1.1\r\n{H}Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("cl-two-fields", f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl-plus", f"POST / HTTP/1.1\r\n{H}Content-Length: +5\r\n\r\nhello", 400),
    ("cl-minus", f"POST / HTTP/1.1\r\n{H}Content-Length: -1\r\n\r\n", 400),
    ("cl-empty", f"POST / HTTP/1.1\r\n{H}Content-Length: \r\n\r\n", 400),
    ("cl-hex", f"POST / HTTP/1.1\r\n{H}Content-Length: 0x5\r\n\r\nhello", 400),
    ("connection-names-cl", f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nConnection: Content-Length\r\n\r\nhello", 400),
    ("obs-fold", f"GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n", 400),
    ("space-before-colon", f"GET / HTTP/1.1\r\n{H}X-A : b\r\n\r\n", 400),
    ("space-before-first-field", f"GET / HTTP/1.1\r\n {H}\r\n", 400),
    ("no-colon", f"GET / HTTP/1.1\r\n{H}X-A b\r\n\r\n", 400),
    ("underscore-name", f"GET / HTTP/1.1\r\n{H}X_A: b\r\n\r\n", 400),
    ("bare-lf", "GET / HTTP/1.1\nHost: a.test\n\n", 400),
    ("bare-lf-in-field", f"GET / HTTP/1.1\r\n{H}X-A: a\nX-B: b\r\n\r\n", 400),
    ("bare-cr-in-field", f"GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n", 400),
    ("nul-in-value", f"GET / HTTP/1.1\r\n{H}X-A: a\x00b\r\n\r\n", 400),
    ("vt-in-value", f"GET / HTTP/1.1\r\n{H}X-A: a\x0bb\r\n\r\n", 400),
    ("http11-no-host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two-hosts", f"GET / HTTP/1.1\r\n{H}Host: b.test\r\n\r\n", 400),
    ("host-userinfo", "GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", 400),
    ("method-33-bytes", f"{'A' * 33} / HTTP/1.1\r\n{H}\r\n", 501),
    ("request-line-over-8k", f"GET /{'a' * 8200} HTTP/1.1\r\n{H}\r\n", 414),
    ("101-fields", f"GET / HTTP/1.1\r\n{H}" + "".join(f"X-F{i}: v\r\n" for i in range(100)) + "\r\n", 431),
    ("field-line-over-8k", f"GET / HTTP/1.1\r\n{H}X-Big: {'b' * 8200}\r\n\r\n", 431),
    ("connect", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 501),
    ("http09", "GET /\r\n", 400),
    ("bad-version", f"GET / HTTP/1.x\r\n{H}\r\n", 400),
    ("te-unknown-coding", f"POST / HTTP/1.1\r\n{H}Transfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501),
    ("head-over-max-header-bytes", f"GET / HTTP/1.1\r\n{H}" + "".join(f"X-F{i}: {'v' * 1000}\r\n" for i in range(70)) + "\r\n", 431),
    ("too-many-leading-crlf", f"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n{H}\r\n", 400),
]


@pytest.mark.parametrize("name,data,status", SMUGGLING, ids=[c[0] for c in SMUGGLING])
def test_strict_parsing(strict: tuple[HttpProxy, HttpBackend], name: str, data: str,
                        status: int) -> None:
    proxy, backend = strict
    before = backend.snapshot()
    resp, closed = raw_exchange(proxy.port, data.encode("latin-1"))
    assert resp is not None, "closed without an answer"
    assert resp.status == status, resp.raw_head
    assert (resp.header("Connection") or "").lower() == "close"
    assert closed, "connection left open after a framing error"
    after = backend.snapshot()
    assert after[1:] == before[1:], "the backend received the offending request"


@pytest.mark.parametrize("second", [
    f"POST / HTTP/1.1\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    f"POST / HTTP/1.1\r\n{H}Content-Length: 5, 6\r\n\r\nhello!",
    f"GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n",
    "GET /\r\n",
], ids=["cl-te", "cl-list", "obs-fold", "http09"])
def test_pipelined_smuggling_after_valid_request(strict: tuple[HttpProxy, HttpBackend],
                                                 second: str) -> None:
    proxy, backend = strict
    before = backend.snapshot()
    marker = f"/first-{time.monotonic_ns()}"
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(build_request("GET", marker) + second.encode("latin-1"))
        first = client.read_response()
        assert (first.status, first.body) == (200, f"strict GET {marker}".encode())
        bad = client.read_response()
        assert bad.status == 400
        assert client.at_eof()
    after = backend.snapshot()
    assert after[1] - before[1] == 1 and after[2] - before[2] == 1
    assert backend.last().target == marker


def test_smuggled_body_of_valid_request_is_not_a_request(strict: tuple[HttpProxy, HttpBackend]) -> None:
    """A body that looks like a request stays a body (CL framing wins)."""
    proxy, backend = strict
    inner = build_request("GET", "/smuggled")
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("POST", "/hash", body=inner)
        assert resp.body == f"{len(inner)} {sha256(inner)}".encode()
    assert all(s.target != "/smuggled" for s in backend.requests)


@pytest.mark.parametrize("chunks", [
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"00000000000000005\r\nhello\r\n0\r\n\r\n",
    b"5;e=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nContent-Length: 5\r\nX-A : b\r\n\r\n",
], ids=["0x-prefix", "leading-space", "trailing-space", "plus", "bare-lf", "no-crlf-after-data",
        "17-hex-digits", "chunk-ext-over-4k", "bad-trailer-field"])
def test_bad_chunked_body_400(strict: tuple[HttpProxy, HttpBackend], chunks: bytes) -> None:
    proxy, backend = strict
    before = backend.snapshot()
    head = build_request("POST", "/hash", headers=[("Transfer-Encoding", "chunked")])
    resp, closed = raw_exchange(proxy.port, head + chunks)
    assert resp is not None and resp.status == 400
    assert closed
    # The backend may have seen the head (the body streams), never a complete request.
    assert not any(s.complete for s in backend.requests[before[2]:])


def test_bad_chunked_body_not_forwarded_on_pooled_connection(
        run_http_proxy, app: HttpBackend) -> None:
    proxy = run_http_proxy({"app": [app.address]})
    assert exchange(proxy.port, "GET", "/warm-up").status == 200  # leaves a pooled connection
    before = app.snapshot()
    head = build_request("POST", "/hash", headers=[("Transfer-Encoding", "chunked")])
    resp, closed = raw_exchange(proxy.port, head + b"0x5\r\nhello\r\n0\r\n\r\n")
    assert resp is not None and resp.status == 400 and closed
    # Not a pause but a later request through the same worker: it takes the
    # pooled connection if that is still pooled, behind anything the bad request
    # left on it; a connection the proxy closed instead is read to its end by
    # its handler, then forgotten (so at most the pooled one is left open).
    assert exchange(proxy.port, "GET", "/after").status == 200
    wait_until(lambda: len(app.conns) <= 1, TIMEOUT, "the backend to read every closed connection")
    with app.lock:
        assert app.request_lines[before[1]:] == [b"GET /after HTTP/1.1\r\n"], app.request_lines


@pytest.mark.parametrize("fields,expected", [
    ([("Content-Length", "5, 5")], "length"),
    ([("Content-Length", "005")], "length"),
    ([("Transfer-Encoding", "Chunked")], "chunked"),
    ([("Transfer-Encoding", ", chunked")], "chunked"),
], ids=["cl-identical-list", "cl-leading-zeros", "te-case", "te-empty-element"])
def test_framing_normalised(proxy: HttpProxy, app: HttpBackend, fields, expected: str) -> None:
    body = b"hello"
    framed = b"5\r\nhello\r\n0\r\n\r\n" if expected == "chunked" else body
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(build_request("POST", "/hash", headers=fields) + framed)
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, f"5 {sha256(body)}".encode())
        assert client.request("GET", "/after").status == 200
    seen = app.requests[0]
    assert seen.framing == expected
    if expected == "length":
        assert seen.all("Content-Length") == ["5"]
    else:
        assert seen.all("Transfer-Encoding") == ["chunked"] and not seen.all("Content-Length")


def test_obs_text_and_leading_crlf_accepted(proxy: HttpProxy, app: HttpBackend) -> None:
    data = b"\r\n" + build_request("GET", "/t", headers=[("X-Latin", "caf\xe9")])
    resp, _ = raw_exchange(proxy.port, data + build_request("GET", "/end",
                                                            headers=[("Connection", "close")]))
    assert resp is not None and resp.status == 200
    assert app.requests[0].header("X-Latin") == "caf\xe9"  # obs-text passed unchanged


def test_max_forwards(proxy: HttpProxy, app: HttpBackend) -> None:
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("OPTIONS", "/o", headers=[("Max-Forwards", "0")])
        assert resp.status == 200 and resp.has("Allow")
        resp = client.request("TRACE", "/t", headers=[("Max-Forwards", "0")])
        assert resp.status == 200
        assert resp.body.startswith(b"TRACE /t HTTP/1.1\r\n")
        assert app.snapshot()[1] == 0  # both answered by the proxy
        resp = client.request("OPTIONS", "/o", headers=[("Max-Forwards", "3")])
        assert resp.status == 200
    assert app.last().all("Max-Forwards") == ["2"]


def test_upgrade_refused_by_backend_keeps_http(proxy: HttpProxy, app: HttpBackend) -> None:
    """The backend ignores the Upgrade and answers 200: no tunnel, HTTP goes on."""
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/ws", headers=[("Upgrade", "websocket"),
                                                     ("Connection", "Upgrade")])
        assert (resp.status, resp.body) == (200, b"app GET /ws")
        assert app.last().header("Upgrade") == "websocket"
        follow = client.request("GET", "/after")
        assert (follow.status, follow.body) == (200, b"app GET /after")
    assert proxy.totals()["tunnels"] == 0


# == 8. max_body_bytes ================================================================================
@pytest.fixture
def limited(run_http_proxy, app: HttpBackend) -> HttpProxy:
    return run_http_proxy({"app": [app.address]}, limits={"max_body_bytes": 1000})


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_body_too_large_413_without_sending_body(limited: HttpProxy, app: HttpBackend,
                                                  expect: bool) -> None:
    headers = [("Content-Length", "5000")] + ([("Expect", "100-continue")] if expect else [])
    head = build_request("POST", "/hash", headers=headers)
    with HttpClient(limited.port, timeout=3.0) as client:  # < idle: no waiting for a body
        client.send(head)
        resp = client.read_response(skip_interim=False)
        assert resp.status == 413
        assert client.at_eof(3.0)
    assert app.snapshot() == (0, 0, 0)


def test_body_within_limit_passes(limited: HttpProxy, app: HttpBackend) -> None:
    body = payload(1000)
    resp = exchange(limited.port, "POST", "/hash", body=body)
    assert (resp.status, resp.body) == (200, f"1000 {sha256(body)}".encode())


def test_chunked_body_over_limit_413(limited: HttpProxy, app: HttpBackend) -> None:
    head = build_request("POST", "/hash", headers=[("Transfer-Encoding", "chunked")])
    body = b"".join(encode_chunked(payload(5000)))
    resp, closed = raw_exchange(limited.port, head + body)
    assert resp is not None and resp.status == 413 and closed
    assert all(not s.complete for s in app.requests)


# == 9. Expect: 100-continue ==============================================================================
def test_expect_100_continue_passes_through(run_http_proxy, backend_factory) -> None:
    rec = Recorder()
    backend = backend_factory(continue_handler(rec))
    proxy = run_http_proxy({"app": [backend.address]})
    body = payload(100_000)
    head = build_request("POST", "/upload", headers=[("Content-Length", str(len(body))),
                                                     ("Expect", "100-continue")])
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(head)
        interim = client.read_response(skip_interim=False)
        assert interim.status == 100
        client.send(body)
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, f"{len(body)} {sha256(body)}".encode())
    wait_until(lambda: len(rec.events) >= 2, 5.0, "the backend's bookkeeping")
    assert rec.events == ["sent 100", "answered"]
    assert b"expect: 100-continue" in rec.heads[0].lower()


def test_interim_103_passed_on(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(_answer_with(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    proxy = run_http_proxy({"app": [backend.address]})
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(build_request("GET", "/"))
        hints = client.read_response(skip_interim=False)
        assert hints.status == 103 and hints.header("Link") == "</a.css>; rel=preload"
        final = client.read_response()
        assert (final.status, final.body) == (200, b"ok")


def test_response_trailers_framing_fields_dropped(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(_answer_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Ok: 1\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"))
    proxy = run_http_proxy({"app": [backend.address]})
    with HttpClient(proxy.port, timeout=5.0) as client:
        resp = client.request("GET", "/")
        assert (resp.status, resp.body) == (200, b"hello")
        assert resp.trailers == [("X-Ok", "1")]
        assert client.request("GET", "/again").status == 200  # the connection is still in step


# == 10. upgrades (WebSocket-style) ===========================================================================
def test_websocket_upgrade_tunnel(run_http_proxy, backend_factory) -> None:
    rec = Recorder()
    backend = backend_factory(websocket_echo_handler(rec))
    proxy = run_http_proxy({"app": [backend.address]})
    before = proxy.totals()["tunnels"]
    head = build_request("GET", "/ws", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")])
    with HttpClient(proxy.port, timeout=10.0) as client:
        client.send(head + b"early")  # bytes right behind the head belong to the tunnel
        resp = client.read_head()
        assert resp.status == 101
        assert (resp.header("Upgrade") or "").lower() == "websocket"
        assert "upgrade" in (resp.header("Connection") or "").lower()

        def recv_exact(n: int) -> bytes:
            while len(client.buf) < n:
                if not client._fill():
                    raise EOFError("tunnel closed")
            return client._take(n)

        assert recv_exact(len(WS_GREETING)) == WS_GREETING
        assert recv_exact(5) == b"early"
        for i in range(10):
            msg = f"message {i}".encode() * (i + 1)
            client.send(msg)
            assert recv_exact(len(msg)) == msg
        big = payload(MiB)
        sender = threading.Thread(target=client.send, args=(big,), daemon=True)
        sender.start()
        echoed = recv_exact(len(big))
        sender.join(10.0)
        assert sha256(echoed) == sha256(big)
        client.sock.shutdown(socket.SHUT_WR)
        assert client.at_eof()
    head_seen = rec.heads[0].lower()
    assert b"upgrade: websocket" in head_seen
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==" in head_seen
    assert proxy.totals()["tunnels"] - before >= 1
    proxy.assert_healthy()


# == 11. slowloris ==============================================================================================
def test_slowloris_closed_while_others_served(proxy: HttpProxy) -> None:
    outcome: dict[str, object] = {}

    def slow() -> None:
        data = build_request("GET", "/slow", headers=[("X-Pad", "p" * 200)])
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3) as s:
            for byte in data[:-1]:
                if time.monotonic() - start > 12.0:
                    outcome["result"] = "still open after 12 s"
                    return
                try:
                    s.sendall(bytes([byte]))
                except OSError:
                    outcome["result"] = "closed"
                    return
                try:
                    got = s.recv(4096)
                except TimeoutError:
                    continue  # 0.3 s and nothing yet: keep dribbling
                except ConnectionResetError:
                    outcome["result"] = "closed"
                    return
                outcome["result"] = "closed" if not got else got.split(b"\r\n", 1)[0].decode()
                return
        outcome["result"] = "whole head sent"

    slow_thread = threading.Thread(target=slow, daemon=True)
    slow_thread.start()
    served = 0
    deadline = time.monotonic() + 15.0
    while slow_thread.is_alive() and time.monotonic() < deadline:
        resp = exchange(proxy.port, "GET", f"/fast/{served}")
        assert resp.status == 200
        served += 1
        time.sleep(0.05)
    slow_thread.join(1.0)
    assert not slow_thread.is_alive()
    assert outcome["result"] in ("closed", "HTTP/1.1 408 Request Timeout"), outcome
    assert served >= 3


def test_partial_head_then_silence_408(run_http_proxy, app: HttpBackend) -> None:
    """SPEC/docstring: client_header expiry on a begun head answers 408."""
    proxy = run_http_proxy({"app": [app.address]}, timeouts={"client_header": 1.0, "idle": 3.0})
    with HttpClient(proxy.port, timeout=8.0) as client:
        client.send(b"GET /partial HTTP/1.1\r\nHost: a")
        resp = client.read_response()
        assert resp.status == 408
        assert client.at_eof()
    assert app.snapshot() == (0, 0, 0)


# == 12. a client vanishing mid-request ==========================================================================
def test_client_disconnect_mid_upload_frees_upstream(run_http_proxy, backend_factory) -> None:
    rec = Recorder()
    backend = backend_factory(upload_sink_handler(rec))
    proxy = run_http_proxy({"app": [backend.address]})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as s:
        s.sendall(build_request("POST", "/upload", headers=[("Content-Length", str(MiB))]))
        s.sendall(payload(10_000))
        wait_until(lambda: rec.body_bytes >= 10_000, 5.0, "the first body bytes upstream")
    assert rec.upload_ended.wait(5.0), "upstream connection still open after the client left"
    assert rec.body_bytes == 10_000
    resp = exchange(proxy.port, "GET", "/next")
    assert (resp.status, resp.body) == (200, b"ok")
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 5.0, "no session left")
    proxy.assert_healthy()


def test_client_half_close_still_gets_response(proxy: HttpProxy) -> None:
    """A client may send its request and shut its sending side down (FIN):
    the response still comes, then the proxy closes."""
    with HttpClient(proxy.port, timeout=5.0) as client:
        client.send(build_request("GET", "/bytes/300000"))
        client.sock.shutdown(socket.SHUT_WR)
        resp = client.read_response()
        assert resp.status == 200 and resp.body == payload(300_000)
        assert client.at_eof()
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 5.0, "no session left")
    proxy.assert_healthy()


# == 13. access log =================================================================================================
COMBINED = re.compile(
    r'^127\.0\.0\.1 - - \[[^\]]+\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" "(?P<upstream>[^"]*)" '
    r'(?P<rt>\d+\.\d{3}) (?P<ut>\d+\.\d{3}|-)$')


LOG_MARKER = "/access-log-marker"


def _log_lines(proxy: HttpProxy, count: int) -> list[str]:
    """The access log once ``count`` lines are in it, and checked to be all of
    it: once the proxy has closed every connection (a wrong line written at a
    close is written by then), a marker request is logged; a wrong extra line
    would be before the marker's, which must be the last (one worker writes
    the log, in order). Returns the lines without the marker's."""
    path = proxy.access_log
    assert path is not None

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []
    wait_until(lambda: len(lines()) >= count, 5.0, f"{count} access log lines")
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 5.0, "every connection closed")
    assert exchange(proxy.port, "GET", LOG_MARKER).status == 200
    wait_until(lambda: any(LOG_MARKER in line for line in lines()), 5.0, "the marker's log line")
    got = lines()
    assert LOG_MARKER in got[-1] and not any(LOG_MARKER in line for line in got[:-1]), got
    return got[:-1]


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_access_log(run_http_proxy, app: HttpBackend, fmt: str) -> None:
    proxy = run_http_proxy({"app": [app.address]}, access=True, fmt=fmt)
    ua = [("User-Agent", "tester/1.0"), ("Referer", "http://ref.test/")]
    with HttpClient(proxy.port) as client:
        r1 = client.request("GET", "/a?x=1", headers=ua)
        r2 = client.request("POST", "/hash", body=b"x" * 100)
        r3 = client.request("GET", "/status/404")
    assert (r1.status, r2.status, r3.status) == (200, 200, 404)
    resp, _ = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
    assert resp is not None and resp.status == 400
    lines = _log_lines(proxy, 4)
    assert len(lines) == 4, lines
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        by_target = {r["target"]: r for r in records}
        a = by_target["/a?x=1"]
        assert (a["method"], a["status"], a["client"]) == ("GET", 200, "127.0.0.1")
        assert a["user_agent"] == "tester/1.0" and a["referer"] == "http://ref.test/"
        assert a["upstream"] == app.address
        assert a["bytes_sent"] > 0
        assert isinstance(a["request_time"], (int, float)) and a["request_time"] >= 0
        assert by_target["/hash"]["method"] == "POST" and by_target["/hash"]["status"] == 200
        assert by_target["/status/404"]["status"] == 404
        bad = [r for r in records if r["status"] == 400]
        assert len(bad) == 1 and bad[0]["upstream"] == "-"
    else:
        parsed = []
        for line in lines:
            m = COMBINED.match(line)
            assert m, line
            parsed.append(m.groupdict())
        a = next(p for p in parsed if p["request"] == "GET /a?x=1 HTTP/1.1")
        assert a["status"] == "200" and int(a["bytes"]) > 0
        assert (a["referer"], a["agent"]) == ("http://ref.test/", "tester/1.0")
        assert a["upstream"] == app.address
        assert float(a["rt"]) >= 0
        assert any(p["request"] == "POST /hash HTTP/1.1" and p["status"] == "200" for p in parsed)
        assert any(p["request"] == "GET /status/404 HTTP/1.1" and p["status"] == "404"
                   for p in parsed)
        assert any(p["status"] == "400" and p["upstream"] == "-" for p in parsed)


# == 14. balancing and retries ========================================================================================
def test_round_robin_three_backends(run_http_proxy, http_backend_factory) -> None:
    backends = [http_backend_factory(n) for n in ("a", "b", "c")]
    proxy = run_http_proxy({"app": [b.address for b in backends]})
    counts = collections.Counter(exchange(proxy.port, "GET", "/rr").header("X-Backend")
                                 for _ in range(30))
    assert counts == {"a": 10, "b": 10, "c": 10}


def test_round_robin_per_request_on_one_connection(run_http_proxy, http_backend_factory) -> None:
    backends = [http_backend_factory(n) for n in ("a", "b", "c")]
    proxy = run_http_proxy({"app": [b.address for b in backends]})
    with HttpClient(proxy.port) as client:
        counts = collections.Counter(client.request("GET", "/rr").header("X-Backend")
                                     for _ in range(30))
    assert counts == {"a": 10, "b": 10, "c": 10}


def test_retry_dead_then_live(run_http_proxy, http_backend_factory) -> None:
    live = http_backend_factory("live")
    proxy = run_http_proxy({"app": {"servers": [dead_address(), live.address], "retries": 1}})
    for i in range(20):
        resp = exchange(proxy.port, "GET", f"/r/{i}")
        assert (resp.status, resp.header("X-Backend")) == (200, "live"), i
    totals = proxy.totals()
    assert totals["upstream_connect_errors"] >= 1
    assert totals["responses_5xx"] == 0
    proxy.assert_healthy()


# == 15. stats ==========================================================================================================
def test_stats_counters(proxy: HttpProxy, app: HttpBackend) -> None:
    before = proxy.stats()["totals"]
    with HttpClient(proxy.port) as client:
        for i in range(5):
            assert client.request("GET", f"/s/{i}").status == 200
        assert client.request("GET", "/status/404").status == 404
    assert exchange(proxy.port, "POST", "/hash", body=b"abc").status == 200
    made, ok = 7, 6

    def counted() -> bool:
        t = proxy.stats()["totals"]
        return t["hists"]["request_seconds"]["count"] - before["hists"]["request_seconds"]["count"] >= made
    wait_until(counted, 5.0, "request_seconds observations")
    after = proxy.stats()["totals"]
    c0, c1 = before["counters"], after["counters"]
    assert c1["requests"] - c0["requests"] == made
    assert c1["responses_2xx"] - c0["responses_2xx"] == ok
    assert c1["responses_4xx"] - c0["responses_4xx"] == 1
    assert (after["hists"]["request_seconds"]["count"]
            - before["hists"]["request_seconds"]["count"]) == made
    assert c1["bytes_in"] > c0["bytes_in"] and c1["bytes_out"] > c0["bytes_out"]
    metrics = proxy.metrics()
    assert re.search(r'^fastproxy_requests_total(\{[^}]*\})? 7$', metrics, re.MULTILINE), metrics[:2000]
    assert re.search(r'^fastproxy_responses_total\{class="2xx"\} 6$', metrics, re.MULTILINE)
