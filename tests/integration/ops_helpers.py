"""Playing the part of a service manager for a real master: its notify
socket, sockets passed as systemd passes them, and masters that outlive the
process that started them (a USR2 successor is the old master's child, then
an orphan), all stopped by pid at the end."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import TIMEOUT, wait_until


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class NotifySocket:
    """``NOTIFY_SOCKET``: a datagram socket the test reads the master's messages from."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[dict[str, str]] = []

    def next(self, timeout: float = TIMEOUT) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        message = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
        self.seen.append(message)
        return message

    def pending(self) -> list[dict[str, str]]:
        """Messages already sent and not read yet (without waiting)."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536).decode()
                out.append(dict(line.split("=", 1) for line in data.split("\n") if "=" in line))
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def high_fd(sock: socket.socket) -> int:
    """A close-on-exec duplicate of ``sock`` numbered 20 or more (never 3, 4 ...:
    the numbers the passed sockets must end up at)."""
    return fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)


class Masters:
    """Masters started here, and their successors: every process stopped by pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pids: set[int] = set()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, *, env: dict[str, str] | None = None,
              passed: dict[str, list[socket.socket]] | None = None,
              log: Path | None = None) -> subprocess.Popen[bytes]:
        """``fastproxy run -c config``; ``passed`` = systemd socket activation:
        {name: sockets}, placed at 3, 4, ... with LISTEN_PID/FDS/FDNAMES set."""
        command = [sys.executable, "-m", "fastproxy", "run", "-c", str(config)]
        fds: list[int] = []
        if passed:
            names, moves = [], []
            for name, socks in passed.items():
                for sock in socks:
                    fd = high_fd(sock)
                    fds.append(fd)
                    moves.append(f"exec {3 + len(names)}<&{fd} {fd}<&-")
                    names.append(name)
            script = ("; ".join(moves) + f'; LISTEN_PID=$$ LISTEN_FDS={len(names)} '
                      f'LISTEN_FDNAMES={":".join(names)} exec "$@"')
            command = ["/bin/bash", "-c", script, "bash", *command]
        out = open(log or self.workdir / f"master-{len(self.procs)}.log", "ab")
        try:
            proc = subprocess.Popen(command, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, pass_fds=fds)
        finally:
            out.close()
            for fd in fds:
                os.close(fd)
        self.procs.append(proc)
        self.pids.add(proc.pid)
        return proc

    def track(self, pid: int) -> None:
        if pid > 0:
            self.pids.add(pid)

    def stop_all(self) -> None:
        procs = []
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                master = psutil.Process(pid)
                procs += [master, *master.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=TIMEOUT)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(TIMEOUT)


def wait_pidfile(path: Path, other_than: int = 0, timeout: float = TIMEOUT) -> int:
    wait_until(lambda: read_pid(path) not in (0, other_than), timeout, f"a pid in {path}")
    return read_pid(path)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
