"""HTTP/1.1 bulk-download client for bench/bench.py (the reverse `download` scenario).

Sends ``GET PATH`` ``--count`` times, one after the other, over one
keep-alive connection (a new one only if the server closes), and reads each
body with ``recv_into`` into one reused 1 MiB buffer: no per-byte Python
work, no allocation per read. The body must be framed by Content-Length
(nginx serves the static file that way and every proxy under test keeps it);
a chunked or unframed response is reported as an error rather than guessed.

    python bench/http_download.py --port 18090 --path /big --count 4

With ``--handshake`` the client connects, prints ``ready`` and waits for a
``go`` line on stdin before it starts the clock, so the harness can take its
CPU snapshots around the transfers only. Prints one JSON object:
``{"bytes", "seconds", "requests", "connections", "statuses"}``; exits 1 with
a message on stderr on any protocol error. Only 127.0.0.1 is ever contacted;
every socket operation has a timeout and the harness also kills the process
after its own deadline.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

HOST = "127.0.0.1"
BUFSIZE = 1 << 20
MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    pass


def read_head(sock: socket.socket, pending: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """Read one response head; return (status, headers, body bytes already read)."""
    while b"\r\n\r\n" not in pending:
        if len(pending) > MAX_HEAD:
            raise ProtocolError("response head larger than 64 KiB")
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before the response head")
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0][:100]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def download(sock: socket.socket, path: str, view: memoryview) -> tuple[int, int, bool]:
    """One GET; returns (status, body bytes, server keeps the connection)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: */*\r\n\r\n".encode())
    status, headers, rest = read_head(sock, bytearray())
    if b"content-length" not in headers:
        te = headers.get(b"transfer-encoding", b"-").decode(errors="replace")
        raise ProtocolError(f"status {status}: no Content-Length (Transfer-Encoding {te})")
    length = int(headers[b"content-length"])
    if len(rest) > length:
        raise ProtocolError("more bytes than Content-Length before the next request")
    remaining = length - len(rest)
    size = len(view)
    while remaining:
        n = sock.recv_into(view, min(size, remaining))
        if not n:
            raise ProtocolError(f"connection closed with {remaining} body bytes missing")
        remaining -= n
    keep = headers.get(b"connection", b"").lower() != b"close"
    return status, length, keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/big")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="per socket operation")
    parser.add_argument("--handshake", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 1000:
        parser.error("--count must be 1..1000")

    buf = bytearray(BUFSIZE)
    view = memoryview(buf)
    sock = socket.create_connection((HOST, args.port), timeout=args.timeout)
    connections = 1
    if args.handshake:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
    total = 0
    statuses: list[int] = []
    try:
        t0 = time.perf_counter()
        for i in range(args.count):
            status, nbytes, keep = download(sock, args.path, view)
            statuses.append(status)
            total += nbytes
            if not keep and i + 1 < args.count:
                sock.close()
                sock = socket.create_connection((HOST, args.port), timeout=args.timeout)
                connections += 1
        seconds = time.perf_counter() - t0
    except (OSError, ProtocolError, ValueError) as exc:
        print(f"http_download: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    print(
        json.dumps(
            {
                "bytes": total,
                "seconds": seconds,
                "requests": args.count,
                "connections": connections,
                "statuses": statuses,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
