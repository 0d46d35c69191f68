"""Logging: the error log (stderr, through ``logging``) and the access log.

The access log is shared by every worker: each opens the file with
O_APPEND and writes whole lines with one ``os.write`` each, so lines from
different processes never interleave (POSIX appends are atomic with respect
to the file offset). Lines are buffered within one event-loop pass and
written together by ``flush()``; USR1 calls ``reopen()`` so logrotate can
move the file away.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from fastproxy.config import LogSection

log = logging.getLogger("fastproxy")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR}


def setup_error_log(section: LogSection, role: str = "master") -> None:
    """Route the ``fastproxy`` logger to stderr at the configured level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s [%(levelname)s] {role}[%(process)d]: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(_LEVELS.get(section.level, logging.INFO))
    log.propagate = False


class AccessLog:
    """Buffered, append-only access log. ``enabled`` is False for "off"."""

    def __init__(self, section: LogSection) -> None:
        self.path = section.access
        self.format = section.format
        self.enabled = section.access != "off"
        self._fd = -1
        self._buffer: list[str] = []
        self.reopen()

    def reopen(self) -> None:
        if not self.enabled:
            return
        if self.path == "-":
            self._fd = sys.stdout.fileno()
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self._fd = self._fd, fd
        if old > 2:
            os.close(old)

    def tcp_session(self, client: str, listener: str, status: int, sent: int,
                    received: int, upstream: str, duration: float) -> None:
        """One line per TCP session, in nginx ``stream`` style or JSON."""
        if not self.enabled:
            return
        if self.format == "json":
            self._buffer.append(json.dumps({
                "time": _iso_now(), "client": client, "listener": listener,
                "protocol": "TCP", "status": status, "bytes_sent": sent,
                "bytes_received": received, "upstream": upstream,
                "session_time": round(duration, 6)}) + "\n")
        else:
            self._buffer.append(
                f'{client} [{_clf_now()}] TCP {listener} {status} {sent} {received} '
                f'{duration:.3f} "{upstream or "-"}"\n')

    def line(self, record: dict[str, Any], text: str) -> None:
        """Append a preformatted line (``text``) or its JSON form."""
        if self.enabled:
            self._buffer.append(json.dumps(record) + "\n" if self.format == "json" else text)

    def flush(self) -> None:
        if not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8", "backslashreplace")
        self._buffer.clear()
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except OSError as exc:
            log.error("access log write failed: %s", exc)

    def close(self) -> None:
        self.flush()
        if self._fd > 2:
            os.close(self._fd)
        self._fd = -1


def _clf_now() -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime())
