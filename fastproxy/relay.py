"""Move bytes between two connected sockets, zero-copy where the kernel allows.

Theory of operation
-------------------
A ``Relay`` joins two non-blocking sockets with two ``_Half`` objects, one per
direction. A half moves bytes ``src -> pipe -> dst`` with ``os.splice``
(splice(2)): the payload never enters Python. When splice cannot be used
(no pipe available, or the kernel answers EINVAL for this pair of fds) the
half copies with ``recv_into`` into its own buffer and ``send``.

Rules that keep it correct:

1. *A half reads only while its pipe (or buffer) is empty.* So EAGAIN from
   the socket->pipe splice always means "socket empty", never "pipe full",
   and the proxy never holds more than one pipe's worth per direction:
   back-pressure is the reader simply not being polled while the writer is
   blocked.
2. *A partial write means the socket buffer is full*: the half stops
   reading, asks for EVENT_WRITE on ``dst`` and resumes when it drains.
3. *EOF is passed on only after the pipe is flushed*: ``shutdown(SHUT_WR)``
   on ``dst`` once every byte read before the FIN has been written. The
   relay ends when both halves have passed their EOF on, or at the first
   error, which is propagated as a reset (SO_LINGER 0) so that neither peer
   mistakes a failed transfer for a complete one.
4. *Pipes are pooled per worker* (``PipePool``) and held by a half only
   while it is moving bytes: an idle connection holds none. The pool is
   capped because the kernel shrinks pipes to one page once a user exceeds
   ``/proc/sys/fs/pipe-user-pages-soft``; past the cap a half copies instead
   and the bytes are counted as ``bytes_copied_no_pipe``.

Interest in the selector is recomputed per socket only when it changes, so
the steady state of a busy relay costs no ``epoll_ctl`` calls.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable

from fastproxy.reactor import EVENT_READ, EVENT_WRITE, Reactor, Timer
from fastproxy.stats.shm import C

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# Rounds of read+write per readiness event before yielding to other fds.
MAX_ROUNDS = 4
COPY_BUFFER = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT,
                           errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNABORTED})


class Pipe:
    __slots__ = ("r", "w", "capacity")

    def __init__(self, r: int, w: int, capacity: int) -> None:
        self.r = r
        self.w = w
        self.capacity = capacity


class PipePool:
    """A per-worker stock of empty pipes, at most ``cap`` in existence.

    ``get()`` returns a pooled pipe, a new one while under the cap, or None.
    ``put()`` takes back an *empty* pipe; ``discard()`` closes one that may
    still hold bytes. ``close()`` closes the pooled ones (in-use pipes are
    owned by their halves until they are put back or discarded).
    """

    def __init__(self, cap: int, size: int, counters: memoryview | None = None) -> None:
        self.cap = cap
        self.size = size
        self.existing = 0
        self._free: list[Pipe] = []
        self._c = counters

    def get(self) -> Pipe | None:
        if self._free:
            pipe = self._free.pop()
            if self._c is not None:
                self._c[C.pipes_pooled] = len(self._free)
            return pipe
        if self.existing >= self.cap:
            return None
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            capacity = fcntl.fcntl(w, F_SETPIPE_SZ, self.size)
        except OSError:  # EPERM past the per-user budget: keep the default
            capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
        self.existing += 1
        if self._c is not None:
            self._c[C.pipes_created] += 1
        return Pipe(r, w, capacity)

    def put(self, pipe: Pipe) -> None:
        self._free.append(pipe)
        if self._c is not None:
            self._c[C.pipes_pooled] = len(self._free)

    def discard(self, pipe: Pipe) -> None:
        os.close(pipe.r)
        os.close(pipe.w)
        self.existing -= 1

    def close(self) -> None:
        while self._free:
            self.discard(self._free.pop())
        if self._c is not None:
            self._c[C.pipes_pooled] = 0


class _Half:
    """One direction of a relay; see the module rules."""

    __slots__ = ("src", "dst", "src_fd", "dst_fd", "pipe", "pending", "eof", "done",
                 "splice", "buf", "offset", "moved", "read_counter", "write_counter",
                 "copy_reason")

    def __init__(self, src: socket.socket, dst: socket.socket,
                 read_counter: int, write_counter: int, splice: bool) -> None:
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pipe: Pipe | None = None
        self.pending = 0          # bytes read but not yet written
        self.eof = False          # src sent FIN
        self.done = False         # FIN passed on to dst
        self.splice = splice
        self.buf: memoryview | None = None
        self.offset = 0
        self.moved = 0            # bytes written to dst
        self.read_counter = read_counter
        self.write_counter = write_counter
        self.copy_reason = C.bytes_copied_no_pipe if splice else C.bytes_copied_unsupported

    @property
    def reading(self) -> bool:
        return not self.eof and self.pending == 0


class Relay:
    """Relay bytes both ways between ``client`` and ``upstream`` until both
    sides have closed, an error occurs, or ``idle_timeout`` passes without a
    byte moving. ``on_close(relay, reason)`` is called once, after both
    sockets are closed; ``reason`` is "done", "reset", "idle" or "error".

    ``initial`` bytes (already read from the client, e.g. after a PROXY
    header) are sent to the upstream first.
    """

    def __init__(self, reactor: Reactor, pool: PipePool, counters: memoryview,
                 client: socket.socket, upstream: socket.socket,
                 on_close: Callable[[Relay, str], None], idle_timeout: float,
                 splice: bool = True) -> None:
        self.reactor = reactor
        self.pool = pool
        self.c = counters
        self.client = client
        self.upstream = upstream
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.up = _Half(client, upstream, C.bytes_in, C.upstream_bytes_out, splice)
        self.down = _Half(upstream, client, C.upstream_bytes_in, C.bytes_out, splice)
        self.closed = False
        self.last_active = reactor.now
        self._masks = {self.up.src_fd: 0, self.down.src_fd: 0}
        self._timer: Timer | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._timer = self.reactor.call_later(self.idle_timeout, self._on_idle_timer)
        self._update_interest()

    def close(self, reason: str = "done") -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for fd, mask in self._masks.items():
            if mask:
                self.reactor.unregister(fd)
        for half in (self.up, self.down):
            if half.pipe is not None:
                if half.pending:
                    self.pool.discard(half.pipe)
                else:
                    self.pool.put(half.pipe)
                half.pipe = None
        if reason != "done":
            set_reset(self.client)
            set_reset(self.upstream)
        self.client.close()
        self.upstream.close()
        self.on_close(self, reason)

    # -- events --------------------------------------------------------------
    def _on_client(self, mask: int) -> None:
        self._on_event(mask, self.up, self.down)

    def _on_upstream(self, mask: int) -> None:
        self._on_event(mask, self.down, self.up)

    def _on_event(self, mask: int, reader: _Half, writer: _Half) -> None:
        """``reader`` reads from this fd; ``writer`` writes to it."""
        self.last_active = self.reactor.now
        try:
            if mask & EVENT_WRITE and writer.pending:
                self._flush(writer)
                if not writer.pending:
                    self._after_flush(writer)
                    if self.closed:
                        return
            if mask & EVENT_READ and reader.reading:
                self._pump(reader)
        except OSError as exc:
            self.close("reset" if exc.errno in _RESET_ERRNOS else "error")
            return
        if not self.closed:
            self._update_interest()

    def _after_flush(self, half: _Half) -> None:
        if half.pipe is not None:
            self.pool.put(half.pipe)
            half.pipe = None
        if half.eof:
            self._pass_eof(half)

    # -- moving bytes ------------------------------------------------------------
    def _pump(self, half: _Half) -> None:
        for _ in range(MAX_ROUNDS):
            n = self._read(half)
            if n <= 0:
                if n == 0:
                    half.eof = True
                    self._pass_eof(half)
                return
            self._flush(half)
            if half.pending:
                return
            if half.pipe is not None:
                full = n >= half.pipe.capacity
                if not full:
                    self.pool.put(half.pipe)
                    half.pipe = None
                    return
            elif half.buf is not None and n < len(half.buf):
                return

    def _read(self, half: _Half) -> int:
        """Read into the empty pipe or buffer: bytes read, 0 at EOF, -1 if none."""
        if half.splice:
            pipe = half.pipe
            if pipe is None:
                pipe = half.pipe = self.pool.get()
            if pipe is not None:
                try:
                    n = os.splice(half.src_fd, pipe.w, pipe.capacity, None, None, SPLICE_FLAGS)
                except BlockingIOError:
                    self.pool.put(pipe)
                    half.pipe = None
                    return -1
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.pool.put(pipe)
                    half.pipe = None
                    half.splice = False  # this fd pair cannot splice: copy from now on
                    half.copy_reason = C.bytes_copied_unsupported
                    return self._read(half)
                half.pending = n
                self.c[half.read_counter] += n
                return n
        if half.buf is None:
            half.buf = memoryview(bytearray(COPY_BUFFER))
        try:
            n = half.src.recv_into(half.buf)
        except BlockingIOError:
            return -1
        half.offset = 0
        half.pending = n
        self.c[half.read_counter] += n
        return n

    def _flush(self, half: _Half) -> None:
        """Write what the half holds; one attempt (a short write means full)."""
        pipe = half.pipe
        try:
            if pipe is not None:
                n = os.splice(pipe.r, half.dst_fd, half.pending, None, None, SPLICE_FLAGS)
                self.c[C.bytes_spliced] += n
            else:
                assert half.buf is not None
                n = half.dst.send(half.buf[half.offset:half.offset + half.pending])
                half.offset += n
                self.c[C.bytes_copied] += n
                self.c[half.copy_reason] += n
        except BlockingIOError:
            return
        half.pending -= n
        half.moved += n
        self.c[half.write_counter] += n

    def _pass_eof(self, half: _Half) -> None:
        if half.done or half.pending:
            return
        half.done = True
        try:
            half.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        other = self.down if half is self.up else self.up
        if other.done:
            self.close("done")

    # -- selector interest ---------------------------------------------------------
    def _update_interest(self) -> None:
        up, down = self.up, self.down
        self._set_mask(up.src_fd, (EVENT_READ if up.reading else 0)
                       | (EVENT_WRITE if down.pending else 0), self._on_client)
        self._set_mask(down.src_fd, (EVENT_READ if down.reading else 0)
                       | (EVENT_WRITE if up.pending else 0), self._on_upstream)

    def _set_mask(self, fd: int, mask: int, callback: Callable[[int], None]) -> None:
        old = self._masks[fd]
        if mask == old:
            return
        if not mask:
            self.reactor.unregister(fd)
        elif not old:
            self.reactor.register(fd, mask, callback)
        else:
            self.reactor.modify(fd, mask, callback)
        self._masks[fd] = mask

    # -- timeouts -------------------------------------------------------------------
    def _on_idle_timer(self) -> None:
        if self.closed:
            return
        remaining = self.last_active + self.idle_timeout - self.reactor.now
        if remaining > 0:
            self._timer = self.reactor.call_later(remaining, self._on_idle_timer)
            return
        self.c[C.idle_timeouts] += 1
        self.close("idle")


def set_reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
