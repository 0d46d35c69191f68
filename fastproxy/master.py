"""The master process: owns the listening sockets, the stats segment and the
admin endpoint; forks, supervises and retires workers; acts on signals.

Theory of operation
-------------------
Workers are grouped in *generations*; a reload starts generation N+1 from
the new configuration. Each worker serves one *slot*: slot ``i`` of every
listener (see ``listeners``). The master never lets a slot go unserved:

- a new worker reports ready on its status pipe; only then is its slot in
  the kernel's steering set, and only once every slot of a new generation
  is ready are the older workers told to drain (QUIT); a generation that is
  not ready in time is rolled back (``reloading``) and the old one goes on;
- a slot that disappears (TTOU, fewer workers after a reload) is first
  steered away from, then its worker drains what its accept queue still
  holds, then the socket is closed;
- listening sockets that stay in the configuration are never closed.

So a reload refuses and resets nothing. A reload whose config is invalid, or
whose new listen address cannot be bound, changes nothing and reports the
error (``fastproxy reload`` reads it from the stats header). A listening
socket the configuration no longer names is closed once no worker holds it.

Size: about 690 lines, over the 500 budget: generations, reload, slot
retirement, respawn and shutdown all act on the same worker table, and their
decisions already live apart as pure functions in ``arbiter`` and the
reload's bookkeeping in ``reloading``.

Signals are dispatched from the loop (``Reactor.handle_signals``): HUP
reload, TERM/INT fast stop, QUIT graceful stop, USR1 reopen logs, TTIN/TTOU
one worker more/fewer, CHLD reap. A worker that dies unexpectedly is
respawned, after a growing delay when it keeps dying young
(``arbiter.respawn_delay``). Workers watch an *alive* pipe whose only write
end the master holds: when the master dies, however, they see EOF and leave.
"""

from __future__ import annotations

import errno
import functools
import logging
import mmap
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastproxy import arbiter
from fastproxy.arbiter import SlotHistory, WorkerRecord, WorkerState
from fastproxy.config import Address, Config, Listener
from fastproxy.errors import ConfigError
from fastproxy.files import create_new, write_replacing
from fastproxy.listeners import ListenerGroup, ListenerSet
from fastproxy.log import setup_error_log
from fastproxy.reactor import EVENT_READ, Reactor
from fastproxy.reloading import (
    READY_TIMEOUT,
    START_ATTEMPTS,
    MasterSettings,
    PendingReload,
    alive,
    read_pid,
    remove_pidfile,
    room_problem,
    settings_changes,
)
from fastproxy.stats.shm import Segment, SegmentFull, SlotState, segment_path
from fastproxy.upstream.health import HealthChecker
from fastproxy.upstream.parents import all_upstreams
from fastproxy.worker import Worker, WorkerSpec

if TYPE_CHECKING:
    from fastproxy.stats.admin import AdminServer

log = logging.getLogger("fastproxy")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_START = 2
STOP_KILL_AFTER = 5.0          # TERM: SIGKILL workers still alive after this
RETIRE_DELAY = 0.25            # between steering away from a slot and draining it
FORK_RETRY = 1.0               # after fork() itself failed
STATUS_READY = b"R"            # a worker's status pipe: ready, or failed to start (+ why)
STATUS_FAILED = b"F"
MAX_SERVERS = 256
# Splice pipes: 1 MiB halves the syscalls per byte of 256 KiB ones (bulk
# relay measured at 3.5 vs 2.3 GB per CPU-second, bench/RESULTS.md). A user
# without CAP_SYS_RESOURCE shares pipe-user-pages-soft (64 MiB by default)
# among all its pipes, so then smaller pipes buy more concurrent transfers.
PIPE_SIZE = 1 << 20
PIPE_SIZE_UNPRIVILEGED = 256 * 1024
PIPES_PER_WORKER_MAX = 1024  # bytes in flight per worker stay within 1 GiB


class Master:
    """Methods for the caller: ``run() -> exit code``.

    ``reload_config`` is called on HUP to produce the new ``Config`` (it
    raises ConfigError for a bad one); the CLI passes a function that
    re-reads the file and re-applies the command-line overrides.
    """

    def __init__(self, config: Config, reload_config: Callable[[], Config]) -> None:
        self.config = config
        self._reload_config = reload_config
        self.reactor = Reactor()
        self.listeners = ListenerSet()
        self.workers: dict[int, WorkerRecord] = {}
        self.history: dict[int, SlotHistory] = {}
        self.generation = 0
        self.slots = config.server.workers
        self.stopping = False
        self.exit_code = EXIT_OK
        self.segment: Segment | None = None
        self._segment_map: mmap.mmap | None = None
        self._segment_path = ""
        self._alive_r, self._alive_w = -1, -1
        self._pending_close: list[ListenerGroup] = []   # dropped, held by old workers
        self._reload: PendingReload | None = None
        self._last_generation = 0
        self._server_indexes: dict[str, int] = {}
        self.health: HealthChecker | None = None
        self.admin: AdminServer | None = None

    # -- startup and shutdown ------------------------------------------------------
    def run(self) -> int:
        setup_error_log(self.config.log, "master")
        try:
            self._start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            self._cleanup()
            return EXIT_START
        log.info("started %d worker(s), pid %d", self.slots, os.getpid())
        try:
            self.reactor.run()
        finally:
            self._cleanup()
        return self.exit_code

    def _start(self) -> None:
        self._check_pidfile()
        self._create_segment()
        self.listeners.apply(self.config.listeners, self.slots)
        self._alive_r, self._alive_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._alive_r, False)
        self._start_admin()
        # The handlers before the pidfile: whoever reads the pidfile may signal at once
        # (a signal is recorded and handled by the loop once the generation exists).
        self.reactor.handle_signals({
            signal.SIGHUP: self.reload,
            signal.SIGTERM: self.stop_fast,
            signal.SIGINT: self.stop_fast,
            signal.SIGQUIT: self.stop_graceful,
            signal.SIGUSR1: self.reopen_logs,
            signal.SIGUSR2: self.upgrade,
            signal.SIGTTIN: self.add_worker,
            signal.SIGTTOU: self.remove_worker,
            signal.SIGCHLD: self.reap,
        })
        self._write_pidfile()
        self._register_servers(self.config)
        self._new_generation()

    def _check_pidfile(self) -> None:
        path = self.config.server.pidfile
        pid = read_pid(path)
        if pid > 0 and pid != os.getpid() and alive(pid):
            raise OSError(errno.EEXIST, f"already running with pid {pid} (pidfile {path})")

    def _write_pidfile(self) -> None:
        write_replacing(self.config.server.pidfile, f"{os.getpid()}\n".encode())

    def _create_segment(self) -> None:
        _remove_stale_segments()
        max_slots = max(64, 4 * self.slots + 8)
        size = Segment.size_for(max_slots, MAX_SERVERS)
        self._segment_path = segment_path(os.getpid())
        fd = create_new(self._segment_path, 0o600)  # the master's user (and root) only
        try:
            os.ftruncate(fd, size)
            self._segment_map = mmap.mmap(fd, size, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.segment = Segment.create(self._segment_map, max_slots, MAX_SERVERS, os.getpid())

    def _start_admin(self) -> None:
        if self.config.admin.listen is not None:
            self.admin = self._make_admin(self.config.admin.listen)

    def _make_admin(self, address: Address) -> AdminServer:
        from fastproxy.stats.admin import AdminServer

        assert self.segment is not None
        admin = AdminServer(self.reactor, address, self.segment, self._has_ready_worker,
                            self.config.admin.allow)
        admin.start()
        return admin

    def _has_ready_worker(self) -> bool:
        return any(w.state is WorkerState.READY for w in self.workers.values())

    def _cleanup(self) -> None:
        for worker in list(self.workers.values()):
            _kill(worker.pid, signal.SIGKILL)
        if self.admin is not None:
            self.admin.close()
        if self._reload is not None:
            self._reload.settings.undo()
            self.config = self._reload.previous
        self.listeners.close()
        for group in self._pending_close:
            group.close()
        for fd in (self._alive_r, self._alive_w):
            if fd >= 0:
                os.close(fd)
        self._alive_r = self._alive_w = -1
        remove_pidfile(self.config.server.pidfile, os.getpid())
        if self._segment_path:
            try:
                os.unlink(self._segment_path)
            except OSError:
                pass
        if self.health is not None:
            self.health.close()
        self.reactor.close()

    # -- generations --------------------------------------------------------------------
    def _register_servers(self, config: Config) -> None:
        """Give every server of ``config`` its stable shm index."""
        assert self.segment is not None
        in_use = set()
        upstreams = all_upstreams(config)
        for up in upstreams.values():
            for server in up.servers:
                name = f"{up.name}/{server.address}"
                index = self.segment.server_index(name)
                self._server_indexes[name] = index
                in_use.add(index)
        for name, index in self._server_indexes.items():
            self.segment.set_server_in_use(index, index in in_use)
        if self.health is None:
            self.health = HealthChecker(self.reactor, self.segment)
        self.health.configure(upstreams, self._server_indexes)

    def _new_generation(self) -> None:
        assert self.segment is not None
        self._last_generation += 1   # never reused, even by a generation rolled back
        self.generation = self._last_generation
        self.segment.set_generation(self.generation)
        self.listeners.resize(self.slots)
        self._steer()
        for slot in range(self.slots):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        assert self.segment is not None
        sockets = self.listeners.sockets_for(slot, self.config.listeners)
        try:
            stats_index = self.segment.claim_slot(0, self.generation, slot, time.time())
        except SegmentFull as exc:
            log.error("cannot start a worker for slot %d: %s", slot, exc)
            return
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN/ENOMEM: give back what was taken, try again later
            os.close(status_r)
            os.close(status_w)
            self.segment.retire_slot(stats_index)
            log.error("cannot fork a worker for slot %d: %s; retrying in %.0fs",
                      slot, exc, FORK_RETRY)
            self.reactor.call_later(FORK_RETRY, functools.partial(self._respawn_if_wanted, slot))
            return
        if pid == 0:  # child: never returns
            code = 1
            try:
                os.close(status_r)
                self._close_in_child(keep={s.fileno() for _, s in sockets})
                spec = WorkerSpec(self.config, slot, self.generation, sockets, self.segment,
                                  stats_index, status_w, self._alive_r, dict(self._server_indexes),
                                  *self._pipe_budget())
                code = Worker(spec).run()
            except BaseException as exc:
                log.exception("worker %d failed", slot)
                _report_failure(status_w, exc)
            finally:
                os._exit(code)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self.segment.set_slot_pid(stats_index, pid)
        record = WorkerRecord(pid, slot, self.generation, stats_index, status_r, self.reactor.now,
                              frozenset(str(lst.listen) for lst in self.config.listeners))
        self.workers[pid] = record
        self.reactor.register(status_r, EVENT_READ, functools.partial(self._on_status_event, record))
        log.debug("spawned worker pid %d slot %d generation %d", pid, slot, self.generation)

    def _respawn_if_wanted(self, slot: int) -> None:
        if not self.stopping and slot < self.slots and not any(
                w.slot == slot and w.generation == self.generation for w in self.workers.values()):
            self._spawn(slot)

    def _close_in_child(self, keep: set[int]) -> None:
        """Close what the master owns and the worker must not hold.

        The epoll instance is shared with the master after fork, so it is
        closed first and nothing is unregistered from it here: an
        EPOLL_CTL_DEL in the child would remove the master's registration.
        """
        self.reactor.close()
        if self.health is not None:
            self.health.detach()
        for sock in self.listeners.all_sockets():
            if sock.fileno() not in keep:
                sock.close()
        for group in self._pending_close:
            group.close()
        for worker in self.workers.values():
            os.close(worker.status_fd)
        os.close(self._alive_w)
        if self.admin is not None:
            self.admin.detach()
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)

    def _pipe_budget(self) -> tuple[int, int]:
        """(pipes per worker, pipe size): root is not held to the per-user
        pipe budget; other users share pipe-user-pages-soft."""
        cap = min(PIPES_PER_WORKER_MAX, max(64, self.config.server.max_connections // 2))
        if os.geteuid() == 0 and not self.config.server.user:
            return cap, PIPE_SIZE
        try:
            with open("/proc/sys/fs/pipe-user-pages-soft") as f:
                pages = int(f.read())
        except (OSError, ValueError):
            pages = 16384
        if pages == 0:
            return cap, PIPE_SIZE_UNPRIVILEGED
        total = pages * 4096 * 9 // 10 // PIPE_SIZE_UNPRIVILEGED
        return max(4, min(cap, total // max(1, 2 * self.slots))), PIPE_SIZE_UNPRIVILEGED

    def _on_status_event(self, record: WorkerRecord, _mask: int) -> None:
        self._on_status(record)

    def _on_status(self, record: WorkerRecord) -> None:
        if record.status_fd < 0:  # reaped earlier in this pass
            return
        try:
            data = os.read(record.status_fd, 1024)
        except BlockingIOError:
            return
        if not data:
            if self.reactor.is_registered(record.status_fd):
                self.reactor.unregister(record.status_fd)
            return
        if data.startswith(STATUS_READY):
            data = data[1:]
            if record.state is WorkerState.STARTING:
                self._worker_ready(record)
        if data.startswith(STATUS_FAILED):
            record.failure = data[1:].decode("utf-8", "replace")

    def _worker_ready(self, record: WorkerRecord) -> None:
        assert self.segment is not None
        record.state = WorkerState.READY
        self.segment.set_slot_state(record.stats_index, SlotState.RUNNING)
        self.history.setdefault(record.slot, SlotHistory())
        self._steer()
        if self.stopping:
            _kill(record.pid, signal.SIGTERM)
            return
        if record.generation == self.generation and self._reload is None:  # a respawn
            for old in arbiter.workers_to_drain(self.workers.values(), record):
                self._drain_worker(old)
        self._check_reload_done()

    def _drain_worker(self, record: WorkerRecord) -> None:
        record.state = WorkerState.DRAINING
        record.expected_exit = True
        _kill(record.pid, signal.SIGQUIT)
        timeout = self.config.server.graceful_timeout + STOP_KILL_AFTER
        self.reactor.call_later(timeout, functools.partial(self._kill_if_alive, record.pid))

    def _kill_if_alive(self, pid: int) -> None:
        if pid in self.workers:
            log.warning("worker %d did not exit in time: killing it", pid)
            _kill(pid, signal.SIGKILL)

    def _steer(self) -> None:
        self.listeners.steer(arbiter.steering_slots(self.workers.values(), self.slots))

    def _retire_surplus(self) -> None:
        """Steer away from slots >= self.slots, then drain their workers."""
        self._steer()
        surplus = arbiter.surplus_workers(self.workers.values(), self.slots)
        if surplus:
            self.reactor.call_later(RETIRE_DELAY, lambda: self._drain_surplus())

    def _drain_surplus(self) -> None:
        for record in arbiter.surplus_workers(self.workers.values(), self.slots):
            self._drain_worker(record)

    # -- reload ------------------------------------------------------------------------
    def reload(self) -> None:
        assert self.segment is not None
        if self.stopping:
            return
        if self._reload is not None:
            log.warning("reload: generation %d was still starting; the newer configuration "
                        "replaces it", self._reload.generation)
            self._roll_back(None)
        try:
            config = self._reload_config()
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        problem = room_problem(self.segment, config, len(self.workers))
        if problem:
            return self._reload_failed(problem)
        settings = MasterSettings(self.config, config, self.admin, self._make_admin, os.getpid())
        try:
            settings.apply()
        except OSError as exc:
            return self._reload_failed(f"cannot start: {exc}")
        try:
            self._apply_listeners(config.listeners, max(self.slots, config.server.workers))
        except OSError as exc:
            settings.undo()
            return self._reload_failed(f"cannot bind: {exc}")
        pending = PendingReload(self._last_generation + 1, self.reactor.now, self.config,
                                self.slots, self.generation, settings)
        self._reload = pending
        self.config = config
        self.slots = config.server.workers
        setup_error_log(config.log, "master")
        self._register_servers(config)
        self._new_generation()
        self.reactor.call_later(READY_TIMEOUT, functools.partial(self._check_reload_timeout, pending))
        log.info("reloading: generation %d starting", self.generation)

    def _reload_failed(self, message: str) -> None:
        assert self.segment is not None
        log.error("reload failed, keeping the running configuration: %s", message)
        self.segment.set_reload_result(False, message)

    def _apply_listeners(self, listeners: tuple[Listener, ...], slots: int) -> None:
        """Bind what ``listeners`` need; groups they no longer name wait in
        ``_pending_close`` until no worker holds them. A dropped group whose
        address comes back is revived: the same sockets serve it (new ones
        would join the reuseport group behind those of the old workers).
        Raises OSError, having changed nothing."""
        revivable = {str(g.address): g for g in self._pending_close}
        before = dict(self.listeners.groups)
        removed = self.listeners.apply(listeners, slots, revivable)
        revived = [g for key, g in self.listeners.groups.items() if before.get(key) is not g]
        self._pending_close = [g for g in self._pending_close if g not in revived] + removed

    def _check_reload_done(self) -> None:
        assert self.segment is not None
        pending = self._reload
        if pending is None:
            return
        gen = pending.generation
        current = [w for w in self.workers.values() if w.generation == gen]
        if len(current) < self.slots or any(w.state is not WorkerState.READY for w in current):
            return
        self._reload = None
        pending.settings.commit()
        self.admin = pending.settings.serving_admin()
        self._retire_surplus()
        for record in list(self.workers.values()):
            if record.generation < gen and record.state is not WorkerState.DRAINING:
                if record.slot < self.slots:
                    self._drain_worker(record)
        message = "; ".join([f"generation {gen} serving",
                             *settings_changes(pending.previous, self.config)])
        self.segment.set_reload_result(True, message)
        log.info("reload complete: %s", message)

    def _check_reload_timeout(self, pending: PendingReload) -> None:
        if self._reload is pending:
            self._roll_back(f"generation {pending.generation} not ready after {READY_TIMEOUT:.0f}s")

    def _roll_back(self, reason: str | None) -> None:
        """Back to the generation that served before the pending reload;
        ``reason`` is reported as the reload's outcome (None: superseded)."""
        assert self.segment is not None and self._reload is not None
        pending, self._reload = self._reload, None
        for record in self.workers.values():
            if record.generation != pending.generation or record.state is WorkerState.DRAINING:
                continue
            if record.state is WorkerState.READY:
                self._drain_worker(record)      # it may have clients: they finish
            else:
                record.state = WorkerState.DRAINING
                record.expected_exit = True
                _kill(record.pid, signal.SIGKILL)   # it has not accepted anything
        pending.settings.undo()
        self.config = pending.previous
        self.slots = pending.previous_slots
        try:
            self._apply_listeners(self.config.listeners, self.slots)
        except OSError as exc:  # only if a dropped group was closed meanwhile
            log.error("rollback: cannot bind %s again", exc)
        self.generation = pending.previous_generation
        self.segment.set_generation(self.generation)
        setup_error_log(self.config.log, "master")
        self._register_servers(self.config)
        for slot in range(self.slots):
            self.history.pop(slot, None)   # the failures were the new generation's
            self._respawn_if_wanted(slot)
        self._steer()
        self._close_unused_sockets()
        if reason is not None:
            message = (f"{reason}; rolled back: generation {self.generation} serves "
                       "the previous configuration")
            log.error("reload failed: %s", message)
            self.segment.set_reload_result(False, message)

    # -- worker count --------------------------------------------------------------------
    def add_worker(self) -> None:
        if self.stopping:
            return
        self.slots += 1
        self.listeners.resize(self.slots)
        slot = self.slots - 1
        # A worker of this slot that a TTOU was about to retire keeps serving.
        if not any(w.slot == slot and w.state is not WorkerState.DRAINING
                   for w in self.workers.values()):
            self._spawn(slot)
        self._steer()
        log.info("TTIN: %d worker(s)", self.slots)

    def remove_worker(self) -> None:
        if self.stopping or self.slots <= 1:
            return
        self.slots -= 1
        self._retire_surplus()
        log.info("TTOU: %d worker(s)", self.slots)

    # -- children ----------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            record = self.workers.pop(pid, None)
            if record is not None:
                self._worker_exited(record, status)
        self._close_unused_sockets()
        if self.stopping and not self.workers:
            self.reactor.stop()

    def _worker_exited(self, record: WorkerRecord, status: int) -> None:
        assert self.segment is not None
        self._on_status(record)   # what it wrote before exiting (why it failed)
        if self.reactor.is_registered(record.status_fd):
            self.reactor.unregister(record.status_fd)
        os.close(record.status_fd)
        record.status_fd = -1
        self.segment.retire_slot(record.stats_index)
        self._steer()
        if record.expected_exit or self.stopping:
            log.debug("worker %d exited (%s)", record.pid, _describe(status))
            return
        why = record.failure or _describe(status)
        log.error("worker %d (slot %d) died unexpectedly: %s", record.pid, record.slot, why)
        pending = self._reload
        if (pending is not None and record.generation == pending.generation
                and record.state is WorkerState.STARTING):
            pending.failed_starts += 1
            if pending.failed_starts >= START_ATTEMPTS:
                self._roll_back(f"generation {pending.generation} workers failed to start "
                                f"({pending.failed_starts} attempts): {why}")
                return
        history = self.history.setdefault(record.slot, SlotHistory())
        if arbiter.died_young(record.started_at, self.reactor.now):
            history.young_deaths += 1
        else:
            history.young_deaths = 1
        self._schedule_respawn(record)

    def _schedule_respawn(self, record: WorkerRecord) -> None:
        history = self.history[record.slot]
        if record.slot >= self.slots or history.respawn_pending:
            return
        if any(w.slot == record.slot and w.generation == self.generation
               for w in self.workers.values()):
            return
        delay = arbiter.respawn_delay(history.young_deaths)
        history.respawn_pending = True
        if delay:
            log.warning("slot %d keeps failing: respawning in %.1fs", record.slot, delay)

        def respawn(slot: int = record.slot) -> None:
            history.respawn_pending = False
            self._respawn_if_wanted(slot)

        self.reactor.call_later(delay, respawn)

    def _close_unused_sockets(self) -> None:
        keep = max(self.slots, arbiter.highest_slot_in_use(self.workers.values()) + 1)
        self.listeners.retire(keep)
        held = arbiter.held_addresses(self.workers.values())
        for group in [g for g in self._pending_close if str(g.address) not in held]:
            self._pending_close.remove(group)
            group.close()

    # -- stopping and other signals ---------------------------------------------------------
    def stop_fast(self) -> None:
        self._stop(signal.SIGTERM, STOP_KILL_AFTER)

    def stop_graceful(self) -> None:
        self._stop(signal.SIGQUIT, self.config.server.graceful_timeout + STOP_KILL_AFTER)

    def _stop(self, signum: int, kill_after: float) -> None:
        first = not self.stopping
        self.stopping = True
        log.info("stopping (%s)", signal.Signals(signum).name)
        for record in self.workers.values():
            record.expected_exit = True
            _kill(record.pid, signum)
        if first:
            self.listeners.close()  # new connections are refused from now on
            self.reactor.call_later(kill_after, self._kill_all)
        if not self.workers:
            self.reactor.stop()

    def _kill_all(self) -> None:
        for record in self.workers.values():
            _kill(record.pid, signal.SIGKILL)

    def reopen_logs(self) -> None:
        for record in self.workers.values():
            _kill(record.pid, signal.SIGUSR1)

    def upgrade(self) -> None:
        log.warning("USR2 (binary upgrade) is not supported by this version; ignored")


def _report_failure(status_fd: int, exc: BaseException) -> None:
    """Tell the master, on the status pipe, why this worker could not start."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    try:
        os.write(status_fd, STATUS_FAILED + text.encode("utf-8", "replace")[:900])
    except OSError:
        pass


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _remove_stale_segments(directory: str = "/dev/shm") -> None:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "fastproxy" and parts[2] == "stats" and parts[1].isdigit():
            if not alive(int(parts[1])):
                try:
                    os.unlink(os.path.join(directory, name))
                except OSError:
                    pass

