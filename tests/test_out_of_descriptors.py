"""A worker out of descriptors: its timeout sweep survives a session that
raises (EMFILE from a retry's socket(), a bug): that session is closed, the
others are still checked, and the sweep is armed again (it used to stop for
good); a splice pipe that cannot be made means copying, not a reset; an
upstream socket that cannot be made fails the attempt, not the worker."""

from __future__ import annotations

import errno
import os
import socket
from types import SimpleNamespace

from fastproxy.modes.dialer import Dialer
from fastproxy.reactor import Reactor
from fastproxy.relay import PipePool
from fastproxy.stats.shm import N_COUNTERS, C
from fastproxy.worker import SWEEP_INTERVAL, Worker


class Session:
    def __init__(self, ctx: SimpleNamespace, fail: bool) -> None:
        self.ctx, self.fail = ctx, fail
        self.checked = self.aborted = 0

    def check_timeouts(self, now: float) -> None:
        self.checked += 1
        if self.fail:
            raise OSError(24, "Too many open files")

    def abort(self) -> None:
        self.aborted += 1
        self.ctx.session_closed(self)


def test_a_failing_session_does_not_stop_the_sweep(reactor: Reactor) -> None:
    counters = [0] * N_COUNTERS
    expired: list[float] = []
    ctx = SimpleNamespace(sessions=set(), c=counters,
                          idle=SimpleNamespace(expire=expired.append))
    ctx.session_closed = ctx.sessions.discard
    bad, good = Session(ctx, fail=True), Session(ctx, fail=False)
    ctx.sessions.update((bad, good))
    worker = Worker.__new__(Worker)
    worker.reactor, worker.ctx = reactor, ctx

    worker._sweep()
    assert (bad.checked, bad.aborted, good.checked) == (1, 1, 1)
    assert ctx.sessions == {good} and counters[C.internal_errors] == 1
    assert expired == [reactor.now]

    reactor.now += SWEEP_INTERVAL
    for timer in list(reactor._timers):   # the sweep armed itself again
        if timer.when <= reactor.now and not timer.cancelled:
            timer.callback()
    assert good.checked == 2 and len(expired) == 2


def test_a_pipe_that_cannot_be_made_means_copying(monkeypatch) -> None:
    """EMFILE from pipe2() gives no pipe (the relay then copies, counted as
    bytes_copied_no_pipe) instead of an OSError that reset the relay."""
    def no_more_files(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    pool = PipePool(4, 65536)
    monkeypatch.setattr(os, "pipe2", no_more_files)
    assert pool.get() is None and pool.existing == 0


def test_a_socket_that_cannot_be_made_fails_the_attempt(monkeypatch, reactor: Reactor) -> None:
    """socket() raising EMFILE used to escape the dialer (from the sweep, a
    traceback; from an event, an aborted client). Now every candidate fails
    in turn and the owner hears ``on_failed`` (a 502), the servers unmarked."""
    def no_more_files(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    failures: list[int] = []
    peer = SimpleNamespace(retries=1, sockaddrs=[(("127.0.0.1", 9), 2), (("127.0.0.1", 9), 2)],
                           record_failure=failures.append)
    counters = [0] * N_COUNTERS
    outcome: list[bool] = []
    dialer = Dialer(reactor, SimpleNamespace(c=counters), peer, [0, 1],  # type: ignore[arg-type]
                    lambda *a: outcome.append(True), lambda timed_out: outcome.append(False))
    monkeypatch.setattr(socket, "socket", no_more_files)
    dialer.next()
    assert outcome == [False]
    assert counters[C.upstream_connect_errors] == 2 and counters[C.upstream_retries] == 1
    assert failures == []
