"""IPv6 listeners and upstreams (::1), and the admin endpoint on IPv6."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, _stop, free_port, wait_until


@pytest.fixture
def echo6() -> tuple[int, threading.Event]:
    sock = socket.socket(socket.AF_INET6)
    try:
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            with conn:
                conn.settimeout(TIMEOUT)
                data = conn.recv(1024)
                conn.sendall(b"v6:" + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1]), stop
    stop.set()
    thread.join(TIMEOUT)
    sock.close()


def test_tcp_mode_over_ipv6(echo6: tuple[int, threading.Event], tmp_path: Path) -> None:
    backend_port, _ = echo6
    port, admin = free_port("::1"), free_port("::1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "run", "--mode", "tcp", "--listen", f"[::1]:{port}",
         "--upstream", f"[::1]:{backend_port}", "--workers", "1", "--admin", f"[::1]:{admin}",
         "--pidfile", str(tmp_path / "v6.pid")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://[::1]:{admin}/healthz", timeout=1) as r:
                    return r.read() == b"ok\n"
            except OSError:
                return False
        wait_until(healthy, what="IPv6 admin endpoint")
        with socket.create_connection(("::1", port), timeout=TIMEOUT) as c:
            c.sendall(b"hello")
            assert c.recv(64) == b"v6:hello"
    finally:
        _stop(proc)
