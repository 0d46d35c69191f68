"""Getting a connection to an upstream: candidates in order, retries, connect without blocking.

Used by every mode that talks to upstreams (tcp, http, forward), so the retry
rule has one implementation:

1. The peer's balancer gives the candidates in the order to try; at most
   ``1 + retries`` of them are tried (nginx's ``proxy_next_upstream_tries``).
2. For each candidate, ``take_idle(server)`` may hand over an idle
   keep-alive connection (http modes); otherwise a new socket connects
   without blocking. A connect that is refused, unreachable, or not done
   within the connect timeout (checked by the owner's sweep through
   ``check_timeout``) counts as a failure of that server (passive health)
   and the next candidate is tried.
3. ``again(same_server)`` restarts the walk after a connection failed
   before any response byte: on the same server with a fresh connection
   when the failed one was an idle one (the server had closed it), else on
   the next candidate within ``retries``.

Callbacks: ``on_connected(sock, server, registered_mask, reused)`` — the
socket is the owner's from then on; if ``registered_mask`` is non-zero the fd
is still registered with that mask and the owner must ``modify`` it —, and
``on_failed(timed_out)`` when no candidate is left.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any, Protocol

from fastproxy.reactor import EVENT_READ, EVENT_WRITE, Reactor
from fastproxy.stats.shm import C, H, SlotView

_IN_PROGRESS = (0, errno.EINPROGRESS)


class Peer(Protocol):
    """Where connections go: an upstream pool, a forward destination or the parents."""

    name: str
    retries: int
    keepalive: int
    names: list[str]
    sockaddrs: list[tuple[Any, int]]

    def candidates(self, client_ip: str) -> list[int]: ...
    def record_success(self, i: int) -> None: ...
    def record_failure(self, i: int) -> None: ...
    def session_closed(self, i: int, sent: int, received: int) -> None: ...


class Dialer:
    """One walk over a peer's candidates; see the module docstring."""

    __slots__ = ("reactor", "slot", "peer", "candidates", "attempts", "server", "sock",
                 "started", "on_connected", "on_failed", "take_idle", "bind")

    def __init__(self, reactor: Reactor, slot: SlotView, peer: Peer, candidates: list[int],
                 on_connected: Callable[[socket.socket, int, int, bool], None],
                 on_failed: Callable[[bool], None],
                 take_idle: Callable[[int], socket.socket | None] | None = None,
                 bind: str | None = None) -> None:
        self.reactor = reactor
        self.slot = slot
        self.peer = peer
        self.candidates = candidates
        self.attempts = 0
        self.server = -1
        self.sock: socket.socket | None = None   # a connect in progress
        self.started = 0.0
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.take_idle = take_idle
        self.bind = bind  # source address for new connections

    def next(self, timed_out: bool = False) -> None:
        """Try the next candidate (the first one on the first call)."""
        c = self.slot.c
        if self.attempts >= 1 + self.peer.retries or self.attempts >= len(self.candidates):
            self.on_failed(timed_out)
            return
        if self.attempts:
            c[C.upstream_retries] += 1
        self.server = server = self.candidates[self.attempts]
        self.attempts += 1
        self.started = self.reactor.now
        if self.take_idle is not None:
            sock = self.take_idle(server)
            if sock is not None:
                self.peer.record_success(server)
                self.on_connected(sock, server, EVENT_READ, True)
                return
        sockaddr, family = self.peer.sockaddrs[server]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError:  # EMFILE, ENFILE, ENOBUFS: ours, not the server's fault
            self.slot.c[C.upstream_connect_errors] += 1
            self.next()
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.bind is not None:
                sock.bind((self.bind, 0))
            err = sock.connect_ex(sockaddr)
        except OSError:
            sock.close()
            self._failed(C.upstream_connect_errors)
            return
        if err in _IN_PROGRESS:
            self.sock = sock
            self.reactor.register(sock.fileno(), EVENT_WRITE, self._on_event)
        else:
            sock.close()
            self._failed(C.upstream_connect_errors)

    def again(self, same_server: bool) -> None:
        """Start over after a connection failed before any response byte."""
        if same_server:
            self.attempts -= 1
            self.take_idle = None  # a fresh connection this time
        else:
            self.peer.record_failure(self.server)
        self.next()

    def check_timeout(self, now: float, timeout: float) -> bool:
        """Called by the owner's sweep; True when the connect timed out (next tried)."""
        if self.sock is None or now - self.started < timeout:
            return False
        self._abandon()
        self._failed(C.upstream_connect_timeouts, timed_out=True)
        return True

    def cancel(self) -> None:
        """Stop: close a connect in progress."""
        if self.sock is not None:
            self._abandon()

    def responsible(self) -> object | None:
        """Who answers for an error in a callback of this dial: the owner
        its ``on_connected`` belongs to (which cancels the dial when aborted)."""
        return Reactor.owner_of(self.on_connected)

    def _on_event(self, _mask: int) -> None:
        sock = self.sock
        if sock is None:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._abandon()
            self._failed(C.upstream_connect_errors)
            return
        self.sock = None
        self.slot.observe(H.upstream_connect_seconds, self.reactor.now - self.started)
        self.peer.record_success(self.server)
        self.on_connected(sock, self.server, EVENT_WRITE, False)

    def _abandon(self) -> None:
        sock, self.sock = self.sock, None
        assert sock is not None
        self.reactor.forget(sock.fileno())  # closed just below
        sock.close()

    def _failed(self, counter: int, timed_out: bool = False) -> None:
        self.slot.c[counter] += 1
        self.peer.record_failure(self.server)
        self.next(timed_out)
