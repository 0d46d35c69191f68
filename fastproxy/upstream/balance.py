"""Load balancing: which servers one new connection should try, in order.

Rules
-----
1. ``candidates(key, usable)`` returns the usable servers' indices in the
   order to try them: the first is the choice, the rest are what a retry
   tries next. Every usable server appears exactly once, so a caller allowing
   ``k`` tries takes ``[:k]``; ``[]`` means none is usable (answer 503).
   (Pingora ``pingora-load-balancing/src/selection/``: candidates in order.)
   Fallbacks follow the choice in index rotation, except ip_hash (ring walk)
   and random_two (the other draw second): retries are rare, and spreading
   them is O(n) where ranking them by load would be a sort per pick.
2. Servers are indices ``0..n-1`` into the upstream's server list, each with
   an integer weight >= 1; ``usable[i]`` is False while server i is down.
3. Pure decisions over plain data: randomness comes from an injected
   ``random.Random``, connection counts from a sequence the caller owns. The
   small state (a rotation point, nginx's "current" weights) is per process
   and not thread-safe: one balancer per upstream per worker reactor.

Theory, per ``balance = ...`` value
-----------------------------------
``round_robin``: plain rotation, weights ignored. The rotation point moves
just past the choice, so a down server's turn is not given twice to the next.

``weighted``: nginx's smooth weighted round-robin
(``ngx_http_upstream_round_robin.c``, ``ngx_http_upstream_get_peer``). Each
pick, every usable server adds its weight to its ``current``; the largest
``current`` wins (lowest index on ties) and loses the total. Over ``sum(w)``
picks each server is chosen exactly ``w`` times, interleaved: weights 5, 1, 1
give ``a a b a c a a``. nginx's ``effective_weight`` back-off is left to
health checks: effective = configured weight.

``least_conn``: nginx's least_conn: least ``active[i] / weight[i]``, compared
as ``a_i * w_j < a_j * w_i``; ties go to the first in rotation order.

``random_two``: the power of two choices (Mitzenmacher, "The Power of Two
Choices in Randomized Load Balancing", IEEE TPDS 2001; nginx ``random two``):
draw two distinct usable servers, weighted by weight, keep the one with less
``active / weight`` (the first drawn on a tie). Nearly as even as least_conn,
without herding onto one server when counts are stale.

``ip_hash``: consistent hashing (Karger et al., STOC 1997) with libketama's
160 ring points per weight unit, hashed from ``"<server_id>#<i>"`` by BLAKE2b:
removing a server moves only its keys, and all workers agree (``hash()`` is
salted per process). A key goes to the owner of the first point at or after
its hash; walking on gives the next distinct usable owners, so a down server's
keys go where they would if it were removed. The whole key is hashed (nginx
takes an IPv4 /24; pass the prefix for that); ``None`` hashes as ``b""``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence
from typing import Protocol

Key = bytes | str | None

KINDS: tuple[str, ...] = ("round_robin", "weighted", "least_conn", "random_two", "ip_hash")
"""Every valid ``balance`` value, for config validation."""

POINTS_PER_WEIGHT = 160
"""Ring points per unit of weight for ``ip_hash`` (libketama's figure)."""


class Balancer(Protocol):
    """Picks servers for one new connection.

    candidates(key, usable) -> list[int]: ``key`` is the client address
    (used by ip_hash only), ``usable`` one bool per server. Returns usable
    indices in try order (Rule 1). Raises ValueError if ``len(usable)`` is
    not the server count.
    """

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]: ...


def _check(usable: Sequence[bool], n: int) -> None:
    if len(usable) != n:
        raise ValueError(f"usable has {len(usable)} entries for {n} servers")


def _rotation(start: int, usable: Sequence[bool]) -> list[int]:
    """Usable indices in order ``start, start+1, ...``, wrapping around."""
    n = len(usable)
    return [i for i in itertools.chain(range(start, n), range(start)) if usable[i]]


def _lighter(active: Sequence[int], weights: Sequence[int], i: int, j: int) -> bool:
    """True if server i has strictly less load per unit of weight than j."""
    return active[i] * weights[j] < active[j] * weights[i]


class RoundRobin:
    """Plain rotation over usable servers; weights are ignored."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._next = 0

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        _check(usable, self._n)
        order = _rotation(self._next, usable)
        if order:
            self._next = (order[0] + 1) % self._n
        return order


class RandomOrder:
    """Uniformly random order over usable servers (forward ``rotation = "random"``)."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self._n = n
        self._rng = rng

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        _check(usable, self._n)
        order = [i for i, ok in enumerate(usable) if ok]
        self._rng.shuffle(order)
        return order


class Weighted:
    """nginx's smooth weighted round-robin."""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._current = [0] * len(weights)

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        _check(usable, len(self._weights))
        current, weights = self._current, self._weights
        best, total = -1, 0
        for i, weight in enumerate(weights):
            if not usable[i]:
                continue
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return []
        current[best] -= total
        return _rotation(best, usable)


class LeastConn:
    """Fewest active connections per unit of weight; ties rotate.

    ``active`` (one count per server) is read at each pick, never written:
    the caller increments ``active[i]`` when a connection to server i opens
    and decrements it when that closes. Any ``Sequence[int]`` works: a list,
    an ``array``, a memoryview over shared memory.
    """

    def __init__(self, weights: Sequence[int], active: Sequence[int]) -> None:
        self._weights = list(weights)
        self._active = active
        self._next = 0

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        n = len(self._weights)
        _check(usable, n)
        order = _rotation(self._next, usable)
        if not order:
            return []
        best = order[0]
        for i in order:
            if _lighter(self._active, self._weights, i, best):
                best = i
        self._next = (best + 1) % n
        return _rotation(best, usable)


class RandomTwo:
    """Power of two choices over ``active / weight``; ``active`` as in LeastConn."""

    def __init__(self, weights: Sequence[int], active: Sequence[int], rng: random.Random) -> None:
        self._weights = list(weights)
        self._active = active
        self._rng = rng
        self._uniform = len(set(weights)) == 1

    def _draw_two(self, ids: list[int]) -> tuple[int, int]:
        if self._uniform:
            first, second = self._rng.sample(ids, 2)
            return first, second
        weights = [self._weights[i] for i in ids]
        k = self._rng.choices(range(len(ids)), weights=weights)[0]
        first = ids.pop(k)
        del weights[k]
        return first, self._rng.choices(ids, weights=weights)[0]

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        _check(usable, len(self._weights))
        ids = [i for i, ok in enumerate(usable) if ok]
        if len(ids) < 2:
            return ids
        first, second = self._draw_two(ids)
        if _lighter(self._active, self._weights, second, first):
            first, second = second, first
        rest = [i for i in _rotation(first, usable) if i != first and i != second]
        return [first, second, *rest]


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class IpHash:
    """Consistent hashing on a ring of ``POINTS_PER_WEIGHT * weight`` points per server."""

    def __init__(self, servers: Sequence[tuple[str, int]]) -> None:
        self._n = len(servers)
        points = sorted(
            (_hash64(f"{server_id}#{i}".encode()), index)
            for index, (server_id, weight) in enumerate(servers)
            for i in range(POINTS_PER_WEIGHT * weight)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [owner for _, owner in points]

    def candidates(self, key: Key, usable: Sequence[bool]) -> list[int]:
        _check(usable, self._n)
        wanted = sum(1 for ok in usable if ok)
        if not wanted:
            return []
        data = key.encode() if isinstance(key, str) else key or b""
        start = bisect.bisect_left(self._hashes, _hash64(data))
        seen = [False] * self._n
        order: list[int] = []
        owners = self._owners
        for pos in itertools.chain(range(start, len(owners)), range(start)):
            owner = owners[pos]
            if usable[owner] and not seen[owner]:
                seen[owner] = True
                order.append(owner)
                if len(order) == wanted:
                    break
        return order


def make_balancer(
    kind: str,
    servers: Sequence[tuple[str, int]],
    *,
    active: Sequence[int] | None = None,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer named ``kind`` (one of KINDS) for ``servers``.

    ``servers`` are ``(server_id, weight)`` pairs; ids are stable strings
    such as ``"127.0.0.1:9000"`` (they place ``ip_hash`` ring points).
    ``active`` is required by ``least_conn`` and ``random_two`` (see
    LeastConn); ``rng`` defaults to a fresh ``random.Random()``.

    Raises ValueError for an unknown kind, no servers, a weight < 1, a
    duplicate id, or a missing or wrongly sized ``active``.
    """
    if kind == "random" and servers:
        return RandomOrder(len(servers), rng if rng is not None else random.Random())
    if kind not in KINDS:
        raise ValueError(f"unknown balance {kind!r}; expected one of {', '.join(KINDS)}")
    if not servers:
        raise ValueError("an upstream needs at least one server")
    ids = [server_id for server_id, _ in servers]
    weights = [weight for _, weight in servers]
    if min(weights) < 1:
        raise ValueError("server weights must be >= 1")
    if len(set(ids)) != len(ids):
        raise ValueError("server ids must be unique")
    if kind == "round_robin":
        return RoundRobin(len(servers))
    if kind == "weighted":
        return Weighted(weights)
    if kind == "ip_hash":
        return IpHash(servers)
    if active is None or len(active) != len(servers):
        raise ValueError(f"balance {kind!r} needs one active-connection count per server")
    if kind == "least_conn":
        return LeastConn(weights, active)
    return RandomTwo(weights, active, rng if rng is not None else random.Random())
