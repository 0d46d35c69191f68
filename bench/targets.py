"""The target table of bench/bench.py and the life cycle of a running target.

A target is one server in one mode (reverse, forward, tcp) — or ``direct``,
no proxy at all. Every proxy is started from a generated config (configs.py)
under ``taskset -c 1`` (so forked workers inherit the mask), in its own
process group, and must relay a request end to end within its start timeout
(checks.ready_probe) before anything is measured.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import configs
from backends import BULK_PORT, CPU1_PORT, HTTP_PORT, Backends
from harness import HOST, PROXY_CPU, REPO_DIR, ManagedProcess, pinned, start_server

CONNECT_PORTS = (443, BULK_PORT, HTTP_PORT)  # what every forward proxy may CONNECT to

# builder(workdir, port, upstream port, fastproxy command) -> argv
Builder = Callable[[Path, int, int, list[str]], list[str]]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    mode: str  # reverse | forward | tcp
    port: int  # 0: direct, the backend's own port
    build: Builder | None  # None: no proxy process
    about: str
    default: bool = True  # part of a run without --targets
    only: tuple[str, ...] = ()  # the scenarios it runs (empty: all of its mode)
    start_timeout: float = 10.0
    admin: int | None = None  # fastproxy's admin port (/stats)
    thread_churn: bool = False  # a thread per connection: CPU from utime+stime
    tool: str = ""  # executable it needs
    tunnel: bool = True  # forward mode: speaks CONNECT (nginx-stream: plain L4)
    error_log: str = ""  # file in the work dir whose warnings become notes


def _fastproxy(mode: str, admin: int) -> Builder:
    def build(workdir: Path, port: int, upstream: int, cmd: list[str]) -> list[str]:
        return configs.fastproxy(cmd, workdir, mode, port, admin, upstream, CONNECT_PORTS)

    return build


def _forward(fn: Callable[[Path, int, tuple[int, ...]], list[str]]) -> Builder:
    return lambda workdir, port, upstream, cmd: fn(workdir, port, CONNECT_PORTS)


def _plain(fn: Callable[[Path, int, int], list[str]]) -> Builder:
    return lambda workdir, port, upstream, cmd: fn(workdir, port, upstream)


TARGETS: tuple[TargetSpec, ...] = (
    # ------------------------------------------------------------- reverse
    TargetSpec("direct", "reverse", 0, None, "no proxy: the client talks to the backend"),
    TargetSpec("direct-cpu1", "reverse", CPU1_PORT, None,
               "no proxy, a backend copy on CPU 1: the cross-CPU latency floor",
               default=False, only=("latency",)),
    TargetSpec("nginx", "reverse", 18091, _plain(configs.nginx_reverse),
               "nginx proxy_pass, upstream keepalive 64", tool="nginx",
               error_log="nginx-reverse.error.log"),
    TargetSpec("haproxy", "reverse", 18092, _plain(configs.haproxy_reverse),
               "HAProxy mode http, nbthread 1", tool="haproxy"),
    TargetSpec("proxypy", "reverse", 18093, _plain(configs.proxypy_reverse),
               "proxy.py reverse proxy via proxypy_plugin.py", start_timeout=20.0),
    TargetSpec("python-floor", "reverse", 18094, _plain(configs.python_floor),
               "bench/python_floor.py: a Python byte relay, no HTTP (the floor)",
               default=False,
               only=("get", "get-varied", "post", "chunked", "head", "304", "new-conn")),
    TargetSpec("fastproxy", "reverse", 18090, _fastproxy("http", 19901),
               'fastproxy mode = "http", upstream keepalive 64', admin=19901),
    # ------------------------------------------------------------- forward
    TargetSpec("fastproxy", "forward", 18590, _fastproxy("forward", 19902),
               'fastproxy mode = "forward", allow_destinations 127.0.0.0/8', admin=19902),
    TargetSpec("proxypy", "forward", 18594, _forward(configs.proxypy_forward),
               "proxy.py in its default role (forward proxy)", start_timeout=20.0),
    TargetSpec("tinyproxy", "forward", 18592, _forward(configs.tinyproxy),
               "tinyproxy, a thread per connection", thread_churn=True, tool="tinyproxy"),
    TargetSpec("squid", "forward", 18593, _forward(configs.squid),
               "squid -N, no cache", tool="squid"),
    TargetSpec("nginx-stream", "forward", 18595, _plain(configs.nginx_stream),
               "nginx stream to the bulk backend: the L4 floor of the tunnels",
               only=("connect-bulk-down", "connect-bulk-up"), tool="nginx", tunnel=False),
    # ----------------------------------------------------------------- tcp
    TargetSpec("direct", "tcp", 0, None, "no proxy: the client talks to the backend"),
    TargetSpec("nginx", "tcp", 18081, _plain(configs.nginx_stream), "nginx stream",
               tool="nginx"),
    TargetSpec("haproxy", "tcp", 18082, _plain(configs.haproxy_tcp), "HAProxy mode tcp",
               tool="haproxy"),
    TargetSpec("haproxy-splice", "tcp", 18083,
               _plain(lambda w, p, u: configs.haproxy_tcp(w, p, u, splice=True)),
               "HAProxy mode tcp, splice-request/response", default=False, tool="haproxy"),
    TargetSpec("fastproxy", "tcp", 18080, _fastproxy("tcp", 19903),
               'fastproxy mode = "tcp"', admin=19903),
)  # fmt: skip


def select(names: list[str] | None, modes: list[str]) -> list[TargetSpec]:
    """The targets of ``modes`` (defaults, or those named: extras included), table order."""
    known = {t.name for t in TARGETS}
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; see --list")
    return [
        t for t in TARGETS
        if t.mode in modes and (t.name in names if names else t.default)
    ]  # fmt: skip


class Running:
    """One started target: its port, its process tree, its counters."""

    def __init__(
        self, spec: TargetSpec, workdir: Path, backends: Backends, fastproxy_cmd: list[str]
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.backends = backends
        self.cmd = fastproxy_cmd
        self.proc: ManagedProcess | None = None
        self.port = spec.port
        self.log_seen = 0

    def start(self, upstream: int, ready: Callable[[int], bool]) -> None:
        spec = self.spec
        if spec.name == "direct-cpu1":
            self.proc = self.backends.start_cpu1_copy()
            return
        if spec.build is None:
            self.port = upstream
            return
        argv = spec.build(self.workdir, spec.port, upstream, self.cmd)
        self.proc = ManagedProcess(
            f"{spec.name}-{spec.mode}",
            pinned(PROXY_CPU, argv),
            self.workdir / f"{spec.name}-{spec.mode}-{upstream}.log",
            cwd=REPO_DIR if spec.admin else None,  # `python -m fastproxy` imports the tree
        )
        start_server(
            self.proc, spec.port, lambda: ready(spec.port), spec.start_timeout,
            "does not relay a request to the backend",
        )  # fmt: skip

    def stop(self) -> None:
        if self.spec.name == "direct-cpu1":
            self.backends.stop_cpu1_copy()
        elif self.proc is not None:
            self.proc.stop()
        self.proc = None

    @property
    def proxy_pid(self) -> int | None:
        """The process tree whose CPU is the proxy's (None: no proxy)."""
        return self.proc.pid if self.proc and self.spec.build else None

    def known_pids(self) -> list[int]:
        """Processes whose CPU is part of the setup, not other work (direct-cpu1's
        backend copy is one of the backends)."""
        return self.backends.pids()

    def died(self) -> bool:
        return self.spec.build is not None and not (self.proc and self.proc.alive())

    def log_tail(self) -> str:
        return self.proc.log_tail() if self.proc else ""

    def stats(self) -> dict[str, Any] | None:
        """fastproxy's admin /stats (None for every other target or if unavailable)."""
        if not self.spec.admin:
            return None
        try:
            url = f"http://{HOST}:{self.spec.admin}/stats"
            with urllib.request.urlopen(url, timeout=2) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def log_notes(self) -> list[str]:
        """New warnings in the target's error log since the last call (nginx spills)."""
        if not self.spec.error_log:
            return []
        try:
            lines = (self.workdir / self.spec.error_log).read_text(errors="replace").splitlines()
        except OSError:
            return []
        new, self.log_seen = lines[self.log_seen :], len(lines)
        spilled = sum("buffered to a temporary file" in line for line in new)
        return [f"{spilled}× response buffered to a temp file"] if spilled else []
