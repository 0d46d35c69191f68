"""What every mode handler and session of a worker shares (below the modes).

The worker builds one ``WorkerContext`` after fork; modes and sessions reach
the reactor, counters, pipe pool, idle upstream pool, resolver, access log
and upstream runtimes through it. The worker learns that a session ended
through ``on_session_end`` (it resumes accepting or finishes a drain).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Protocol

from fastproxy.config import Config
from fastproxy.log import AccessLog
from fastproxy.reactor import Reactor
from fastproxy.relay import PipePool
from fastproxy.resolver import Resolver
from fastproxy.stats.shm import C, Segment, SlotView
from fastproxy.upstream.parents import all_upstreams
from fastproxy.upstream.pool import TOTAL_DEFAULT as IDLE_TOTAL
from fastproxy.upstream.pool import IdlePool
from fastproxy.upstream.runtime import UpstreamRuntime


class Session(Protocol):
    """What the worker asks of every open session."""

    def abort(self) -> None: ...
    def drain(self) -> None: ...
    def check_timeouts(self, now: float) -> None: ...


class ModeHandler(Protocol):
    """A listener's mode: takes each accepted connection (with the bytes that
    followed a PROXY header, if any)."""

    def accepted(self, sock: socket.socket, addr: tuple[str, int],
                 initial: bytes = b"") -> None: ...


class WorkerContext:
    """Shared per-worker state; ``sessions`` is every open session."""

    def __init__(self, reactor: Reactor, config: Config, segment: Segment, stats_index: int,
                 server_indexes: Mapping[str, int], pipe_cap: int, pipe_size: int,
                 on_session_end: Callable[[], None]) -> None:
        self.reactor = reactor
        self.config = config
        self.segment = segment
        self.slot: SlotView = segment.slot_view(stats_index)
        self.c = self.slot.c
        self.pool = PipePool(pipe_cap, pipe_size, self.c)
        self.idle = IdlePool(reactor, min(IDLE_TOTAL, config.server.max_connections))
        self.resolver: Resolver | None = None  # made by the first forward listener
        self.hasher: Resolver | None = None    # credential checks (forward listeners with users)
        self.draining = False                  # no new keep-alive: the worker is leaving
        self.access = AccessLog(config.log)
        self.sessions: set[Session] = set()
        self._on_session_end = on_session_end
        self.upstreams = {
            up.name: UpstreamRuntime(up, reactor, segment, self.slot,
                                     [server_indexes[f"{up.name}/{s.address}"]
                                      for s in up.servers])
            for up in all_upstreams(config).values()
        }

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.c[C.conn_active] = len(self.sessions)

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        self.c[C.conn_active] = len(self.sessions)
        self.c[C.conn_closed] += 1
        self._on_session_end()

    def close(self) -> None:
        """Release what the context owns (at worker exit)."""
        self.idle.close()
        for pool in (self.resolver, self.hasher):
            if pool is not None:
                pool.close()
        self.pool.close()
        self.access.close()
