"""The PROXY protocol preamble of a listener with ``proxy_protocol = true``.

Before a connection reaches its mode, this session reads the PROXY header
(v1 or v2, ``fastproxy.proxyproto``) that a load balancer in front sends,
within ``timeouts.client_header``. The mode then sees the original client
address, and the bytes that followed the header as the start of the stream.
A missing or malformed header closes the connection (counted as
``proxy_protocol_errors``): a listener that expects the header must never
mistake a client's own bytes for it.

Only the load balancers listed in ``proxy_protocol_from`` may send the
header (an ``acl.AddressSet``): a connection from any other address is closed
at once and counted the same way, since whoever can send the header can
claim any client address (and so pass ``allow_clients``, steer ``ip_hash``
and write the access log's client field). Only a TCP source (v1 TCP4/TCP6,
v2 INET/INET6) replaces the connection's address; LOCAL, UNKNOWN, UNSPEC
and UNIX headers leave the real peer address in place.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from fastproxy.proxyproto import ProxyDecoder, ProxyProtocolError
from fastproxy.reactor import EVENT_READ
from fastproxy.relay import set_reset
from fastproxy.stats.shm import C

if TYPE_CHECKING:
    from fastproxy.context import ModeHandler, WorkerContext

READ_SIZE = 4096
_TCP_FAMILIES = ("tcp4", "tcp6")


class Preamble:
    """Reads one PROXY header, then hands the connection to ``handler``."""

    def __init__(self, ctx: WorkerContext, handler: ModeHandler, sock: socket.socket,
                 addr: tuple[str, int], timeout: float) -> None:
        self.ctx = ctx
        self.handler = handler
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.timeout = timeout
        self.started = ctx.reactor.now
        self.decoder = ProxyDecoder()
        self.done = False

    def start(self) -> None:
        self.ctx.sessions.add(self)
        self.ctx.reactor.register(self.fd, EVENT_READ, self._on_read)

    def _on_read(self, _mask: int) -> None:
        if self.done:
            return
        try:
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise ProxyProtocolError("connection closed before the PROXY header")
            header = self.decoder.feed(data)
        except BlockingIOError:
            return
        except (OSError, ProxyProtocolError):
            self.ctx.c[C.proxy_protocol_errors] += 1
            self._close()
            return
        if header is None:
            return
        self.done = True
        self.ctx.reactor.unregister(self.fd)
        self.ctx.sessions.discard(self)
        source = header.source
        addr = source if source is not None and header.family in _TCP_FAMILIES else self.addr
        self.handler.accepted(self.sock, addr, self.decoder.rest)

    def check_timeouts(self, now: float) -> None:
        if not self.done and now - self.started >= self.timeout:
            self.ctx.c[C.proxy_protocol_errors] += 1
            self._close()

    def drain(self) -> None:
        """The worker drains: the header still decides where the connection goes."""

    def abort(self) -> None:
        self._close()

    @staticmethod
    def refuse(ctx: WorkerContext, sock: socket.socket) -> None:
        """A connection from an address not allowed to send the header."""
        ctx.c[C.proxy_protocol_errors] += 1
        set_reset(sock)
        sock.close()

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        self.ctx.reactor.forget(self.fd)
        set_reset(self.sock)
        self.sock.close()
        self.ctx.session_closed(self)
