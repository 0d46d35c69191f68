"""What the master exchanges with whoever started it: a service manager's
readiness protocol and listening sockets handed over at start.

- ``Notifier``: systemd's ``sd_notify(3)`` protocol. With ``NOTIFY_SOCKET``
  set (a path, or ``@name`` in the abstract namespace), each state change
  is one datagram of ``KEY=value`` lines: ``READY=1`` once workers serve,
  ``RELOADING=1`` with ``MONOTONIC_USEC`` when a HUP starts and ``READY=1``
  when it ends (either way), ``STOPPING=1`` at a stop, ``MAINPID`` from a
  master started by USR2 once it serves. Without it, every call is a no-op.
  A failed send is ignored: the manager's view must never stop the proxy.
- ``Predecessor``: the status pipe to the master that started this one
  with USR2 (``upgrade``): ``R`` once workers serve, ``F`` and why if not.
- ``Handover``: listening sockets received at start, keyed so the
  listeners can claim them: by *name* from systemd socket activation
  (``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES``, ``sd_listen_fds(3)``,
  descriptors from 3 on), by *listen address* from a master that started
  this one with USR2 (``FASTPROXY_SOCKETS="ADDR=FD,FD;ADDR=FD"``, as
  nginx's ``NGINX`` variable). Both variables are removed from the
  environment once read, so no child sees them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger("fastproxy")

SD_LISTEN_FDS_START = 3
UPGRADE_SOCKETS = "FASTPROXY_SOCKETS"
UPGRADE_STATUS = "FASTPROXY_UPGRADE_STATUS"   # the fd a new master reports on
STATUS_READY = b"R"
STATUS_FAILED = b"F"


@dataclass
class Launch:
    """What the master was started with: its command line (a USR2 successor
    runs it again) and what its starter handed it."""

    argv: list[str]
    handover: Handover
    predecessor: Predecessor
    notifier: Notifier

    @classmethod
    def from_environ(cls, argv: list[str], environ: MutableMapping[str, str]) -> Launch:
        return cls(argv, Handover.from_environ(environ), Predecessor(environ), Notifier(environ))


class Notifier:
    """Methods: ``ready()``, ``reloading()``, ``stopping()``, ``status(text)``,
    ``main_pid(pid)``, ``close()``; ``active`` is False without a manager;
    ``muted`` silences it (a master whose USR2 successor is the main one)."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.muted = False

    @property
    def active(self) -> bool:
        return self._sock is not None

    def ready(self, status: str = "serving") -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def main_pid(self, pid: int) -> None:
        self.send(f"MAINPID={pid}\nREADY=1\nSTATUS=serving (upgraded)")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def send(self, message: str) -> None:
        if self._sock is None or self._address is None or self.muted:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.debug("service manager notification failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Handover:
    """Sockets received at start. ``claim(name, address)`` returns (and
    takes) the sockets for a listener: systemd's by name first, then a
    USR2 predecessor's by address; ``from_manager(sock)`` tells whether
    the service manager owns it (never to be closed by us)."""

    def __init__(self, by_name: dict[str, list[socket.socket]],
                 by_address: dict[str, list[socket.socket]]) -> None:
        self.by_name = by_name
        self.by_address = by_address
        self._manager_fds = {s.fileno() for socks in by_name.values() for s in socks}

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Handover:
        return cls(_systemd_sockets(environ), _upgrade_sockets(environ))

    def claim(self, name: str, address: str) -> list[socket.socket]:
        return self.by_name.pop(name, None) or self.by_address.pop(address, None) or []

    def from_manager(self, sock: socket.socket) -> bool:
        return sock.fileno() in self._manager_fds

    def unclaimed(self) -> list[socket.socket]:
        return [s for socks in (*self.by_name.values(), *self.by_address.values()) for s in socks]


def _systemd_sockets(environ: MutableMapping[str, str]) -> dict[str, list[socket.socket]]:
    pid, count = environ.pop("LISTEN_PID", ""), environ.pop("LISTEN_FDS", "")
    names = environ.pop("LISTEN_FDNAMES", "")
    if not count:
        return {}
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return {}   # meant for another process (or malformed): not ours to take
    labels = names.split(":") if names else []
    found: dict[str, list[socket.socket]] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        label = labels[i] if i < len(labels) else "unknown"
        sock = _adopt(fd, f"LISTEN_FDS #{i} ({label})")
        if sock is not None:
            found.setdefault(label, []).append(sock)
    return found


def _upgrade_sockets(environ: MutableMapping[str, str]) -> dict[str, list[socket.socket]]:
    text = environ.pop(UPGRADE_SOCKETS, "")
    found: dict[str, list[socket.socket]] = {}
    for entry in filter(None, text.split(";")):
        address, _, fds = entry.rpartition("=")
        for fd in fds.split(","):
            sock = _adopt(int(fd), address) if fd.isdigit() else None
            if sock is not None:
                found.setdefault(address, []).append(sock)
    return found


def _adopt(fd: int, what: str) -> socket.socket | None:
    """The listening TCP socket at ``fd``, close-on-exec and non-blocking; None
    (logged) for anything else, which is left alone."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        log.error("inherited socket %s: descriptor %d unusable: %s", what, fd, exc)
        return None
    if (sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6)
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        log.error("inherited socket %s: descriptor %d is not a listening TCP socket; ignored",
                  what, fd)
        sock.detach()
        return None
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def upgrade_environment(groups: dict[str, list[socket.socket]]) -> str:
    """``FASTPROXY_SOCKETS`` for a successor: every listen address's sockets in slot order."""
    return ";".join(f"{address}={','.join(str(s.fileno()) for s in socks)}"
                    for address, socks in groups.items())


class Predecessor:
    """The successor's side: the status pipe to the master that started it."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        text = environ.pop(UPGRADE_STATUS, "")
        self.fd = int(text) if text.isdigit() else -1
        if self.fd >= 0:
            try:
                os.set_inheritable(self.fd, False)
            except OSError:
                self.fd = -1

    @property
    def present(self) -> bool:
        return self.fd >= 0

    def ready(self) -> None:
        self._send(None)

    def failed(self, why: str) -> None:
        self._send(why)

    def _send(self, failure: str | None) -> None:
        if self.fd >= 0:
            tell_status(self.fd, failure)
            os.close(self.fd)
            self.fd = -1


def tell_status(fd: int, failure: BaseException | str | None = None) -> None:
    """On a status pipe (a worker's to its master, a USR2 successor's to its
    predecessor): ``R`` for ready, or ``F`` and why on one line. Errors are
    ignored: the reader learns as much from the pipe closing."""
    if failure is None:
        data = STATUS_READY
    else:
        text = " ".join(str(failure).split()) or type(failure).__name__
        data = STATUS_FAILED + text.encode("utf-8", "replace")[:2000]
    try:
        os.write(fd, data)
    except OSError:
        pass
