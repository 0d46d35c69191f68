"""fastproxy.upstream.pool: LIFO per server, bounded per upstream and in total, tables that shrink."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from fastproxy.upstream.pool import IDLE_SECONDS, IdlePool


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def conn(pairs: list[tuple[socket.socket, socket.socket]]) -> socket.socket:
    a, b = socket.socketpair()
    pairs.append((a, b))
    return a


def test_lifo_per_server_and_tables_that_shrink(reactor, pairs) -> None:
    pool = IdlePool(reactor, total=10)
    first, second = conn(pairs), conn(pairs)
    pool.put(("app", 0), first, 8, registered=False)
    pool.put(("app", 0), second, 8, registered=False)
    assert pool.take(("app", 0)) is second and pool.take(("app", 0)) is first
    assert pool.take(("app", 0)) is None and pool.size == 0
    assert not pool._by_key and not pool._by_upstream and not pool._all


def test_many_destinations_stay_within_the_total(reactor, pairs) -> None:
    """A forward proxy's client naming destination after destination: the
    worker keeps ``total`` idle connections, the oldest closed first."""
    pool = IdlePool(reactor, total=16)
    socks = []
    for port in range(1, 101):
        sock = conn(pairs)
        socks.append(sock)
        pool.put((f"dest{port}:80", 0), sock, 32, registered=False)
        reactor.now += 0.001
    assert pool.size == 16
    assert all(s.fileno() == -1 for s in socks[:84])          # the oldest were closed
    assert all(s.fileno() >= 0 for s in socks[84:])
    assert len(pool._by_key) == len(pool._by_upstream) == 16
    assert pool.take(("dest1:80", 0)) is None
    assert pool.take(("dest100:80", 0)) is socks[-1]


def test_the_upstream_limit_evicts_that_upstreams_oldest(reactor, pairs) -> None:
    pool = IdlePool(reactor, total=100)
    other = conn(pairs)
    pool.put(("other", 0), other, 2, registered=False)
    socks = [conn(pairs) for _ in range(3)]
    for i, sock in enumerate(socks):
        pool.put(("app", i % 2), sock, 2, registered=False)
    assert socks[0].fileno() == -1 and other.fileno() >= 0
    assert pool.size == 3


def test_expire_and_server_close(reactor, pairs) -> None:
    pool = IdlePool(reactor, total=10)
    old, fresh = conn(pairs), conn(pairs)
    pool.put(("app", 0), old, 8, registered=False)
    reactor.now += IDLE_SECONDS
    pool.put(("app", 1), fresh, 8, registered=False)
    pool.expire(reactor.now)
    assert old.fileno() == -1 and pool.size == 1
    pairs[1][1].close()                 # the server closes the idle one
    reactor.call_soon(lambda: None)
    reactor.run_once()
    assert pool.size == 0 and not pool._by_key
