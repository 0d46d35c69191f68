"""One connection to an upstream server, as the HTTP engine uses it.

An ``UpstreamConnection`` owns its socket, the ``ResponseParser`` of what the
server sends, and the bytes waiting to be sent to it. It lives longer than an
exchange: after a complete exchange it is *parked* (still attached to the
client connection, for that client's next request) and, once the client has
been idle for ``PARK_SECONDS``, given to the worker's idle pool
(``upstream.pool.IdlePool``), from which any client's exchange may take it
(``take``). Rules:

1. A connection is *active* for its server (``peer.record_success`` ..
   ``peer.session_closed``) exactly while an exchange uses it; ``release``
   is the one place that ends it, with the bytes sent and received.
2. The pool key is ``(peer.name, server)``: a forward proxy's peers are
   destinations (with the egress address in the name), so a reused
   connection goes where and leaves from where the new exchange wants.
3. A parked or pooled connection is always watched for reading: a server
   that closes it is noticed at once, not by the next request.
"""

from __future__ import annotations

import socket
from typing import Any

from fastproxy.http import ResponseParser
from fastproxy.http import State as ParserState
from fastproxy.http.memo import HeadMemo
from fastproxy.reactor import Reactor
from fastproxy.relay import set_reset
from fastproxy.upstream.pool import IdlePool

PARK_SECONDS = 1.0


class UpstreamConnection:
    """See the module docstring. ``mask`` is the fd's registered interest."""

    __slots__ = ("sock", "fd", "peer", "server", "parser", "out", "mask", "sent", "received",
                 "active", "reused", "eof", "send", "recv")

    def __init__(self, sock: socket.socket, peer: Any, server: int, registered_mask: int,
                 reused: bool, memo: HeadMemo | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.send = sock.send
        self.recv = sock.recv
        self.peer = peer
        self.server = server
        self.parser = ResponseParser(memo=memo)
        self.out = bytearray()
        self.mask = registered_mask
        self.sent = 0
        self.received = 0
        self.active = True       # counted for its server (rule 1)
        self.reused = reused     # taken from the pool or kept from the client's last exchange
        self.eof = False         # the server closed its side

    def reusable(self) -> bool:
        """Whether the connection may carry another exchange now."""
        return (not self.out and not self.parser.buffer
                and self.parser.state is ParserState.DONE)

    def release(self) -> None:
        """End the connection's active count for its server (rule 1)."""
        if self.active:
            self.active = False
            self.peer.session_closed(self.server, self.sent, self.received)
            self.sent = self.received = 0

    def reuse(self) -> None:
        """Take the attached connection for the client's next exchange (active again)."""
        self.active = True
        self.reused = True
        self.parser.start_next()

    def to_pool(self, reactor: Reactor, pool: IdlePool) -> None:
        """Give the connection to the worker's idle pool (which watches it)."""
        self.release()
        pool.put((self.peer.name, self.server), self.sock, self.peer.keepalive, bool(self.mask))
        self.mask = 0
        self.fd = -1

    def close(self, reactor: Reactor, reset: bool = False) -> None:
        self.release()
        if self.fd < 0:
            return
        if self.mask:
            reactor.forget(self.fd)
        if reset:
            set_reset(self.sock)
        self.sock.close()
        self.fd = -1
        self.mask = 0
