"""fastproxy.stats.shm over a bytearray, plus one real shared mmap across a fork."""

from __future__ import annotations

import json
import mmap
import multiprocessing
import struct
from pathlib import Path

import pytest

from fastproxy.stats import shm
from fastproxy.stats.shm import (
    COUNTERS,
    GAUGES,
    GEN_RING,
    HIST_BOUNDS,
    N_BUCKETS,
    N_SERVER_COUNTERS,
    C,
    H,
    Health,
    S,
    Segment,
    SegmentFull,
    SlotState,
)


def make(max_slots: int = 4, max_servers: int = 8) -> tuple[bytearray, Segment]:
    buf = bytearray(Segment.size_for(max_slots, max_servers))
    return buf, Segment.create(buf, max_slots, max_servers, master_pid=4242, now=1000.0)


def test_index_constants_follow_the_tuples() -> None:
    assert [getattr(C, n) for n in COUNTERS] == list(range(len(COUNTERS)))
    assert H.request_seconds == 0 and S.active == 1
    assert GAUGES <= set(COUNTERS)


def test_layout_sections_are_aligned_and_disjoint() -> None:
    lay = shm.Layout(3, 5)
    assert lay.block_size % 8 == 0 and lay.slot_size % 64 == 0
    assert lay.servers_offset == shm.HEADER_SIZE
    assert lay.servers_offset + 5 * shm.SERVER_ENTRY_SIZE <= lay.retired_offset
    assert lay.retired_offset + lay.block_size <= lay.ring_offset
    assert lay.ring_offset + GEN_RING * lay.ring_entry_size == lay.slots_offset
    assert lay.total_size == lay.slots_offset + 3 * lay.slot_size == Segment.size_for(3, 5)
    with pytest.raises(ValueError):
        shm.Layout(0, 1)


def test_segment_path() -> None:
    assert shm.segment_path(123) == "/dev/shm/fastproxy.123.stats"


def test_create_attach_roundtrip() -> None:
    buf, seg = make(3, 5)
    seg.set_generation(7)
    other = Segment.attach(buf)
    assert other.layout == seg.layout
    assert other.master_pid() == 4242 and other.generation() == 7
    snap = other.snapshot()
    assert snap["master_start_time"] == 1000.0 and snap["consistent"]
    assert snap["workers"] == [] and snap["servers"] == []
    assert Segment.attach(bytes(buf)).generation() == 7          # read-only buffers work


def test_create_zeroes_and_rejects_small_buffer() -> None:
    buf = bytearray(b"\xff" * Segment.size_for(2, 2))
    Segment.create(buf, 2, 2, master_pid=1, now=0.0)
    assert Segment.attach(buf).snapshot()["totals"]["counters"]["requests"] == 0
    with pytest.raises(ValueError, match="needs"):
        Segment.create(bytearray(100), 2, 2, master_pid=1)


def test_attach_rejects_bad_magic_version_schema_and_short() -> None:
    buf, _ = make()
    with pytest.raises(ValueError, match="too short"):
        Segment.attach(buf[:100])
    with pytest.raises(ValueError, match="truncated"):
        Segment.attach(buf[:-8])
    bad = bytearray(buf)
    bad[:8] = b"NOTSTATS"
    with pytest.raises(ValueError, match="magic"):
        Segment.attach(bad)
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, 8, 99)
    with pytest.raises(ValueError, match="version is 99"):
        Segment.attach(bad)
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, 48, len(COUNTERS) + 1)
    with pytest.raises(ValueError, match="n_counters"):
        Segment.attach(bad)
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, 80, 12345)
    with pytest.raises(ValueError, match="schema_hash"):
        Segment.attach(bad)


def test_claim_slots_until_full() -> None:
    _, seg = make(max_slots=2)
    assert seg.claim_slot(pid=10, generation=1, listener_slot=0, now=5.0) == 0
    assert seg.claim_slot(pid=11, generation=1, listener_slot=1, now=5.0) == 1
    with pytest.raises(SegmentFull):
        seg.claim_slot(pid=12, generation=1, listener_slot=0, now=5.0)
    workers = seg.snapshot()["workers"]
    assert [(w["pid"], w["state"], w["listener_slot"]) for w in workers] == [
        (10, "starting", 0), (11, "starting", 1)]
    seg.set_slot_pid(0, 20)                          # claimed before the fork
    seg.set_slot_state(0, SlotState.DRAINING)
    first = seg.snapshot()["workers"][0]
    assert (first["pid"], first["state"]) == (20, "draining")
    seg.retire_slot(1)
    assert seg.claim_slot(pid=13, generation=2, listener_slot=1, now=6.0) == 1


def test_slot_view_writes_and_heartbeat() -> None:
    _, seg = make()
    i = seg.claim_slot(pid=10, generation=1, listener_slot=0, now=5.0)
    view = seg.slot_view(i)
    view.set_state(SlotState.RUNNING)
    view.heartbeat(9.5)
    view.c[C.bytes_in] += 100
    view.c[C.requests] += 1
    w = seg.snapshot()["workers"][0]
    assert (w["state"], w["heartbeat"], w["start_time"]) == ("running", 9.5, 5.0)
    assert w["counters"]["bytes_in"] == 100 and w["counters"]["requests"] == 1


def test_retire_folds_counters_but_not_gauges() -> None:
    _, seg = make()
    srv = seg.server_index("app/127.0.0.1:9000")
    i = seg.claim_slot(pid=10, generation=1, listener_slot=0, now=5.0)
    view = seg.slot_view(i)
    view.c[C.conn_accepted] += 5
    view.c[C.conn_active] += 3
    view.c[C.pipes_pooled] += 2
    view.observe(H.request_seconds, 0.02)
    view.servers[srv * N_SERVER_COUNTERS + S.sessions] += 4
    view.servers[srv * N_SERVER_COUNTERS + S.active] += 1
    before = seg.snapshot()["totals"]
    assert before["counters"]["conn_active"] == 3
    seg.retire_slot(i)
    snap = seg.snapshot()
    totals = snap["totals"]
    assert totals["counters"]["conn_accepted"] == 5
    assert totals["counters"]["conn_active"] == 0 and totals["counters"]["pipes_pooled"] == 0
    assert totals["hists"]["request_seconds"]["count"] == 1
    assert totals["hists"]["request_seconds"]["sum"] == pytest.approx(0.02)
    assert totals["servers"][srv] == {"sessions": 4, "active": 0, "failures": 0,
                                      "bytes_sent": 0, "bytes_received": 0}
    assert snap["workers"] == [] and snap["fold_seq"] % 2 == 0 and snap["fold_seq"] > 0
    assert view.c[C.conn_accepted] == 0                          # slot zeroed for reuse


def test_snapshot_totals_are_retired_plus_live() -> None:
    _, seg = make()
    a = seg.claim_slot(pid=10, generation=1, listener_slot=0, now=0.0)
    b = seg.claim_slot(pid=11, generation=2, listener_slot=0, now=0.0)
    va, vb = seg.slot_view(a), seg.slot_view(b)
    va.c[C.requests] += 7
    va.c[C.conn_active] += 1
    seg.retire_slot(a)
    vb.c[C.requests] += 3
    vb.c[C.conn_active] += 2
    vb.observe(H.session_seconds, 1.0)
    snap = seg.snapshot()
    assert snap["totals"]["counters"]["requests"] == 10
    assert snap["totals"]["counters"]["conn_active"] == 2
    assert snap["generations"][1]["counters"]["requests"] == 7
    assert snap["generations"][2]["counters"]["requests"] == 3
    assert snap["generations"][2]["hists"]["session_seconds"]["count"] == 1
    json.dumps(snap)


def test_generation_ring_accumulates_and_evicts_oldest() -> None:
    _, seg = make(max_slots=2)
    for gen in [1, 1, *range(2, GEN_RING + 2)]:          # 9 generations, gen 1 twice
        i = seg.claim_slot(pid=100 + gen, generation=gen, listener_slot=0, now=0.0)
        seg.slot_view(i).c[C.requests] += gen
        if gen == 1:
            assert seg.snapshot()["generations"][1]["counters"]["requests"] >= 1
        seg.retire_slot(i)
    gens = seg.snapshot()["generations"]
    assert sorted(gens) == list(range(2, GEN_RING + 2))   # gen 1 evicted
    assert gens[5]["counters"]["requests"] == 5
    totals = seg.snapshot()["totals"]["counters"]["requests"]
    assert totals == 1 + 1 + sum(range(2, GEN_RING + 2))  # all-time keeps gen 1
    i = seg.claim_slot(pid=999, generation=1, listener_slot=0, now=0.0)   # a straggler
    seg.slot_view(i).c[C.requests] += 1000
    seg.retire_slot(i)                                    # older than the whole ring: skipped
    snap = seg.snapshot()
    assert 1 not in snap["generations"] and snap["totals"]["counters"]["requests"] == totals + 1000


def test_histogram_bucket_boundaries() -> None:
    _, seg = make()
    view = seg.slot_view(seg.claim_slot(pid=1, generation=1, listener_slot=0, now=0.0))
    for seconds in (0.0, 0.0005, 0.00051, 0.001, 60.0, 60.5, 1e9, -1.0):
        view.observe(H.upstream_connect_seconds, seconds)
    hist = seg.snapshot()["totals"]["hists"]["upstream_connect_seconds"]
    expected = [0] * N_BUCKETS
    expected[0] = 3            # 0.0, 0.0005 (le is inclusive), -1 clamped to 0
    expected[1] = 2            # 0.00051, 0.001
    expected[len(HIST_BOUNDS) - 1] = 1    # 60.0 in le="60.0"
    expected[-1] = 2           # +Inf
    assert hist["buckets"] == expected
    assert hist["count"] == 8 and hist["sum"] == pytest.approx(0.0005 + 0.00051 + 0.001
                                                               + 60 + 60.5 + 1e9)


def test_server_index_append_only() -> None:
    buf, seg = make(max_servers=2)
    a = seg.server_index("app/127.0.0.1:9000")
    b = seg.server_index("app/127.0.0.1:9001")
    assert (a, b) == (0, 1)
    assert seg.server_index("app/127.0.0.1:9000") == 0
    seg.set_server_in_use(a, False)                 # removed by a reload: keeps its index
    assert seg.server_index("app/127.0.0.1:9000") == 0
    with pytest.raises(SegmentFull):
        seg.server_index("api/10.0.0.1:80")
    with pytest.raises(ValueError):
        seg.server_index("x" * 97)
    seg.set_server_health(b, Health.DOWN, now=50.0, fails=3)
    seg.set_server_health(b, Health.DOWN, now=60.0, fails=4)
    servers = seg.snapshot()["servers"]
    assert [(s["index"], s["name"], s["in_use"], s["health"]) for s in servers] == [
        (0, "app/127.0.0.1:9000", False, "unknown"), (1, "app/127.0.0.1:9001", True, "down")]
    assert (seg.server_health(a), seg.server_health(b)) == (Health.UNKNOWN.value,
                                                            Health.DOWN.value)
    assert servers[1]["health_changed_at"] == 50.0 and servers[1]["consecutive_fails"] == 4
    fresh = Segment.attach(buf)                 # a re-attached master sees the same table
    assert fresh.server_index("app/127.0.0.1:9001") == 1


def test_reload_result_fields() -> None:
    _, seg = make()
    assert (seg.reload_seq(), seg.reload_status(), seg.reload_message()) == (0, 0, "")
    seg.set_reload_result(False, "config error: upstream.app.balance: expected one of ...")
    assert seg.reload_seq() == 1 and seg.reload_status() == shm.ReloadStatus.FAILED.value
    assert seg.reload_message().startswith("config error: upstream.app.balance")
    seg.set_reload_result(True, "")
    snap = seg.snapshot()
    assert (snap["reload_seq"], snap["reload_status"], snap["reload_message"]) == (2, "ok", "")
    seg.set_reload_result(False, "é" * 2000)           # 4000 bytes: cut on a character
    assert seg.reload_message() == "é" * 1024


def test_snapshot_retries_while_folding() -> None:
    buf, seg = make()
    struct.pack_into("<Q", buf, 136, 1)                 # a fold that never finishes
    snap = seg.snapshot(retries=3)
    assert snap["consistent"] is False


def _child_writes(seg: Segment, index: int) -> None:
    """Runs in a forked child: the mapping (and ``seg``) are inherited, not pickled."""
    view = seg.slot_view(index)
    view.set_state(SlotState.RUNNING)
    for _ in range(1000):
        view.c[C.bytes_out] += 3
    view.observe(H.request_seconds, 0.003)


def test_shared_mmap_across_fork(tmp_path: Path) -> None:
    path = tmp_path / "fastproxy.test.stats"
    size = Segment.size_for(2, 4)
    path.write_bytes(b"\0" * size)
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED)
    seg = Segment.create(mm, 2, 4, master_pid=1, now=0.0)
    index = seg.claim_slot(pid=0, generation=1, listener_slot=0, now=0.0)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_child_writes, args=(seg, index))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    snap = seg.snapshot()
    assert snap["workers"][0]["state"] == "running"
    assert snap["totals"]["counters"]["bytes_out"] == 3000
    with open(path, "rb") as f:                         # an unrelated reader, read-only
        ro = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    reader = Segment.attach(ro)
    assert reader.snapshot()["totals"]["hists"]["request_seconds"]["buckets"][3] == 1
    reader.release()
    ro.close()
    seg.release()
    mm.close()
