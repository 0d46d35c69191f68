"""One upstream pool as a worker sees it: addresses, balancer, passive health
and per-server counters in shared memory.

Passive health: ``PASSIVE_FAILS`` failed connects in a row keep a server out
of rotation for ``PASSIVE_DOWN_SECONDS``; an active check (run by the master,
verdicts in shared memory) that sees the server up after the mark overrules
it. The usable-server view is refreshed at most every ``USABLE_TTL``.
"""

from __future__ import annotations

import socket
import time

from fastproxy.config import Upstream
from fastproxy.reactor import Reactor
from fastproxy.stats.shm import N_SERVER_COUNTERS, S, Segment, SlotView
from fastproxy.upstream.balance import make_balancer

PASSIVE_FAILS = 3
PASSIVE_DOWN_SECONDS = 10.0
USABLE_TTL = 0.1  # how stale a worker's view of health verdicts may get
_SESSIONS, _ACTIVE, _SENT, _RECEIVED = S.sessions, S.active, S.bytes_sent, S.bytes_received


class UpstreamRuntime:
    """Methods for the caller: ``candidates(client_ip)`` (server indexes in the
    order to try), ``record_success / record_failure / session_closed``."""

    def __init__(self, config: Upstream, reactor: Reactor, segment: Segment, slot: SlotView,
                 shm_indexes: list[int]) -> None:
        self.config = config
        self.name = config.name
        self.retries = config.retries
        self.keepalive = config.keepalive
        self.bind: str | None = None  # new connections leave from any address
        self.reactor = reactor
        self.segment = segment
        self.slot = slot
        self.names = [str(s.address) for s in config.servers]
        self.sockaddrs = [resolve(s.address.host, s.address.port) for s in config.servers]
        self.shm = shm_indexes
        self._base = [index * N_SERVER_COUNTERS for index in shm_indexes]  # per-server counters
        n = len(config.servers)
        self.active = [0] * n
        self.fails = [0] * n
        self.down_until = [0.0] * n
        self._checked: list[bool] = []
        self.marked_at = [0.0] * n  # unix time of each passive mark
        self._usable: list[bool] = []
        self._single = n == 1
        self._usable_until = 0.0
        self.balancer = make_balancer(
            config.balance, [(name, s.weight) for name, s in zip(self.names, config.servers)],
            active=self.active)

    def candidates(self, client_ip: str) -> list[int]:
        now = self.reactor.now
        if now >= self._usable_until:
            self._refresh_usable(now)
        if self._single:  # every balancer picks the one server when it may
            return [0] if self._usable[0] or self._checked[0] else []
        found = self.balancer.candidates(client_ip, self._usable)
        if not found:  # every server passively marked: try them anyway, as nginx does
            found = self.balancer.candidates(client_ip, self._checked)
        return found

    def _refresh_usable(self, now: float) -> None:
        """Re-read the health verdicts (shared memory) and passive marks; at
        most every USABLE_TTL, and at once after a passive mark changes."""
        segment = self.segment
        verdicts = [segment.server_health(i) for i in self.shm]
        for i, verdict in enumerate(verdicts):
            # An active check that saw the server (come back) up after it was
            # passively marked overrules the mark.
            if (self.down_until[i] > now and verdict == 1
                    and segment.server_health_since(self.shm[i]) > self.marked_at[i]):
                self.down_until[i] = 0.0
                self.fails[i] = 0
        self._checked = [v != 2 for v in verdicts]
        self._usable = [ok and until <= now for ok, until in zip(self._checked, self.down_until)]
        marks = [until for until in self.down_until if until > now]
        self._usable_until = min([now + USABLE_TTL, *marks])

    def record_failure(self, i: int) -> None:
        self.slot.servers[self._base[i] + S.failures] += 1
        self.fails[i] += 1
        if self.fails[i] >= PASSIVE_FAILS:
            self.down_until[i] = self.reactor.now + PASSIVE_DOWN_SECONDS
            self.marked_at[i] = time.time()
            self._usable_until = 0.0

    def record_success(self, i: int) -> None:
        self.fails[i] = 0
        if self.down_until[i]:
            self.down_until[i] = 0.0
            self._usable_until = 0.0
        self.active[i] += 1
        servers = self.slot.servers
        base = self._base[i]
        servers[base + _SESSIONS] += 1
        servers[base + _ACTIVE] += 1

    def session_closed(self, i: int, sent: int, received: int) -> None:
        self.active[i] -= 1
        servers = self.slot.servers
        base = self._base[i]
        servers[base + _ACTIVE] -= 1
        servers[base + _SENT] += sent
        servers[base + _RECEIVED] += received


def resolve(host: str, port: int) -> tuple[tuple[str, int], int]:
    """``((address, port), family)`` of a configured server (at worker start)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sockaddr = info[4]
    return (str(sockaddr[0]), int(sockaddr[1])), int(info[0])
