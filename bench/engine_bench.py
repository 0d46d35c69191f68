"""The HTTP engine's own cost: Python µs per exchange, per message shape, in one process.

The reverse mode's engine runs on a real reactor, but its client and upstream
connections are ``socket.socketpair()`` ends driven by this script (no
loopback TCP, no other process): the upstream end is put in the worker's idle
pool, so every exchange takes it from there or from the client's attachment,
as a kept-alive connection would be in production. Per shape the script sends
N requests one at a time and reports process CPU per exchange, minus what the
same socket calls cost with no proxy in between (the "harness" line).

    python bench/engine_bench.py [--count 20000] [--repeat 3] [--shapes get,post,...]

Heads vary where users' heads vary (``get-varied``: a different target, user
agent, cookie and referer every time), so a cache of parsed heads would not
help. Traffic never leaves the process.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import time
from collections.abc import Callable

from fastproxy import config
from fastproxy.context import WorkerContext
from fastproxy.modes.reverse import ReverseMode
from fastproxy.reactor import Reactor
from fastproxy.stats.shm import Segment

CONFIG = """
[log]
access = "off"
[[listener]]
name = "web"
listen = "127.0.0.1:1"
mode = "http"
upstream = "app"
[upstream.app]
servers = ["127.0.0.1:1"]
keepalive = 64
"""
BODY_1K = bytes(random.Random(1).getrandbits(8) for _ in range(1024))
NGINX_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 15:30:12 GMT\r\n"
              b"Content-Type: text/plain\r\nContent-Length: 1024\r\n"
              b"Last-Modified: Thu, 03 Dec 2026 15:30:05 GMT\r\nConnection: keep-alive\r\n"
              b'ETag: "692fd4bd-400"\r\nAccept-Ranges: bytes\r\n\r\n')
GET = b"GET /1k.txt HTTP/1.1\r\nHost: 127.0.0.1:9200\r\n\r\n"
AGENTS = [f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
          for v in range(100, 120)]


def varied_heads(n: int) -> list[bytes]:
    rng = random.Random(7)
    heads = []
    for i in range(n):
        heads.append(
            b"GET /1k.txt?id=%d HTTP/1.1\r\nHost: 127.0.0.1:9200\r\nUser-Agent: %s\r\n"
            b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
            b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: identity\r\n"
            b"Cookie: session=%d; theme=dark; _ga=GA1.2.%d\r\n"
            b"Referer: http://example.com/page/%d\r\nConnection: keep-alive\r\n\r\n"
            % (i, rng.choice(AGENTS).encode(), rng.getrandbits(48), i, i % 97))
    return heads


def chunked_response() -> bytes:
    text = bytes(random.Random(3).getrandbits(8) for _ in range(5000))
    return (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 15:30:12 GMT\r\n"
            b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
            b"Content-Encoding: gzip\r\n\r\n" + b"%x\r\n" % 4096 + text[:4096] + b"\r\n"
            + b"%x\r\n" % 904 + text[4096:] + b"\r\n0\r\n\r\n")


# shape -> (requests, response)
SHAPES: dict[str, Callable[[int], tuple[list[bytes], bytes]]] = {
    "get": lambda n: ([GET], NGINX_HEAD + BODY_1K),
    "get-varied": lambda n: (varied_heads(min(n, 50_000)), NGINX_HEAD + BODY_1K),
    "post": lambda n: ([b"POST /post HTTP/1.1\r\nHost: 127.0.0.1:9200\r\n"
                        b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n"
                        + BODY_1K],
                       b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"),
    "chunked": lambda n: ([b"GET /text.txt HTTP/1.1\r\nHost: 127.0.0.1:9200\r\n"
                           b"Accept-Encoding: gzip\r\n\r\n"], chunked_response()),
    "head": lambda n: ([b"HEAD /1k.txt HTTP/1.1\r\nHost: 127.0.0.1:9200\r\n\r\n"], NGINX_HEAD),
    "304": lambda n: ([b'GET /1k.txt HTTP/1.1\r\nHost: 127.0.0.1:9200\r\n'
                       b'If-None-Match: "692fd4bd-400"\r\n\r\n'],
                      b"HTTP/1.1 304 Not Modified\r\nServer: nginx/1.22.1\r\n"
                      b"Date: Thu, 03 Dec 2026 15:30:12 GMT\r\n"
                      b'Last-Modified: Thu, 03 Dec 2026 15:30:05 GMT\r\nConnection: keep-alive\r\n'
                      b'ETag: "692fd4bd-400"\r\n\r\n'),
}


def engine() -> tuple[Reactor, ReverseMode, WorkerContext]:
    cfg = config.loads(CONFIG)
    reactor = Reactor()
    segment = Segment.create(bytearray(Segment.size_for(2, 4)), 2, 4, master_pid=os.getpid())
    index = segment.claim_slot(os.getpid(), 1, 0, time.time())
    servers = {"app/127.0.0.1:1": segment.server_index("app/127.0.0.1:1")}
    ctx = WorkerContext(reactor, cfg, segment, index, servers, 4, 65536, lambda: None)
    return reactor, ReverseMode(ctx, cfg.listeners[0]), ctx


def _pump(reactor: Reactor, sock: socket.socket, want: int) -> bytes:
    """Run the reactor until ``want`` bytes can be read from ``sock``."""
    got = bytearray()
    want = max(1, want)  # a short message: at least one byte of it
    while len(got) < want:
        reactor.call_soon(_noop)  # poll without blocking
        reactor.run_once()
        try:
            got += sock.recv(65536)
        except BlockingIOError:
            pass
    return bytes(got)


def _noop() -> None:
    pass


def run_shape(shape: str, count: int) -> tuple[float, float]:
    """(µs per exchange through the engine, µs per exchange of the harness alone)."""
    requests, response = SHAPES[shape](count)
    reactor, mode, ctx = engine()
    client, proxy_side = socket.socketpair()
    upstream, backend = socket.socketpair()
    for sock in (client, backend):
        sock.setblocking(False)
    proxy_side.setblocking(False)
    upstream.setblocking(False)
    ctx.idle.put(("app", 0), upstream, 64, registered=False)
    mode.accepted(proxy_side, ("127.0.0.1", 40000))
    # One exchange to learn how many bytes the proxy sends each way.
    client.send(requests[0])
    forwarded = len(_pump(reactor, backend, 1))
    backend.send(response)
    answered = len(_pump(reactor, client, len(response) - 40))
    n_requests = len(requests)
    start = time.process_time()
    for i in range(count):
        client.send(requests[i % n_requests])
        _pump(reactor, backend, forwarded - 100)
        backend.send(response)
        _pump(reactor, client, answered - 100)
    proxied = (time.process_time() - start) / count * 1e6
    # The same socket calls with nothing in between.
    a, b = socket.socketpair()
    start = time.process_time()
    for i in range(count):
        a.send(requests[i % n_requests])
        b.recv(65536)
        b.send(response)
        a.recv(65536)
    harness = (time.process_time() - start) / count * 1e6
    for sock in (client, backend, a, b):
        sock.close()
    return proxied, harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per shape; the fastest counts (the machine is shared)")
    args = parser.parse_args()
    print(f"{'shape':12} {'engine µs/exchange':>20} {'(total':>8} {'harness)':>9}")
    for shape in args.shapes.split(","):
        proxied, harness = min(run_shape(shape, args.count) for _ in range(args.repeat))
        print(f"{shape:12} {proxied - harness:20.1f} {proxied:8.1f} {harness:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
