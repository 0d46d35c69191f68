"""What one reload changes in the master, kept until it is committed or rolled back.

A HUP starts generation N+1 beside generation N. Until every worker of N+1
has reported ready, nothing of N is let go: its workers keep accepting, the
listening sockets a new configuration drops stay in place, and so do the
admin endpoint and the pidfile the new configuration moves. Then either

- *commit*: N+1 serves; N drains; the old admin endpoint closes, the old
  pidfile is removed; or
- *roll back* (N+1 not ready within ``READY_TIMEOUT``, or one of its slots
  failed to start ``START_ATTEMPTS`` times in a row): N+1 drains (or is
  killed if it never served), the new sockets, admin endpoint and pidfile
  go, and the master is back on generation N's configuration.

``PendingReload`` holds what is needed for either outcome;
``MasterSettings`` moves the admin endpoint and the pidfile, the master's
own resources (the worker-side keys take effect with the new generation).
``room_problem`` refuses a reload the stats segment cannot hold (it is sized
at start); ``settings_changes`` names what was applied, for the outcome
``fastproxy reload`` prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastproxy.config import Address, Config
from fastproxy.files import check_pidfile, remove_pidfile, write_pid
from fastproxy.stats.shm import Segment
from fastproxy.upstream.parents import all_upstreams

if TYPE_CHECKING:
    from fastproxy.stats.admin import AdminServer

log = logging.getLogger("fastproxy")

READY_TIMEOUT = 15.0       # a generation not ready by then is rolled back
START_ATTEMPTS = 3         # failed starts of one new worker before the rollback


class MasterSettings:
    """The admin endpoint and the pidfile of one reload: ``apply`` sets up
    the new ones beside the old (raises OSError, having undone its part);
    ``commit`` lets the old go; ``undo`` the new."""

    def __init__(self, old: Config, new: Config, admin: AdminServer | None,
                 make_admin: Callable[[Address], AdminServer], pid: int) -> None:
        self.old, self.new = old, new
        self.admin = admin                       # the running endpoint
        self.new_admin: AdminServer | None = None
        self._make_admin = make_admin
        self._pid = pid
        self._admin_moves = old.admin.listen != new.admin.listen
        self._pidfile_moves = old.server.pidfile != new.server.pidfile

    def apply(self) -> None:
        if self._admin_moves and self.new.admin.listen is not None:
            self.new_admin = self._make_admin(self.new.admin.listen)
        if self._pidfile_moves:
            try:
                check_pidfile(self.new.server.pidfile)   # not another running master's
                write_pid(self.new.server.pidfile)
            except OSError:
                self._close_new_admin()
                raise

    def serving_admin(self) -> AdminServer | None:
        """The endpoint once committed."""
        return self.new_admin if self._admin_moves else self.admin

    def commit(self) -> None:
        if self._admin_moves and self.admin is not None:
            self.admin.close()
        if self._pidfile_moves:
            remove_pidfile(self.old.server.pidfile, self._pid)
        admin = self.serving_admin()
        if admin is not None:
            admin.set_allow(self.new.admin.allow)

    def undo(self) -> None:
        self._close_new_admin()
        if self._pidfile_moves:
            remove_pidfile(self.new.server.pidfile, self._pid)

    def _close_new_admin(self) -> None:
        if self.new_admin is not None:
            self.new_admin.close()
            self.new_admin = None


@dataclass
class PendingReload:
    """A generation started by a reload and not yet ready."""

    generation: int
    started: float
    previous: Config
    previous_slots: int
    previous_generation: int
    settings: MasterSettings
    failed_starts: int = 0


def room_problem(segment: Segment, config: Config, live_workers: int) -> str | None:
    """Why the stats segment (sized at start) cannot hold ``config``'s
    generation beside the running one, or None."""
    wanted = live_workers + config.server.workers
    if wanted > segment.layout.max_slots:
        return (f"server.workers = {config.server.workers}: the stats segment holds "
                f"{segment.layout.max_slots} workers and {live_workers} are running; "
                "restart the master to apply it")
    names = {f"{up.name}/{s.address}" for up in all_upstreams(config).values() for s in up.servers}
    known = segment.server_names()
    if len(known | names) > segment.layout.max_servers:
        return (f"upstream servers: the stats segment holds {segment.layout.max_servers} "
                "servers over the master's life; restart the master to apply this configuration")
    return None


def settings_changes(old: Config, new: Config) -> list[str]:
    """The master-level changes a reload applied, in words."""
    changes = []
    if old.admin.listen != new.admin.listen:
        changes.append(f"admin endpoint {new.admin.listen or 'off'}")
    if old.admin.allow != new.admin.allow:
        changes.append("admin.allow " + ", ".join(new.admin.allow))
    if old.server.pidfile != new.server.pidfile:
        changes.append(f"pidfile {new.server.pidfile}")
    if old.log.level != new.log.level:
        changes.append(f"log.level {new.log.level}")
    return changes

