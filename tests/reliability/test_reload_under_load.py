"""20 reloads (SIGHUP) of a master under mixed load: no client sees a failure.

One master, two workers, two listeners: ``web`` (http reverse proxy) and
``fwd`` (forward proxy). While client threads run

- keep-alive GETs (``/bytes/N``, the body checked byte for byte),
- GETs on a new connection each,
- POSTs of random bodies on a new connection each (the backend's sha256 checked),
- CONNECT tunnels through ``fwd`` to an echo server (the bytes echoed back),
- one WebSocket (Upgrade through ``web`` to a backend that answers 101, then
  echoes), open from before the first reload to after the last,

the test sends 20 SIGHUPs, each once the previous reload is reported done
(``reload_seq``/``reload_status`` in the stats, the new generation serving).
Shows: no failed request (wrong status or bytes, EOF inside a response,
timeout), no reset, the WebSocket still echoes after all reloads, every old
generation leaves once its connections are done, nothing counted as an
internal error or a 5xx.

A keep-alive connection that a draining worker closes while it is idle gets
a FIN; the client's next request may cross that FIN, and then the client sees
EOF before any byte of the response. HTTP clients retry that on a new
connection (RFC 9112 9.3.1), and so does this one: counted as ``idle_closes``,
not as a failure. A reset or anything after a response began is a failure.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
import time
from collections.abc import Callable

from tests.conftest import TIMEOUT, Backend, echo_handler, wait_until
from tests.integration.forward_helpers import open_tunnel
from tests.integration.helpers import (
    recv_all,
    recv_exact,
    wait_generation_serving,
    wait_only_generation,
)
from tests.integration.http_backends import WS_GREETING, Recorder, payload, websocket_echo_handler
from tests.integration.http_helpers import (
    HttpClient,
    HttpProxy,
    ListenerSpec,
    Response,
    build_request,
    exchange,
)
from tests.reliability.conftest import (
    LoadThread,
    ReliabilityRunner,
    Tally,
    expect,
    expect_body,
    hash_answer,
)

WORKERS = 2
RELOADS = 20
SIZES = (1, 100, 4096, 70_000)
KINDS = ("keepalive_get", "fresh_get", "post", "tunnel")


# -- load threads --------------------------------------------------------------------------
class KeepAliveGets:
    """GET ``/bytes/N`` on one connection after another (a new one when the proxy
    says ``Connection: close`` or closed the idle one; see the module docstring)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: HttpClient | None = None
        self.idle_closes = 0

    def __call__(self, i: int) -> None:
        n = SIZES[i % len(SIZES)]
        resp = self._request(build_request("GET", f"/bytes/{n}"))
        expect_body(resp, payload(n))
        if (resp.header("Connection") or "").lower() == "close":
            self.close()

    def _request(self, request: bytes) -> Response:
        reused = self.client is not None
        if self.client is None:
            self.client = HttpClient(self.port)
        client = self.client
        try:
            client.send(request)
            if not client._fill():   # EOF before any byte of the response
                self.close()
                if not reused:
                    raise EOFError("a new connection closed before any response")
                self.idle_closes += 1
                return self._request(request)
            return client.read_response()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def fresh_get(port: int) -> Callable[[int], None]:
    def step(i: int) -> None:
        n = SIZES[i % len(SIZES)]
        expect_body(exchange(port, "GET", f"/bytes/{n}"), payload(n))
    return step


def fresh_post(port: int, seed: int) -> Callable[[int], None]:
    rng = random.Random(seed)

    def step(i: int) -> None:
        body = rng.randbytes(rng.choice((10, 3000, 100_000)))
        expect_body(exchange(port, "POST", "/hash", body=body), hash_answer(body))
    return step


def tunnel(fwd_port: int, target: str) -> Callable[[int], None]:
    """CONNECT, 3 writes echoed back through the tunnel, then a clean EOF both ways."""
    def step(i: int) -> None:
        sock, status, head, rest = open_tunnel(fwd_port, target)
        with sock:
            expect(status == 200, f"CONNECT answered {head[:80]!r}")
            expect(rest == b"", f"bytes before any were sent: {rest[:80]!r}")
            for part in range(3):
                data = f"tunnel {i} part {part};".encode() * (part * 50 + 1)
                sock.sendall(data)
                got = recv_exact(sock, len(data))
                expect(got == data, f"echo of {len(data)} bytes: {len(got)} bytes back")
            sock.shutdown(socket.SHUT_WR)
            expect(recv_all(sock, 1024) == b"", "bytes after the echo")
    return step


# -- the WebSocket ----------------------------------------------------------------------------
def ws_frame(data: bytes, key: bytes) -> bytes:
    """One masked binary frame (RFC 6455 5.2) carrying ``data`` (< 64 KiB)."""
    size = len(data)
    head = bytes([0x82, 0x80 | size]) if size < 126 else bytes([0x82, 0x80 | 126]) + \
        struct.pack("!H", size)
    return head + key + bytes(b ^ key[j % 4] for j, b in enumerate(data))


class WebSocket:
    """An upgraded connection through ``web``; ``echo(i)`` sends one frame and
    checks that exactly its bytes come back (the backend echoes bytes)."""

    def __init__(self, port: int) -> None:
        self.client = HttpClient(port)
        self.echoed = 0
        self.rng = random.Random(6455)   # the frames' masking keys
        self.client.send(build_request("GET", "/ws/chat", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]))
        resp = self.client.read_head()
        assert resp.status == 101, resp
        assert self._take(len(WS_GREETING)) == WS_GREETING

    def _take(self, n: int) -> bytes:
        while len(self.client.buf) < n:
            if not self.client._fill():
                raise EOFError("the WebSocket closed")
        return self.client._take(n)

    def echo(self, i: int) -> None:
        frame = ws_frame(f"message {i} ".encode() * (i * 20 + 1), self.rng.randbytes(4))
        self.client.send(frame)
        assert self._take(len(frame)) == frame, f"WebSocket echo {i}"
        self.echoed += 1

    def close(self) -> None:
        self.client.sock.shutdown(socket.SHUT_WR)
        assert self.client.at_eof(TIMEOUT), "the WebSocket did not end with EOF"
        self.client.close()


# -- the test ---------------------------------------------------------------------------------
def start_master(runner: ReliabilityRunner, app: Backend, ws: Backend,
                 echo: Backend) -> HttpProxy:
    web = ListenerSpec("web", "app", timeouts={"client_header": 5.0, "idle": 30.0,
                                               "upstream_read": 10.0},
                       routes=[{"path_prefix": "/ws/", "upstream": "ws"}])
    # graceful_timeout above the test's length: the WebSocket's worker drains
    # from the first reload to the end of the test.
    return runner.start({"app": [app.address], "ws": [ws.address]}, web=web, workers=WORKERS,
                        forward={"connect_ports": [echo.port]}, graceful_timeout=120.0)


def reload_once(proxy: HttpProxy, generation: int) -> None:
    """SIGHUP, then wait for the outcome and the new generation serving."""
    seq = proxy.stats()["reload_seq"]
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: proxy.stats()["reload_seq"] > seq, 30.0, "the reload's outcome")
    snap = proxy.stats()
    assert snap["reload_status"] == "ok", snap["reload_message"]
    wait_generation_serving(proxy, generation, WORKERS)


def wait_progress(tally: Tally, marks: dict[str, int], more: int) -> None:
    """Until ``more`` requests of each kind were made (done or failed) since ``marks``."""
    wait_until(lambda: all(tally.attempts(k) >= marks[k] + more for k in KINDS), 30.0,
               f"{more} more requests of each kind")


def test_20_hups_during_mixed_load(runner: ReliabilityRunner,
                                   backend_factory: Callable[..., Backend],
                                   fast_backend: Backend) -> None:
    ws_backend = backend_factory(websocket_echo_handler(Recorder()))
    echo = backend_factory(echo_handler)
    proxy = start_master(runner, fast_backend, ws_backend, echo)
    port, fwd_port = proxy.ports["web"], proxy.ports["fwd"]
    first = proxy.stats()["generation"]
    tally = Tally()
    gets = [KeepAliveGets(port), KeepAliveGets(port)]
    loads = [LoadThread("keepalive_get", gets[0], tally),
             LoadThread("keepalive_get", gets[1], tally),
             LoadThread("fresh_get", fresh_get(port), tally),
             LoadThread("post", fresh_post(port, seed=20), tally),
             LoadThread("tunnel", tunnel(fwd_port, echo.address), tally)]
    ws = WebSocket(port)
    started = time.monotonic()
    try:
        for load in loads:
            load.start()
        wait_progress(tally, dict.fromkeys(KINDS, 0), 3)
        for i in range(RELOADS):
            marks = {k: tally.attempts(k) for k in KINDS}
            reload_once(proxy, first + i + 1)
            ws.echo(i)
            wait_progress(tally, marks, 2)
    finally:
        for load in loads:
            load.stop()
        for get in gets:
            get.close()
    ws.echo(RELOADS)
    ws.close()
    elapsed = time.monotonic() - started

    final = first + RELOADS
    idle_closes = sum(get.idle_closes for get in gets)
    print(f"\nRELIABILITY hup: reloads={RELOADS} requests={tally.total()} "
          f"by_kind={dict(tally.done)} websocket_echoes={ws.echoed} "
          f"failures={len(tally.failures)} resets={tally.resets} "
          f"idle_closes_retried={idle_closes} seconds={elapsed:.1f}")
    assert tally.failures == [], "\n".join(tally.failures[:40])
    assert tally.resets == 0
    assert proxy.stats()["generation"] == final
    assert all(tally.count(k) >= 2 * RELOADS for k in KINDS), tally.done
    assert ws.echoed == RELOADS + 1
    wait_only_generation(proxy, final, WORKERS)   # the WebSocket's worker left too
    totals = proxy.totals()
    assert totals["internal_errors"] == 0, proxy.log_text()
    assert totals["responses_5xx"] == 0
    assert totals["tunnels"] >= tally.count("tunnel") + 1
    proxy.assert_healthy()
