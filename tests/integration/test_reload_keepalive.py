"""Keep-alive clients of an old generation when the proxy reloads (HUP).

- an idle keep-alive connection is closed at once, with a FIN: it used to
  wait for ``idle`` (60 s here), longer than ``graceful_timeout``, and was
  then aborted with a reset;
- a request in flight is answered, with ``Connection: close``, and then the
  connection closes;
- a request that crosses that FIN (sent before the client saw it) meets an
  open socket that drops it: the client reads a clean EOF, which clients
  retry on a new connection; the closed socket used to answer with a reset.
"""

from __future__ import annotations

import signal
import socket
import threading

from tests.conftest import TIMEOUT, wait_until
from tests.integration.http_backends import heads
from tests.integration.http_helpers import HttpClient, HttpProxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Gate:
    """A backend that answers ``/hold`` only once ``open`` is set."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.holding = threading.Event()

    def handler(self, conn: socket.socket, backend: object) -> None:
        for head in heads(conn):
            if head.startswith(b"GET /hold "):
                self.holding.set()
                self.open.wait(TIMEOUT)
            conn.sendall(OK)


def start(run_http_proxy, backend_factory, gate: Gate) -> HttpProxy:
    backend = backend_factory(gate.handler)
    return run_http_proxy({"app": [backend.address]},
                          timeouts={"idle": 60.0, "client_header": 60.0})


def reload_and_wait(proxy: HttpProxy) -> None:
    old = proxy.worker_pids()
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: any(w["state"] == "draining" for w in proxy.stats()["workers"])
               or not set(old) & set(proxy.worker_pids()), TIMEOUT, "the old worker draining")


def test_an_idle_keepalive_client_is_closed_with_a_fin(run_http_proxy,
                                                       backend_factory) -> None:
    proxy = start(run_http_proxy, backend_factory, Gate())
    with HttpClient(proxy.port) as client:
        resp = client.request("GET", "/first")
        assert resp.status == 200 and (resp.header("Connection") or "") != "close"
        reload_and_wait(proxy)
        client.sock.settimeout(TIMEOUT)   # far below idle = 60 s
        assert client.sock.recv(1) == b""   # a FIN; a reset raises ConnectionResetError
    proxy.assert_healthy()


def test_a_request_in_flight_gets_connection_close(run_http_proxy, backend_factory) -> None:
    gate = Gate()
    proxy = start(run_http_proxy, backend_factory, gate)
    with HttpClient(proxy.port) as client:
        assert client.request("GET", "/first").status == 200
        client.send(b"GET /hold HTTP/1.1\r\nHost: test.local\r\n\r\n")
        assert gate.holding.wait(TIMEOUT)
        reload_and_wait(proxy)
        gate.open.set()
        resp = client.read_response()
        assert resp.status == 200 and resp.body == b"ok"
        assert (resp.header("Connection") or "").lower() == "close"
        client.sock.settimeout(TIMEOUT)
        assert client.sock.recv(1) == b""
    proxy.assert_healthy()


def test_a_request_crossing_the_fin_is_not_reset(run_http_proxy, backend_factory) -> None:
    proxy = start(run_http_proxy, backend_factory, Gate())
    with HttpClient(proxy.port) as client:
        assert client.request("GET", "/first").status == 200
        reload_and_wait(proxy)
        client.sock.settimeout(TIMEOUT)
        assert client.sock.recv(1) == b""            # the FIN is here ...
        client.send(b"GET /late HTTP/1.1\r\nHost: test.local\r\n\r\n")   # ... and a request
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as other:
            other.sendall(b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n")
            assert other.recv(12).startswith(b"HTTP/1.1 200")   # (the late bytes have landed)
        client.send(b"GET /later HTTP/1.1\r\nHost: test.local\r\n\r\n")   # no EPIPE: no reset
        assert client.sock.recv(1) == b""
    proxy.assert_healthy()
