"""Bulk-transfer backend and client for bench/tcp_bench.py.

Both sides are written so that they are *not* the bottleneck of a proxy
benchmark: bytes are sent with ``os.sendfile`` from a memfd (page references,
no copy through user space) and drained with ``os.splice`` into a pipe whose
other end is spliced into ``/dev/null``.

Wire protocol (one transfer per TCP connection, no reliance on half-close so
that every proxy behaves the same):

* client sends a 9-byte header ``struct.pack("!cQ", mode, nbytes)``;
* mode ``b"U"`` (upload, client -> backend): the client then sends ``nbytes``;
  the backend drains exactly ``nbytes`` and replies with 8 bytes
  ``struct.pack("!Q", nbytes)`` (the acknowledgement stops the client clock);
* mode ``b"D"`` (download, backend -> client): the backend sends ``nbytes``
  and closes; the client stops its clock when the last byte has arrived.

Usage::

    python bench/bulkio.py server --port 18000
    python bench/bulkio.py client --port 18080 --direction up --bytes 1073741824

With ``--handshake`` the client connects, prints ``ready`` and waits for a
``go`` line on stdin before it starts the clock, so that the harness can take
its CPU snapshots around the transfer alone (not around Python start-up).

The client prints one JSON object: ``{"direction", "bytes", "seconds"}``.
Sockets stay blocking on purpose (a Python socket timeout would make the fd
non-blocking and break ``os.splice``); the harness bounds run time by killing
the client process.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct("!cQ")
ACK = struct.Struct("!Q")
SOURCE_SIZE = 16 * 1024 * 1024  # memfd the data is sent from, reused cyclically
PIPE_SIZE = 1024 * 1024
UPLOAD = b"U"
DOWNLOAD = b"D"


def make_source(size: int = SOURCE_SIZE) -> int:
    """Return a memfd of ``size`` bytes of non-zero data (sendfile source)."""
    fd = os.memfd_create("bulkio-source")
    chunk = (b"fastproxy-bench-" * 65536)[: 1024 * 1024]
    written = 0
    while written < size:
        written += os.write(fd, chunk[: min(len(chunk), size - written)])
    return fd


def send_from(sock: socket.socket, source_fd: int, nbytes: int) -> None:
    """Send ``nbytes`` from ``source_fd`` (cycling over it) with sendfile."""
    remaining = nbytes
    offset = 0
    while remaining:
        count = min(remaining, SOURCE_SIZE - offset)
        sent = os.sendfile(sock.fileno(), source_fd, offset, count)
        if sent == 0:
            raise ConnectionError("peer closed during sendfile")
        remaining -= sent
        offset = (offset + sent) % SOURCE_SIZE


class Drain:
    """Discard bytes from a socket via splice(socket -> pipe -> /dev/null)."""

    def __init__(self) -> None:
        self.pipe_r, self.pipe_w = os.pipe()
        try:
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # keep the default pipe size
        self.devnull = os.open(os.devnull, os.O_WRONLY)

    def close(self) -> None:
        for fd in (self.pipe_r, self.pipe_w, self.devnull):
            os.close(fd)

    def drain(self, sock: socket.socket, nbytes: int) -> None:
        """Consume exactly ``nbytes`` from ``sock``."""
        remaining = nbytes
        while remaining:
            moved = os.splice(sock.fileno(), self.pipe_w, min(remaining, PIPE_SIZE))
            if moved == 0:
                raise ConnectionError(f"peer closed with {remaining} bytes outstanding")
            remaining -= moved
            while moved:
                moved -= os.splice(self.pipe_r, self.devnull, moved)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed before a full message")
        data += chunk
    return data


# --------------------------------------------------------------------- server


def handle(conn: socket.socket, source_fd: int) -> None:
    with conn:
        try:
            mode, nbytes = HEADER.unpack(recv_exact(conn, HEADER.size))
        except (ConnectionError, OSError):
            return  # readiness probes connect and close without a header
        try:
            if mode == UPLOAD:
                drain = Drain()
                try:
                    drain.drain(conn, nbytes)
                finally:
                    drain.close()
                conn.sendall(ACK.pack(nbytes))
            elif mode == DOWNLOAD:
                send_from(conn, source_fd, nbytes)
        except (ConnectionError, OSError) as exc:
            print(f"bulkio server: transfer aborted: {exc}", file=sys.stderr)


def serve(host: str, port: int) -> None:
    source_fd = make_source()
    listener = socket.create_server((host, port), backlog=128, reuse_port=False)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn, source_fd), daemon=True).start()


# --------------------------------------------------------------------- client


def wait_for_go() -> None:
    """Tell the harness we are connected and idle; block until it says go."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("bulkio client: no 'go' from the harness")


def run_client(
    host: str, port: int, direction: str, nbytes: int, handshake: bool = False
) -> dict[str, object]:
    mode = UPLOAD if direction == "up" else DOWNLOAD
    source_fd = make_source() if mode == UPLOAD else -1
    drain = Drain() if mode == DOWNLOAD else None
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handshake:
            wait_for_go()
        start = time.perf_counter()
        sock.sendall(HEADER.pack(mode, nbytes))
        if mode == UPLOAD:
            send_from(sock, source_fd, nbytes)
            acked = ACK.unpack(recv_exact(sock, ACK.size))[0]
            if acked != nbytes:
                raise ConnectionError(f"backend acknowledged {acked} of {nbytes} bytes")
        else:
            assert drain is not None
            drain.drain(sock, nbytes)
        seconds = time.perf_counter() - start
    if drain is not None:
        drain.close()
    return {"direction": direction, "bytes": nbytes, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, required=True)
    cli = sub.add_parser("client")
    cli.add_argument("--host", default="127.0.0.1")
    cli.add_argument("--port", type=int, required=True)
    cli.add_argument("--direction", choices=("up", "down"), required=True)
    cli.add_argument("--bytes", type=int, required=True)
    cli.add_argument(
        "--handshake",
        action="store_true",
        help="after connecting print 'ready' and wait for 'go' on stdin",
    )
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host != "::1":
        parser.error("bulkio only talks to loopback addresses")
    if args.cmd == "server":
        serve(args.host, args.port)
        return 0
    result = run_client(args.host, args.port, args.direction, args.bytes, args.handshake)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
