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

Size: about 700 lines, over the 500 budget: generations, reload, slot
retirement, respawn and shutdown all act on the same worker table, and their
decisions already live apart as pure functions in ``arbiter`` and the
reload's bookkeeping in ``reloading``.

Signals are dispatched from the loop (``Reactor.handle_signals``): HUP
reload, TERM/INT fast stop, QUIT graceful stop, USR1 reopen logs, TTIN/TTOU
one worker more/fewer, USR2 binary upgrade (``upgrade``), WINCH workers
stop (after a USR2), CHLD reap. What the master tells its starter (systemd
readiness, a USR2 predecessor) and receives from it (listening sockets) is
in ``service``. A worker that dies unexpectedly is
respawned, after a growing delay when it keeps dying young
(``arbiter.respawn_delay``). Workers watch an *alive* pipe whose only write
end the master holds: when the master dies, however, they see EOF and leave.
"""

from __future__ import annotations

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
from fastproxy.files import (
    check_pidfile,
    map_new_file,
    remove_file,
    remove_pidfile,
    remove_stale_segments,
    signal_process,
    write_pid,
)
from fastproxy.listeners import ListenerGroup, ListenerSet
from fastproxy.log import setup_error_log
from fastproxy.reactor import EVENT_READ, Reactor
from fastproxy.relay import pipe_budget
from fastproxy.reloading import (
    READY_TIMEOUT,
    START_ATTEMPTS,
    MasterSettings,
    PendingReload,
    room_problem,
    settings_changes,
)
from fastproxy.service import STATUS_FAILED, STATUS_READY, Launch, tell_status
from fastproxy.stats.shm import Segment, SegmentFull, SlotState, segment_path
from fastproxy.upgrade import Successor, describe_status, oldbin
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
MAX_SERVERS = 256


class Master:
    """Methods for the caller: ``run() -> exit code``.

    ``reload_config`` is called on HUP to produce the new ``Config`` (it
    raises ConfigError for a bad one); the CLI passes a function that
    re-reads the file and re-applies the command-line overrides.
    """

    def __init__(self, config: Config, reload_config: Callable[[], Config],
                 launch: Launch | None = None) -> None:
        self.config = config
        self._reload_config = reload_config
        self.launch = launch or Launch.from_environ([], {})
        self.notifier = self.launch.notifier
        self.reactor = Reactor()
        self.listeners = ListenerSet(self.launch.handover)
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
        self.announced = False                       # the first generation served
        self._failed_starts = 0                      # before that
        self.successor: Successor | None = None      # USR2
        self.workers_stopped = False                 # WINCH

    # -- startup and shutdown ------------------------------------------------------
    def run(self) -> int:
        setup_error_log(self.config.log, "master")
        try:
            self._start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            self.launch.predecessor.failed(f"cannot start: {exc}")
            self._cleanup()
            return EXIT_START
        log.info("started %d worker(s), pid %d", self.slots, os.getpid())
        try:
            self.reactor.run()
        finally:
            self._cleanup()
        return self.exit_code

    def _start(self) -> None:
        check_pidfile(self.config.server.pidfile)
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
            signal.SIGWINCH: self.stop_workers,
            signal.SIGCHLD: self.reap,
        })
        write_pid(self.config.server.pidfile)
        self._register_servers(self.config)
        self._new_generation()

    def _create_segment(self) -> None:
        remove_stale_segments()
        max_slots = max(64, 4 * self.slots + 8)
        self._segment_path = segment_path(os.getpid())
        self._segment_map = map_new_file(self._segment_path, Segment.size_for(max_slots, MAX_SERVERS))
        self.segment = Segment.create(self._segment_map, max_slots, MAX_SERVERS, os.getpid())

    def _start_admin(self) -> None:
        if self.config.admin.listen is not None:
            self.admin = self._make_admin(self.config.admin.listen)

    def _make_admin(self, address: Address) -> AdminServer:
        from fastproxy.stats.admin import AdminServer

        assert self.segment is not None
        admin = AdminServer(self.reactor, address, self.segment, self._unready_because,
                            self.config.admin.allow)
        admin.start()
        return admin

    def _unready_because(self) -> str | None:
        """Why /healthz says 503 (None: 200): orchestrators stop sending
        traffic before a drain closes anything."""
        if self.stopping:
            return "draining"
        if self.successor is not None and self.successor.handing_over:
            return f"handing over to master {self.successor.pid}"
        if not any(w.state is WorkerState.READY for w in self.workers.values()):
            return "no worker ready"
        return None

    def _cleanup(self) -> None:
        for worker in list(self.workers.values()):
            signal_process(worker.pid, signal.SIGKILL)
        if self.successor is not None:
            self.successor.close()   # it runs on by itself
        remove_pidfile(oldbin(self.config.server.pidfile), os.getpid())
        self.notifier.close()
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
            remove_file(self._segment_path)
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
                                  *pipe_budget(self.config.server, self.slots))
                code = Worker(spec).run()
            except BaseException as exc:
                log.exception("worker %d failed", slot)
                tell_status(status_w, exc)
            finally:
                os._exit(code)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self.segment.set_slot_pid(stats_index, pid)
        record = WorkerRecord(pid, slot, self.generation, stats_index, status_r, self.reactor.now,
                              frozenset(str(lst.listen) for lst in self.config.listeners))
        self.workers[pid] = record
        self.reactor.register(status_r, EVENT_READ, functools.partial(self._on_status, record))
        log.debug("spawned worker pid %d slot %d generation %d", pid, slot, self.generation)

    def _respawn_if_wanted(self, slot: int) -> None:
        if not self.stopping and not self.workers_stopped and slot < self.slots and not any(
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

    def _on_status(self, record: WorkerRecord, _mask: int = 0) -> None:
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
            signal_process(record.pid, signal.SIGTERM)
            return
        if record.generation == self.generation and self._reload is None:  # a respawn
            for old in arbiter.workers_to_drain(self.workers.values(), record):
                self._drain_worker(old)
        self._check_reload_done()
        if not self.announced and self._generation_ready(self.generation):
            self.announced = True   # first serving: tell whoever started us
            if self.launch.predecessor.present:
                self.launch.predecessor.ready()
                self.notifier.main_pid(os.getpid())
            else:
                self.notifier.ready()

    def _generation_ready(self, gen: int) -> bool:
        current = [w for w in self.workers.values() if w.generation == gen]
        return len(current) >= self.slots and all(w.state is WorkerState.READY for w in current)

    def _drain_worker(self, record: WorkerRecord) -> None:
        record.state = WorkerState.DRAINING
        record.expected_exit = True
        signal_process(record.pid, signal.SIGQUIT)
        timeout = self.config.server.graceful_timeout + STOP_KILL_AFTER
        self.reactor.call_later(timeout, functools.partial(self._kill_if_alive, record.pid))

    def _kill_if_alive(self, pid: int) -> None:
        if pid in self.workers:
            log.warning("worker %d did not exit in time: killing it", pid)
            signal_process(pid, signal.SIGKILL)

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
        if self.workers_stopped:   # after WINCH: workers again, same configuration (as nginx)
            self.workers_stopped = False
            self._new_generation()
            log.info("HUP after WINCH: generation %d starting", self.generation)
            return
        self.notifier.reloading()
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
        self.notifier.ready()   # back to the configuration that serves

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
        if not self._generation_ready(gen):
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
        self.notifier.ready()
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
                signal_process(record.pid, signal.SIGKILL)   # it has not accepted anything
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
            self.notifier.ready()

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
            if self.successor is not None and pid == self.successor.pid:
                self.successor.exited(status)
                continue
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
            log.debug("worker %d exited (%s)", record.pid, describe_status(status))
            return
        why = record.failure or describe_status(status)
        log.error("worker %d (slot %d) died unexpectedly: %s", record.pid, record.slot, why)
        pending = self._reload
        if record.state is WorkerState.STARTING and not self.announced:
            self._failed_starts += 1   # nothing served yet: nothing to go back to
            if self._failed_starts >= START_ATTEMPTS:
                message = f"workers failed to start ({self._failed_starts} attempts): {why}"
                log.error("cannot start: %s", message)
                self.launch.predecessor.failed(message)
                self.exit_code = EXIT_START
                self.stop_fast()
                return
        elif (pending is not None and record.generation == pending.generation
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
            self.listeners.release(group)

    # -- stopping and other signals ---------------------------------------------------------
    def stop_fast(self) -> None:
        self._stop(signal.SIGTERM, STOP_KILL_AFTER)

    def stop_graceful(self) -> None:
        self._stop(signal.SIGQUIT, self.config.server.graceful_timeout + STOP_KILL_AFTER)

    def _stop(self, signum: int, kill_after: float) -> None:
        first = not self.stopping
        self.stopping = True
        log.info("stopping (%s)", signal.Signals(signum).name)
        if first:
            self.notifier.stopping()
        for record in self.workers.values():
            record.expected_exit = True
            signal_process(record.pid, signum)
        if first:
            self.listeners.close()  # new connections are refused from now on
            self.reactor.call_later(kill_after, self._kill_all)
        if not self.workers:
            self.reactor.stop()

    def _kill_all(self) -> None:
        for record in self.workers.values():
            signal_process(record.pid, signal.SIGKILL)

    def reopen_logs(self) -> None:
        for record in self.workers.values():
            signal_process(record.pid, signal.SIGUSR1)

    # -- USR2 and WINCH (see ``upgrade``) ------------------------------------------------
    def upgrade(self) -> None:
        assert self.segment is not None
        if self.stopping or (self.successor is not None and self.successor.running):
            log.warning("USR2 ignored: %s", "stopping" if self.stopping else "a new master runs")
            return
        self.successor = Successor(self.reactor, self.config.server.pidfile, self.launch.argv,
                                   self.listeners.by_address(), self.segment, self.notifier)
        self.successor.start()

    def stop_workers(self) -> None:
        """WINCH: the workers drain and are not replaced; the master keeps the
        sockets (HUP starts workers again, QUIT ends it)."""
        if self.stopping or self.workers_stopped:
            return
        self.workers_stopped = True
        for record in list(self.workers.values()):
            if record.state is not WorkerState.DRAINING:
                self._drain_worker(record)
        log.info("WINCH: workers draining; HUP starts them again, QUIT stops the master")

