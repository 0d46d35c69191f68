"""Pure decisions of the master: no syscalls here (STYLE principle 8).

- ``respawn_delay``: how long to wait before respawning a slot whose worker
  died, given how many times in a row it died young.
- ``steering_slots``: which slots' sockets the kernel may hand new
  connections to.
- ``workers_to_drain``: which workers to retire once a slot's new worker is
  ready.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

YOUNG_DEATH_SECONDS = 5.0
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"


@dataclass
class WorkerRecord:
    """The master's view of one worker process."""

    pid: int
    slot: int
    generation: int
    stats_index: int
    status_fd: int
    started_at: float
    holds: frozenset[str] = frozenset()   # the listen addresses whose sockets it has
    state: WorkerState = WorkerState.STARTING
    expected_exit: bool = False
    failure: str = ""                      # why it failed to start, as it reported


@dataclass
class SlotHistory:
    """Deaths in a row of young workers in one slot."""

    young_deaths: int = 0
    respawn_pending: bool = False


def respawn_delay(young_deaths: int) -> float:
    """0 for the first death, then 0.1 s doubling up to 10 s."""
    if young_deaths <= 1:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (young_deaths - 2)))


def died_young(started_at: float, now: float) -> bool:
    return now - started_at < YOUNG_DEATH_SECONDS


def steering_slots(workers: Iterable[WorkerRecord], slots: int) -> list[int]:
    """Slots below ``slots`` that have a ready worker accepting."""
    return sorted({w.slot for w in workers if w.state is WorkerState.READY and w.slot < slots})


def workers_to_drain(workers: Iterable[WorkerRecord], ready: WorkerRecord) -> list[WorkerRecord]:
    """Older-generation workers of the slot that ``ready`` now serves."""
    return [w for w in workers
            if w.slot == ready.slot and w.generation < ready.generation
            and w.state is not WorkerState.DRAINING]


def surplus_workers(workers: Iterable[WorkerRecord], slots: int) -> list[WorkerRecord]:
    """Workers of slots that no longer exist (after TTOU or a smaller reload)."""
    return [w for w in workers if w.slot >= slots and w.state is not WorkerState.DRAINING]


def highest_slot_in_use(workers: Iterable[WorkerRecord]) -> int:
    return max((w.slot for w in workers), default=-1)


def held_addresses(workers: Iterable[WorkerRecord]) -> set[str]:
    """Listen addresses some live worker still has sockets of."""
    return {key for w in workers for key in w.holds}
