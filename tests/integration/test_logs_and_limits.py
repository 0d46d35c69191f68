"""Access-log reopening (USR1, logrotate) and the per-worker connection cap."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from tests.conftest import TIMEOUT, Backend, Proxy, connect, wait_until


def _log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _session(port: int) -> None:
    with connect(port) as s:
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(16) == b"ping"


def test_usr1_reopens_the_access_log(run_proxy: Callable[..., Proxy],
                                     echo_backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    proxy = run_proxy([echo_backend.address], access=str(log))
    port = proxy.ports["main"]
    _session(port)
    wait_until(lambda: len(_log_lines(log)) == 1, what="first access line")
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)                       # what logrotate does
    _session(port)
    wait_until(lambda: len(_log_lines(rotated)) == 2, what="line in the moved file")
    result = proxy.cli("reopen", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr
    wait_until(log.exists, what="the access log reopened at its path")
    _session(port)
    wait_until(lambda: len(_log_lines(log)) == 1, what="a line in the new file")
    assert len(_log_lines(rotated)) == 2
    assert " TCP main 200 4 4 " in _log_lines(log)[0]


def test_max_connections_pauses_accepting(run_proxy: Callable[..., Proxy],
                                          echo_backend: Backend) -> None:
    proxy = run_proxy([echo_backend.address])
    proxy.write_config(proxy.config_path.read_text().replace(
        "graceful_timeout", "max_connections = 3\ngraceful_timeout"))
    assert proxy.cli("reload", "--pidfile", str(proxy.pidfile)).returncode == 0
    port = proxy.ports["main"]
    held = [connect(port) for _ in range(3)]
    try:
        for s in held:                              # each one is being served
            s.sendall(b"held")
            assert s.recv(16) == b"held"
        wait_until(lambda: proxy.totals()["conn_active"] == 3, what="three active")
        waiting = connect(port)                     # queued by the kernel, not served
        waiting.settimeout(0.5)
        waiting.sendall(b"wait")
        try:
            early = waiting.recv(16)
        except (TimeoutError, socket.timeout):
            early = b""
        assert early == b"", "a fourth connection was served over max_connections"
        assert proxy.totals()["accept_paused"] >= 1
        held.pop().close()                          # room for one more
        waiting.settimeout(TIMEOUT)
        assert waiting.recv(16) == b"wait"
        waiting.close()
    finally:
        for s in held:
            s.close()
    wait_until(lambda: proxy.totals()["conn_active"] == 0, what="all closed")
