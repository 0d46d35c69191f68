"""TCP mode end to end: bulk transfers both ways, half-close, balancing,
failures, retries, descriptor hygiene and idle timeouts, through a real master."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import socket
import threading
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import (
    Backend,
    Proxy,
    connect,
    echo_handler,
    free_port,
    hash_handler,
    name_handler,
    wait_until,
)
from tests.integration.helpers import (
    MiB,
    closed_without_data,
    echo_ok,
    recv_all,
    recv_exact,
    roundtrip,
    second_listener,
)

BIG = 64 * MiB
CHUNK = 1 * MiB
SEED = 20240611


def _closed_totals(proxy: Proxy, connections: int) -> dict:
    """Totals once ``connections`` sessions are closed and none is active."""
    def settled() -> bool:
        c = proxy.totals()
        return c["conn_closed"] >= connections and c["conn_active"] == 0
    wait_until(settled, 15.0, f"{connections} closed sessions")
    return proxy.totals()


def _assert_mostly_spliced(c: dict) -> None:
    moved = c["bytes_spliced"] + c["bytes_copied"]
    assert moved > 0
    assert c["bytes_spliced"] / moved > 0.9, c


def _pseudo_random_chunks(total: int, chunk: int = CHUNK):
    rng = random.Random(SEED)
    left = total
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def _stream_handler(total: int) -> Callable[[socket.socket, Backend], None]:
    """Send ``total`` deterministic pseudo-random bytes, then close."""
    def handler(conn: socket.socket, backend: Backend) -> None:
        for block in _pseudo_random_chunks(total):
            conn.sendall(block)
    return handler


# -- bulk transfers -----------------------------------------------------------------
def test_upload_64mib_hash_and_counters(run_proxy, backend_factory) -> None:
    backend = backend_factory(hash_handler)
    proxy = run_proxy(upstreams=[backend.address])
    digest = hashlib.sha256()
    sent = 0
    with connect(proxy.ports["main"], timeout=30.0) as s:
        while sent < BIG:
            block = os.urandom(CHUNK)
            digest.update(block)
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
    assert answer == f"{BIG} {digest.hexdigest()}\n".encode()

    c = _closed_totals(proxy, 1)
    assert c["bytes_in"] == BIG
    assert c["upstream_bytes_out"] == BIG
    assert c["upstream_bytes_in"] == len(answer)
    assert c["bytes_out"] == len(answer)
    _assert_mostly_spliced(c)


def test_download_64mib_hash_and_counters(run_proxy, backend_factory) -> None:
    backend = backend_factory(_stream_handler(BIG))
    proxy = run_proxy(upstreams=[backend.address])
    expected = hashlib.sha256()
    for block in _pseudo_random_chunks(BIG):
        expected.update(block)

    digest = hashlib.sha256()
    received = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with connect(proxy.ports["main"], timeout=30.0) as s:
        s.shutdown(socket.SHUT_WR)   # nothing to send
        while True:
            n = s.recv_into(view)
            if not n:
                break
            digest.update(view[:n])
            received += n
    assert received == BIG
    assert digest.hexdigest() == expected.hexdigest()

    c = _closed_totals(proxy, 1)
    assert c["bytes_in"] == 0
    assert c["bytes_out"] == BIG
    assert c["upstream_bytes_in"] == BIG
    _assert_mostly_spliced(c)


def test_bidirectional_echo_16mib_one_connection(run_proxy, backend_factory) -> None:
    total = 16 * MiB
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address])
    sent_digest = hashlib.sha256()
    got_digest = hashlib.sha256()
    received = [0]
    errors: list[BaseException] = []

    with connect(proxy.ports["main"], timeout=30.0) as s:
        def reader() -> None:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            try:
                while True:
                    n = s.recv_into(view)
                    if not n:
                        break
                    got_digest.update(view[:n])
                    received[0] += n
            except OSError as exc:  # reported by the main thread
                errors.append(exc)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        sent = 0
        while sent < total:
            block = os.urandom(256 * 1024)
            sent_digest.update(block)
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        t.join(60.0)
        assert not t.is_alive(), "reader did not finish"
    assert not errors, errors
    assert received[0] == total
    assert got_digest.hexdigest() == sent_digest.hexdigest()

    c = _closed_totals(proxy, 1)
    assert c["bytes_in"] == total
    assert c["bytes_out"] == total
    assert c["upstream_bytes_out"] == total
    assert c["upstream_bytes_in"] == total
    _assert_mostly_spliced(c)


# -- half-close ---------------------------------------------------------------------
def test_client_half_close_backend_still_answers(run_proxy, backend_factory) -> None:
    backend = backend_factory(hash_handler)
    proxy = run_proxy(upstreams=[backend.address])
    payload = os.urandom(300_000)
    with connect(proxy.ports["main"]) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(4096)
        while not answer.endswith(b"\n"):
            more = s.recv(4096)
            assert more, f"EOF before the full answer: {answer!r}"
            answer += more
        assert s.recv(4096) == b""   # then EOF
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_backend_half_close_client_keeps_sending(run_proxy, backend_factory) -> None:
    records: list[tuple[int, str]] = []
    done = threading.Event()

    def greet_then_listen(conn: socket.socket, backend: Backend) -> None:
        conn.sendall(b"hello\n")
        conn.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        total = 0
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            digest.update(data)
            total += len(data)
        records.append((total, digest.hexdigest()))
        done.set()

    backend = backend_factory(greet_then_listen)
    proxy = run_proxy(upstreams=[backend.address])
    payload = os.urandom(2 * MiB)
    with connect(proxy.ports["main"]) as s:
        assert recv_exact(s, 6) == b"hello\n"
        assert s.recv(1024) == b""   # the backend's FIN reached the client
        s.sendall(payload)           # ... and the client's direction is still open
        s.shutdown(socket.SHUT_WR)
        assert done.wait(15.0), "backend never saw the client's EOF"
        assert s.recv(1024) == b""
    assert records == [(len(payload), hashlib.sha256(payload).hexdigest())]
    c = _closed_totals(proxy, 1)
    assert c["bytes_in"] == len(payload)
    assert c["bytes_out"] == 6


# -- balancing, failures, retries -------------------------------------------------------
def test_round_robin_three_backends(run_proxy, backend_factory) -> None:
    backends = [backend_factory(name_handler(n)) for n in "abc"]
    proxy = run_proxy(upstreams=[b.address for b in backends], workers=1)
    seen = collections.Counter()
    for _ in range(30):
        with connect(proxy.ports["main"]) as s:
            seen[recv_all(s, 16).decode()] += 1
    assert seen == {"a": 10, "b": 10, "c": 10}


def _closed_by_proxy_without_data(port: int) -> bool:
    """The proxy may reset us at any point, even before connect() returns."""
    try:
        with connect(port) as s:
            try:
                s.sendall(b"anyone there?")
            except (ConnectionResetError, BrokenPipeError):
                return True
            return closed_without_data(s)
    except ConnectionResetError:
        return True


def test_backend_down_closes_client_and_worker_survives(run_proxy, backend_factory) -> None:
    live = backend_factory(echo_handler)
    dead = f"127.0.0.1:{free_port()}"      # nothing listens there
    second = free_port()
    proxy = run_proxy(upstreams=[dead], workers=1,
                      extra_listener=second_listener("second", second, "live"),
                      extra=f'\n[upstream.live]\nservers = ["{live.address}"]\n')
    pids = proxy.worker_pids()
    before = proxy.totals()["upstream_connect_errors"]
    for _ in range(3):
        assert _closed_by_proxy_without_data(proxy.ports["main"])
    wait_until(lambda: proxy.totals()["upstream_connect_errors"] >= before + 3, 10.0,
               "upstream_connect_errors to count the failures")
    assert proxy.worker_pids() == pids
    assert roundtrip(second, b"still here") == b"still here"
    assert proxy.worker_pids() == pids


def test_retry_skips_dead_server(run_proxy, backend_factory) -> None:
    live = backend_factory(echo_handler)
    dead = f"127.0.0.1:{free_port()}"
    proxy = run_proxy(upstreams=[dead, live.address], workers=1, retries=1,
                      balance="round_robin")
    results = [echo_ok(proxy.ports["main"], f"msg {i}".encode()) for i in range(10)]
    assert all(results), results
    c = proxy.totals()
    assert c["upstream_retries"] > 0
    assert c["upstream_connect_errors"] > 0


# -- descriptors and timeouts ------------------------------------------------------------
def _short_echo(port: int) -> None:
    payload = os.urandom(100)
    assert roundtrip(port, payload) == payload


def test_no_fd_growth_over_1000_connections(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=1)
    [pid] = proxy.worker_pids()
    port = proxy.ports["main"]
    for _ in range(20):
        _short_echo(port)
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 10.0, "no active session")
    before = psutil.Process(pid).num_fds()
    for _ in range(1000):
        _short_echo(port)
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 10.0, "no active session")
    assert proxy.worker_pids() == [pid]
    after = psutil.Process(pid).num_fds()
    assert after <= before + 2, (before, after)
    assert proxy.totals()["conn_closed"] == 1020


def test_idle_timeout_closes_connection(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], timeouts="timeouts = { idle = 1.0 }")
    with connect(proxy.ports["main"], timeout=10.0) as s:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        # now stay silent: the proxy must close the connection by itself
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail("idle connection still open after 10 s (idle = 1.0)")
        assert data == b""
    wait_until(lambda: proxy.totals()["idle_timeouts"] >= 1, 10.0, "idle_timeouts counter")
