"""The admin endpoint, served by the master's own loop (never by a worker):

- ``GET /metrics``: Prometheus text format 0.0.4;
- ``GET /stats``: the same figures as JSON;
- ``GET /healthz``: 200 "ok" while at least one worker is ready, else 503.

Every response closes the connection. Requests are read with a size cap
(8 KiB) and a deadline (5 s) so a slow or hostile admin client cannot tie
up the master; ``HEAD`` is answered like ``GET`` without a body.

Only peers in ``admin.allow`` are served: any other connection is closed
as soon as it is accepted, before a byte is read. At most ``MAX_CLIENTS``
admin connections are open at once (more are closed at accept), and the
per-process figures (psutil reads of /proc) are taken at most once per
``PROCESS_INFO_TTL``, however often /metrics and /stats are asked for.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterable

from fastproxy.acl import AddressSet
from fastproxy.config import Address
from fastproxy.listeners import bind_socket
from fastproxy.reactor import EVENT_READ, EVENT_WRITE, Reactor, Timer
from fastproxy.stats.export import to_json, to_prometheus
from fastproxy.stats.procinfo import process_info
from fastproxy.stats.shm import Segment

log = logging.getLogger("fastproxy")

MAX_REQUEST = 8192
REQUEST_DEADLINE = 5.0
MAX_CLIENTS = 64
PROCESS_INFO_TTL = 1.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class AdminServer:
    """Methods for the caller: ``start()``, ``close()``. Raises OSError from bind."""

    def __init__(self, reactor: Reactor, address: Address, segment: Segment,
                 unready_because: Callable[[], str | None], allow: Iterable[str] = ("127.0.0.0/8", "::1/128"),
                 ) -> None:
        self.reactor = reactor
        self.address = address
        self.allow = AddressSet(allow)
        self._procs: tuple[float, frozenset[int], dict[int, dict[str, float]]] | None = None
        self.segment = segment
        self.unready_because = unready_because   # None while serving
        self.sock: socket.socket | None = None
        self.clients: set[_AdminClient] = set()

    def start(self) -> None:
        self.sock = bind_socket(self.address)
        self.reactor.register(self.sock.fileno(), EVENT_READ, self._on_accept)

    def set_allow(self, allow: Iterable[str]) -> None:
        """Peers allowed from now on (a reload); connected clients are left alone."""
        self.allow = AddressSet(allow)

    def _on_accept(self, _mask: int) -> None:
        assert self.sock is not None
        for _ in range(16):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            except OSError as exc:
                log.warning("admin accept failed: %s", exc)
                return
            if addr[0] not in self.allow or len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            client = _AdminClient(self, conn)
            self.clients.add(client)
            client.start()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            why = self.unready_because()
            if why is None:
                return 200, "text/plain", b"ok\n"
            return 503, "text/plain", why.encode() + b"\n"
        if path in ("/metrics", "/stats"):
            snap = self.segment.snapshot()
            procs = self._process_info([w["pid"] for w in snap["workers"]]
                                       + [snap["master_pid"]])
            if path == "/metrics":
                body = to_prometheus(snap, procs).encode()
                return 200, "text/plain; version=0.0.4; charset=utf-8", body
            return 200, "application/json", json.dumps(to_json(snap, procs)).encode()
        return 404, "text/plain", b"not found\n"

    def _process_info(self, pids: list[int]) -> dict[int, dict[str, float]]:
        """``process_info(pids)``, remembered for PROCESS_INFO_TTL (same pids)."""
        now = self.reactor.now
        wanted = frozenset(pids)
        cached = self._procs
        if cached is not None and cached[1] == wanted and now - cached[0] < PROCESS_INFO_TTL:
            return cached[2]
        info = process_info(pids)
        self._procs = (now, wanted, info)
        return info

    def detach(self) -> None:
        """Close the sockets without touching the (shared) selector: after fork."""
        for client in self.clients:
            client.sock.close()
        if self.sock is not None:
            self.sock.close()

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        if self.sock is not None:
            if self.reactor.is_registered(self.sock.fileno()):
                self.reactor.unregister(self.sock.fileno())
            self.sock.close()
            self.sock = None


class _AdminClient:
    def __init__(self, server: AdminServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = b""
        self.timer: Timer | None = None
        self.closed = False

    def start(self) -> None:
        self.server.reactor.register(self.fd, EVENT_READ, self._on_read)
        self.timer = self.server.reactor.call_later(REQUEST_DEADLINE, self.close)

    def _on_read(self, _mask: int) -> None:
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.inbuf += data
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.inbuf) > MAX_REQUEST:
                self._send(431, "text/plain", b"request too large\n", True)
            return
        line = bytes(self.inbuf[:self.inbuf.find(b"\r\n")]).decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(400, "text/plain", b"bad request\n", True)
            return
        try:
            status, ctype, body = self.server.respond(parts[0], parts[1])
        except Exception:
            log.exception("admin request failed")
            status, ctype, body = 503, "text/plain", b"error\n"
        self._send(status, ctype, body, parts[0] != "HEAD")

    def _send(self, status: int, ctype: str, body: bytes, with_body: bool) -> None:
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
        self.outbuf = head + (body if with_body else b"")
        self.server.reactor.modify(self.fd, EVENT_WRITE, self._on_write)
        self._on_write(EVENT_WRITE)

    def _on_write(self, _mask: int) -> None:
        try:
            n = self.sock.send(self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.outbuf = self.outbuf[n:]
        if not self.outbuf:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.server.reactor.is_registered(self.fd):
            self.server.reactor.unregister(self.fd)
        self.sock.close()
        self.server.clients.discard(self)
