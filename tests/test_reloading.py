"""The reload's bookkeeping apart from processes: what the stats segment can
hold, and how the master-level changes are named in the outcome."""

from __future__ import annotations

from fastproxy.arbiter import WorkerRecord, held_addresses
from fastproxy.config import loads
from fastproxy.reloading import room_problem, settings_changes
from fastproxy.stats.shm import Segment

BASE = """
[server]
workers = {workers}
pidfile = "{pidfile}"
[log]
level = "{level}"
[admin]
listen = "{admin}"
[[listener]]
listen = "127.0.0.1:8000"
mode = "tcp"
upstream = "app"
[upstream.app]
servers = [{servers}]
"""


def config(workers: int = 2, pidfile: str = "a.pid", level: str = "info",
           admin: str = "127.0.0.1:9901", servers: int = 1):  # type: ignore[no-untyped-def]
    names = ", ".join(f'"127.0.0.1:{9000 + i}"' for i in range(servers))
    return loads(BASE.format(workers=workers, pidfile=pidfile, level=level, admin=admin,
                             servers=names))


def segment(max_slots: int, max_servers: int) -> Segment:
    buf = bytearray(Segment.size_for(max_slots, max_servers))
    return Segment.create(buf, max_slots, max_servers, master_pid=1, now=0.0)


def test_the_segment_must_hold_both_generations() -> None:
    seg = segment(max_slots=8, max_servers=4)
    assert room_problem(seg, config(workers=4), live_workers=4) is None
    problem = room_problem(seg, config(workers=5), live_workers=4)
    assert problem is not None and "server.workers = 5" in problem and "restart" in problem


def test_the_segment_must_hold_every_server_name_ever_used() -> None:
    seg = segment(max_slots=8, max_servers=4)
    for i in range(3):
        seg.server_index(f"old/127.0.0.1:{i}")
    assert room_problem(seg, config(servers=1), live_workers=1) is None
    problem = room_problem(seg, config(servers=2), live_workers=1)
    assert problem is not None and "upstream servers" in problem


def test_master_level_changes_are_named() -> None:
    old = config()
    assert settings_changes(old, config(workers=7)) == []
    new = config(pidfile="b.pid", level="debug", admin="127.0.0.1:9902")
    assert settings_changes(old, new) == ["admin endpoint 127.0.0.1:9902", "pidfile b.pid",
                                          "log.level debug"]


def test_held_addresses_are_those_of_live_workers() -> None:
    a = WorkerRecord(1, 0, 1, 0, -1, 0.0, frozenset({"127.0.0.1:1", "127.0.0.1:2"}))
    b = WorkerRecord(2, 0, 2, 1, -1, 0.0, frozenset({"127.0.0.1:2", "127.0.0.1:3"}))
    assert held_addresses([a, b]) == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
    assert held_addresses([]) == set()
