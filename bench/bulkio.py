"""Bulk-transfer backend and client for bench/bench.py (TCP bulk and CONNECT tunnels).

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
    python bench/bulkio.py client --port 18590 --connect 127.0.0.1:18000 --direction down ...

With ``--connect HOST:PORT`` the client talks to a forward proxy: it sends
``CONNECT HOST:PORT``, requires a ``200`` head and no byte after it, and then
speaks the protocol above through the tunnel (the CONNECT and the proxy's
upstream connect happen before ``ready``, outside the measured window).

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


def read_head(sock: socket.socket, limit: int = 16384) -> bytes:
    """Read a response head up to CRLFCRLF; refuse any byte after it (none may come yet)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed before a full response head: {data[:200]!r}")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("response head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    if rest:
        raise ConnectionError(f"{len(rest)} unexpected bytes after the CONNECT response head")
    return head


def open_tunnel(
    host: str, port: int, dest: str | None, timeout: float | None = 10.0
) -> socket.socket:
    """Connect to ``port``; with ``dest`` send CONNECT through it and require a 200.

    Returns a *blocking* socket (no timeout), as os.splice/os.sendfile need."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if dest is not None:
            sock.sendall(f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n".encode())
            status = read_head(sock).split(b"\r\n", 1)[0]
            parts = status.split(b" ", 2)
            if len(parts) < 2 or parts[1] != b"200":
                raise ConnectionError(f"CONNECT {dest} refused: {status.decode(errors='replace')}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def wait_for_go() -> None:
    """Tell the harness we are connected and idle; block until it says go."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("bulkio client: no 'go' from the harness")


def run_client(
    host: str,
    port: int,
    direction: str,
    nbytes: int,
    handshake: bool = False,
    connect: str | None = None,
) -> dict[str, object]:
    mode = UPLOAD if direction == "up" else DOWNLOAD
    source_fd = make_source() if mode == UPLOAD else -1
    drain = Drain() if mode == DOWNLOAD else None
    with open_tunnel(host, port, connect) as sock:
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
    cli.add_argument("--connect", default=None, help="HOST:PORT to CONNECT to through a proxy")
    cli.add_argument(
        "--handshake",
        action="store_true",
        help="after connecting print 'ready' and wait for 'go' on stdin",
    )
    args = parser.parse_args(argv)
    loopback = ("127.", "::1", "[::1]")
    dest = getattr(args, "connect", None) or "127."
    if not args.host.startswith(loopback) or not dest.startswith(loopback):
        parser.error("bulkio only talks to loopback addresses")
    if args.cmd == "server":
        serve(args.host, args.port)
        return 0
    result = run_client(
        args.host, args.port, args.direction, args.bytes, args.handshake, args.connect
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
