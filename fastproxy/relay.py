"""Move bytes between two connected sockets, zero-copy where the kernel allows.

Theory of operation
-------------------
A ``Relay`` joins two non-blocking sockets with two ``_Half`` objects, one per
direction. A half moves bulk bytes ``src -> pipe -> dst`` with ``os.splice``
(splice(2)): the payload never enters Python. Small messages are cheaper to
copy (one ``recv_into`` into the worker's scratch buffer and one ``send``:
splice's pipe bookkeeping costs more than copying a few hundred bytes), so a
half copies until a read fills the scratch buffer, splices from then on, and
goes back to copying when a spliced read comes up short. It also copies when
no pipe is available or the kernel refuses to splice the fd pair (EINVAL).
Copied bytes are counted by reason: ``small``, ``no_pipe``, ``unsupported``.

Rules that keep it correct:

1. *A half reads only while nothing it read is still unwritten.* So EAGAIN from
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

Size: about 550 lines, over the 500 budget: the bidirectional ``Relay`` and
the one-way body ``Mover`` share the pipe pool and the splice/copy rules, and
are kept together so those rules are stated once.

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

from fastproxy.config import ServerSection
from fastproxy.reactor import EVENT_READ, EVENT_WRITE, Reactor
from fastproxy.stats.shm import C

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# Rounds of read+write per readiness event before yielding to other fds.
MAX_ROUNDS = 4
# Scratch buffer for copied reads; a read that fills it switches a half to splice.
COPY_BUFFER = 65536
# A spliced read shorter than this counts as small; SMALL_READS of them in
# a row switch the half back to copying (one short read in a bulk transfer
# only means the proxy caught up with the sender).
SMALL_READ = 16384
SMALL_READS = 8
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

    ``get()`` returns a pooled pipe, a new one while under the cap, or None
    (also when no pipe can be made: out of descriptors, the caller copies).
    ``put()`` takes back an *empty* pipe; ``discard()`` closes one that may
    still hold bytes. ``close()`` closes the pooled ones (in-use pipes are
    owned by their halves until they are put back or discarded).
    """

    def __init__(self, cap: int, size: int, counters: memoryview | None = None) -> None:
        self.scratch = memoryview(bytearray(COPY_BUFFER))  # shared by every copy round
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
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # EMFILE/ENFILE: the caller copies instead (bytes_copied_no_pipe)
            return None
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

    __slots__ = ("src", "dst", "src_fd", "dst_fd", "pipe", "pending", "leftover", "eof",
                 "done", "splice_ok", "bulk", "shorts", "moved", "read_counter",
                 "write_counter", "copy_reason")

    def __init__(self, src: socket.socket, dst: socket.socket,
                 read_counter: int, write_counter: int, splice: bool) -> None:
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pipe: Pipe | None = None   # held only while it has bytes in flight
        self.pending = 0                # bytes read but not yet written
        self.leftover = b""             # copied bytes a short send left behind
        self.eof = False                # src sent FIN
        self.done = False               # FIN passed on to dst
        self.splice_ok = splice         # False once the kernel refused (EINVAL)
        self.bulk = False               # reads fill buffers: splice them
        self.shorts = 0                 # short spliced reads in a row
        self.moved = 0                  # bytes written to dst
        self.read_counter = read_counter
        self.write_counter = write_counter
        self.copy_reason = C.bytes_copied_small  # why ``leftover`` was copied

    @property
    def reading(self) -> bool:
        return not self.eof and self.pending == 0


class Relay:
    """Relay bytes both ways between ``client`` and ``upstream`` until both
    sides have closed, an error occurs, or the owner calls
    ``close("idle")`` after ``idle_expired(now)`` says no byte moved for
    ``idle_timeout`` (owners sweep their sessions periodically instead of
    arming one timer per connection). ``on_close(relay, reason)`` is called
    once, after both sockets are closed; ``reason`` is "done", "reset",
    "idle" or "error".
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

    # -- lifecycle ---------------------------------------------------------
    def start(self, upstream_registered_mask: int = 0, *, client_registered_mask: int = 0,
              to_upstream: bytes = b"", to_client: bytes = b"") -> None:
        """Begin relaying.

        ``*_registered_mask``: the fd is already in the selector with this
        mask (from connecting, or from the HTTP session handing over a
        tunnel), so its interest is modified rather than added.
        ``to_upstream`` / ``to_client``: bytes already read from the other
        side, sent before anything else.
        """
        self._masks[self.up.src_fd] = client_registered_mask
        self._masks[self.down.src_fd] = upstream_registered_mask
        # Take the registrations over from their previous owner (no syscall:
        # the selector only swaps the callback when the mask is unchanged).
        if client_registered_mask:
            self.reactor.modify(self.up.src_fd, client_registered_mask, self._on_client)
        if upstream_registered_mask:
            self.reactor.modify(self.down.src_fd, upstream_registered_mask, self._on_upstream)
        for half, data in ((self.up, to_upstream), (self.down, to_client)):
            if data:
                half.leftover = data
                half.pending = len(data)
        self._update_interest()

    def abort(self) -> None:
        """After an internal error: close both ends; the owner hears of it."""
        self.close("error")

    def close(self, reason: str = "done") -> None:
        if self.closed:
            return
        self.closed = True
        for fd, mask in self._masks.items():
            if mask:
                self.reactor.forget(fd)  # closed just below
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
        up = self.up
        if mask == EVENT_READ and not (up.bulk or up.pending or up.eof or self.closed):
            self.last_active = self.reactor.now
            self._small_read(up)  # the common case, without the general dispatch
        else:
            self._on_event(mask, up, self.down)

    def _on_upstream(self, mask: int) -> None:
        down = self.down
        if mask == EVENT_READ and not (down.bulk or down.pending or down.eof or self.closed):
            self.last_active = self.reactor.now
            self._small_read(down)
        else:
            self._on_event(mask, down, self.up)

    def _on_event(self, mask: int, reader: _Half, writer: _Half) -> None:
        """``reader`` reads from this fd; ``writer`` writes to it."""
        if self.closed:  # closed earlier in this pass
            return
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
        # A read that was fully written changes no interest: skip the work.
        if not self.closed and (reader.pending or reader.eof or mask & EVENT_WRITE):
            self._update_interest()

    def _small_read(self, half: _Half) -> None:
        """One copy round; anything unusual (a full buffer, a short write,
        EOF) continues on the general path."""
        try:
            n = self._copy_round(half, C.bytes_copied_small if half.splice_ok
                                 else C.bytes_copied_unsupported)
            if n == COPY_BUFFER and not half.pending:
                if half.splice_ok:
                    half.bulk = True
                self._pump(half)
        except OSError as exc:
            self.close("reset" if exc.errno in _RESET_ERRNOS else "error")
            return
        if not self.closed and (half.pending or half.eof):
            self._update_interest()

    def _after_flush(self, half: _Half) -> None:
        if half.pipe is not None:
            self.pool.put(half.pipe)
            half.pipe = None
        if half.eof:
            self._pass_eof(half)

    # -- moving bytes ------------------------------------------------------------
    def _pump(self, half: _Half) -> None:
        """Move what ``src`` has, up to MAX_ROUNDS reads, until EAGAIN, EOF or
        a short write. Small reads are copied through the worker's scratch
        buffer (cheaper than splice for a few hundred bytes, measured in
        bench/RESULTS.md); once a read fills the scratch buffer the half
        switches to splice, and back when a spliced read comes up short."""
        for _ in range(MAX_ROUNDS):
            if half.bulk and half.splice_ok:
                pipe = half.pipe or self.pool.get()
                if pipe is not None:
                    if not self._splice_round(half, pipe):
                        return
                    continue
                n = self._copy_round(half, C.bytes_copied_no_pipe)
            else:
                n = self._copy_round(half, C.bytes_copied_small if half.splice_ok
                                     else C.bytes_copied_unsupported)
            if n < COPY_BUFFER or half.pending:
                return
            if half.splice_ok:
                half.bulk = True

    def _splice_round(self, half: _Half, pipe: Pipe) -> bool:
        """One socket->pipe->socket round; True to keep reading."""
        half.pipe = pipe
        try:
            n = os.splice(half.src_fd, pipe.w, pipe.capacity, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            n = -1
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            half.splice_ok = False  # this fd pair cannot splice: copy from now on
            n = -2
        if n <= 0:
            self.pool.put(pipe)
            half.pipe = None
            if n == 0:
                self._eof(half)
            return n == -2
        self.c[half.read_counter] += n
        half.pending = n
        self._flush(half)
        if half.pending:
            return False
        if n < pipe.capacity:
            self.pool.put(pipe)
            half.pipe = None
            if n < SMALL_READ:
                half.shorts += 1
                if half.shorts >= SMALL_READS:
                    half.bulk = False
                    half.shorts = 0
            else:
                half.shorts = 0
            return False
        return True

    def _copy_round(self, half: _Half, reason: int) -> int:
        """One recv_into+send round through the shared scratch buffer; the
        bytes read (a short send keeps the rest in ``leftover``), 0 at EOF
        or when nothing was there."""
        scratch = self.pool.scratch
        try:
            n = half.src.recv_into(scratch)
        except BlockingIOError:
            return 0
        if n == 0:
            self._eof(half)
            return 0
        c = self.c
        c[half.read_counter] += n
        try:
            sent = half.dst.send(scratch[:n] if n < COPY_BUFFER else scratch)
        except BlockingIOError:
            sent = 0
        if sent:
            half.moved += sent
            c[half.write_counter] += sent
            c[C.bytes_copied] += sent
            c[reason] += sent
        if sent < n:
            half.copy_reason = reason
            half.leftover = bytes(scratch[sent:n])
            half.pending = n - sent
        return n

    def _flush(self, half: _Half) -> None:
        """Write what the half holds; one attempt (a short write means full)."""
        c = self.c
        try:
            if half.pipe is not None:
                n = os.splice(half.pipe.r, half.dst_fd, half.pending, None, None, SPLICE_FLAGS)
                c[C.bytes_spliced] += n
            else:
                n = half.dst.send(half.leftover)
                half.leftover = half.leftover[n:]
                c[C.bytes_copied] += n
                c[half.copy_reason] += n
        except BlockingIOError:
            return
        half.pending -= n
        half.moved += n
        c[half.write_counter] += n

    def _eof(self, half: _Half) -> None:
        half.eof = True
        self._pass_eof(half)

    def _pass_eof(self, half: _Half) -> None:
        if half.done or half.pending:
            return
        half.done = True
        other = self.down if half is self.up else self.up
        if other.done:
            self.close("done")  # close() sends the FIN: no shutdown needed
            return
        try:
            half.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # -- selector interest ---------------------------------------------------------
    def _update_interest(self) -> None:
        up, down = self.up, self.down
        self._set_mask(up.src_fd, (EVENT_READ if up.reading else 0)
                       | (EVENT_WRITE if down.pending else 0), self._on_client)
        self._set_mask(down.src_fd, (EVENT_READ if down.reading else 0)
                       | (EVENT_WRITE if up.pending else 0), self._on_upstream)

    def _set_mask(self, fd: int, mask: int, callback: Callable[[int], None]) -> None:
        old = self._masks[fd]
        if mask != old:
            self.reactor.set_interest(fd, old, mask, callback)
            self._masks[fd] = mask

    # -- timeouts -------------------------------------------------------------------
    def idle_expired(self, now: float) -> bool:
        return now - self.last_active >= self.idle_timeout


def set_reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


WANT_READ, WANT_WRITE, DONE = 1, 2, 3


class Mover:
    """Move a message body one way, ``src -> pipe -> dst``, outside the parser.

    Moves exactly ``remaining`` bytes, or until EOF when ``remaining`` is
    None (a response delimited by the close of the connection). ``step()``
    goes as far as it can without blocking and says what it waits for:
    WANT_READ, WANT_WRITE, or DONE (everything moved, or EOF: see ``eof``).
    ``on_read(n)`` is told of every run read, so the owner can account the
    bytes to its parser (``body_consumed``). The same rules as ``Relay``
    hold: read only with an empty pipe, one write attempt per step, copy
    through the pool's scratch buffer when no pipe is free.
    """

    __slots__ = ("pool", "c", "src", "dst", "remaining", "on_read", "pipe", "pending",
                 "leftover", "eof", "moved", "write_counter")

    def __init__(self, pool: PipePool, counters: memoryview, src: socket.socket,
                 dst: socket.socket, remaining: int | None, on_read: Callable[[int], None],
                 write_counter: int) -> None:
        self.pool = pool
        self.c = counters
        self.src = src
        self.dst = dst
        self.remaining = remaining
        self.on_read = on_read
        self.pipe: Pipe | None = None
        self.pending = 0
        self.leftover = b""
        self.eof = False
        self.moved = 0
        self.write_counter = write_counter

    def step(self) -> int:
        """Raises OSError from either socket (the owner aborts)."""
        while True:
            if self.pending and not self._write():
                return WANT_WRITE
            if self.remaining == 0 or self.eof:
                self.release()
                return DONE
            if not self._read():
                return WANT_READ

    def _read(self) -> bool:
        want = COPY_BUFFER if self.remaining is None else min(self.remaining, 1 << 20)
        pipe = self.pipe or self.pool.get()
        if pipe is not None:
            self.pipe = pipe
            try:
                n = os.splice(self.src.fileno(), pipe.w, min(want, pipe.capacity),
                              None, None, SPLICE_FLAGS)
            except BlockingIOError:
                return False
        else:
            scratch = self.pool.scratch
            try:
                n = self.src.recv_into(scratch, min(want, len(scratch)))
            except BlockingIOError:
                return False
            self.leftover = bytes(scratch[:n])
        if n == 0:
            if self.remaining is not None:
                raise ConnectionResetError(errno.ECONNRESET, "peer closed mid-body")
            self.eof = True
            return True
        if self.remaining is not None:
            self.remaining -= n
        self.pending = n
        self.on_read(n)
        return True

    def _write(self) -> bool:
        """One write attempt; True when nothing is left pending."""
        try:
            if self.leftover:
                n = self.dst.send(self.leftover)
                self.leftover = self.leftover[n:]
                self.c[C.bytes_copied] += n
                self.c[C.bytes_copied_no_pipe] += n
            else:
                assert self.pipe is not None
                n = os.splice(self.pipe.r, self.dst.fileno(), self.pending, None, None,
                              SPLICE_FLAGS)
                self.c[C.bytes_spliced] += n
        except BlockingIOError:
            return False
        self.pending -= n
        self.moved += n
        self.c[self.write_counter] += n
        return self.pending == 0

    def release(self) -> None:
        """Give the pipe back (or close it if bytes are stuck in it)."""
        if self.pipe is not None:
            if self.pending and not self.leftover:
                self.pool.discard(self.pipe)
            else:
                self.pool.put(self.pipe)
            self.pipe = None


# Splice pipes: 1 MiB halves the syscalls per byte of 256 KiB ones (bulk
# relay measured at 3.5 vs 2.3 GB per CPU-second, bench/RESULTS.md). A user
# without CAP_SYS_RESOURCE shares pipe-user-pages-soft (64 MiB by default)
# among all its pipes, so then smaller pipes buy more concurrent transfers.
PIPE_SIZE = 1 << 20
PIPE_SIZE_UNPRIVILEGED = 256 * 1024
PIPES_PER_WORKER_MAX = 1024  # bytes in flight per worker stay within 1 GiB


def pipe_budget(server: ServerSection, slots: int) -> tuple[int, int]:
    """(pipes per worker, pipe size): root is not held to the per-user
    pipe budget; other users share pipe-user-pages-soft."""
    cap = min(PIPES_PER_WORKER_MAX, max(64, server.max_connections // 2))
    if os.geteuid() == 0 and not server.user:
        return cap, PIPE_SIZE
    try:
        with open("/proc/sys/fs/pipe-user-pages-soft") as f:
            pages = int(f.read())
    except (OSError, ValueError):
        pages = 16384
    if pages == 0:
        return cap, PIPE_SIZE_UNPRIVILEGED
    total = pages * 4096 * 9 // 10 // PIPE_SIZE_UNPRIVILEGED
    return max(4, min(cap, total // max(1, 2 * slots))), PIPE_SIZE_UNPRIVILEGED
