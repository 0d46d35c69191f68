"""Timings of the HTTP engine's hot paths (not a test; run it by hand).

    python -m tests.http.timing [rounds]

Each figure is the best of ``rounds`` x 60 repeats, in microseconds per call,
so that a noisy machine reports its quiet moments. The heads are the ones of
the engine's speed targets: a ~600-byte browser GET with 10 fields, an nginx
response head with 8, and a 1 KiB Content-Length POST body arriving with its
head.
"""

from __future__ import annotations

import sys
import time
import timeit
from collections.abc import Callable

from fastproxy.http import (
    BodyKind,
    Request,
    RequestParser,
    ResponseParser,
    edit_head,
    forwarded_for,
    framing_field,
)

GET = (b"GET /products/widgets/index.html?ref=homepage&utm_source=newsletter HTTP/1.1\r\n"
       b"Host: www.example-shop.com\r\n"
       b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
       b"Chrome/120.0.0.0 Safari/537.36\r\n"
       b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
       b"*/*;q=0.8\r\n"
       b"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
       b"Accept-Encoding: gzip, deflate, br\r\n"
       b"Cookie: session=8f2a9c1e4b7d6f3a0e5c2b9d8a7f6e5d; theme=dark; "
       b"_ga=GA1.2.1234567890.1700000000\r\n"
       b"Referer: https://www.example-shop.com/\r\n"
       b"Connection: keep-alive\r\n"
       b"Upgrade-Insecure-Requests: 1\r\n"
       b"Cache-Control: max-age=0\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 06 May 2024 10:00:00 GMT\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 1024\r\n"
            b"Last-Modified: Sun, 05 May 2024 09:00:00 GMT\r\nConnection: keep-alive\r\n"
            b"ETag: \"6638a1b0-400\"\r\nAccept-Ranges: bytes\r\n\r\n")
POST = (GET.replace(b"GET ", b"POST ", 1).replace(b"Cache-Control: max-age=0\r\n",
                                                  b"Content-Length: 1024\r\n") + b"x" * 1024)
DROP = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                  b"content-length"))


def get_head() -> object:
    p = RequestParser()
    p.receive_data(GET)
    return p.next_event()


def response_head() -> object:
    p = ResponseParser()
    p.expect(b"GET")
    p.receive_data(RESPONSE)
    return p.next_event()


def post_head() -> object:
    p = RequestParser()
    p.receive_data(POST)
    return p.next_event()


def read_body_cost(rounds: int, n: int = 1000) -> float:
    """``read_body`` alone, on parsers that have just given the POST's head."""
    best_time = float("inf")
    out = bytearray()
    for _ in range(rounds * 60):
        parsers = [RequestParser() for _ in range(n)]
        for p in parsers:
            p.receive_data(POST)
            p.next_event()
        start = time.perf_counter()
        for p in parsers:
            out.clear()
            p.read_body(out, chunked=False, limit=1 << 16)
        best_time = min(best_time, time.perf_counter() - start)
    return best_time / n * 1e6


def reverse_rewrite(request: Request) -> Callable[[], bytes]:
    def rewrite() -> bytes:
        return edit_head(b"GET " + request.path + b" HTTP/1.1\r\n", request, drop=DROP,
                         append=forwarded_for(request, b"192.0.2.7")
                         + b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: " + request.authority
                         + b"\r\nVia: 1.1 fastproxy\r\n" + framing_field(BodyKind.NONE, 0))
    return rewrite


def best(function: Callable[[], object], rounds: int) -> float:
    return min(min(timeit.repeat(function, number=1000, repeat=60)) / 1000 * 1e6
               for _ in range(rounds))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    request = get_head()
    assert isinstance(request, Request)
    rows = [
        ("GET head (611 B, 10 fields): receive_data + next_event", best(get_head, rounds)),
        ("nginx response head (254 B, 8 fields)", best(response_head, rounds)),
        ("edit_head: the reverse proxy's rewrite of that GET", best(reverse_rewrite(request),
                                                                     rounds)),
        ("POST head with 1 KiB body: receive_data + next_event", best(post_head, rounds)),
        ("then read_body of that 1 KiB body (Content-Length)", read_body_cost(rounds)),
    ]
    for name, micros in rows:
        print(f"{name:60s} {micros:6.2f} us")


if __name__ == "__main__":
    main()
