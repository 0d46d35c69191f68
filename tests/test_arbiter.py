"""The master's pure decisions: back-off, steering set, which workers drain."""

from __future__ import annotations

from fastproxy import arbiter
from fastproxy.arbiter import WorkerRecord, WorkerState


def rec(pid: int, slot: int, gen: int, state: WorkerState = WorkerState.READY) -> WorkerRecord:
    return WorkerRecord(pid, slot, gen, stats_index=pid, status_fd=-1, started_at=0.0, state=state)


def test_respawn_delay_grows_and_is_capped() -> None:
    delays = [arbiter.respawn_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] == 0.1 and delays[2] == 0.2
    assert delays == sorted(delays)
    assert max(delays) == arbiter.BACKOFF_MAX


def test_died_young() -> None:
    assert arbiter.died_young(100.0, 100.0 + arbiter.YOUNG_DEATH_SECONDS - 0.01)
    assert not arbiter.died_young(100.0, 100.0 + arbiter.YOUNG_DEATH_SECONDS)


def test_steering_uses_ready_workers_of_live_slots_only() -> None:
    workers = [rec(1, 0, 1), rec(2, 1, 1, WorkerState.STARTING), rec(3, 2, 1),
               rec(4, 3, 1), rec(5, 1, 2)]
    assert arbiter.steering_slots(workers, slots=3) == [0, 1, 2]   # slot 3 is retiring
    assert arbiter.steering_slots([rec(1, 0, 1, WorkerState.DRAINING)], slots=1) == []


def test_workers_to_drain_are_older_generations_of_the_same_slot() -> None:
    new = rec(10, 1, 3)
    workers = [rec(1, 1, 1), rec(2, 1, 2, WorkerState.DRAINING), rec(3, 0, 2), new, rec(4, 1, 3)]
    assert [w.pid for w in arbiter.workers_to_drain(workers, new)] == [1]


def test_surplus_workers_and_highest_slot() -> None:
    workers = [rec(1, 0, 1), rec(2, 1, 1), rec(3, 2, 1, WorkerState.DRAINING), rec(4, 3, 1)]
    assert [w.pid for w in arbiter.surplus_workers(workers, slots=2)] == [4]
    assert arbiter.highest_slot_in_use(workers) == 3
    assert arbiter.highest_slot_in_use([]) == -1
