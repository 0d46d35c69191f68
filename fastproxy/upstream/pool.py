"""Per-worker pool of idle keep-alive connections to upstream servers.

Rules:

1. *LIFO per server.* The most recently used connection is handed out
   first: it is the least likely to have been closed by the server's own
   keep-alive timeout, and the older ones age out.
2. *An idle connection is watched.* It stays registered for EVENT_READ; a
   pooled connection has nothing legitimate to say, so any readiness (EOF,
   a reset, stray bytes) means it cannot carry another request and it is
   closed at once instead of failing the next request that would take it.
3. *Bounded twice.* At most ``limit`` idle connections per upstream (the
   ``keepalive`` setting, like nginx's; a forward proxy's destinations are
   upstreams too), and at most ``total`` in the whole worker, however many
   upstreams there are: a full pool closes its oldest connection (of that
   upstream, else of all) to keep a new one. None is older than
   ``IDLE_SECONDS``; the worker's sweep calls ``expire(now)``. The pool's
   own tables shrink with it: a key with no idle connection has no entry.

``take()`` hands over a socket that is still registered with the reactor
(for the pool's watch callback): the new owner must ``modify`` its
registration, not add one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from fastproxy.reactor import EVENT_READ, Reactor

IDLE_SECONDS = 60.0
TOTAL_DEFAULT = 1024


@dataclass(slots=True, eq=False)   # identity: an entry is a key of the ordered tables below
class _Idle:
    sock: socket.socket
    fd: int
    key: tuple[str, int]      # (upstream name, server index)
    since: float


class IdlePool:
    """Methods for the caller: ``take(key)``, ``put(key, sock, limit, registered)``,
    ``expire(now)``, ``close()``; ``size`` counts idle connections."""

    def __init__(self, reactor: Reactor, total: int = TOTAL_DEFAULT) -> None:
        self.reactor = reactor
        self.total = total
        self._by_key: dict[tuple[str, int], list[_Idle]] = {}          # oldest first
        self._by_upstream: dict[str, dict[_Idle, None]] = {}            # oldest first
        self._all: dict[_Idle, None] = {}                               # oldest first

    @property
    def size(self) -> int:
        return len(self._all)

    def take(self, key: tuple[str, int]) -> socket.socket | None:
        """The most recent idle connection to ``key``, still registered."""
        idle = self._by_key.get(key)
        if not idle:
            return None
        entry = idle[-1]
        self._forget(entry)
        return entry.sock

    def put(self, key: tuple[str, int], sock: socket.socket, limit: int, registered: bool) -> None:
        """Keep ``sock`` for reuse (or close it when the upstream's pool is full)."""
        if limit <= 0 or self.total <= 0:
            self._close(sock, registered)
            return
        same = self._by_upstream.get(key[0])
        if same is not None and len(same) >= limit:
            self._drop(next(iter(same)))
        elif len(self._all) >= self.total:
            self._drop(next(iter(self._all)))
        entry = _Idle(sock, sock.fileno(), key, self.reactor.now)
        callback = lambda _mask, e=entry: self._on_idle_event(e)  # noqa: E731
        if registered:
            self.reactor.modify(entry.fd, EVENT_READ, callback)
        else:
            self.reactor.register(entry.fd, EVENT_READ, callback)
        self._by_key.setdefault(key, []).append(entry)
        self._by_upstream.setdefault(key[0], {})[entry] = None
        self._all[entry] = None

    def expire(self, now: float) -> None:
        while self._all:
            oldest = next(iter(self._all))
            if now - oldest.since < IDLE_SECONDS:
                return
            self._drop(oldest)

    def close(self) -> None:
        for entry in self._all:
            self.reactor.forget(entry.fd)
            entry.sock.close()
        self._by_key.clear()
        self._by_upstream.clear()
        self._all.clear()

    # -- internals ---------------------------------------------------------------
    def _on_idle_event(self, entry: _Idle) -> None:
        """The server closed (or spoke on) an idle connection: drop it."""
        if entry in self._all:  # else taken earlier in this pass: its new owner sees the event
            self._drop(entry)

    def _drop(self, entry: _Idle) -> None:
        self._forget(entry)
        self._close(entry.sock, True)

    def _forget(self, entry: _Idle) -> None:
        del self._all[entry]
        same = self._by_upstream[entry.key[0]]
        del same[entry]
        if not same:
            del self._by_upstream[entry.key[0]]
        queue = self._by_key[entry.key]
        if queue[-1] is entry:      # take(): the newest
            queue.pop()
        elif queue[0] is entry:     # expiry and eviction: the oldest
            del queue[0]
        else:                       # the server closed one in between
            queue.remove(entry)
        if not queue:
            del self._by_key[entry.key]

    def _close(self, sock: socket.socket, registered: bool) -> None:
        if registered:
            self.reactor.forget(sock.fileno())
        sock.close()
