"""The event loop: timers (lazy cancel, compaction), call_soon batches,
I/O dispatch, signal dispatch through the wakeup fd."""

from __future__ import annotations

import os
import signal
import functools
import socket

from fastproxy.reactor import COMPACT_MIN, EVENT_READ, Reactor


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_timers_fire_in_order_and_cancelled_ones_do_not() -> None:
    clock = FakeClock()
    r = Reactor(clock)
    fired: list[str] = []
    r.call_later(2.0, lambda: fired.append("b"))
    r.call_later(1.0, lambda: fired.append("a"))
    r.call_later(1.5, lambda: fired.append("x")).cancel()
    clock.t += 3.0
    r.run_once()
    assert fired == ["a", "b"]
    r.close()


def test_cancelled_timers_are_compacted() -> None:
    clock = FakeClock()
    r = Reactor(clock)
    keep = r.call_later(100.0, lambda: None)
    for _ in range(COMPACT_MIN * 4):
        r.call_later(60.0, lambda: None).cancel()
    r.call_soon(lambda: None)  # makes run_once poll without blocking
    r.run_once()
    assert len(r._timers) < COMPACT_MIN
    assert keep in r._timers
    r.close()


def test_call_soon_runs_only_the_batch_queued_before_the_pass() -> None:
    r = Reactor(FakeClock())
    ran: list[int] = []

    def first() -> None:
        ran.append(1)
        r.call_soon(lambda: ran.append(2))

    r.call_soon(first)
    r.run_once()
    assert ran == [1]
    r.run_once()
    assert ran == [1, 2]
    r.close()


def test_io_callback_gets_the_mask_and_errors_do_not_escape() -> None:
    r = Reactor()
    a, b = socket.socketpair()
    seen: list[int] = []
    errors: list[BaseException] = []
    r.on_error = lambda exc, callback: errors.append(exc)

    def on_read(mask: int) -> None:
        seen.append(mask)
        a.recv(10)
        raise RuntimeError("boom")

    r.register(a.fileno(), EVENT_READ, on_read)
    b.send(b"x")
    r.run_once()
    assert seen == [EVENT_READ]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    r.close()
    a.close()
    b.close()


def test_signals_are_dispatched_from_the_loop() -> None:
    r = Reactor()
    got: list[str] = []
    old = signal.getsignal(signal.SIGUSR2)
    try:
        r.handle_signals({signal.SIGUSR2: lambda: got.append("usr2")})
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(10):
            r.call_soon(lambda: None)
            r.run_once()
            if got:
                break
        assert got == ["usr2"]
    finally:
        r.close()
        signal.signal(signal.SIGUSR2, old)


def test_owner_of_a_callback() -> None:
    class Session:
        def on_event(self, mask: int) -> None: ...

    class Dial:
        def __init__(self, session: Session) -> None:
            self.session = session

        def on_event(self, mask: int) -> None: ...

        def responsible(self) -> object:
            return self.session

    session = Session()
    assert Reactor.owner_of(session.on_event) is session
    assert Reactor.owner_of(functools.partial(session.on_event, 1)) is session
    assert Reactor.owner_of(Dial(session).on_event) is session   # who answers for the dial
    assert Reactor.owner_of(lambda: None) is None
