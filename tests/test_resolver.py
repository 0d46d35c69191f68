"""fastproxy.resolver on a real Reactor: numeric answers, the cache, coalescing, timeouts,
cancel, the pending bound, and a clean close.

Network rule: no real internet name is ever looked up; only "localhost", numeric addresses,
names under the reserved ".invalid" TLD (RFC 6761 §6.4) and a monkeypatched getaddrinfo.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastproxy.reactor import Reactor
from fastproxy.resolver import Resolver
from fastproxy.stats.shm import COUNTERS, C

DEADLINE = 10.0
Answer = tuple[list[tuple[int, tuple[Any, ...]]] | None, str | None]


class Answers:
    """Collects callback results, in order."""

    def __init__(self) -> None:
        self.got: list[Answer] = []

    def __call__(self, addresses: Any, error: str | None) -> None:
        self.got.append((addresses, error))


def pump(reactor: Reactor, until: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Drive the loop until ``until()`` holds; a short timer bounds every poll."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out driving the reactor")
        reactor.call_later(0.02, lambda: None)
        reactor.run_once()


def settle(reactor: Reactor, seconds: float = 0.1) -> None:
    end = time.monotonic() + seconds
    pump(reactor, lambda: time.monotonic() >= end)


def resolver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("fastproxy-resolver") and t.is_alive()]


class FakeDNS:
    """A getaddrinfo stand-in: fixed answers, call counting, optional blocking."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, host: str, port: Any, family: int = 0, type: int = 0,
                 proto: int = 0, flags: int = 0) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        self.entered.set()
        assert self.release.wait(DEADLINE)
        if host.endswith(".invalid") and host.startswith("nx"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::7", 0, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))]   # duplicate


@pytest.fixture
def counters() -> memoryview:
    return memoryview(bytearray(8 * len(COUNTERS))).cast("Q")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDNS]:
    dns = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    yield dns
    dns.release.set()       # never leave a resolver thread blocked


def test_localhost(reactor: Reactor, counters: memoryview) -> None:
    res = Resolver(reactor, ttl=30.0, counters=counters)
    got = Answers()
    res.resolve("localhost", 8080, got)
    pump(reactor, lambda: bool(got.got))
    addresses, error = got.got[0]
    assert error is None and addresses
    for family, sockaddr in addresses:
        assert (family, sockaddr[0]) in {(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")}
        assert sockaddr[1] == 8080
    assert counters[C.dns_lookups] == 1 and counters[C.dns_failures] == 0
    res.close()


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", (socket.AF_INET, ("127.0.0.1", 443))),
    ("::1", (socket.AF_INET6, ("::1", 443, 0, 0))),
    ("[::1]", (socket.AF_INET6, ("::1", 443, 0, 0))),
    ("fe80::1%1", (socket.AF_INET6, ("fe80::1", 443, 0, 1))),
])
def test_numeric_needs_no_thread(reactor: Reactor, fake: FakeDNS, counters: memoryview,
                                 host: str, expected: tuple[int, tuple[Any, ...]]) -> None:
    res = Resolver(reactor, ttl=30.0, counters=counters)
    got = Answers()
    res.resolve(host, 443, got)
    assert got.got == []                     # never answered inside resolve()
    pump(reactor, lambda: bool(got.got))
    assert got.got == [([expected], None)]
    assert fake.calls == [] and res._threads == [] and resolver_threads() == []
    assert counters[C.dns_lookups] == 0
    res.close()


def test_answers_use_the_callers_port_and_drop_duplicates(reactor: Reactor,
                                                          fake: FakeDNS) -> None:
    res = Resolver(reactor, ttl=30.0)
    got = Answers()
    res.resolve("host.invalid", 8443, got)
    pump(reactor, lambda: bool(got.got))
    assert got.got == [([(socket.AF_INET6, ("2001:db8::7", 8443, 0, 0)),
                         (socket.AF_INET, ("192.0.2.7", 8443))], None)]
    res.close()


def test_cache_hit_then_expiry(reactor: Reactor, fake: FakeDNS, counters: memoryview) -> None:
    res = Resolver(reactor, ttl=0.2, counters=counters)
    got = Answers()
    res.resolve("cached.invalid", 80, got)
    pump(reactor, lambda: len(got.got) == 1)
    res.resolve("CACHED.invalid", 81, got)          # names are case-insensitive
    assert len(got.got) == 1                        # not synchronous, even from the cache
    pump(reactor, lambda: len(got.got) == 2)
    assert fake.calls == ["cached.invalid"]
    assert got.got[1][0] is not None and got.got[1][0][1] == (socket.AF_INET, ("192.0.2.7", 81))
    assert counters[C.dns_lookups] == 2 and counters[C.dns_cache_hits] == 1
    settle(reactor, 0.3)
    res.resolve("cached.invalid", 80, got)
    pump(reactor, lambda: len(got.got) == 3)
    assert fake.calls == ["cached.invalid", "cached.invalid"]
    assert counters[C.dns_cache_hits] == 1
    res.close()


def test_ttl_zero_disables_the_cache(reactor: Reactor, fake: FakeDNS) -> None:
    res = Resolver(reactor, ttl=0.0)
    got = Answers()
    for n in range(1, 3):
        res.resolve("nocache.invalid", 80, got)
        pump(reactor, lambda n=n: len(got.got) == n)     # type: ignore[misc]
    assert fake.calls == ["nocache.invalid"] * 2
    res.close()


def test_concurrent_lookups_are_coalesced(reactor: Reactor, fake: FakeDNS) -> None:
    fake.release.clear()
    res = Resolver(reactor, ttl=30.0)
    first, second = Answers(), Answers()
    res.resolve("slow.invalid", 80, first)
    res.resolve("slow.invalid", 443, second)
    assert fake.entered.wait(DEADLINE)
    settle(reactor, 0.05)
    assert first.got == second.got == []
    fake.release.set()
    pump(reactor, lambda: bool(first.got and second.got))
    assert fake.calls == ["slow.invalid"]
    assert first.got[0][0] is not None and first.got[0][0][1][1][1] == 80
    assert second.got[0][0] is not None and second.got[0][0][1][1][1] == 443
    res.close()


def test_one_failing_callback_does_not_starve_the_others(reactor: Reactor,
                                                         fake: FakeDNS) -> None:
    fake.release.clear()
    res = Resolver(reactor, ttl=30.0)
    got = Answers()

    def boom(addresses: Any, error: str | None) -> None:
        raise RuntimeError("caller bug")

    res.resolve("shared.invalid", 80, boom)
    res.resolve("shared.invalid", 80, got)
    fake.release.set()
    pump(reactor, lambda: bool(got.got))
    assert got.got[0][1] is None
    res.close()


def test_failure_of_a_reserved_name(reactor: Reactor, counters: memoryview) -> None:
    res = Resolver(reactor, ttl=30.0, counters=counters)   # the real getaddrinfo
    got = Answers()
    res.resolve("no-such-host.fastproxy-test.invalid", 80, got)
    pump(reactor, lambda: bool(got.got))
    addresses, error = got.got[0]
    assert addresses is None and isinstance(error, str) and error
    assert counters[C.dns_failures] == 1 and counters[C.dns_lookups] == 1
    res.close()


def test_unencodable_name_is_an_error_not_a_crash(reactor: Reactor) -> None:
    res = Resolver(reactor, ttl=30.0)
    got = Answers()
    res.resolve("a" * 64 + ".invalid", 80, got)            # IDNA: label too long
    res.resolve("bad\0name.invalid", 80, got)
    pump(reactor, lambda: len(got.got) == 2)
    assert all(addresses is None and error for addresses, error in got.got)
    res.close()


def test_failures_are_not_cached(reactor: Reactor, fake: FakeDNS, counters: memoryview) -> None:
    res = Resolver(reactor, ttl=30.0, counters=counters)
    got = Answers()
    for n in range(1, 3):
        res.resolve("nx.invalid", 80, got)
        pump(reactor, lambda n=n: len(got.got) == n)     # type: ignore[misc]
    assert got.got == [(None, "Name or service not known")] * 2
    assert fake.calls == ["nx.invalid"] * 2
    assert counters[C.dns_failures] == 2
    res.close()


def test_cancel_prevents_the_callback(reactor: Reactor, fake: FakeDNS,
                                      counters: memoryview) -> None:
    res = Resolver(reactor, ttl=30.0, counters=counters)
    got, kept = Answers(), Answers()
    res.resolve("127.0.0.1", 80, got).cancel()            # numeric, queued on call_soon
    fake.release.clear()
    handle = res.resolve("gone.invalid", 80, got)
    res.resolve("gone.invalid", 80, kept)
    handle.cancel()
    handle.cancel()                                       # twice is harmless
    fake.release.set()
    pump(reactor, lambda: bool(kept.got))
    settle(reactor, 0.05)
    assert got.got == [] and handle.done
    assert counters[C.dns_failures] == 0
    res.close()


def test_timeout_then_the_late_result_is_cached(reactor: Reactor, fake: FakeDNS,
                                                counters: memoryview) -> None:
    fake.release.clear()
    res = Resolver(reactor, ttl=30.0, counters=counters, timeout=0.1)
    got = Answers()
    res.resolve("stuck.invalid", 80, got)
    pump(reactor, lambda: bool(got.got))
    assert got.got == [(None, "timed out")]
    assert counters[C.dns_failures] == 1
    fake.release.set()
    pump(reactor, lambda: "stuck.invalid" in res._cache)
    res.resolve("stuck.invalid", 80, got)
    pump(reactor, lambda: len(got.got) == 2)
    assert got.got[1][1] is None and fake.calls == ["stuck.invalid"]
    assert counters[C.dns_cache_hits] == 1
    res.close()


def test_too_many_pending_lookups_fail_fast(reactor: Reactor, fake: FakeDNS,
                                            counters: memoryview) -> None:
    fake.release.clear()
    res = Resolver(reactor, ttl=30.0, counters=counters, max_pending=2)
    got = Answers()
    res.resolve("a.invalid", 80, got)
    res.resolve("b.invalid", 80, got)
    res.resolve("a.invalid", 80, got)                     # joins a lookup: no new slot needed
    res.resolve("c.invalid", 80, got)
    pump(reactor, lambda: bool(got.got))
    assert got.got == [(None, "resolver busy")]
    fake.release.set()
    pump(reactor, lambda: len(got.got) == 4)
    assert counters[C.dns_failures] == 1
    res.close()


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_leaves_no_thread_and_no_fd(reactor: Reactor, fake: FakeDNS) -> None:
    before = count_fds()
    res = Resolver(reactor, ttl=30.0, threads=3)
    got = Answers()
    res.resolve("x.invalid", 80, got)
    pump(reactor, lambda: bool(got.got))
    assert len(resolver_threads()) == 3
    res.close()
    res.close()                                           # idempotent
    assert resolver_threads() == []
    assert count_fds() == before
    with pytest.raises(RuntimeError):
        res.resolve("x.invalid", 80, got)


def test_close_with_a_lookup_in_flight(reactor: Reactor, fake: FakeDNS) -> None:
    before = count_fds()
    fake.release.clear()
    res = Resolver(reactor, ttl=30.0, threads=1)
    got = Answers()
    res.resolve("inflight.invalid", 80, got)
    res.resolve("127.0.0.1", 80, got)                     # queued on call_soon, then dropped
    assert fake.entered.wait(DEADLINE)
    started = time.monotonic()
    res.close()
    assert time.monotonic() - started < 2.0               # bounded wait for a stuck thread
    assert count_fds() == before
    fake.release.set()                                    # the thread finishes, writes nothing
    deadline = time.monotonic() + DEADLINE
    while resolver_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert resolver_threads() == []
    settle(reactor, 0.05)
    assert got.got == []
