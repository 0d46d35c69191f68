"""Shared helpers for the integration tests (loopback only, bounded waits)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import psutil

from tests.conftest import HOST, TIMEOUT, Proxy, config_text, connect, wait_until

MiB = 1 << 20


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; a short read (EOF) returns what came."""
    chunks = []
    got = 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def recv_all(sock: socket.socket, limit: int = 1 << 30, bufsize: int = 1 << 16) -> bytes:
    """Read until EOF (or ``limit`` bytes), ``bufsize`` bytes a ``recv`` at the most."""
    chunks = []
    got = 0
    while got < limit:
        data = sock.recv(bufsize)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def closed_without_data(sock: socket.socket) -> bool:
    """True if the peer closed (FIN or RST) without sending anything."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def roundtrip(port: int, payload: bytes = b"x" * 64, timeout: float = TIMEOUT) -> bytes:
    """Connect, send ``payload``, half-close, read the echo up to EOF."""
    with connect(port, timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, len(payload) + 1)


def echo_ok(port: int, payload: bytes = b"y" * 64) -> bool:
    try:
        return roundtrip(port, payload) == payload
    except OSError:
        return False


def write_proxy_config(proxy: Proxy, upstreams: list[str], **kwargs: object) -> None:
    """Rewrite the proxy's config with the same ports/pidfile (for reload tests)."""
    proxy.config_path.write_text(config_text(
        port=proxy.ports["main"], admin_port=proxy.admin_port, pidfile=proxy.pidfile,
        upstreams=upstreams, **kwargs))  # type: ignore[arg-type]


def second_listener(name: str, port: int, upstream: str = "app") -> str:
    """A ``[[listener]]`` table to pass as ``extra_listener``."""
    return (f'\n[[listener]]\nname = "{name}"\nlisten = "{HOST}:{port}"\n'
            f'mode = "tcp"\nupstream = "{upstream}"\n')


def workers_by_generation(proxy: Proxy) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for w in proxy.stats()["workers"]:
        out.setdefault(int(w["generation"]), []).append(w)
    return out


def wait_generation_serving(proxy: Proxy, generation: int, workers: int,
                            timeout: float = 30.0) -> None:
    """Wait until ``generation`` is current and has ``workers`` running workers."""
    def ready() -> bool:
        snap = proxy.stats()
        if snap["generation"] != generation:
            return False
        running = [w for w in snap["workers"]
                   if w["generation"] == generation and w["state"] == "running"]
        return len(running) == workers
    wait_until(ready, timeout, f"generation {generation} with {workers} running workers")


def wait_only_generation(proxy: Proxy, generation: int, workers: int,
                         timeout: float = 30.0) -> None:
    """Wait until the live worker processes are exactly those of ``generation``."""
    def only() -> bool:
        pids = set(proxy.worker_pids())
        current = {int(w["pid"]) for w in proxy.stats()["workers"]
                   if w["generation"] == generation and w["state"] == "running"}
        return len(current) == workers and pids == current
    wait_until(only, timeout, f"only generation {generation} workers left")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


class Load:
    """A thread opening one short echo connection after another.

    Each connection sends 64 distinct bytes, half-closes and must read the
    same 64 bytes then EOF; anything else (refused, reset, wrong bytes,
    timeout) is recorded in ``failures``. Bounded by ``max_connections``
    and ``max_seconds``.
    """

    def __init__(self, port: int, pause: float = 0.003, max_connections: int = 3000,
                 max_seconds: float = 40.0, timeout: float = TIMEOUT) -> None:
        self.port = port
        self.pause = pause
        self.max_connections = max_connections
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout * 2)
        assert not self._thread.is_alive(), "load thread did not stop"

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        target = self.done + count
        wait_until(lambda: self.done >= target or not self._thread.is_alive(),
                   timeout, f"{count} more load connections")

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and i < self.max_connections and time.monotonic() < deadline:
            payload = (f"{i:08d}".encode() * 8)[:64]
            try:
                got = roundtrip(self.port, payload, self.timeout)
                if got != payload:
                    self.failures.append(f"#{i}: wrong bytes {got[:80]!r}")
            except OSError as exc:
                self.failures.append(f"#{i}: {type(exc).__name__}: {exc}")
            i += 1
            self.done = i
            time.sleep(self.pause)


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def tmp_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
