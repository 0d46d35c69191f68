"""Helpers for the forward-proxy tests (``mode = "forward"``), loopback only.

``ForwardRunner.start(forward={...})`` writes a config with one forward
listener (``"fwd"``) and a ``[forward]`` table, starts a real master the way
``http_helpers.HttpProxyRunner`` does, and ``stop_all()`` stops every master
it started by pid (``http_helpers.MasterRunner``).

Also here: a raw CONNECT client (``open_tunnel``), ``passwd_line`` (runs
``python -m fastproxy passwd NAME``), a TLS echo server and an HTTP backend
that records the peer address of every connection it accepts.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import HOST, TIMEOUT, Backend, free_port, wait_until
from tests.integration.helpers import recv_all
from tests.integration.http_backends import HttpBackend, Seen, _Handler, _Server
from tests.integration.http_helpers import HttpClient, HttpProxy, MasterRunner, Response

MiB = 1 << 20

# What the tests' [forward] starts from: loopback clients, loopback destinations allowed.
BASE_FORWARD: dict[str, Any] = {
    "allow_clients": ["127.0.0.0/8", "::1/128"],
    "connect_ports": [443],
    "deny_destinations": ["private", "loopback", "link-local"],
    "allow_destinations": ["127.0.0.0/8"],
    "dns_cache_ttl": 30.0,
    "source_addresses": [],
    "users": {},
    "anonymity": "elite",
    "upstream_proxies": [],
    "rotation": "round_robin",
}


def toml_value(value: Any) -> str:
    """A Python value as TOML (strings JSON-quoted: valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(value)


def forward_config_text(*, port: int, admin_port: int, pidfile: Path, forward: dict[str, Any],
                        access: str = "off", workers: int = 1,
                        timeouts: dict[str, float] | None = None) -> str:
    times = {"client_header": 5.0, "idle": 10.0, "connect": 2.0, "upstream_read": 10.0,
             **(timeouts or {})}
    lines = [f"{key} = {toml_value(value)}" for key, value in forward.items()]
    return textwrap.dedent(f"""\
        [server]
        workers = {workers}
        pidfile = "{pidfile}"
        graceful_timeout = 5

        [log]
        access = "{access}"
        format = "json"
        level = "info"

        [admin]
        listen = "{HOST}:{admin_port}"

        [[listener]]
        name = "fwd"
        listen = "{HOST}:{port}"
        mode = "forward"
        timeouts = {toml_value(times)}

        [forward]
        """) + "\n".join(lines) + "\n"


@dataclass
class ForwardProxy(HttpProxy):
    @property
    def port(self) -> int:
        return self.ports["fwd"]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def access_records(self) -> list[dict[str, Any]]:
        assert self.access_log is not None
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def servers(self) -> list[dict[str, Any]]:
        return list(self.stats()["servers"])

    def server(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.servers() if s["name"] == name), None)


class ForwardRunner(MasterRunner[ForwardProxy]):
    """Starts forward-proxy masters in ``workdir``; ``stop_all()`` stops them by pid."""

    def start(self, forward: dict[str, Any] | None = None, *, access: bool = True,
              workers: int = 1, timeouts: dict[str, float] | None = None) -> ForwardProxy:
        n = len(self.started)
        port, admin_port = free_port(), free_port()
        pidfile = self.workdir / f"fwd-{n}.pid"
        config_path = self.workdir / f"fwd-{n}.toml"
        access_path = self.workdir / f"fwd-access-{n}.log" if access else None
        config_path.write_text(forward_config_text(
            port=port, admin_port=admin_port, pidfile=pidfile,
            forward={**BASE_FORWARD, **(forward or {})},
            access=str(access_path) if access_path else "off", workers=workers,
            timeouts=timeouts))
        return self.launch(ForwardProxy, config_path, pidfile, admin_port, {"fwd": port},
                           access_log=access_path, error_log=self.workdir / f"fwd-{n}.log",
                           workers=workers)


# -- clients -------------------------------------------------------------------------------
class SourceClient(HttpClient):
    """``HttpClient`` whose connection to the proxy comes from ``source``
    (any 127.0.0.0/8 address: all of it is loopback on Linux)."""

    def __init__(self, port: int, source: str, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = bytearray()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def proxy_get(proxy_port: int, url: str, *, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
              host: str | None = None, method: str = "GET", body: bytes | None = None) -> Response:
    """One absolute-form request on a fresh connection to the proxy."""
    authority = url.split("/", 3)[2] if "://" in url else url
    with HttpClient(proxy_port) as client:
        return client.request(method, url, host=host or authority, headers=headers, body=body)


def open_tunnel(proxy_port: int, target: str, *, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
                timeout: float = TIMEOUT) -> tuple[socket.socket, int, bytes, bytes]:
    """Send ``CONNECT target`` and read the answer's head.

    Returns (socket, status, head, bytes that followed the head). On a 2xx the
    socket is the tunnel; on anything else the caller closes it."""
    sock = socket.create_connection((HOST, proxy_port), timeout=timeout)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", *(f"{n}: {v}" for n, v in headers)]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    status = int(match.group(1)) if match else 0
    return sock, status, head, rest


def exchange_bulk(sock: socket.socket, data: bytes, expect: int) -> bytes:
    """Send ``data`` (from a thread), half-close, and read ``expect`` bytes or up to EOF."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(data)
            for off in range(0, len(data), 256 * 1024):
                sock.sendall(view[off:off + 256 * 1024])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks, got = [], 0
    try:
        while got < expect:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        sender.join(TIMEOUT * 3)
    assert not sender.is_alive(), "sender stuck"
    assert not errors, errors
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 64 * MiB) -> bytes:
    return recv_all(sock, limit, 1 << 20)


def passwd_line(name: str, password: str, cwd: Path) -> tuple[str, str]:
    """Run ``python -m fastproxy passwd NAME`` with the password on stdin;
    returns (name, hash) parsed from its ``name = "..."`` output line."""
    result = subprocess.run([sys.executable, "-m", "fastproxy", "passwd", name], check=False,
                            input=(password + "\n").encode(), capture_output=True,
                            timeout=60, cwd=cwd)
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    match = re.search(r'^\s*("?)([^"=\s]+)\1\s*=\s*"([^"]+)"\s*$', text, re.MULTILINE)
    assert match is not None, text
    return match.group(2), match.group(3)


# -- backends -------------------------------------------------------------------------------
class _PeerServer(_Server):
    def process_request(self, request: socket.socket, client_address: Any) -> None:
        backend = self.backend
        assert isinstance(backend, PeerBackend)
        with backend.lock:
            backend.peers.append(client_address[0])
        super().process_request(request, client_address)


class _PeerHandler(_Handler):
    def _dispatch(self) -> None:
        if self.path == "/peer":   # which address this connection comes from
            body = self.client_address[0].encode()
            with self.server.backend.lock:
                self.server.backend.requests.append(Seen(self.command, self.path,
                                                         self.request_version, []))
            self._send_bytes(body)
            return
        super()._dispatch()

    def end_headers(self) -> None:
        backend = self.server.backend
        if isinstance(backend, PeerBackend) and backend.close_each:
            self.send_header("Connection", "close")   # also sets close_connection
        super().end_headers()


class PeerBackend(HttpBackend):
    """``HttpBackend`` that also records the peer address of every TCP
    connection it accepts (``peers``), listening on ``host``. With
    ``close_each`` every response says ``Connection: close`` and the
    connection closes, so each request needs a new connection."""

    def __init__(self, name: str = "app", host: str = HOST, close_each: bool = False) -> None:
        self.close_each = close_each
        self.name = name
        self.lock = threading.Lock()
        self.accepted = 0
        self.conns: set[socket.socket] = set()
        self.request_lines: list[bytes] = []
        self.requests = []
        self.peers: list[str] = []
        self.server = _PeerServer((host, 0), _PeerHandler)
        self.server.backend = self
        self.port = int(self.server.server_address[1])
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()


def make_cert(directory: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for CN/SAN localhost made with ``openssl``;
    (cert, key) or None when openssl fails."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    base = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    for extra in (["-addext", "subjectAltName=DNS:localhost"], []):
        result = subprocess.run(base + extra, capture_output=True, timeout=60, check=False)
        if result.returncode == 0:
            return cert, key
    return None


def tls_echo_handler(cert: Path, key: Path) -> Callable[[socket.socket, Backend], None]:
    """A ``tests.conftest.Backend`` handler: TLS server handshake, then echo
    every record's bytes until close_notify/EOF."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))

    def handler(conn: socket.socket, backend: Backend) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            while True:
                try:
                    data = tls.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not data:
                    break
                tls.sendall(data)
    return handler


class HalfCloseRecorder:
    """A ``tests.conftest.Backend`` handler that greets, half-closes its side
    at once, then counts what the peer still sends until EOF (``results``:
    one (bytes, sha256) per connection, set when the peer's EOF arrived)."""

    GREETING = b"greetings, then FIN"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[tuple[int, str]] = []

    def __call__(self, conn: socket.socket, backend: Backend) -> None:
        import hashlib

        conn.sendall(self.GREETING)
        conn.shutdown(socket.SHUT_WR)
        digest, total = hashlib.sha256(), 0
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            digest.update(data)
            total += len(data)
        with self.lock:
            self.results.append((total, digest.hexdigest()))


def counters_delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {n: after[n] - before[n] for n in names}


def wait_counter(proxy: HttpProxy, name: str, minimum: int, timeout: float = TIMEOUT) -> None:
    wait_until(lambda: proxy.totals()[name] >= minimum, timeout, f"{name} >= {minimum}")


__all__ = [
    "BASE_FORWARD",
    "ForwardProxy",
    "ForwardRunner",
    "HalfCloseRecorder",
    "MiB",
    "PeerBackend",
    "SourceClient",
    "basic",
    "counters_delta",
    "exchange_bulk",
    "make_cert",
    "open_tunnel",
    "passwd_line",
    "proxy_get",
    "recv_until_eof",
    "tls_echo_handler",
    "wait_counter",
]
