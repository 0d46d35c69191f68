"""Defects of the previous HTTP engine, each pinned by a test through real sockets:

1. a chunked PUT whose reused upstream connection turned out stale was sent
   again without its body (the retry rule took "no Content-Length" for "no body");
2. OPTIONS/TRACE with ``Max-Forwards: 0`` and a body raised a parser-usage error
   out of the session (a traceback per request, then a 504);
3. an error answer (400/413/431/...) followed by ``close()`` with request bytes
   still unread made the kernel send RST, which can destroy the answer before
   the client reads it: the proxy now closes lingeringly, as nginx does.
"""

from __future__ import annotations

import socket

from tests.conftest import Backend
from tests.integration.http_backends import read_head
from tests.integration.http_helpers import HttpClient, build_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def stale_after_first(conn: socket.socket, backend: Backend) -> None:
    """Answer the first request of a connection and keep it alive; drop the
    second one unanswered, as a server whose keep-alive timer just fired."""
    read_head(conn)
    conn.sendall(OK)
    read_head(conn)


def test_chunked_put_is_not_retried_without_its_body(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(stale_after_first)
    proxy = run_http_proxy({"app": {"servers": [backend.address], "retries": 1}})
    with HttpClient(proxy.port) as client:
        assert client.request("GET", "/warm").status == 200   # the connection stays attached
        client.send(b"PUT /upload HTTP/1.1\r\nHost: test.local\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        resp = client.read_response()
    assert resp.status == 502
    assert backend.accepted == 1   # no second connection carried the PUT (with or without body)
    totals = proxy.totals()
    assert totals["upstream_retries"] == 0
    proxy.assert_healthy()


def test_bodiless_get_on_a_stale_connection_is_retried(run_http_proxy, backend_factory) -> None:
    """The rule's other side: a GET without a body goes again on a fresh connection."""
    backend = backend_factory(stale_after_first)
    proxy = run_http_proxy({"app": {"servers": [backend.address], "retries": 1}})
    with HttpClient(proxy.port) as client:
        assert client.request("GET", "/warm").status == 200
        assert client.request("GET", "/again").status == 200
    assert backend.accepted == 2


def test_max_forwards_zero_with_a_body_is_answered(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(stale_after_first)
    proxy = run_http_proxy({"app": {"servers": [backend.address]}})
    for method in ("OPTIONS", "TRACE"):
        with HttpClient(proxy.port) as client:
            client.send(build_request(method, "/", headers=[("Max-Forwards", "0")],
                                      body=b"x" * 10))
            resp = client.read_response()
            assert resp.status == 200, resp
            assert client.sock.recv(1) == b""   # the unread body closes the connection
    assert backend.accepted == 0
    totals = proxy.totals()
    assert totals["internal_errors"] == 0 and totals["responses_5xx"] == 0
    proxy.assert_healthy()


def test_error_answer_survives_unread_request_bytes(run_http_proxy, backend_factory) -> None:
    """413 at once for a body over the limit, while the client keeps sending it:
    the client reads the whole answer, then a clean EOF, never a reset."""
    backend = backend_factory(stale_after_first)
    proxy = run_http_proxy({"app": {"servers": [backend.address]}},
                           limits={"max_body_bytes": 1000})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: test.local\r\nContent-Length: 200000\r\n\r\n")
        sock.sendall(b"y" * 65536)     # unread by the proxy when it answers
        received = bytearray()
        while True:
            data = sock.recv(65536)    # ConnectionResetError here would be the defect
            if not data:
                break
            received += data
            if b"\r\n\r\n" in received and len(received) > 100:
                sock.sendall(b"y" * 65536)   # still sending after the answer came
    assert received.startswith(b"HTTP/1.1 413 "), bytes(received[:100])
    assert backend.accepted == 0


def test_400_with_pipelined_garbage_is_read_in_full(run_http_proxy, backend_factory) -> None:
    backend = backend_factory(stale_after_first)
    proxy = run_http_proxy({"app": {"servers": [backend.address]}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + b"z" * 100_000)
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    assert received.startswith(b"HTTP/1.1 400 ")
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert len(body) == length   # the whole answer arrived
    assert backend.accepted == 0


def test_one_backend_answer_rewritten_for_each_client(run_http_proxy) -> None:
    """The same response head (remembered by the parser) is rewritten per
    client: keep-alive for HTTP/1.1, close when asked, keep-alive named for 1.0."""
    from tests.integration.http_backends import HttpBackend

    backend = HttpBackend("app")
    try:
        proxy = run_http_proxy({"app": [backend.address]})
        seen = []
        for _ in range(2):   # the second round serves remembered heads
            for version, headers in (("HTTP/1.1", []), ("HTTP/1.1", [("Connection", "close")]),
                                     ("HTTP/1.0", [("Connection", "keep-alive")]),
                                     ("HTTP/1.0", [])):
                with HttpClient(proxy.port) as client:
                    client.send(build_request("GET", "/bytes/10", headers=headers,
                                              version=version))
                    resp = client.read_response()
                    assert resp.status == 200 and len(resp.body) == 10
                    seen.append(resp.header("connection"))
        assert seen[:4] == [None, "close", "keep-alive", "close"]
        assert seen[4:] == seen[:4]
    finally:
        backend.close()
