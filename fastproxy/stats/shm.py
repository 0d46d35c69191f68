"""The fixed, versioned shared-memory stats layout, over any buffer.

The master creates the segment (a file in /dev/shm, mmapped MAP_SHARED) before
forking; workers inherit the mapping; ``fastproxy stats`` maps the same file
read-only. This module never opens, maps or forks: it is handed a buffer (an
mmap in production, a ``bytearray`` in tests).

Layout (all integers little-endian u64, floats f64, everything 8-aligned so a
store is one atomic machine write on x86-64; sections and slots 64-aligned, so
two workers never write the same cache line)::

    header (4096)   magic, version, sizes, schema hash, master pid/start,
                    generation, reload_seq/status/message, fold_seq, updated_at
    server table    max_servers x (name[96], in_use, health, changed_at, fails, oks)
    retired         one counter block: every retired worker ever
    ring            GEN_RING x (tag: used, generation) + counter block
    slots           max_slots x (slot header[64] + counter block)

    counter block = COUNTERS | HISTS x (buckets[len(HIST_BOUNDS)+1], count, sum)
                    | max_servers x SERVER_COUNTERS

Rule 1 -- one writer per word. A worker is the only writer of its slot's
counter block and heartbeat; it increments ``c[C.x] += n`` on a memoryview
with no lock and no method call. The master is the only writer of the header,
the server table, the retired block and the ring, and fills a slot's header at
claim. The slot's state word is the one exception (master: starting, draining,
free; worker: running): it is reported, never used for control, so a lost race
only misreports a state for a moment. Readers never write.

Rule 2 -- readers sum. A total is the retired block plus every live slot. A
torn read across words is harmless: each word is monotonic (counters) or a
current value (gauges), so a reader sees a slightly stale but sane figure.

Rule 3 -- folding is under a seqlock. When a worker has exited, the master
adds its slot into the retired totals and zeroes the slot. Mid-fold, a reader
could count the slot twice (already folded, not yet zeroed) or not at all. So
the master makes ``fold_seq`` odd before the fold and even after it; a reader
retries while it sees an odd value or a change across its read (bounded).

Rule 4 -- gauges are not folded. ``conn_active``, ``pipes_pooled`` and the
per-server ``active`` describe the present; a dead worker has no open
connections, so its last gauge values are dropped with the slot. Folding them
would leave phantom connections in the totals forever.

Rule 5 -- the master retires a slot only after reaping its worker
(waitpid), so nobody writes the slot during the fold.

Rule 6 -- server indices are append-only for a master's lifetime; a server
removed by a reload keeps its entry with ``in_use = 0``, so a per-server
counter means the same server in every generation.

Size: about 600 lines, over the 500 budget, because the writer, the folder
and the reader share the private offset tables; split apart, those offsets
would become a public interface of their own.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import mmap
import struct
import time
import types
from bisect import bisect_left
from typing import Any

COUNTERS = ("conn_accepted", "conn_active", "conn_closed", "requests",
            "responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx", "responses_5xx",
            "bytes_in", "bytes_out", "upstream_bytes_in", "upstream_bytes_out",
            "bytes_spliced", "bytes_copied", "bytes_copied_no_pipe",
            "bytes_copied_unsupported", "bytes_copied_small",
            "upstream_connect_errors", "upstream_connect_timeouts", "upstream_no_server",
            "upstream_retries",
            "accept_errors", "accept_paused", "idle_timeouts", "client_errors", "internal_errors",
            "pipes_created", "pipes_pooled",
            "proxy_protocol_errors", "forward_requests", "tunnels", "denied", "auth_failures",
            "dns_lookups", "dns_cache_hits", "dns_failures",
            "denied_client", "denied_port", "denied_destination", "auth_checks")
GAUGES = frozenset({"conn_active", "pipes_pooled"})
HISTS = ("request_seconds", "session_seconds", "upstream_connect_seconds")
HIST_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SERVER_COUNTERS = ("sessions", "active", "failures", "bytes_sent", "bytes_received")
SERVER_GAUGES = frozenset({"active"})

# Hot-path indices: ``view.c[C.bytes_in] += n``, ``view.observe(H.request_seconds, dt)``,
# ``view.servers[i * N_SERVER_COUNTERS + S.sessions] += 1``.
C = types.SimpleNamespace(**{name: i for i, name in enumerate(COUNTERS)})
H = types.SimpleNamespace(**{name: i for i, name in enumerate(HISTS)})
S = types.SimpleNamespace(**{name: i for i, name in enumerate(SERVER_COUNTERS)})

N_COUNTERS = len(COUNTERS)
N_HISTS = len(HISTS)
N_BUCKETS = len(HIST_BOUNDS) + 1            # the last bucket is +Inf
N_SERVER_COUNTERS = len(SERVER_COUNTERS)
HIST_STRIDE = N_BUCKETS + 2                 # buckets, count, sum (f64)
GEN_RING = 8

MAGIC = b"FPXSTAT1"
LAYOUT_VERSION = 2
HEADER_SIZE = 4096
SERVER_NAME_SIZE = 96
SERVER_ENTRY_SIZE = SERVER_NAME_SIZE + 5 * 8
RELOAD_MESSAGE_OFFSET = 1024
RELOAD_MESSAGE_SIZE = 2048
SLOT_HEADER_SIZE = 64                       # state, pid, generation, start, heartbeat, listener
RING_TAG_SIZE = 64                          # used, generation
_U64_MAX = (1 << 64) - 1
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")

# A change of any name or bound changes the hash, so a reader built from other
# tuples refuses the segment instead of mislabelling its numbers.
SCHEMA_HASH = int.from_bytes(hashlib.blake2b(
    repr((COUNTERS, HISTS, HIST_BOUNDS, SERVER_COUNTERS)).encode(), digest_size=8).digest(),
    "little")

# Field tables: name -> (struct format, offset from the record's start).
_Table = dict[str, tuple[str, int]]
_HEADER: _Table = {
    "magic": ("8s", 0), "version": ("Q", 8), "header_size": ("Q", 16), "max_slots": ("Q", 24),
    "slot_size": ("Q", 32), "max_servers": ("Q", 40), "n_counters": ("Q", 48),
    "n_hist_buckets": ("Q", 56), "n_hists": ("Q", 64), "n_server_counters": ("Q", 72),
    "schema_hash": ("Q", 80), "total_size": ("Q", 88), "master_pid": ("Q", 96),
    "master_start_time": ("d", 104), "generation": ("Q", 112), "reload_seq": ("Q", 120),
    "reload_status": ("Q", 128), "fold_seq": ("Q", 136), "updated_at": ("d", 144),
    "n_servers": ("Q", 152),
}
_SERVER: _Table = {"in_use": ("Q", 96), "health": ("Q", 104), "health_changed_at": ("d", 112),
                   "consecutive_fails": ("Q", 120), "consecutive_successes": ("Q", 128)}
_SLOT: _Table = {"state": ("Q", 0), "pid": ("Q", 8), "generation": ("Q", 16),
                 "start_time": ("d", 24), "heartbeat": ("d", 32), "listener_slot": ("Q", 40)}
_SUM_INDEX = tuple(N_COUNTERS + h * HIST_STRIDE + N_BUCKETS + 1 for h in range(N_HISTS))
_SERVERS_BASE = N_COUNTERS + N_HISTS * HIST_STRIDE

Buffer = bytearray | bytes | memoryview | mmap.mmap


class SlotState(enum.Enum):
    FREE = 0
    STARTING = 1
    RUNNING = 2
    DRAINING = 3


class Health(enum.Enum):
    UNKNOWN = 0
    UP = 1
    DOWN = 2


class ReloadStatus(enum.Enum):
    NONE = 0
    OK = 1
    FAILED = 2


class SegmentFull(RuntimeError):
    """No free worker slot, or no room for another server entry."""


def segment_path(master_pid: int) -> str:
    """Where the master of ``master_pid`` keeps its stats segment."""
    return f"/dev/shm/fastproxy.{int(master_pid)}.stats"


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


def _code(value: enum.Enum | int) -> int:
    return int(value.value) if isinstance(value, enum.Enum) else int(value)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Byte offsets of every section, computed from (max_slots, max_servers)."""

    max_slots: int
    max_servers: int
    block_size: int = dataclasses.field(init=False)
    servers_offset: int = dataclasses.field(init=False)
    retired_offset: int = dataclasses.field(init=False)
    ring_offset: int = dataclasses.field(init=False)
    ring_entry_size: int = dataclasses.field(init=False)
    slots_offset: int = dataclasses.field(init=False)
    slot_size: int = dataclasses.field(init=False)
    total_size: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.max_slots < 1 or self.max_servers < 0:
            raise ValueError(f"bad stats layout: max_slots={self.max_slots} "
                             f"max_servers={self.max_servers}")
        block = 8 * (_SERVERS_BASE + self.max_servers * N_SERVER_COUNTERS)
        retired = _align(HEADER_SIZE + self.max_servers * SERVER_ENTRY_SIZE)
        ring = _align(retired + block)
        ring_entry = _align(RING_TAG_SIZE + block)
        slots = ring + GEN_RING * ring_entry
        slot_size = _align(SLOT_HEADER_SIZE + block)
        values = {"block_size": block, "servers_offset": HEADER_SIZE, "retired_offset": retired,
                  "ring_offset": ring, "ring_entry_size": ring_entry, "slots_offset": slots,
                  "slot_size": slot_size, "total_size": slots + self.max_slots * slot_size}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def slot_offset(self, index: int) -> int:
        return self.slots_offset + index * self.slot_size

    def ring_entry_offset(self, k: int) -> int:
        return self.ring_offset + k * self.ring_entry_size

    def server_offset(self, index: int) -> int:
        return self.servers_offset + index * SERVER_ENTRY_SIZE


class SlotView:
    """A worker's writable window on its own slot (the hot path).

    ``c`` is a memoryview 'Q' of the COUNTERS (``c[C.requests] += 1``);
    ``servers`` a memoryview 'Q' of max_servers x SERVER_COUNTERS;
    ``hist`` / ``hist_f`` the histogram words as 'Q' / 'd'.
    """

    __slots__ = ("_hd", "_hq", "c", "hist", "hist_f", "index", "servers")

    def __init__(self, index: int, slot: memoryview, layout: Layout) -> None:
        self.index = index
        block = slot[SLOT_HEADER_SIZE:SLOT_HEADER_SIZE + layout.block_size]
        self.c = block[:8 * N_COUNTERS].cast("Q")
        hist_bytes = block[8 * N_COUNTERS:8 * _SERVERS_BASE]
        self.hist = hist_bytes.cast("Q")
        self.hist_f = hist_bytes.cast("d")
        self.servers = block[8 * _SERVERS_BASE:].cast("Q")
        self._hq = slot[:SLOT_HEADER_SIZE].cast("Q")
        self._hd = slot[:SLOT_HEADER_SIZE].cast("d")

    def observe(self, hist: int, seconds: float) -> None:
        """Count one observation of ``seconds`` in histogram ``hist`` (an ``H`` index)."""
        seconds = max(seconds, 0.0)
        base = hist * HIST_STRIDE
        self.hist[base + bisect_left(HIST_BOUNDS, seconds)] += 1   # le: x <= bound
        self.hist[base + N_BUCKETS] += 1
        self.hist_f[base + N_BUCKETS + 1] += seconds

    def heartbeat(self, now: float) -> None:
        self._hd[4] = now

    def set_state(self, state: SlotState | int) -> None:
        self._hq[0] = _code(state)

    def release(self) -> None:
        for view in (self.c, self.hist, self.hist_f, self.servers, self._hq, self._hd):
            view.release()


_RawBlock = tuple[list[int], list[float]]   # u64 words (sum words zeroed), histogram sums
_Words = tuple["memoryview[int]", "memoryview[float]"]   # one block as 'Q' and as 'd'


class Segment:
    """The stats segment over ``buf``.

    Master: ``create``, ``claim_slot``, ``set_slot_pid``, ``set_slot_state``, ``retire_slot``,
    ``set_generation``, ``set_reload_result``, ``server_index``,
    ``set_server_health``, ``set_server_in_use``, ``touch``.
    Worker: ``slot_view``, ``server_health``. Reader: ``attach``, ``snapshot`` and the header
    readers ``master_pid()``, ``generation()``, ``reload_seq()``, ``reload_status()``,
    ``reload_message()``. ``release()`` drops every memoryview so an mmap can be closed.
    Raises: ValueError (bad buffer or arguments), SegmentFull, IndexError.
    """

    def __init__(self, buf: Buffer, layout: Layout) -> None:
        self.layout = layout
        self._mv = memoryview(buf).cast("B")
        self._views: list[SlotView] = []
        self._server_names: dict[str, int] | None = None
        self._gauges = self._gauge_words()

    @staticmethod
    def size_for(max_slots: int, max_servers: int) -> int:
        return Layout(max_slots, max_servers).total_size

    @classmethod
    def create(cls, buf: Buffer, max_slots: int, max_servers: int, master_pid: int,
               now: float | None = None) -> Segment:
        """Write a fresh header and zero the rest. Raises ValueError if ``buf`` is too small."""
        layout = Layout(max_slots, max_servers)
        if len(buf) < layout.total_size:
            raise ValueError(f"stats buffer is {len(buf)} bytes, layout needs {layout.total_size}")
        seg = cls(buf, layout)
        seg._mv[:layout.total_size] = bytes(layout.total_size)
        start = time.time() if now is None else now
        seg._put_all(_HEADER, 0, dict(
            _schema(), max_slots=max_slots, slot_size=layout.slot_size, max_servers=max_servers,
            total_size=layout.total_size, master_pid=master_pid, master_start_time=start,
            updated_at=start, magic=MAGIC))   # magic last: never valid while half-written
        return seg

    @classmethod
    def attach(cls, buf: Buffer) -> Segment:
        """Map an existing segment. Raises ValueError naming the first mismatch."""
        if len(buf) < HEADER_SIZE:
            raise ValueError(f"stats segment too short: {len(buf)} bytes < header {HEADER_SIZE}")
        probe = cls(buf, Layout(1, 0))
        try:
            layout = probe._check_header(len(buf))
        finally:
            probe.release()
        return cls(buf, layout)

    def _check_header(self, size: int) -> Layout:
        if self._get("magic") != MAGIC:
            raise ValueError(f"not a fastproxy stats segment (magic {self._get('magic')!r})")
        for name, want in _schema().items():
            if self._get(name) != want:
                raise ValueError(f"stats segment {name} is {self._get(name)}, this fastproxy "
                                 f"expects {want} (written by another fastproxy version?)")
        layout = Layout(int(self._get("max_slots")), int(self._get("max_servers")))
        for name in ("slot_size", "total_size"):
            if self._get(name) != getattr(layout, name):
                raise ValueError(f"stats segment {name} is {self._get(name)}, "
                                 f"layout gives {getattr(layout, name)}")
        if size < layout.total_size:
            raise ValueError(f"stats segment truncated: {size} bytes < {layout.total_size}")
        return layout

    def release(self) -> None:
        for view in self._views:
            view.release()
        self._views.clear()
        self._mv.release()

    # -- raw field access ------------------------------------------------
    def _get(self, name: str, table: _Table = _HEADER, base: int = 0) -> Any:
        fmt, off = table[name]
        return struct.unpack_from("<" + fmt, self._mv, base + off)[0]

    def _put(self, name: str, value: Any, table: _Table = _HEADER, base: int = 0) -> None:
        fmt, off = table[name]
        struct.pack_into("<" + fmt, self._mv, base + off, value)

    def _get_all(self, table: _Table, base: int) -> dict[str, Any]:
        return {name: self._get(name, table, base) for name in table}

    def _put_all(self, table: _Table, base: int, values: dict[str, Any]) -> None:
        for name, value in values.items():   # in the order given
            self._put(name, value, table, base)

    def _block(self, off: int) -> _Words:
        raw = self._mv[off:off + self.layout.block_size]
        return raw.cast("Q"), raw.cast("d")

    # -- header readers (methods: each call reads the shared memory afresh) -----
    def master_pid(self) -> int:
        return int(self._get("master_pid"))

    def generation(self) -> int:
        return int(self._get("generation"))

    def reload_seq(self) -> int:
        return int(self._get("reload_seq"))

    def reload_status(self) -> int:
        return int(self._get("reload_status"))

    def reload_message(self) -> str:
        raw = bytes(self._mv[RELOAD_MESSAGE_OFFSET:RELOAD_MESSAGE_OFFSET + RELOAD_MESSAGE_SIZE])
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    # -- master side ---------------------------------------------------------
    def touch(self, now: float) -> None:
        """The master's heartbeat: readers can tell a stale segment by ``updated_at``."""
        self._put("updated_at", now)

    def set_generation(self, gen: int) -> None:
        self._put("generation", gen)

    def set_reload_result(self, ok: bool, message: str) -> None:
        """Publish a reload outcome; ``reload_seq`` is bumped last, so a waiter
        that sees the new seq also sees the status and message."""
        data = message.encode("utf-8")[:RELOAD_MESSAGE_SIZE]
        data = data.decode("utf-8", "ignore").encode("utf-8")   # never cut a character
        off = RELOAD_MESSAGE_OFFSET
        self._mv[off:off + RELOAD_MESSAGE_SIZE] = data.ljust(RELOAD_MESSAGE_SIZE, b"\0")
        self._put("reload_status", _code(ReloadStatus.OK if ok else ReloadStatus.FAILED))
        self._put("reload_seq", (self.reload_seq() + 1) & _U64_MAX)

    def claim_slot(self, pid: int, generation: int, listener_slot: int, now: float) -> int:
        """Take the first free slot (state STARTING). Raises SegmentFull."""
        for index in range(self.layout.max_slots):
            base = self.layout.slot_offset(index)
            if self._get("state", _SLOT, base) == SlotState.FREE.value:
                self._put_all(_SLOT, base, {   # state last: the fields are valid first
                    "pid": pid, "generation": generation, "start_time": now, "heartbeat": now,
                    "listener_slot": listener_slot, "state": SlotState.STARTING.value})
                return index
        raise SegmentFull(f"no free stats slot (max_slots={self.layout.max_slots})")

    def set_slot_pid(self, index: int, pid: int) -> None:
        """For a slot claimed before the fork, once the child's pid is known."""
        self._put("pid", pid, _SLOT, self._slot_base(index))

    def set_slot_state(self, index: int, state: SlotState | int) -> None:
        self._put("state", _code(state), _SLOT, self._slot_base(index))

    def retire_slot(self, index: int) -> None:
        """Fold a dead worker's slot into the retired totals, zero it, free it.

        Precondition: the worker has been reaped. A free slot is left alone.
        """
        base = self._slot_base(index)
        if self._get("state", _SLOT, base) == SlotState.FREE.value:
            return
        generation = self._get("generation", _SLOT, base)
        seq = self._get("fold_seq")
        self._put("fold_seq", (seq + 1) & _U64_MAX)                # odd: fold in progress
        src = self._block(base + SLOT_HEADER_SIZE)
        self._fold(src, self._block(self.layout.retired_offset))
        ring = self._ring_entry_for(generation)
        if ring is not None:
            self._fold(src, self._block(ring + RING_TAG_SIZE))
        self._mv[base:base + self.layout.slot_size] = bytes(self.layout.slot_size)
        self._put("fold_seq", (seq + 2) & _U64_MAX)                # even: consistent again

    def _fold(self, src: _Words, dst: _Words) -> None:
        (sq, sd), (dq, dd) = src, dst
        skip = self._gauges
        for i in range(len(sq)):
            if i not in skip and sq[i]:
                dq[i] = (dq[i] + sq[i]) & _U64_MAX
        for i in _SUM_INDEX:
            dd[i] += sd[i]

    def _gauge_words(self) -> frozenset[int]:
        gauges = [getattr(C, g) for g in GAUGES] + list(_SUM_INDEX)
        for s in range(self.layout.max_servers):
            base = _SERVERS_BASE + s * N_SERVER_COUNTERS
            gauges += [base + getattr(S, g) for g in SERVER_GAUGES]
        return frozenset(gauges)

    def _ring_entry_for(self, generation: int) -> int | None:
        """The ring entry tagged ``generation``, claiming a free one or evicting the
        oldest generation; None if the ring is full of newer generations."""
        tags = []
        for k in range(GEN_RING):
            off = self.layout.ring_entry_offset(k)
            used, gen = struct.unpack_from("<QQ", self._mv, off)
            if used and gen == generation:
                return off
            tags.append((used, gen, off))
        free = [off for used, _, off in tags if not used]
        if free:
            off = free[0]
        else:
            _, oldest, off = min(tags, key=lambda t: t[1])
            if oldest > generation:
                return None
            self._mv[off:off + self.layout.ring_entry_size] = bytes(self.layout.ring_entry_size)
        struct.pack_into("<QQ", self._mv, off, 1, generation)
        return off

    def server_index(self, name: str) -> int:
        """Find or append the entry for ``name`` ("upstream/host:port"). Raises SegmentFull."""
        names = self._names()
        if name in names:
            return names[name]
        data = name.encode("utf-8")
        if not data or len(data) > SERVER_NAME_SIZE or b"\0" in data:
            raise ValueError(f"bad server name for stats: {name!r}")
        index = len(names)
        if index >= self.layout.max_servers:
            raise SegmentFull(f"stats server table full (max_servers={self.layout.max_servers})")
        off = self.layout.server_offset(index)
        self._mv[off:off + SERVER_NAME_SIZE] = data.ljust(SERVER_NAME_SIZE, b"\0")
        self._put("in_use", 1, _SERVER, off)
        self._put("n_servers", index + 1)                     # publish after the entry
        names[name] = index
        return index

    def server_names(self) -> set[str]:
        """Every server name the table holds (in use or not)."""
        return set(self._names())

    def _names(self) -> dict[str, int]:
        if self._server_names is None:
            self._server_names = {e["name"]: i for i, e in enumerate(self._server_entries())}
        return self._server_names

    def set_server_health(self, index: int, health: Health | int, now: float,
                          fails: int = 0, successes: int = 0) -> None:
        off = self._server_base(index)
        code = _code(health)
        if self._get("health", _SERVER, off) != code:
            self._put("health_changed_at", now, _SERVER, off)
        self._put_all(_SERVER, off, {"consecutive_fails": fails,
                                     "consecutive_successes": successes, "health": code})

    def set_server_in_use(self, index: int, in_use: bool) -> None:
        self._put("in_use", int(in_use), _SERVER, self._server_base(index))

    def server_health(self, index: int) -> int:
        """The ``Health`` code of server ``index``; cheap enough for a worker's hot path."""
        if not 0 <= index < self.layout.max_servers:
            raise IndexError(f"stats server {index} out of range")
        off = self.layout.server_offset(index) + _SERVER["health"][1]
        return int(_U64.unpack_from(self._mv, off)[0])

    def server_health_since(self, index: int) -> float:
        """When (unix time) server ``index`` entered its current health state."""
        if not 0 <= index < self.layout.max_servers:
            raise IndexError(f"stats server {index} out of range")
        off = self.layout.server_offset(index) + _SERVER["health_changed_at"][1]
        return float(_F64.unpack_from(self._mv, off)[0])

    def _slot_base(self, index: int) -> int:
        if not 0 <= index < self.layout.max_slots:
            raise IndexError(f"stats slot {index} out of range 0..{self.layout.max_slots - 1}")
        return self.layout.slot_offset(index)

    def _server_base(self, index: int) -> int:
        if not 0 <= index < int(self._get("n_servers")):
            raise IndexError(f"stats server {index} not registered")
        return self.layout.server_offset(index)

    # -- worker side ---------------------------------------------------------
    def slot_view(self, index: int) -> SlotView:
        base = self._slot_base(index)
        view = SlotView(index, self._mv[base:base + self.layout.slot_size], self.layout)
        self._views.append(view)
        return view

    # -- reader side -----------------------------------------------------------
    def snapshot(self, retries: int = 100) -> dict[str, Any]:
        """Plain, json-serialisable data; see ``_read`` for the shape. The read is
        retried while a fold is in progress; ``consistent`` says if it succeeded."""
        for attempt in range(retries):
            seq = self._get("fold_seq")
            if not seq & 1:
                snap = self._read()
                if self._get("fold_seq") == seq:
                    snap["consistent"] = True
                    return snap
            time.sleep(0.0002 * min(attempt + 1, 10))
        snap = self._read()
        snap["consistent"] = False
        return snap

    def _server_entries(self) -> list[dict[str, Any]]:
        entries = []
        for index in range(int(self._get("n_servers"))):
            off = self.layout.server_offset(index)
            name = bytes(self._mv[off:off + SERVER_NAME_SIZE]).rstrip(b"\0")
            entry = {"index": index, "name": name.decode("utf-8", "replace")}
            entry.update(self._get_all(_SERVER, off))
            entries.append(entry)
        return entries

    def _read_block(self, off: int) -> _RawBlock:
        q, d = self._block(off)
        words, sums = q.tolist(), [d[i] for i in _SUM_INDEX]
        q.release()
        d.release()
        for i in _SUM_INDEX:
            words[i] = 0
        return words, sums

    def _read(self) -> dict[str, Any]:
        header = {name: self._get(name) for name in (
            "version", "max_slots", "max_servers", "master_pid", "master_start_time",
            "generation", "reload_seq", "fold_seq", "updated_at")}
        header["magic"] = MAGIC.decode()
        header["reload_status"] = _label(ReloadStatus, self.reload_status())
        header["reload_message"] = self.reload_message()
        servers = self._server_entries()
        zero: _RawBlock = ([0] * (self.layout.block_size // 8), [0.0] * N_HISTS)
        totals = self._read_block(self.layout.retired_offset)
        gens: dict[int, _RawBlock] = {}
        for k in range(GEN_RING):
            off = self.layout.ring_entry_offset(k)
            used, gen = struct.unpack_from("<QQ", self._mv, off)
            if used:
                gens[gen] = self._read_block(off + RING_TAG_SIZE)
        workers = []
        for index in range(self.layout.max_slots):
            base = self.layout.slot_offset(index)
            info = self._get_all(_SLOT, base)
            if info["state"] == SlotState.FREE.value:
                continue
            block = self._read_block(base + SLOT_HEADER_SIZE)
            totals = _add(totals, block)
            gens[info["generation"]] = _add(gens.get(info["generation"], zero), block)
            info["state"] = _label(SlotState, info["state"])
            workers.append({"index": index, **info,
                            "counters": dict(zip(COUNTERS, block[0][:N_COUNTERS]))})
        n = len(servers)
        total_dict = _block_dict(totals, n)
        for entry, counters in zip(servers, total_dict["servers"]):
            entry["health"] = _label(Health, entry["health"])
            entry["in_use"] = bool(entry["in_use"])
            entry.update(counters)
        header.update(hist_bounds=list(HIST_BOUNDS), totals=total_dict,
                      generations={g: _block_dict(b, n) for g, b in sorted(gens.items())},
                      workers=workers, servers=servers)
        return header


def _schema() -> dict[str, int]:
    """Header fields that must match for a reader to understand a segment."""
    return {"version": LAYOUT_VERSION, "header_size": HEADER_SIZE, "n_counters": N_COUNTERS,
            "n_hist_buckets": N_BUCKETS, "n_hists": N_HISTS,
            "n_server_counters": N_SERVER_COUNTERS, "schema_hash": SCHEMA_HASH}


def _label(kind: type[enum.Enum], code: int) -> str:
    try:
        return str(kind(code).name.lower())
    except ValueError:
        return str(code)


def _add(a: _RawBlock, b: _RawBlock) -> _RawBlock:
    return [x + y for x, y in zip(a[0], b[0])], [x + y for x, y in zip(a[1], b[1])]


def _block_dict(block: _RawBlock, n_servers: int) -> dict[str, Any]:
    words, sums = block
    hists = {}
    for h, name in enumerate(HISTS):
        base = N_COUNTERS + h * HIST_STRIDE
        hists[name] = {"buckets": words[base:base + N_BUCKETS],
                       "count": words[base + N_BUCKETS], "sum": sums[h]}
    servers = []
    for s in range(n_servers):
        base = _SERVERS_BASE + s * N_SERVER_COUNTERS
        servers.append(dict(zip(SERVER_COUNTERS, words[base:base + N_SERVER_COUNTERS])))
    return {"counters": dict(zip(COUNTERS, words[:N_COUNTERS])), "hists": hists,
            "servers": servers}
