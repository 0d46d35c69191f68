"""Keep-alive load generator for answers without a body (HEAD), for bench/bench.py.

wrk cannot measure HEAD: its parser is never told the request was a HEAD, so
it waits for the ``Content-Length`` bytes that never come. This client keeps
``--connections`` keep-alive connections, each with one request outstanding:
send the request, read until the blank line that ends the answer's head, record
the latency, send again. The answer must not carry a body (HEAD, 304, 204):
the head is all there is.

    python bench/headload.py --port 18090 --request-file head.req --duration 5

With ``--handshake`` it connects, prints ``ready`` and waits for ``go`` on
stdin before the clock starts. Prints one line ``FPBENCH {json}`` with the
fields of the wrk scripts' done(): requests, duration_us, p50/p90/p99/max_us,
errors {connect, read, write, status (non-2xx/3xx), timeout (no answer within
5 s)}. A connection the server closes counts a read error and is reopened, as
in wrk. Only 127.0.0.1 is contacted; the run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time

HOST = "127.0.0.1"
TIMEOUT = 5.0


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request-file", required=True, help="the raw request, sent as is")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--handshake", action="store_true")
    args = parser.parse_args(argv)
    if not (1 <= args.connections <= 1000 and 0 < args.duration <= 600):
        parser.error("--connections 1..1000, --duration 0..600")
    with open(args.request_file, "rb") as fh:
        request = fh.read()

    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    sent: dict[int, float] = {}
    pending: dict[int, bytes] = {}
    latencies: list[float] = []
    clock = time.perf_counter

    def open_one() -> int | None:
        try:
            sock = connect(args.port)
        except OSError:
            errors["connect"] += 1
            return None
        socks[sock.fileno()] = sock
        pending[sock.fileno()] = b""
        ep.register(sock.fileno(), select.EPOLLIN)
        return sock.fileno()

    def send(fd: int) -> None:
        sent[fd] = clock()
        try:
            socks[fd].send(request)  # small: fits the empty send buffer
        except OSError:
            errors["write"] += 1
            drop(fd)

    def drop(fd: int) -> None:
        ep.unregister(fd)
        socks.pop(fd).close()
        sent.pop(fd, None)
        pending.pop(fd, None)

    def reopen(fd: int) -> None:
        """The server closed (or never answered): a new connection, as wrk does."""
        drop(fd)
        new = open_one()
        if new is not None:
            send(new)

    for _ in range(args.connections):
        open_one()
    if args.handshake:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
    start = clock()
    end = start + args.duration
    for fd in list(socks):
        send(fd)
    while True:
        now = clock()
        if now >= end:
            break
        for fd, _ in ep.poll(min(0.1, end - now)):
            sock = socks.get(fd)
            if sock is None:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors["read"] += 1
                reopen(fd)
                continue
            head = pending[fd] + data if pending[fd] else data
            if not head.endswith(b"\r\n\r\n"):
                pending[fd] = head
                continue
            pending[fd] = b""
            done = clock()
            latencies.append(done - sent[fd])
            if head[9:10] not in (b"2", b"3"):
                errors["status"] += 1
            send(fd)
        for fd, t in list(sent.items()):
            if now - t > TIMEOUT:
                errors["timeout"] += 1
                reopen(fd)
    seconds = clock() - start
    for sock in socks.values():
        sock.close()
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)

    out = {
        "requests": len(latencies),
        "duration_us": int(seconds * 1e6),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": int(latencies[-1] * 1e6) if latencies else 0,
        "errors": errors,
        "head_bytes": 0,
        "generated": 0,
    }
    print("FPBENCH " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
