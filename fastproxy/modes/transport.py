"""The byte transport under a connection: what the HTTP engine reads and writes through.

``PlainTransport`` wraps a connected non-blocking TCP socket. The engine
calls ``recv``, ``send``, ``shutdown_write``, ``close`` and ``reset`` and
asks ``can_splice`` before moving a body with splice(2) (``relay.Mover``,
``relay.Relay``) through ``sock``. A TLS transport (SPEC "TLS") will be one
more class with the same methods over ``ssl.SSLObject`` and memory BIOs,
answering ``can_splice = False`` so that bodies are copied through it; the
engine does not change.

The socket's bound methods are stored on the transport, so a read or a write
costs no more than calling the socket directly.

``linger_close`` is nginx's lingering close: after a final answer that left
request bytes unread, closing at once would make the kernel answer the
client's next segment with RST, which can destroy the answer before the
client reads it (RFC 9112 §9.6). So the write side is shut (the client sees
the answer and the FIN), what the client still sends is read and dropped,
and the socket closes at its EOF or after ``LINGER_SECONDS``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from fastproxy.reactor import EVENT_READ, Reactor, Timer
from fastproxy.relay import set_reset

READ_SIZE = 65536         # one recv
MAX_BUFFER = 256 * 1024   # stop reading a side while the other side's output holds this
LINGER_SECONDS = 5.0     # nginx lingering_timeout
LINGER_READ = 65536
LINGER_MAX_BYTES = 1 << 20  # dropped bytes after which the close is forced


class PlainTransport:
    """A plain TCP connection; see the module docstring."""

    __slots__ = ("sock", "fd", "recv", "send", "can_splice")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.recv: Callable[[int], bytes] = sock.recv
        self.send: Callable[[bytes | bytearray | memoryview], int] = sock.send
        self.can_splice = True

    def has_input(self) -> bool:
        """Bytes (or an EOF) wait to be read: peeked, nothing taken."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True   # an error to read: the read path deals with it
        return True

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the peer must not take what it got as complete."""
        set_reset(self.sock)
        self.sock.close()


class _Lingering:
    __slots__ = ("reactor", "transport", "timer", "dropped", "on_closed")

    def __init__(self, reactor: Reactor, transport: PlainTransport,
                 on_closed: Callable[[], None], seconds: float) -> None:
        self.reactor = reactor
        self.transport = transport
        self.dropped = 0
        self.on_closed = on_closed
        self.timer: Timer = reactor.call_later(seconds, self.close)

    def on_read(self, _mask: int) -> None:
        try:
            data = self.transport.recv(LINGER_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.dropped += len(data)
        if not data or self.dropped > LINGER_MAX_BYTES:
            self.close()

    def close(self) -> None:
        if self.transport.fd < 0:
            return
        self.timer.cancel()
        self.reactor.forget(self.transport.fd)
        self.transport.close()
        self.transport.fd = -1
        self.on_closed()


def linger_close(reactor: Reactor, transport: PlainTransport, registered: bool,
                 on_closed: Callable[[], None], seconds: float = LINGER_SECONDS) -> None:
    """Shut the write side, drop what the client still sends, then close
    (at its EOF or after ``seconds``); ``on_closed()`` when closed.
    ``registered``: the fd is already in the selector (its callback is replaced)."""
    transport.shutdown_write()
    lingering = _Lingering(reactor, transport, on_closed, seconds)
    if registered:
        reactor.modify(transport.fd, EVENT_READ, lingering.on_read)
    else:
        reactor.register(transport.fd, EVENT_READ, lingering.on_read)
