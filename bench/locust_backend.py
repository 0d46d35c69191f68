#!/usr/bin/env python3
"""Tiny HTTP/1.1 backend for bench/locustfile.py (no nginx needed).

    python bench/locust_backend.py --port 9000

Routes (keep-alive, Content-Length framing everywhere):

* ``GET /1k``   1024 bytes
* ``GET /1m``   1 MiB (1048576 bytes)
* ``POST /echo`` reads the body (Content-Length, at most 16 MiB) and answers
  JSON ``{"length": N, "sha256": "<hex>"}``
* ``GET /healthz`` ``ok``

The bodies of /1k and /1m are a fixed pattern (``body(n)`` below) so that a
client can check every byte. Standard library only: ``ThreadingHTTPServer``,
one thread per connection. Binds 127.0.0.1 only; prints
``listening on 127.0.0.1:PORT`` once it accepts connections (``--port 0``
picks a free port). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
MAX_BODY = 16 * 1024 * 1024
READ_CHUNK = 256 * 1024


def body(n: int) -> bytes:
    """The deterministic payload of ``n`` bytes served by the GET routes."""
    pattern = b"fastproxy-locust-0123456789abcdef\n"
    return (pattern * (n // len(pattern) + 1))[:n]


PAYLOADS = {"/1k": body(1024), "/1m": body(1024 * 1024), "/healthz": b"ok\n"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "locust-backend"
    timeout = 60  # idle keep-alive connections do not keep a thread forever
    # head and body are two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK of the head (~40 ms per small response)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log: it would cost more than the request

    def reply(self, status: int, payload: bytes, ctype: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:
        payload = PAYLOADS.get(self.path.split("?", 1)[0])
        if payload is None:
            self.reply(404, b"not found\n", "text/plain")
        else:
            self.reply(200, payload)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/echo":
            self.discard_body()
            self.reply(404, b"not found\n", "text/plain")
            return
        length = self.content_length()
        if length is None:
            self.close_connection = True
            self.reply(411 if "Content-Length" not in self.headers else 400, b"bad length\n")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self.reply(413, b"too large\n", "text/plain")
            return
        digest = hashlib.sha256()
        left = length
        while left:
            chunk = self.rfile.read(min(READ_CHUNK, left))
            if not chunk:
                self.close_connection = True
                return  # client went away mid-body
            digest.update(chunk)
            left -= len(chunk)
        answer = json.dumps({"length": length, "sha256": digest.hexdigest()}).encode()
        self.reply(200, answer, "application/json")

    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None or not value.isdigit():
            return None
        return int(value)

    def discard_body(self) -> None:
        length = self.content_length()
        if length is None or length > MAX_BODY:
            self.close_connection = True
            return
        while length:
            chunk = self.rfile.read(min(READ_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="backend for bench/locustfile.py")
    parser.add_argument("--port", type=int, default=9000, help="0 = any free port")
    args = parser.parse_args(argv)
    server = Server((HOST, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"listening on {HOST}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
