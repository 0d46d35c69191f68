"""PROXY protocol listeners through real sockets: only the addresses in
``proxy_protocol_from`` may send the header, and only a TCP source replaces
the connection's own address (a UNIX or UNSPEC header keeps the real peer).

127.0.0.2 plays the load balancer (every 127/8 address is local on Linux);
the client addresses the headers claim never see a packet.
"""

from __future__ import annotations

import json
import socket
import time

from fastproxy.proxyproto import encode_v1, encode_v2
from tests.conftest import HOST, TIMEOUT
from tests.integration.http_backends import head_field, heads
from tests.integration.http_helpers import HttpProxy

BALANCER = "127.0.0.2"
GET = b"GET /who HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"


def forwarded_for_handler(conn: socket.socket, backend: object) -> None:
    """Answer each request with the X-Forwarded-For it carried."""
    for head in heads(conn):
        chain = head_field(head, b"x-forwarded-for") or b"-"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(chain), chain))


def start(run_http_proxy, backend_factory) -> HttpProxy:
    backend = backend_factory(forwarded_for_handler)
    return run_http_proxy({"app": [backend.address]}, access=True, fmt="json",
                          listener={"proxy_protocol": True,
                                    "proxy_protocol_from": [f"{BALANCER}/32"]})


def exchange(port: int, source: str, data: bytes) -> bytes:
    """Send ``data`` from ``source``; everything the proxy answers until it closes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        try:
            sock.connect((HOST, port))
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return b""   # refused before the whole request went out
        got = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return bytes(got)
            if not chunk:
                return bytes(got)
            got += chunk


def access_clients(proxy: HttpProxy, count: int) -> list[str]:
    """The client field of the first ``count`` access-log records (waits for them)."""
    assert proxy.access_log is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        text = proxy.access_log.read_text() if proxy.access_log.exists() else ""
        lines = text.splitlines()
        if len(lines) >= count:
            return [json.loads(line)["client"] for line in lines]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} access-log lines")


def test_the_balancer_names_the_client(run_http_proxy, backend_factory) -> None:
    proxy = start(run_http_proxy, backend_factory)
    v1 = encode_v1(("203.0.113.7", 40000), ("192.0.2.1", 80))
    v2 = encode_v2(("2001:db8::7", 40001), ("2001:db8::1", 80))
    assert exchange(proxy.port, BALANCER, v1 + GET).endswith(b"\r\n\r\n203.0.113.7")
    assert exchange(proxy.port, BALANCER, v2 + GET).endswith(b"\r\n\r\n2001:db8::7")
    assert access_clients(proxy, 2) == ["203.0.113.7", "2001:db8::7"]
    assert proxy.totals()["proxy_protocol_errors"] == 0
    proxy.assert_healthy()


def test_a_header_from_anyone_else_is_refused(run_http_proxy, backend_factory) -> None:
    proxy = start(run_http_proxy, backend_factory)
    header = encode_v1(("203.0.113.7", 40000), ("192.0.2.1", 80))
    assert exchange(proxy.port, "127.0.0.1", header + GET) == b""
    assert exchange(proxy.port, "127.0.0.3", GET) == b""   # nor a plain request
    totals = proxy.totals()
    assert totals["proxy_protocol_errors"] == 2
    assert totals["requests"] == 0
    # the balancer is still served
    assert exchange(proxy.port, BALANCER, header + GET).endswith(b"203.0.113.7")
    proxy.assert_healthy()


def test_a_unix_or_local_header_keeps_the_real_address(run_http_proxy,
                                                       backend_factory) -> None:
    """A UNIX source is a path, not a client: it must neither break the
    exchange nor reach the log (a newline in it would forge a log line)."""
    proxy = start(run_http_proxy, backend_factory)
    unix = encode_v2(("/run/x\n127.0.0.9 - - forged", 0), ("/run/y", 0))
    local = encode_v2(None, None, command="LOCAL")
    unknown = encode_v1(None, None)
    for header in (unix, local, unknown):
        answer = exchange(proxy.port, BALANCER, header + GET)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"\r\n\r\n" + BALANCER.encode()), answer
    assert access_clients(proxy, 3) == [BALANCER] * 3
    proxy.assert_healthy()
