"""Tests for fastproxy.upstream.health: the pure rise/fall state machine, then
real probes on 127.0.0.1 driven by a Reactor run in the test, verdicts read
back from a real stats Segment over a bytearray."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fastproxy.config import Address, ServerEntry, Upstream
from fastproxy.config import Health as HealthConfig
from fastproxy.reactor import Reactor
from fastproxy.stats.shm import Health, Segment
from fastproxy.upstream.health import HealthChecker, HealthState
from tests.conftest import HOST, Backend, free_port, wait_until

DEADLINE = 5.0


# -- HealthState: pure ---------------------------------------------------------------------
def run(state: HealthState, results: str) -> list[Health]:
    """Feed "+" (success) / "-" (failure) results; the health after each."""
    out = []
    for i, c in enumerate(results):
        state.record(c == "+", float(i))
        out.append(state.health)
    return out


U, D, N = Health.UP, Health.DOWN, Health.UNKNOWN


def test_state_starts_unknown_and_one_success_is_up() -> None:
    state = HealthState(rise=2, fall=3)
    assert state.health is N
    assert state.record(True, 5.0) is True
    assert (state.health, state.changed_at, state.successes, state.fails) == (U, 5.0, 1, 0)
    assert state.record(True, 6.0) is False and state.changed_at == 5.0


def test_state_fall_consecutive_failures_from_unknown_and_up() -> None:
    assert run(HealthState(2, 3), "---") == [N, N, D]
    assert run(HealthState(2, 3), "+--+---") == [U, U, U, U, U, U, D]


def test_state_rise_consecutive_successes_from_down() -> None:
    state = HealthState(rise=3, fall=1)
    assert run(state, "-++-+++") == [D, D, D, D, D, D, U]
    assert (state.successes, state.fails) == (3, 0)


def test_state_record_reports_changes_only() -> None:
    state = HealthState(rise=2, fall=2)
    changes = [state.record(c == "+", 0.0) for c in "+--" "-++" "+"]
    assert changes == [True, False, True, False, False, True, False]


@pytest.mark.parametrize("rise,fall", [(1, 1), (1, 5), (4, 2)])
def test_state_counters_are_runs(rise: int, fall: int) -> None:
    state = HealthState(rise, fall)
    for ok in [True, False, False, True, True, True, False]:
        state.record(ok, 0.0)
        assert (state.fails == 0) != (state.successes == 0)
    assert (state.fails, state.successes) == (1, 0)


# -- real probes ---------------------------------------------------------------------------
class Harness:
    """A reactor, a segment and a checker; ``run_until`` drives the loop."""

    def __init__(self) -> None:
        self.reactor = Reactor()
        self.segment = Segment.create(bytearray(Segment.size_for(8, 16)), 8, 16, os.getpid())
        self.checker = HealthChecker(self.reactor, self.segment)
        self.verdicts = 0
        write = self.segment.set_server_health

        def counting(*args: object, **kwargs: object) -> None:
            if kwargs or len(args) > 3:          # a check's verdict (not a reset to UNKNOWN)
                self.verdicts += 1
            write(*args, **kwargs)  # type: ignore[arg-type]
        self.segment.set_server_health = counting  # type: ignore[method-assign]

    def configure(self, *upstreams: Upstream) -> None:
        indexes = {f"{up.name}/{s.address}": self.segment.server_index(f"{up.name}/{s.address}")
                   for up in upstreams for s in up.servers}
        self.checker.configure({up.name: up for up in upstreams}, indexes)

    def run_until(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            self.reactor.run_once()

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reactor.run_once()

    def health(self, key: str) -> str:
        for entry in self.segment.snapshot()["servers"]:
            if entry["name"] == key:
                return str(entry["health"])
        raise KeyError(key)

    def close(self) -> None:
        self.checker.close()
        self.reactor.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def upstream(name: str, ports: list[int], interval: float = 0.05, timeout: float = 0.5,
             rise: int = 2, fall: int = 3, path: str | None = None,
             host: str = HOST) -> Upstream:
    return Upstream(name=name, servers=tuple(ServerEntry(Address(host, p)) for p in ports),
                    health=HealthConfig(interval, timeout, rise, fall, path))


def accept_queue(listener: socket.socket) -> int:
    """How many connections wait in ``listener``'s accept queue (for a listener,
    Linux reports it as ``tcpi_unacked`` of TCP_INFO)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


@pytest.fixture
def never_accepting() -> Iterator[Callable[[], socket.socket]]:
    """``make()`` -> a listener on 127.0.0.1 that never accepts: the kernel
    completes every handshake (a TCP check passes; an HTTP check gets no
    answer), and ``accept_queue`` counts each connection made to it the moment
    it is made, where a server's accept thread would count it whenever it gets
    to run."""
    made: list[socket.socket] = []

    def make() -> socket.socket:
        listener = socket.socket()
        made.append(listener)
        listener.bind((HOST, 0))
        listener.listen(1024)
        return listener

    yield make
    for listener in made:
        listener.close()


def silent(conn: socket.socket, backend: Backend) -> None:
    """Accept, read until the peer closes, never answer."""
    while conn.recv(4096):
        pass


class HttpBackend:
    """A threaded HTTP server whose status code can be flipped; keeps the requests."""

    def __init__(self, backend_factory: Callable[..., Backend], status: int = 200) -> None:
        self.status = status
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self.backend = backend_factory(self._handle)
        self.port = self.backend.port

    def _handle(self, conn: socket.socket, backend: Backend) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        with self.lock:
            self.requests.append(data)
        conn.sendall(f"HTTP/1.1 {self.status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())


def test_listening_server_goes_up(h: Harness, backend_factory: Callable[..., Backend]) -> None:
    b = backend_factory(lambda conn, backend: None)
    h.configure(upstream("app", [b.port]))
    key = f"app/{HOST}:{b.port}"
    assert h.health(key) == "unknown"
    h.run_until(lambda: h.health(key) == "up")
    wait_until(lambda: b.accepted >= 1, what="the backend to accept")


def test_closed_port_goes_down_after_fall_checks(h: Harness,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    h.configure(upstream("app", [port], fall=3))
    key = f"app/{HOST}:{port}"
    with caplog.at_level(logging.WARNING, logger="fastproxy"):
        h.run_until(lambda: h.health(key) == "down")
    assert h.verdicts == 3 and h.checker.states[key].fails == 3
    entry = next(e for e in h.segment.snapshot()["servers"] if e["name"] == key)
    assert entry["consecutive_fails"] == 3 and entry["health_changed_at"] > 0
    assert f"upstream app server {HOST}:{port} is DOWN (3 failed checks: connection refused)" \
        in caplog.messages


def test_http_check_up_then_down_on_500(h: Harness,
                                        backend_factory: Callable[..., Backend]) -> None:
    web = HttpBackend(backend_factory, 200)
    h.configure(upstream("web", [web.port], path="/healthz", fall=2))
    key = f"web/{HOST}:{web.port}"
    h.run_until(lambda: h.health(key) == "up")
    assert web.requests[0] == (f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{web.port}\r\n"
                               "User-Agent: fastproxy-health\r\nConnection: close\r\n\r\n").encode()
    web.status = 500
    h.run_until(lambda: h.health(key) == "down")
    web.status = 302                                   # 3xx counts as healthy
    h.run_until(lambda: h.health(key) == "up")


def test_http_check_without_answer_fails_by_timeout(
        h: Harness, backend_factory: Callable[..., Backend],
        caplog: pytest.LogCaptureFixture) -> None:
    b = backend_factory(silent)
    h.configure(upstream("web", [b.port], path="/", timeout=0.1, fall=2))
    key = f"web/{HOST}:{b.port}"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fastproxy"):
        h.run_until(lambda: h.health(key) == "down")
    assert time.monotonic() - start >= 0.2                  # two probes of 0.1 s each
    assert any("is DOWN (2 failed checks: timed out after 0.1s)" in m for m in caplog.messages)


def test_running_probe_is_not_doubled(h: Harness,
                                      never_accepting: Callable[[], socket.socket]) -> None:
    b = never_accepting()                         # connects, never answers
    h.configure(upstream("web", [b.getsockname()[1]], path="/", interval=0.02, timeout=0.3))
    h.run_for(0.65)
    assert 1 <= accept_queue(b) <= 3              # not 0.65 / 0.02 = 32 connections


def test_server_that_comes_back_is_up_after_rise_successes(
        h: Harness, backend_factory: Callable[..., Backend],
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    h.configure(upstream("app", [port], rise=3, fall=2))
    key = f"app/{HOST}:{port}"
    h.run_until(lambda: h.health(key) == "down")
    backend_factory(lambda conn, backend: None, port)
    with caplog.at_level(logging.WARNING, logger="fastproxy"):
        h.run_until(lambda: h.health(key) == "up")
    assert h.checker.states[key].successes == 3
    assert f"upstream app server {HOST}:{port} is UP (3 successful checks)" in caplog.messages


def test_unresolvable_name_is_a_failed_check(h: Harness) -> None:
    h.configure(upstream("app", [80], host="bad..name", fall=1))
    h.run_until(lambda: h.health("app/bad..name:80") == "down")


def test_reconfigure_stops_removed_and_keeps_state(
        h: Harness, never_accepting: Callable[[], socket.socket]) -> None:
    """Connections are counted by the servers' accept queues, exact whenever
    read: no probe to the removed server while the kept one gets 8 (0.4 s of
    probes at the same interval)."""
    a, b = never_accepting(), never_accepting()
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    h.configure(upstream("app", [pa, pb]), upstream("plain", [pa]))
    ka, kb = f"app/{HOST}:{pa}", f"app/{HOST}:{pb}"
    h.run_until(lambda: h.health(ka) == "up" and h.health(kb) == "up")
    kept = h.checker.states[ka]
    h.configure(upstream("app", [pa]),
                Upstream(name="plain", servers=(ServerEntry(Address(HOST, pa)),)))
    assert h.checker.states == {ka: kept} and kept.health is Health.UP
    seen_a, seen_b = accept_queue(a), accept_queue(b)
    h.run_until(lambda: accept_queue(a) >= seen_a + 8)
    assert accept_queue(b) == seen_b
    assert h.health(ka) == "up" and h.health(f"plain/{HOST}:{pa}") == "unknown"


def test_health_removed_from_upstream_resets_to_unknown(h: Harness) -> None:
    port = free_port()
    h.configure(upstream("app", [port], fall=1))
    key = f"app/{HOST}:{port}"
    h.run_until(lambda: h.health(key) == "down")
    h.configure(Upstream(name="app", servers=(ServerEntry(Address(HOST, port)),)))
    assert h.health(key) == "unknown" and h.checker.states == {}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_leak_over_200_checks(h: Harness, backend_factory: Callable[..., Backend]) -> None:
    listening = backend_factory(lambda conn, backend: None)
    web = HttpBackend(backend_factory, 200)
    quiet = backend_factory(silent)
    ports = [listening.port, free_port()]
    before = open_fds()
    h.configure(upstream("tcp", ports, interval=0.01),
                upstream("http", [web.port], path="/", interval=0.01),
                upstream("slow", [quiet.port], path="/", interval=0.01, timeout=0.03))
    h.run_until(lambda: h.verdicts >= 200, timeout=20.0)
    h.checker.close()
    deadline = time.monotonic() + DEADLINE      # backend threads close their ends too
    while abs(open_fds() - before) > 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert abs(open_fds() - before) <= 2


def test_close_and_detach_close_probe_sockets(h: Harness,
                                              backend_factory: Callable[..., Backend]) -> None:
    quiet = backend_factory(silent)
    before = open_fds()
    h.configure(upstream("slow", [quiet.port], path="/", interval=0.01, timeout=5.0))
    h.run_until(lambda: quiet.accepted >= 1)
    assert open_fds() > before
    h.checker.detach()                           # as in a forked child: no selector calls
    assert open_fds() <= before + 1              # the backend's end may still be open
