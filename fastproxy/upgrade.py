"""USR2, the binary upgrade: a successor master started from the installed
program takes over the listening sockets while this one serves on.

As nginx does it:

1. the pidfile is renamed to ``<pidfile>.oldbin``;
2. ``python -m fastproxy`` runs with this master's own arguments (the
   package installed *now* is what runs), inheriting the listening sockets,
   named in ``FASTPROXY_SOCKETS`` (``service.Handover`` reads them), and
   the write end of a status pipe, named in ``FASTPROXY_UPGRADE_STATUS``
   (``subprocess`` forks and execs without running Python in between,
   which matters in a process with threads);
3. the successor starts (its own pidfile, stats segment and workers, on the
   same sockets: slot ``i`` keeps its socket) and, once its workers serve,
   writes ``R`` on the status pipe; if it cannot start, ``F`` and why;
4. ``R``: this master is *handing over* (``/healthz`` answers 503, it
   stops notifying the service manager, whose main pid the successor has
   taken) and serves until QUIT (WINCH first stops its workers).
   ``F``, the pipe closed without ``R``, the successor's exit or no ``R``
   within ``UPGRADE_TIMEOUT``: the successor is stopped if it still runs,
   the pidfile is renamed back, and this master serves alone; also when the
   successor dies later, while this one still runs.

The outcome goes in the stats header (``fastproxy upgrade`` reads it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from fastproxy.files import read_pid, signal_process
from fastproxy.reactor import EVENT_READ, Reactor, Timer
from fastproxy.service import (
    STATUS_FAILED,
    STATUS_READY,
    UPGRADE_SOCKETS,
    UPGRADE_STATUS,
    Notifier,
    upgrade_environment,
)
from fastproxy.stats.shm import Segment

log = logging.getLogger("fastproxy")

UPGRADE_TIMEOUT = 30.0


def oldbin(pidfile: str) -> str:
    return pidfile + ".oldbin"


class Successor:
    """One USR2 hand-over, from the old master's side.

    ``start()`` (a failure to start is an outcome like any other);
    ``exited(status)`` is for the master's reaper. The outcome goes in the stats header, once;
    ``handing_over`` is True while the successor serves (the master's
    notifications are muted meanwhile: the successor is the main process).
    """

    def __init__(self, reactor: Reactor, pidfile: str, argv: Sequence[str],
                 sockets: dict[str, list[socket.socket]], segment: Segment,
                 notifier: Notifier) -> None:
        self.reactor = reactor
        self.pidfile = pidfile
        self.argv = list(argv)
        self.sockets = sockets
        self.segment = segment
        self.notifier = notifier
        self.pid = 0
        self.serving = False
        self.done = False           # the outcome was given
        self._status_fd = -1
        self._timer: Timer | None = None
        self._why = ""
        self._process: subprocess.Popen[bytes]

    @property
    def handing_over(self) -> bool:
        return self.serving and self.pid > 0

    @property
    def running(self) -> bool:
        return self.pid > 0

    def start(self) -> None:
        if read_pid(self.pidfile) == os.getpid():
            os.replace(self.pidfile, oldbin(self.pidfile))
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ)
        env[UPGRADE_SOCKETS] = upgrade_environment(self.sockets)
        env[UPGRADE_STATUS] = str(status_w)
        fds = [s.fileno() for socks in self.sockets.values() for s in socks] + [status_w]
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "fastproxy", *self.argv],
                                             pass_fds=fds, env=env)
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(status_r)
            self._restore_pidfile()
            self.pid = -1
            self._give(False, f"upgrade failed: cannot start a new master: {exc}")
            return
        finally:
            os.close(status_w)
        self.pid = self._process.pid
        os.set_blocking(status_r, False)
        self._status_fd = status_r
        self.reactor.register(status_r, EVENT_READ, self._on_status)
        self._timer = self.reactor.call_later(UPGRADE_TIMEOUT, self._timed_out)
        log.info("USR2: started master pid %d (%s -m fastproxy)", self.pid, sys.executable)

    def _on_status(self, _mask: int) -> None:
        try:
            data = os.read(self._status_fd, 4096)
        except BlockingIOError:
            return
        if data.startswith(STATUS_READY):
            self._close_status()
            self.serving = True
            self._give(True, f"upgrade: master {self.pid} serving; this master "
                             f"({os.getpid()}) is handing over: send it QUIT")
        elif data.startswith(STATUS_FAILED):
            self._why = data[1:].decode("utf-8", "replace")
        elif not data:   # closed without R: the successor is going or gone
            self._close_status()
            self._fail(self._why or "the new master stopped before it served")

    def _timed_out(self) -> None:
        self._timer = None
        if not self.done:
            self._fail(f"the new master did not serve within {UPGRADE_TIMEOUT:.0f}s")

    def exited(self, status: int) -> None:
        """The successor process ended (reaped by the master, not by Popen)."""
        how = describe_status(status)
        self._process.returncode = os.waitstatus_to_exitcode(status)
        self.pid = -self.pid   # reaped: never signal that pid again
        self._close_status()
        if not self.done:
            self._fail(f"{self._why or 'the new master exited'} ({how})")
        elif self.serving:
            self._restore_pidfile()
            log.error("the new master exited (%s); this master serves alone again", how)
            self.notifier.muted = False
            self.notifier.main_pid(os.getpid())

    def _fail(self, why: str) -> None:
        if self.pid > 0:
            signal_process(self.pid, signal.SIGQUIT)   # it may have served some clients: they finish
        self._restore_pidfile()
        self._give(False, f"upgrade failed: {why}; this master ({os.getpid()}) goes on serving")

    def _give(self, ok: bool, message: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.done = True
        (log.info if ok else log.error)("%s", message)
        self.segment.set_reload_result(ok, message)
        self.notifier.muted = ok

    def _restore_pidfile(self) -> None:
        if read_pid(oldbin(self.pidfile)) == os.getpid():
            os.replace(oldbin(self.pidfile), self.pidfile)

    def _close_status(self) -> None:
        if self._status_fd >= 0:
            if self.reactor.is_registered(self._status_fd):
                self.reactor.unregister(self._status_fd)
            os.close(self._status_fd)
            self._status_fd = -1

    def close(self) -> None:
        """This master exits: the successor runs on by itself."""
        self._close_status()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def describe_status(status: int) -> str:
    """A wait status in words."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
