"""HTTP/1.1 backend servers for the reverse-proxy tests (127.0.0.1 only).

``HttpBackend`` is a real threaded server (``http.server.ThreadingHTTPServer``,
``protocol_version = "HTTP/1.1"``, keep-alive) that records what reaches it:
TCP connections accepted, every request line read (even one it could not
parse), and for each request its method, target, header fields and body.

Paths it serves (any method):

- ``/bytes/N``      N deterministic bytes (``payload(N)``) with Content-Length
                     (HEAD: the same head, no body);
- ``/chunked/N``    the same N bytes, chunked, chunks of varied sizes, some with
                     chunk extensions, and a trailer ``X-Checksum: <sha256>``;
- ``/hash``         ``"<length> <sha256>"`` of the request body it received;
                     ``X-Body-Framing`` says how it came (length/chunked/none);
- ``/headers``      the request's header fields as JSON ``[[name, value], ...]``;
- ``/status/N``     status N (204/304/1xx-free codes), no body for 204 and 304
                     (304 carries a Content-Length, as RFC 9110 §8.6 allows);
- ``/hop``          a response carrying hop-by-hop fields (Keep-Alive, a field
                     named in Connection) next to an end-to-end one;
- anything else    ``"<name> <METHOD> <target>"``.

Every response has ``X-Backend: <name>``.

The raw-socket handlers at the end plug into ``tests.conftest.Backend`` for
the cases that need exact control of the bytes on the wire.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 30.0

# Chunk sizes a chunked response cycles through, and the extensions some carry.
CHUNK_SIZES = (1, 7, 100, 4096, 65536, 3, 300_000, 16_384, 1000, 200_000)
CHUNK_EXTS = (b"", b";ext=1", b"", b';name="quoted value"', b";a=b;c")


@functools.lru_cache(maxsize=16)
def payload(n: int) -> bytes:
    """``n`` deterministic pseudo-random bytes (the same in backend and client)."""
    return random.Random(n).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_plan(n: int) -> list[tuple[int, int, bytes]]:
    """``(offset, size, extension)`` of each chunk of an ``n``-byte chunked body."""
    plan = []
    offset = i = 0
    while offset < n:
        size = min(CHUNK_SIZES[i % len(CHUNK_SIZES)], n - offset)
        plan.append((offset, size, CHUNK_EXTS[i % len(CHUNK_EXTS)]))
        offset += size
        i += 1
    return plan


def encode_chunked(data: bytes, trailers: bytes = b"") -> list[bytes]:
    """``data`` as chunked pieces (one bytes object per chunk) plus the last chunk."""
    pieces = [b"%x%s\r\n%s\r\n" % (size, ext, data[off:off + size])
              for off, size, ext in chunk_plan(len(data))]
    pieces.append(b"0\r\n" + trailers + b"\r\n")
    return pieces


@dataclass
class Seen:
    """One request as the backend received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    framing: str = "none"                     # length | chunked | none
    chunk_exts: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True                     # the whole body arrived

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    backend: HttpBackend

    def process_request(self, request: socket.socket, client_address: object) -> None:
        with self.backend.lock:
            self.backend.accepted += 1
            self.backend.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self.backend.lock:
            self.backend.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a proxy resetting a connection is not worth a traceback on stderr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are written separately
    timeout = SOCKET_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    # Record every request line that reached us, even one we cannot parse.
    def parse_request(self) -> bool:
        backend = self.server.backend
        with backend.lock:
            backend.request_lines.append(self.raw_requestline)
        return super().parse_request()

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    # -- request bodies ------------------------------------------------------------
    def _read_body(self, seen: Seen) -> None:
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te is not None:
            seen.framing = "chunked"
            self._read_chunked(seen)
        elif cl is not None:
            seen.framing = "length"
            n = int(cl)
            seen.body = self.rfile.read(n)
            seen.complete = len(seen.body) == n
            if not seen.complete:
                self.close_connection = True

    def _read_chunked(self, seen: Seen) -> None:
        parts = []
        seen.complete = False
        while True:
            line = self.rfile.readline(65537)
            if not line.endswith(b"\r\n"):
                self.close_connection = True
                return
            size_text, _, ext = line[:-2].partition(b";")
            size = int(size_text, 16)
            if ext:
                seen.chunk_exts.append(b";" + ext)
            if size == 0:
                break
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                self.close_connection = True
                seen.body = b"".join(parts)
                return
            parts.append(data)
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            seen.trailers.append((name, value.strip()))
        seen.body = b"".join(parts)
        seen.complete = True

    # -- responses -----------------------------------------------------------------
    def _dispatch(self) -> None:
        backend = self.server.backend
        seen = Seen(self.command, self.path, self.request_version,
                    [(k, v) for k, v in self.headers.items()])
        self._read_body(seen)
        with backend.lock:
            backend.requests.append(seen)
        if not seen.complete:
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/bytes/"):
            self._send_bytes(payload(int(path[len("/bytes/"):])))
        elif path.startswith("/chunked/"):
            self._send_chunked(payload(int(path[len("/chunked/"):])))
        elif path == "/hash":
            body = f"{len(seen.body)} {sha256(seen.body)}".encode()
            self._send_bytes(body, [("X-Body-Framing", seen.framing)])
        elif path == "/headers":
            self._send_bytes(json.dumps(seen.headers).encode(), [("Content-Type", "application/json")])
        elif path.startswith("/status/"):
            self._send_status(int(path[len("/status/"):]))
        elif path == "/hop":
            self._send_bytes(b"hop", [("Keep-Alive", "timeout=5, max=100"),
                                      ("Connection", "X-Internal"),
                                      ("X-Internal", "secret"),
                                      ("X-Public", "ok")])
        else:
            self._send_bytes(f"{backend.name} {self.command} {self.path}".encode())

    def _head(self, status: int, fields: list[tuple[str, str]]) -> None:
        self.send_response(status)
        self.send_header("X-Backend", self.server.backend.name)
        for name, value in fields:
            self.send_header(name, value)
        self.end_headers()

    def _send_bytes(self, body: bytes, fields: list[tuple[str, str]] | None = None) -> None:
        self._head(200, [*(fields or []), ("Content-Length", str(len(body)))])
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_chunked(self, body: bytes) -> None:
        self._head(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")])
        if self.command == "HEAD":
            return
        trailer = b"X-Checksum: %s\r\n" % sha256(body).encode()
        for piece in encode_chunked(body, trailer):
            self.wfile.write(piece)

    def _send_status(self, status: int) -> None:
        if status == 204:
            self._head(204, [])
        elif status == 304:
            self._head(304, [("ETag", '"v1"'), ("Content-Length", "1234")])
        else:
            body = f"status {status}".encode()
            self._head(status, [("Content-Length", str(len(body)))])
            if self.command != "HEAD":
                self.wfile.write(body)


class HttpBackend:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that records what reaches it."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.lock = threading.Lock()
        self.accepted = 0
        self.conns: set[socket.socket] = set()
        self.request_lines: list[bytes] = []
        self.requests: list[Seen] = []
        self.server = _Server((HOST, 0), _Handler)
        self.server.backend = self
        self.port = int(self.server.server_address[1])
        self.address = f"{HOST}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def snapshot(self) -> tuple[int, int, int]:
        """(connections accepted, request lines read, requests handled)."""
        with self.lock:
            return self.accepted, len(self.request_lines), len(self.requests)

    def last(self) -> Seen:
        with self.lock:
            return self.requests[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(10.0)


# -- raw-socket handlers for tests.conftest.Backend -----------------------------------
def read_head(conn: socket.socket, buf: bytearray | None = None) -> tuple[bytes, bytearray]:
    """Read one message head; returns it (without the blank line) and what followed."""
    buf = bytearray() if buf is None else buf
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            raise ConnectionResetError("EOF inside a head")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    return head, bytearray(rest)


def heads(conn: socket.socket) -> Iterator[bytes]:
    """The request heads a client sends on ``conn``, until it closes."""
    buf = bytearray()
    while True:
        try:
            head, buf = read_head(conn, buf)
        except OSError:
            return
        yield head


def head_field(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def close_delimited_handler(size: int) -> Callable[[socket.socket, object], None]:
    """An HTTP/1.0-style server: a head with no length, ``payload(size)``, close."""
    def handler(conn: socket.socket, backend: object) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        body = payload(size)
        view = memoryview(body)
        for off in range(0, size, 65536):
            conn.sendall(view[off:off + 65536])
        conn.shutdown(socket.SHUT_WR)
    return handler


def silent_handler(conn: socket.socket, backend: object) -> None:
    """Accept, read, never answer; return when the peer closes."""
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def garbage_handler(conn: socket.socket, backend: object) -> None:
    """Answer any request with bytes that are not HTTP."""
    read_head(conn)
    conn.sendall(b"HELLO\r\n\r\n")
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


def close_without_answer_handler(conn: socket.socket, backend: object) -> None:
    """Read a request head, then close without a byte of response."""
    read_head(conn)


class Recorder:
    """Shared state for the raw handlers below (what they saw, when)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heads: list[bytes] = []
        self.events: list[str] = []
        self.body_bytes = 0
        self.upload_ended = threading.Event()

    def add(self, what: str) -> None:
        with self.lock:
            self.events.append(what)


def continue_handler(rec: Recorder) -> Callable[[socket.socket, object], None]:
    """Honour ``Expect: 100-continue``: send 100, read the body, answer its hash."""
    def handler(conn: socket.socket, backend: object) -> None:
        head, rest = read_head(conn)
        with rec.lock:
            rec.heads.append(head)
        length = int(head_field(head, b"content-length") or b"0")
        if head_field(head, b"expect") is not None:
            if rest:
                rec.add("body before 100")
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            rec.add("sent 100")
        body = bytes(rest)
        while len(body) < length:
            data = conn.recv(65536)
            if not data:
                return
            body += data
        answer = f"{len(body)} {sha256(body)}".encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        rec.add("answered")
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
    return handler


WS_GREETING = b"hello-from-server"


def websocket_echo_handler(rec: Recorder) -> Callable[[socket.socket, object], None]:
    """Answer an Upgrade: websocket request with 101 (plus a greeting in the same
    write), then echo raw bytes until EOF."""
    def handler(conn: socket.socket, backend: object) -> None:
        head, rest = read_head(conn)
        with rec.lock:
            rec.heads.append(head)
        if (head_field(head, b"upgrade") or b"").lower() != b"websocket":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: dummy\r\n\r\n" + WS_GREETING)
        if rest:
            conn.sendall(rest)
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    return handler


def upload_sink_handler(rec: Recorder) -> Callable[[socket.socket, object], None]:
    """POST: read the body until EOF or reset (then set ``upload_ended``);
    anything else: a small 200 and close."""
    def handler(conn: socket.socket, backend: object) -> None:
        head, rest = read_head(conn)
        with rec.lock:
            rec.heads.append(head)
        if head.startswith(b"POST "):
            rec.body_bytes += len(rest)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    rec.body_bytes += len(data)
                rec.add("eof")
            except OSError:
                rec.add("reset")
            rec.upload_ended.set()
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    return handler


def close_after_each_handler(conn: socket.socket, backend: object) -> None:
    """Answer one request with a keep-alive-looking response, then close the
    connection anyway (as a server whose keep-alive timeout is zero does)."""
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
