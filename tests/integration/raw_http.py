"""A raw-socket HTTP backend and byte-exact client helpers for the express-lane tests.

Shared by ``test_http_express.py`` (reverse proxy) and ``test_forward_express.py``
(forward proxy), which check that the express lane and the general path put
the same bytes on both wires; they import it as ``raw``.

The backend: ``RawApp(answer)`` is a handler for ``tests.conftest.Backend``
that records every request head exactly as it read it, with the number of the
connection it came on, and the peer address of every connection, and answers
each request with an ``Answer``: ``fixed``, ``echo_target``,
``answer_first_only``, ``demotion_answer`` (responses the express lane must
hand to the general path) or a test's own. ``NGINX`` is a canonical upstream
response; ``NGINX_TO_CLIENT`` and ``NGINX_TO_CLOSING_CLIENT`` are what a client
must get for it.

The client side: ``ask`` sends a request in one write (one client read: the
express lane may take it), ``ask_general`` in two (the general path takes
it); ``wire`` is a response exactly as the client received it; ``read_ok``
reads pipelined responses; ``check_demotion`` runs one demoted request
through both paths.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable

from tests.conftest import Backend, Proxy
from tests.integration.http_backends import payload, read_head
from tests.integration.http_helpers import HttpClient, Response

NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n"
         b"Keep-Alive: timeout=5\r\nETag: \"x\"\r\n\r\nhello world\n")
# NGINX as a client must get it: hop-by-hop fields gone, Content-Length last.
NGINX_TO_CLIENT = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                   b"Content-Type: text/plain\r\nETag: \"x\"\r\nContent-Length: 12\r\n\r\n"
                   b"hello world\n")
# ... and a client that sent Connection: close.
NGINX_TO_CLOSING_CLIENT = NGINX_TO_CLIENT.replace(
    b"Content-Length: 12\r\n", b"Content-Length: 12\r\nConnection: close\r\n")


# -- the backend ---------------------------------------------------------------------------
# answer(conn, head, nth): nth counts the requests on this connection from 1;
# False closes the connection after the answer.
Answer = Callable[[socket.socket, bytes, int], bool]


class RawApp:
    """A raw-socket HTTP backend (for ``tests.conftest.Backend``) that records
    every request head it reads, exactly (without the blank line), with the
    number of the connection it came on (``heads``: ``(number, head)``,
    connections counted from 1), and the peer address of every connection
    (``peers``), and answers with ``answer``. Read both under ``lock``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.heads: list[tuple[int, bytes]] = []
        self.peers: list[str] = []
        self._conns = 0

    def __call__(self, conn: socket.socket, backend: Backend) -> None:
        with self.lock:
            self._conns += 1
            number = self._conns
            self.peers.append(conn.getpeername()[0])
        buf = bytearray()
        nth = 0
        while True:
            nth += 1
            try:
                head, buf = read_head(conn, buf)
            except ConnectionResetError:  # EOF between requests: done
                return
            with self.lock:
                self.heads.append((number, head))
            if self.answer(conn, head, nth) is False:
                return

    def only_heads(self) -> list[bytes]:
        """The request heads so far, in the order read, without connection numbers."""
        with self.lock:
            return [head for _, head in self.heads]


def target_of(head: bytes) -> bytes:
    """The request target of a request head."""
    return head.split(b" ", 2)[1]


def fixed(response: bytes, close: bool = False) -> Answer:
    """Answer every request with ``response`` in one write (then close if ``close``)."""
    def answer(conn: socket.socket, head: bytes, nth: int) -> bool:
        conn.sendall(response)
        return not close
    return answer


def echo_target(name: str = "", delay: float = 0.0) -> Answer:
    """Answer ``<name> <target>`` (``<target>`` without a name) with a
    Content-Length, in one write, after ``delay``."""
    prefix = name.encode() + b" " if name else b""

    def answer(conn: socket.socket, head: bytes, nth: int) -> bool:
        if delay:
            time.sleep(delay)
        body = prefix + target_of(head)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        return True
    return answer


def answer_first_only(conn: socket.socket, head: bytes, nth: int) -> bool:
    """Answer the first request on a connection (``ok <target>``, with a
    Content-Length); take the second and close without a byte of answer (a
    keep-alive timeout racing the request)."""
    if nth > 1:
        return False  # the second request on a connection: close, no answer
    body = b"ok " + target_of(head)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return True


# -- demotions: answers the express lane cannot take, by target ----------------------------
CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
NOT_MODIFIED = b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n"
BIG = payload(300 * 1024)
HUGE = payload(16 * 1024 * 1024)  # long enough for the body mover to end on a client write
HOP = (b"HTTP/1.1 200 OK\r\nConnection: X-Foo\r\nX-Foo: secret\r\nX-Public: ok\r\n"
       b"Content-Length: 3\r\n\r\nhop")


def demotion_answer(conn: socket.socket, head: bytes, nth: int) -> bool:
    """Answer by target: ``/x`` with ``NGINX`` (a quick GET's answer); the
    others with what the express lane hands to the general path: ``/chunked``,
    ``/split`` (the head, then the body 200 ms later), ``/304`` (with a
    Content-Length), ``/big`` (300 KiB), ``/huge`` (16 MiB, spliced), ``/hop``
    (an unknown hop-by-hop field). Any other target fails the backend."""
    target = target_of(head)
    if target == b"/x":
        conn.sendall(NGINX)
    elif target == b"/chunked":
        conn.sendall(CHUNKED)
    elif target == b"/split":  # head, then the body 200 ms later
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.2)
        conn.sendall(b"split")
    elif target == b"/304":
        conn.sendall(NOT_MODIFIED)
    elif target == b"/big":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG) + BIG)
    elif target == b"/huge":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(HUGE) + HUGE)
    elif target == b"/hop":
        conn.sendall(HOP)
    else:
        raise AssertionError(target)
    return True


# -- the client side -----------------------------------------------------------------------
def wire(resp: Response) -> bytes:
    """A response exactly as the client received it."""
    return resp.raw_head + resp.raw_body


def ask(client: HttpClient, request: bytes) -> Response:
    """Send ``request`` in one write (one client read: may go express); read the response."""
    client.send(request)
    resp = client.read_response()
    assert not client.buf, f"bytes after the response: {bytes(client.buf[:200])!r}"
    return resp


def ask_general(client: HttpClient, request: bytes) -> Response:
    """Send ``request`` in two writes 50 ms apart, so that it is not alone in one
    client read and takes the general path; read the response."""
    cut = request.index(b"\r\n") + 2
    client.send(request[:cut])
    time.sleep(0.05)
    client.send(request[cut:])
    resp = client.read_response()
    assert not client.buf, f"bytes after the response: {bytes(client.buf[:200])!r}"
    return resp


def check_demotion(proxy: Proxy, client: HttpClient, quick: bytes, request: bytes,
                   check: Callable[[Response], None], moves: dict[str, int]) -> None:
    """On ``client`` of ``proxy``: ``quick`` (a quick GET answered with ``NGINX``)
    warms an upstream connection up; ``request``, sent the general way, then
    twice in one write (demoted by the express lane), passes ``check`` each
    time, the demoted responses are the general one byte for byte, and each
    moves the counters as ``moves`` says; after them ``quick`` goes express.
    The worker counts an exchange before it writes the response, so after a
    response arrived it is counted."""
    def moved(before: dict[str, int], names: Iterable[str]) -> dict[str, int]:
        after = proxy.totals()
        return {name: after[name] - before[name] for name in names}

    assert wire(ask(client, quick)) == NGINX_TO_CLIENT  # warm-up: an upstream connection
    general = ask_general(client, request)
    check(general)
    for _ in range(2):
        before = proxy.totals()
        demoted = ask(client, request)
        check(demoted)
        assert wire(demoted) == wire(general)
        assert moved(before, moves) == moves, "a demoted request counted as express"
    # The demoted exchange left the connections in order: a quick GET goes express
    # again. The first one may be read in the same event as the last bytes of a
    # spliced response (readable and writable together), which the general path
    # then serves, so a second one is allowed.
    counted = []
    for _ in range(2):
        before = proxy.totals()
        assert wire(ask(client, quick)) == NGINX_TO_CLIENT
        counted.append(moved(before, ("requests", "requests_express")))
        if counted[-1]["requests_express"]:
            break
    assert counted[-1] == {"requests": 1, "requests_express": 1}, counted
    assert not client.at_eof(0.2)


def read_ok(client: HttpClient, *bodies: bytes) -> None:
    """Read one response per body in ``bodies`` (requests already sent, e.g.
    pipelined): each a 200 with that body, in order, and nothing after them."""
    got = [client.read_response() for _ in bodies]
    assert [(resp.status, resp.body) for resp in got] == [(200, body) for body in bodies]
    assert not client.buf
