"""An internal error (a bug) in one session costs that session only.

The worker here carries an injected bug: a tunnel relay that reads "BOOM"
raises. The event loop's last line of defence used to log and count the
exception and leave the relay as it was: its descriptors stayed open and
registered, so the same callback raised again on every pass of the loop
(one log line and one ``internal_errors`` per pass, at full CPU). Now the
error is logged once, that session is closed with both its descriptors,
and every other session, the timeout sweep and new clients carry on.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from tests.conftest import TIMEOUT, connect, wait_until
from tests.integration.http_backends import WS_GREETING, Recorder, websocket_echo_handler
from tests.integration.http_helpers import HttpProxyRunner, ListenerSpec, build_request

BUG_ON_BOOM = """
import socket, sys
from fastproxy import relay
from fastproxy.cli import main

small_read = relay.Relay._small_read

def small_read_with_a_bug(self, half):
    try:
        peek = half.src.recv(4, socket.MSG_PEEK)
    except OSError:
        peek = b""
    if peek == b"BOOM":
        raise RuntimeError("injected bug")
    return small_read(self, half)

relay.Relay._small_read = small_read_with_a_bug
sys.exit(main(sys.argv[1:]))
"""

UPGRADE = build_request("GET", "/ws", headers=[
    ("Upgrade", "websocket"), ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")])


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {data!r}")
        data += chunk
    return data


def open_tunnel(port: int) -> socket.socket:
    """A WebSocket-style tunnel through the proxy, past the 101 and the greeting."""
    sock = connect(port)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv_exact(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert recv_exact(sock, len(WS_GREETING)) == WS_GREETING
    return sock


def echoes(sock: socket.socket, message: bytes) -> bool:
    sock.sendall(message)
    return recv_exact(sock, len(message)) == message


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the proxy closed ``sock`` (EOF or reset) within TIMEOUT."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_an_internal_error_closes_only_its_own_session(tmp_path: Path, backend_factory) -> None:
    backend = backend_factory(websocket_echo_handler(Recorder()))
    runner = HttpProxyRunner(tmp_path)
    runner.python_args = ["-c", BUG_ON_BOOM]
    try:
        short = ListenerSpec("short", "app", timeouts={"idle": 1.0})
        proxy = runner.start({"app": [backend.address]}, timeouts={"idle": 60.0},
                             extra_listeners=[short])
        (worker,) = proxy.worker_pids()
        healthy, victim = open_tunnel(proxy.port), open_tunnel(proxy.port)
        with healthy, victim:
            assert echoes(healthy, b"before") and echoes(victim, b"before")
            fds = psutil.Process(worker).num_fds()

            victim.sendall(b"BOOM and the rest")
            assert closed_by_peer(victim)            # was: left open, the error repeated
            wait_until(lambda: psutil.Process(worker).num_fds() == fds - 2, TIMEOUT,
                       "the victim's client and upstream descriptors to close")
            assert proxy.totals()["internal_errors"] == 1
            assert proxy.log_text().count("injected bug") == 1

            assert echoes(healthy, b"the other session goes on")
            with open_tunnel(proxy.port) as newcomer:
                assert echoes(newcomer, b"new clients are served")
            with connect(proxy.ports["short"]) as idle:   # the sweep still fires
                assert closed_by_peer(idle)
        assert proxy.worker_pids() == [worker]
        assert proxy.totals()["internal_errors"] == 1
    finally:
        runner.stop_all()
