"""Per-process figures from psutil (RSS, CPU seconds, open fds) for stats readers."""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def process_info(pids: Iterable[int]) -> dict[int, dict[str, float]]:
    """``{pid: {"rss": bytes, "cpu_seconds": s, "open_fds": n}}`` for live pids."""
    info: dict[int, dict[str, float]] = {}
    for pid in pids:
        if pid <= 0:
            continue
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                info[pid] = {"rss": proc.memory_info().rss,
                             "cpu_seconds": times.user + times.system,
                             "open_fds": proc.num_fds()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return info
