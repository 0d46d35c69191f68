"""Name resolution for a worker's event loop: getaddrinfo in a few threads, never in the loop.

Rules
1. Callbacks run in the loop thread, never synchronously inside ``resolve()``: numeric
   addresses and cache hits are answered from the reactor's call-soon phase, thread results
   from the pipe's read callback, timeouts from a timer. So a caller may hold no state
   invariant across ``resolve()`` and still be re-entrancy safe.
2. A numeric host (``ipaddress`` parses it; brackets and an IPv6 zone allowed) is answered at
   once: no thread, no cache, no counter.
3. Names are cached per worker for ``ttl`` seconds (0 disables the cache) by lowercased name,
   independent of the port: entries hold sockaddrs with port 0 and the caller's port is put in
   on the way out. At most ``CACHE_MAX`` names, the oldest evicted first. Failures are not
   cached.
4. Concurrent lookups of one name are coalesced: one getaddrinfo, every waiter answered.
5. At most ``max_pending`` distinct names may be queued or in flight; beyond that a lookup
   fails at once ("resolver busy") instead of queueing behind a slow DNS server.
6. Each waiter has its own deadline (``timeout``, default 5 s): it is then answered "timed out";
   the thread's late result still fills the cache and answers any later waiters. A name whose
   lookup is stuck stays coalesced, so a dead DNS server costs one thread per name, not one
   per request.
7. ``Cancel.cancel()`` guarantees the callback will not run (e.g. the client went away).
8. Counters (shm, written only from the loop thread, so single-writer): ``dns_lookups`` per
   ``resolve()`` of a name, ``dns_cache_hits`` per name answered from the cache,
   ``dns_failures`` per name answered with an error (a lookup cancelled before its answer
   counts in ``dns_lookups`` only).

Theory of operation
Threads (daemon, started on the first name lookup, so a worker that never resolves has none)
take names from a ``queue.SimpleQueue`` and call ``socket.getaddrinfo(name, None, AF_UNSPEC,
SOCK_STREAM)`` with default flags (no AI_ADDRCONFIG: the caller tries the addresses in order,
so an unusable family costs one failed connect). Each result is appended to a deque
(``append`` is atomic) and one byte is written to a non-blocking pipe; a full pipe already
holds a pending wakeup, so that write may fail harmlessly. The loop drains the pipe and the
deque. ``close()`` takes the lock the threads write under, so a thread finishing after it
can never write into a closed - and perhaps reused - file descriptor.

The Resolver is built in a worker after fork (threads do not survive fork(2)), never in the
master.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from fastproxy.reactor import EVENT_READ, Reactor, Timer
from fastproxy.stats.shm import C

Address = tuple[int, tuple[Any, ...]]            # (family, sockaddr)
Callback = Callable[[list[Address] | None, str | None], None]

CACHE_MAX: Final = 10_000
_Job = tuple[Callable[[], Any], Callable[[Any], None]]
JOIN_TIMEOUT: Final = 1.0      # close() waits at most this long in all for threads to leave


class Cancel:
    """The handle ``resolve()`` returns. ``cancel()``: the callback will not be called; safe
    to call at any time, also after the answer or twice."""

    __slots__ = ("_callback", "_timer", "host", "port")

    def __init__(self, host: str, port: int, callback: Callback) -> None:
        self.host = host
        self.port = port
        self._callback: Callback | None = callback
        self._timer: Timer | None = None

    @property
    def done(self) -> bool:
        """True once answered or cancelled."""
        return self._callback is None

    def cancel(self) -> None:
        self._callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answer(self, addresses: list[Address] | None, error: str | None) -> None:
        """Run the callback, at most once."""
        callback = self._callback
        if callback is not None:
            self.cancel()
            callback(addresses, error)


class Resolver:
    """Non-blocking getaddrinfo for one worker's reactor (module rules 1-8).

    Methods for the caller: ``resolve(host, port, callback) -> Cancel``; ``close()``.
    ``callback(addresses, error)``: ``addresses`` is ``[(family, sockaddr), ...]`` in
    getaddrinfo order, without duplicates, with ``port`` in each sockaddr, and ``error`` None;
    or ``addresses`` None and ``error`` a short text ("Name or service not known", "timed out",
    "resolver busy", ...). Raises: ``resolve`` raises RuntimeError after ``close()``.
    """

    def __init__(self, reactor: Reactor, ttl: float, threads: int = 4,
                 counters: memoryview | None = None, *, timeout: float = 5.0,
                 max_pending: int = 1000) -> None:
        self._reactor = reactor
        self._ttl = ttl
        self._nthreads = max(1, threads)
        self._counters = counters
        self._timeout = timeout
        self._max_pending = max_pending
        self._cache: dict[str, tuple[float, list[Address]]] = {}
        self._waiting: dict[str, list[Cancel]] = {}   # name -> waiters; key = queued/in flight
        # A job is (work, done): ``work()`` runs in a thread, ``done(result)`` in the loop.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._results: collections.deque[tuple[Callable[[Any], None], Any]] = (
            collections.deque())
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        reactor.register(self._rfd, EVENT_READ, self._on_wakeup)
        self._closed = False

    # -- the caller's side ------------------------------------------------------------------
    def resolve(self, host: str, port: int, callback: Callback) -> Cancel:
        if self._closed:
            raise RuntimeError("resolver closed")
        handle = Cancel(host, port, callback)
        numeric = _numeric(host, port)
        if numeric is not None:
            self._reactor.call_soon(lambda: self._deliver(handle, *numeric, count=False))
            return handle
        name = host.lower()
        self._count(C.dns_lookups)
        cached = self._cached(name)
        if cached is not None:
            self._count(C.dns_cache_hits)
            self._reactor.call_soon(lambda: self._deliver(handle, _with_port(cached, port)))
            return handle
        waiters = self._waiting.get(name)
        if waiters is None:
            if len(self._waiting) >= self._max_pending:
                self._reactor.call_soon(lambda: self._deliver(handle, None, "resolver busy"))
                return handle
            waiters = self._waiting[name] = []
            self._start_lookup(name)
        waiters.append(handle)
        handle._timer = self._reactor.call_later(self._timeout, lambda: self._expire(handle))
        return handle

    def peek(self, host: str, port: int) -> list[Address] | None:
        """The cached addresses of the name ``host``, with ``port``, or None.
        Counts nothing: a caller that uses the answer counts it as a lookup
        answered from the cache."""
        cached = self._cached(host.lower())
        return None if cached is None else _with_port(cached, port)

    def close(self) -> None:
        """Drop every pending callback, stop the threads, close the pipe. Idempotent. Idle
        threads are joined; one still inside getaddrinfo exits when that call returns."""
        if self._closed:
            return
        self._closed = True
        for waiters in self._waiting.values():
            for handle in waiters:
                handle.cancel()
        self._waiting.clear()
        self._cache.clear()
        with self._lock:
            self._reactor.unregister(self._rfd)
            os.close(self._rfd)
            os.close(self._wfd)
            self._rfd = self._wfd = -1
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self._results.clear()

    # -- the loop's side --------------------------------------------------------------------
    def _cached(self, name: str) -> list[Address] | None:
        entry = self._cache.get(name)
        if entry is None:
            return None
        if entry[0] > self._reactor.now:
            return entry[1]
        del self._cache[name]
        return None

    def _start_lookup(self, name: str) -> None:
        self._submit(functools.partial(_getaddrinfo, name),
                     lambda result: self._finish(name, *result))

    def run_blocking(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run ``work()`` in a resolver thread and ``done(result)`` in the loop
        (for other blocking calls that must stay off the loop, such as
        password hashing). ``done`` is dropped if the resolver closes first.
        Raises RuntimeError after ``close()``."""
        if self._closed:
            raise RuntimeError("resolver closed")
        self._submit(work, done)

    def _submit(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        if not self._threads:
            for i in range(self._nthreads):
                thread = threading.Thread(target=self._work, name=f"fastproxy-resolver-{i}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        self._jobs.put((work, done))

    def _on_wakeup(self, _mask: int) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass
        while self._results:
            done, result = self._results.popleft()
            done(result)

    def _finish(self, name: str, addresses: list[Address] | None, error: str | None) -> None:
        if addresses is not None and self._ttl > 0:
            self._cache.pop(name, None)
            while len(self._cache) >= CACHE_MAX:
                del self._cache[next(iter(self._cache))]
            self._cache[name] = (self._reactor.now + self._ttl, addresses)
        for handle in self._waiting.pop(name, ()):
            if not handle.done:
                result = None if addresses is None else _with_port(addresses, handle.port)
                self._reactor.call_soon(functools.partial(self._deliver, handle, result, error))

    def _expire(self, handle: Cancel) -> None:
        handle._timer = None            # this timer has fired
        self._deliver(handle, None, "timed out")

    def _deliver(self, handle: Cancel, addresses: list[Address] | None,
                 error: str | None = None, *, count: bool = True) -> None:
        """Answer ``handle`` unless it was cancelled or the resolver closed since."""
        if self._closed or handle.done:
            return
        if error is not None and count:
            self._count(C.dns_failures)
        handle._answer(addresses, error)

    def _count(self, index: int) -> None:
        if self._counters is not None:
            self._counters[index] += 1

    # -- the threads' side ------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            work, done = job
            try:
                result = work()
            except Exception:  # a job must not kill its thread
                result = None
            with self._lock:
                if self._wfd < 0:
                    return
                self._results.append((done, result))
                try:
                    os.write(self._wfd, b"\0")
                except BlockingIOError:
                    pass                # the pipe is full: a wakeup is already pending


def _getaddrinfo(name: str) -> tuple[list[Address] | None, str | None]:
    """Runs in a resolver thread: the addresses (port 0, deduplicated) or an error text."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return None, exc.strerror or "resolution failed"
    except Exception as exc:  # noqa: BLE001 - e.g. UnicodeError (IDNA label > 63 bytes); any
        return None, str(exc) or "invalid name"   # escaping would strand the waiters
    seen: set[tuple[int, tuple[Any, ...]]] = set()
    addresses: list[Address] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        entry = (int(family), tuple(sockaddr))
        if entry not in seen:
            seen.add(entry)
            addresses.append(entry)
    return (addresses, None) if addresses else (None, "no addresses")


def _numeric(host: str, port: int) -> tuple[list[Address] | None, str | None] | None:
    """The answer for a numeric host (rule 2), or None if ``host`` is a name."""
    try:
        addr = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None
    if addr.version == 4:
        return [(socket.AF_INET, (str(addr), port))], None
    assert isinstance(addr, ipaddress.IPv6Address)
    scope = 0
    if addr.scope_id:
        try:
            scope = (int(addr.scope_id) if addr.scope_id.isdigit()
                     else socket.if_nametoindex(addr.scope_id))
        except OSError:
            return None, f"unknown interface {addr.scope_id!r}"
    return [(socket.AF_INET6, (str(addr).partition("%")[0], port, 0, scope))], None


def _with_port(addresses: list[Address], port: int) -> list[Address]:
    return [(family, (sa[0], port, *sa[2:])) for family, sa in addresses]
