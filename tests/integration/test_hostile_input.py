"""Hostile input against a running HTTP listener: seeded random mutations of
valid requests. Every connection is answered with a status from SPEC's list
or closed; no worker dies, nothing is counted as an internal error, no
connection or descriptor is left behind."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

import psutil

from tests.conftest import TIMEOUT, wait_until
from tests.integration.http_backends import HttpBackend
from tests.integration.http_helpers import HttpProxy

ALLOWED = {200, 400, 404, 408, 413, 414, 431, 501, 502, 505}
SEEDS = range(400)
BASE = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
]
NASTY = [b"\r", b"\n", b"\x00", b" ", b":", b"\t", b"\x0b", b"chunked", b"Content-Length: 9\r\n",
         b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"0\r\n\r\n", b"\xff", b"HTTP/1.0",
         b"Host: b\r\n", b"ffffffffffffffffff\r\n", b"-1", b"+5", b"GET "]


def mutate(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(BASE))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            del data[pos:pos + rng.randint(1, 8)]
        elif op == 1:
            data[pos:pos] = rng.choice(NASTY)
        elif op == 2 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(data)


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read until the proxy closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (ConnectionResetError, TimeoutError, socket.timeout):
            pass
        return b"".join(chunks)


def statuses(reply: bytes) -> list[int]:
    found = []
    for line in reply.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and line[9:12].isdigit():
            found.append(int(line[9:12]))
    return found


def test_random_mutations_never_hurt_the_worker(run_http_proxy: Callable[..., HttpProxy]) -> None:
    backend = HttpBackend("app")
    try:
        proxy = run_http_proxy({"app": [backend.address]},
                               timeouts={"client_header": 2.0, "idle": 2.0, "upstream_read": 2.0})
        workers = proxy.worker_pids()
        fds_before = psutil.Process(workers[0]).num_fds()
        seen: set[int] = set()
        for seed in SEEDS:
            reply = exchange(proxy.port, mutate(random.Random(seed)))
            codes = statuses(reply)
            assert set(codes) <= ALLOWED, (seed, reply[:200])
            seen.update(codes)
        assert 400 in seen and 200 in seen, seen
        wait_until(lambda: proxy.totals()["conn_active"] == 0, what="all connections closed")
        totals = proxy.totals()
        assert totals["internal_errors"] == 0, proxy.log_text()
        assert totals["client_errors"] > 0
        assert proxy.worker_pids() == workers
        assert psutil.Process(workers[0]).num_fds() <= fds_before + 4
    finally:
        backend.close()
