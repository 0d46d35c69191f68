"""Per-worker pool of idle keep-alive connections to upstream servers.

Rules:

1. *LIFO per server.* The most recently used connection is handed out
   first: it is the least likely to have been closed by the server's own
   keep-alive timeout, and the older ones age out.
2. *An idle connection is watched.* It stays registered for EVENT_READ; a
   pooled connection has nothing legitimate to say, so any readiness (EOF,
   a reset, stray bytes) means it cannot carry another request and it is
   closed at once instead of failing the next request that would take it.
3. *Bounded.* At most ``limit`` idle connections per upstream (the
   ``keepalive`` setting, like nginx's), and none older than
   ``IDLE_SECONDS``; the worker's sweep calls ``expire(now)``.

``take()`` hands over a socket that is still registered with the reactor
(for the pool's watch callback): the new owner must ``modify`` its
registration, not add one.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass

from fastproxy.reactor import EVENT_READ, Reactor

IDLE_SECONDS = 60.0


@dataclass(slots=True)
class _Idle:
    sock: socket.socket
    fd: int
    key: tuple[str, int]      # (upstream name, server index)
    since: float


class IdlePool:
    """Methods for the caller: ``take(key)``, ``put(key, sock, limit)``,
    ``expire(now)``, ``close()``; ``size`` counts idle connections."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self._by_key: dict[tuple[str, int], deque[_Idle]] = {}
        self._per_upstream: dict[str, int] = {}
        self.size = 0

    def take(self, key: tuple[str, int]) -> socket.socket | None:
        """The most recent idle connection to ``key``, still registered."""
        idle = self._by_key.get(key)
        if not idle:
            return None
        entry = idle.pop()
        self._forget(entry)
        return entry.sock

    def put(self, key: tuple[str, int], sock: socket.socket, limit: int, registered: bool) -> None:
        """Keep ``sock`` for reuse (or close it when the upstream's pool is full)."""
        if limit <= 0:
            self._close(sock, registered)
            return
        if self._per_upstream.get(key[0], 0) >= limit:
            self._evict_oldest(key[0])
        entry = _Idle(sock, sock.fileno(), key, self.reactor.now)
        callback = lambda _mask, e=entry: self._on_idle_event(e)  # noqa: E731
        if registered:
            self.reactor.modify(entry.fd, EVENT_READ, callback)
        else:
            self.reactor.register(entry.fd, EVENT_READ, callback)
        self._by_key.setdefault(key, deque()).append(entry)
        self._per_upstream[key[0]] = self._per_upstream.get(key[0], 0) + 1
        self.size += 1

    def expire(self, now: float) -> None:
        for queue in list(self._by_key.values()):
            while queue and now - queue[0].since >= IDLE_SECONDS:
                entry = queue.popleft()
                self._forget(entry)
                self._close(entry.sock, True)

    def close(self) -> None:
        for queue in self._by_key.values():
            for entry in queue:
                self.reactor.forget(entry.fd)
                entry.sock.close()
        self._by_key.clear()
        self._per_upstream.clear()
        self.size = 0

    # -- internals ---------------------------------------------------------------
    def _on_idle_event(self, entry: _Idle) -> None:
        """The server closed (or spoke on) an idle connection: drop it."""
        queue = self._by_key.get(entry.key)
        if queue is None or entry not in queue:
            return  # taken earlier in this pass: its new owner sees the event
        queue.remove(entry)
        self._forget(entry)
        self._close(entry.sock, True)

    def _forget(self, entry: _Idle) -> None:
        self._per_upstream[entry.key[0]] -= 1
        self.size -= 1

    def _evict_oldest(self, upstream: str) -> None:
        oldest: _Idle | None = None
        for (name, _), queue in self._by_key.items():
            if name == upstream and queue and (oldest is None or queue[0].since < oldest.since):
                oldest = queue[0]
        if oldest is not None:
            self._by_key[oldest.key].popleft()
            self._forget(oldest)
            self._close(oldest.sock, True)

    def _close(self, sock: socket.socket, registered: bool) -> None:
        if registered:
            self.reactor.forget(sock.fileno())
        sock.close()
