#!/usr/bin/env python3
"""L4 (TCP) proxy benchmark: fastproxy vs nginx stream vs HAProxy vs direct.

One command runs every target through every scenario and prints a Markdown
table (plus ratios), and writes the raw numbers as JSON to bench/out/.

    python bench/tcp_bench.py                      # all targets, defaults
    python bench/tcp_bench.py --targets direct,nginx,haproxy --duration 5 --bulk-mib 256

Method (see bench/README.md for the why):

* load generator (bulkio client / wrk) and backends (bulkio server, nginx
  HTTP) run on CPU 0; the proxy's whole process tree runs on CPU 1 (started
  under ``taskset -c 1`` so forked workers inherit the mask);
* the proxy's CPU is utime+stime of its master and all descendants, sampled
  right before and right after each measured run;
* throughput per CPU-second of the proxy is the headline efficiency number.

Traffic only ever goes to 127.0.0.1; every run is bounded by a byte count or
a duration and by a hard timeout; every process is started and stopped here,
by process group, in try/finally.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("tcp_bench needs psutil: pip install psutil")

import bulkio  # bench/ is sys.path[0] when run as `python bench/tcp_bench.py`

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

HOST = "127.0.0.1"
LOAD_CPU = 0  # load generators + backends
PROXY_CPU = 1  # the proxy under test (whole process tree)

BULK_BACKEND_PORT = 18000
HTTP_BACKEND_PORT = 18001
FASTPROXY_PORT = 18080
NGINX_STREAM_PORT = 18081
HAPROXY_PORT = 18082
HAPROXY_SPLICE_PORT = 18083
FASTPROXY_ADMIN_PORT = 19901

CONTENTION_PCT = 15.0  # flag a row when this much of CPU1 went to something else
START_TIMEOUT = 10.0  # seconds for any server to start listening
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
HTTP_BODY = b"x" * 99 + b"\n"  # 100-byte response body
MB = 1_000_000  # reported MB are decimal megabytes

ALL_TARGETS = ("direct", "nginx", "haproxy", "fastproxy")
EXTRA_TARGETS = ("haproxy-splice",)


def log(msg: str) -> None:
    print(f"[tcp_bench] {msg}", file=sys.stderr, flush=True)


# ============================================================== processes


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


class ManagedProcess:
    """A process started in its own session; stopped by killing its group."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        log(f"start {self.name}: {shlex.join(self.argv)}")
        with open(self.log_path, "wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches workers
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM the group, wait, then SIGKILL whatever is left of it."""
        if self.popen is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f}s; killing")
        self.signal_group(signal.SIGKILL)  # stragglers (workers) or a stuck leader
        self.popen.wait(timeout=STOP_TIMEOUT)
        self.popen = None

    def signal_group(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)  # session leader: pgid == pid
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, proc: ManagedProcess, timeout: float = START_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            return False
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


def ensure_port_free(port: int) -> None:
    if port_open(port):
        raise RuntimeError(f"port {HOST}:{port} is already in use; stop whatever listens there")


def start_and_wait(proc: ManagedProcess, port: int, timeout: float = START_TIMEOUT) -> None:
    ensure_port_free(port)
    proc.start()
    if not wait_for_port(port, proc, timeout):
        exited = not proc.alive()
        tail = proc.log_tail()
        proc.stop()
        why = "exited before listening" if exited else f"not listening after {timeout:.0f}s"
        raise RuntimeError(f"{proc.name} {why} on {HOST}:{port}; log {proc.log_path}:\n{tail}")


def probe_bulk(port: int) -> bool:
    """One 1-byte download from the bulkio backend through ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(bulkio.HEADER.pack(bulkio.DOWNLOAD, 1))
            return len(sock.recv(1)) == 1
    except OSError:
        return False


def probe_http(port: int) -> bool:
    """One GET to the nginx HTTP backend through ``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


PROBES: dict[int, Callable[[int], bool]] = {
    BULK_BACKEND_PORT: probe_bulk,
    HTTP_BACKEND_PORT: probe_http,
}


def wait_until_relaying(proc: ManagedProcess, port: int, upstream: int, deadline: float) -> None:
    """Listening is not enough (a master may listen while its workers crash):
    wait until a request through ``port`` reaches the backend and comes back."""
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        if PROBES[upstream](port):
            return
        time.sleep(0.1)
    why = "exited" if not proc.alive() else "does not relay to the backend"
    tail = proc.log_tail()
    proc.stop()
    raise RuntimeError(
        f"{proc.name} listens on {HOST}:{port} but {why} (upstream {upstream}) within "
        f"{START_TIMEOUT:.0f}s of start; log {proc.log_path}:\n{tail}"
    )


# ============================================================ CPU accounting


def thread_runtime_seconds(pid: int) -> float | None:
    """On-CPU time of all live threads of ``pid`` from /proc/PID/task/*/schedstat (ns).

    This is the scheduler's sum_exec_runtime, the quantity utime+stime are
    scaled to, but at nanosecond instead of clock-tick (10 ms) resolution.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # thread exited meanwhile
    return total / 1e9


def tree_cpu_seconds(root_pid: int) -> dict[str, dict[str, float]]:
    """CPU seconds per process of the tree rooted at root_pid.

    Two samples: "ticks" = utime+stime (psutil, /proc/PID/stat) and "runtime"
    = schedstat nanoseconds. Both include, as key "reaped", the CPU of children
    the root already waited for (tick resolution), so a worker that exits and
    is reaped during a run is still counted.
    """
    ticks: dict[str, float] = {}
    runtime: dict[str, float] = {}
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"ticks": ticks, "runtime": runtime}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                key = f"{proc.pid}:{proc.create_time()}"
        except psutil.NoSuchProcess:
            continue
        ticks[key] = times.user + times.system
        precise = thread_runtime_seconds(proc.pid)
        runtime[key] = precise if precise is not None else ticks[key]
        if proc.pid == root_pid:
            ticks["reaped"] = runtime["reaped"] = times.children_user + times.children_system
    return {"ticks": ticks, "runtime": runtime}


def check_affinity(target: Target) -> None:
    """Refuse to measure a proxy process that is not confined to PROXY_CPU."""
    root = target.root_pid()
    if root is None:
        return
    try:
        top = psutil.Process(root)
        for proc in [top, *top.children(recursive=True)]:
            if proc.cpu_affinity() != [PROXY_CPU]:
                raise RuntimeError(
                    f"{target.name} pid {proc.pid} runs on CPUs {proc.cpu_affinity()}, "
                    f"expected [{PROXY_CPU}]"
                )
    except psutil.NoSuchProcess:
        pass


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(value - before.get(key, 0.0) for key, value in after.items())


CPU_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_stat(cpu: int) -> dict[str, float]:
    """Seconds per /proc/stat category for one CPU."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        for line in fh:
            fields = line.split()
            if fields[0] == f"cpu{cpu}":
                return {k: int(v) / ticks for k, v in zip(CPU_STAT_FIELDS, fields[1:9])}
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def cpu_stat_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {k: after[k] - before[k] for k in CPU_STAT_FIELDS}
    delta["busy"] = sum(v for k, v in delta.items() if k not in ("idle", "iowait"))
    return delta


# ================================================================= targets


class Target(abc.ABC):
    """A thing the load goes through: start(upstream) -> listen_port, stop()."""

    name: str
    listen_port: int

    @abc.abstractmethod
    def start(self, upstream_port: int, workdir: Path) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def root_pid(self) -> int | None:
        """Pid whose process tree is the proxy (None: nothing to account)."""
        return None

    def stats(self) -> dict[str, Any] | None:
        """Target-specific counters (fastproxy admin stats); None if unavailable."""
        return None


class DirectTarget(Target):
    """No proxy: the client talks to the backend itself (load-generator ceiling)."""

    name = "direct"

    def __init__(self) -> None:
        self.listen_port = 0

    def start(self, upstream_port: int, workdir: Path) -> None:
        self.listen_port = upstream_port

    def stop(self) -> None:
        pass


class ProxyTarget(Target):
    """A proxy process tree pinned to PROXY_CPU, configured from a generated file."""

    start_timeout = START_TIMEOUT

    def __init__(self) -> None:
        self.proc: ManagedProcess | None = None

    @abc.abstractmethod
    def write_config(self, upstream_port: int, workdir: Path) -> Path: ...

    @abc.abstractmethod
    def command(self, config: Path) -> list[str]: ...

    def cwd(self) -> Path | None:
        return None

    def start(self, upstream_port: int, workdir: Path) -> None:
        config = self.write_config(upstream_port, workdir)
        self.proc = ManagedProcess(
            self.name,
            pinned(PROXY_CPU, self.command(config)),
            workdir / f"{self.name}-to-{upstream_port}.log",
            cwd=self.cwd(),
        )
        deadline = time.monotonic() + self.start_timeout
        start_and_wait(self.proc, self.listen_port, self.start_timeout)
        wait_until_relaying(self.proc, self.listen_port, upstream_port, deadline)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class NginxStreamTarget(ProxyTarget):
    name = "nginx"
    listen_port = NGINX_STREAM_PORT

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "nginx-stream.conf"
        path.write_text(
            f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {workdir}/nginx-stream.pid;
error_log {workdir}/nginx-stream.error.log warn;
events {{ worker_connections 8192; }}
stream {{
    server {{
        listen {HOST}:{self.listen_port} backlog=4096;
        proxy_pass {HOST}:{upstream_port};
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }}
}}
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["nginx", "-p", str(config.parent), "-c", str(config), "-e", "stderr"]


class HaproxyTarget(ProxyTarget):
    listen_port = HAPROXY_PORT

    def __init__(self, splice: bool = False) -> None:
        super().__init__()
        self.splice = splice
        self.name = "haproxy-splice" if splice else "haproxy"
        if splice:
            self.listen_port = HAPROXY_SPLICE_PORT

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / f"{self.name}.cfg"
        splice = "    option splice-request\n    option splice-response\n" if self.splice else ""
        path.write_text(
            f"""global
    nbthread 1
    maxconn 4096
    pidfile {workdir}/{self.name}.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{splice}
listen bench
    bind {HOST}:{self.listen_port}
    server b {HOST}:{upstream_port}
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["haproxy", "-db", "-f", str(config)]


class FastproxyTarget(ProxyTarget):
    name = "fastproxy"
    listen_port = FASTPROXY_PORT

    def __init__(self, cmd: Sequence[str]) -> None:
        super().__init__()
        self.cmd = list(cmd)

    def cwd(self) -> Path | None:
        return REPO_DIR  # so that `python -m fastproxy` imports the work tree

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "fastproxy.toml"
        path.write_text(
            f"""[server]
workers = 1
pidfile = "{workdir}/fastproxy.pid"

[log]
access = "off"

[admin]
listen = "{HOST}:{FASTPROXY_ADMIN_PORT}"

[[listener]]
name = "bench"
listen = "{HOST}:{self.listen_port}"
mode = "tcp"
upstream = "b"

[upstream.b]
servers = ["{HOST}:{upstream_port}"]
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return [*self.cmd, "run", "-c", str(config)]

    def stats(self) -> dict[str, Any] | None:
        url = f"http://{HOST}:{FASTPROXY_ADMIN_PORT}/stats"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def make_targets(names: Sequence[str], fastproxy_cmd: Sequence[str]) -> list[Target]:
    factories: dict[str, Any] = {
        "direct": DirectTarget,
        "nginx": NginxStreamTarget,
        "haproxy": HaproxyTarget,
        "haproxy-splice": lambda: HaproxyTarget(splice=True),
        "fastproxy": lambda: FastproxyTarget(fastproxy_cmd),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose from {sorted(factories)}")
    return [factories[name]() for name in names]


# ================================================================ backends


class Backends:
    """bulkio sink/source and an nginx HTTP server, both on LOAD_CPU."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[ManagedProcess] = []

    def start(self) -> None:
        bulk = ManagedProcess(
            "bulk-backend",
            pinned(
                LOAD_CPU,
                [
                    sys.executable,
                    str(BENCH_DIR / "bulkio.py"),
                    "server",
                    "--port",
                    str(BULK_BACKEND_PORT),
                ],
            ),
            self.workdir / "bulk-backend.log",
        )
        http_conf = self.write_http_config()
        http = ManagedProcess(
            "http-backend",
            pinned(
                LOAD_CPU, ["nginx", "-p", str(self.workdir), "-c", str(http_conf), "-e", "stderr"]
            ),
            self.workdir / "http-backend.log",
        )
        for proc, port in ((bulk, BULK_BACKEND_PORT), (http, HTTP_BACKEND_PORT)):
            start_and_wait(proc, port)
            self.procs.append(proc)

    def write_http_config(self) -> Path:
        path = self.workdir / "nginx-http-backend.conf"
        body = HTTP_BODY.decode().rstrip("\n") + "\\n"
        path.write_text(
            f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {self.workdir}/nginx-http-backend.pid;
error_log {self.workdir}/nginx-http-backend.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    server {{
        listen {HOST}:{HTTP_BACKEND_PORT} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""
        )
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


# ============================================================ measurement


class Meter:
    """CPU snapshots around the measured part of a run.

    A scenario calls begin() right before the load starts and end() right after
    it stops, so process start-up of the load generator stays outside.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.root = target.root_pid()
        self.began = self.ended = False
        self.proxy_cpu: float | None = None  # schedstat runtime (ns resolution)
        self.proxy_cpu_ticks: float | None = None  # utime+stime (10 ms resolution)

    def begin(self) -> None:
        self.stats_before = self.target.stats()  # outside the CPU window
        check_affinity(self.target)
        self.tree_before = tree_cpu_seconds(self.root) if self.root else None
        self.cpu0_before, self.cpu1_before = cpu_stat(LOAD_CPU), cpu_stat(PROXY_CPU)
        self.t0 = time.monotonic()
        self.began = True

    def end(self) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu1 = cpu_stat_delta(self.cpu1_before, cpu_stat(PROXY_CPU))
        self.cpu0 = cpu_stat_delta(self.cpu0_before, cpu_stat(LOAD_CPU))
        if self.root and self.tree_before:
            after = tree_cpu_seconds(self.root)
            self.proxy_cpu = cpu_delta(self.tree_before["runtime"], after["runtime"])
            self.proxy_cpu_ticks = cpu_delta(self.tree_before["ticks"], after["ticks"])
        self.stats_after = self.target.stats()
        self.ended = True

    def row(self) -> dict[str, Any]:
        """The CPU columns of a result row (all None if the window never closed)."""
        closed = self.began and self.ended
        return {
            "window_seconds": self.wall if closed else None,
            "proxy_cpu_seconds": self.proxy_cpu if closed else None,
            "proxy_cpu_seconds_ticks": self.proxy_cpu_ticks if closed else None,
            "cpu0_seconds": self.cpu0 if closed else None,
            "cpu1_seconds": self.cpu1 if closed else None,
            "splice_share": splice_share(self.stats_before, self.stats_after) if closed else None,
        }


def splice_share(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    """Fraction of proxied bytes that fastproxy moved with splice, if it reports it."""

    def counters(stats: dict[str, Any] | None) -> tuple[float, float] | None:
        try:
            c = stats["totals"]["counters"]  # type: ignore[index]
            return float(c["bytes_spliced"]), float(c["bytes_copied"])
        except (KeyError, TypeError, ValueError):
            return None

    b, a = counters(before), counters(after)
    if b is None or a is None:
        return None
    spliced, copied = a[0] - b[0], a[1] - b[1]
    total = spliced + copied
    return spliced / total if total > 0 else None


# =============================================================== scenarios


@dataclasses.dataclass
class RunResult:
    """What a scenario measured (units = bytes, requests or connections)."""

    units: float
    seconds: float  # duration of the load as the load generator measured it
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


class Scenario(abc.ABC):
    """A load pattern; run() must call meter.begin()/end() around the load only."""

    name: str
    label: str
    upstream_port: int  # which backend the target must forward to
    unit: str  # per-second unit shown in the table, e.g. "MB/s"
    per_cpu_unit: str  # e.g. "MB"
    scale: float = 1.0  # units / scale = shown number

    @abc.abstractmethod
    def warmup(self, port: int) -> RunResult: ...

    @abc.abstractmethod
    def run(self, port: int, meter: Meter) -> RunResult: ...


class BulkScenario(Scenario):
    """One connection moving N bytes, client->backend ("up") or backend->client ("down")."""

    upstream_port = BULK_BACKEND_PORT
    unit = "MB/s"
    per_cpu_unit = "MB"
    scale = MB
    warmup_bytes = 64 * 1024 * 1024

    def __init__(self, direction: str, nbytes: int) -> None:
        self.direction = direction
        self.nbytes = nbytes
        self.name = f"bulk_{direction}"
        self.label = "bulk client→backend" if direction == "up" else "bulk backend→client"
        # bounded: floor of 60 s, or as if the proxy only managed 20 MB/s
        self.timeout = max(60.0, nbytes / (20 * MB))

    def argv(self, port: int, nbytes: int) -> list[str]:
        return pinned(
            LOAD_CPU,
            [
                sys.executable,
                str(BENCH_DIR / "bulkio.py"),
                "client",
                "--port",
                str(port),
                "--direction",
                self.direction,
                "--bytes",
                str(nbytes),
                "--handshake",
            ],
        )

    def transfer(self, port: int, nbytes: int, meter: Meter | None) -> RunResult:
        proc = subprocess.Popen(
            self.argv(port, nbytes),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            return self.drive(proc, meter)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def drive(self, proc: subprocess.Popen[str], meter: Meter | None) -> RunResult:
        assert proc.stdin is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        if not ready or proc.stdout.readline().strip() != "ready":
            _, err = proc.communicate(timeout=STOP_TIMEOUT) if proc.poll() is not None else ("", "")
            last = (err.strip().splitlines() or ["client not ready"])[-1]
            return RunResult(0, 0, error=f"bulk client failed: {last}")
        if meter:
            meter.begin()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return RunResult(0, self.timeout, error=f"timed out after {self.timeout:.0f}s")
        if meter:
            meter.end()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"rc={proc.returncode}"])[-1]
            return RunResult(0, 0, error=f"bulk client failed: {last}")
        result = json.loads(out)
        return RunResult(float(result["bytes"]), float(result["seconds"]))

    def warmup(self, port: int) -> RunResult:
        return self.transfer(port, self.warmup_bytes, None)

    def run(self, port: int, meter: Meter) -> RunResult:
        return self.transfer(port, self.nbytes, meter)


class WrkScenario(Scenario):
    """wrk -t1 -c50 over HTTP/1.1 through the L4 proxy to the nginx backend."""

    upstream_port = HTTP_BACKEND_PORT
    scale = 1.0
    warmup_seconds = 1

    def __init__(self, duration: int, new_connections: bool, connections: int = 50) -> None:
        self.duration = duration
        self.new_connections = new_connections
        self.connections = connections
        if new_connections:
            self.name, self.label = "new_conn", "new connection per request"
            self.unit, self.per_cpu_unit = "conn/s", "conn"
        else:
            self.name, self.label = "keepalive", "keep-alive requests"
            self.unit, self.per_cpu_unit = "req/s", "req"

    def argv(self, port: int, duration: int) -> list[str]:
        argv = [
            "wrk",
            "-t1",
            f"-c{self.connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "5s",
        ]
        if self.new_connections:
            argv += ["-H", "Connection: close"]
        return pinned(LOAD_CPU, [*argv, f"http://{HOST}:{port}/"])

    def wrk(self, port: int, duration: int, meter: Meter | None) -> RunResult:
        if meter:
            meter.begin()
        try:
            done = subprocess.run(
                self.argv(port, duration),
                capture_output=True,
                text=True,
                timeout=duration + 30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return RunResult(0, duration, error="wrk timed out")
        if meter:
            meter.end()
        if done.returncode != 0:
            return RunResult(0, duration, error=f"wrk rc={done.returncode}: {done.stderr.strip()}")
        return parse_wrk(done.stdout)

    def warmup(self, port: int) -> RunResult:
        result = self.wrk(port, self.warmup_seconds, None)
        if result.error is None and result.units == 0:
            result.error = "no request completed"
        return result

    def run(self, port: int, meter: Meter) -> RunResult:
        return self.wrk(port, self.duration, meter)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def parse_wrk(out: str) -> RunResult:
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not match:
        return RunResult(0, 0, error=f"cannot parse wrk output: {out[-300:]!r}")
    requests = float(match.group(1))
    seconds = _ms(match.group(2) + match.group(3)) / 1e3
    details: dict[str, Any] = {"wrk_output": out}
    for pct in ("50", "99"):
        lat = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        if lat:
            details[f"latency_p{pct}_ms"] = _ms(lat.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        details["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()))
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        details["non_2xx"] = int(non2xx.group(1))
    return RunResult(requests, seconds, details)


def make_scenarios(duration: int, bulk_mib: int) -> list[Scenario]:
    nbytes = bulk_mib * 1024 * 1024
    return [
        BulkScenario("up", nbytes),
        BulkScenario("down", nbytes),
        WrkScenario(duration, new_connections=False),
        WrkScenario(duration, new_connections=True),
    ]


# ================================================================== runner


def pct(seconds: float | None, over: float | None) -> float | None:
    return 100 * seconds / over if seconds is not None and over else None


def measure(target: Target, scenario: Scenario) -> dict[str, Any]:
    """Warm up, then run one scenario inside a Meter window; one result row."""
    warm = scenario.warmup(target.listen_port)
    if warm.error:
        return skipped_row(target.name, scenario, f"warm-up failed: {warm.error}")
    time.sleep(0.2)
    meter = Meter(target)
    result = scenario.run(target.listen_port, meter)
    window = meter.row()
    ok = result.error is None and result.seconds > 0
    shown = result.units / scenario.scale
    cpu = window["proxy_cpu_seconds"]
    # Percentages are over the load generator's own duration: the window adds
    # only the few ms a process needs to exit, with the proxy idle.
    return {
        "target": target.name,
        "scenario": scenario.name,
        "label": scenario.label,
        "unit": scenario.unit,
        "per_cpu_unit": scenario.per_cpu_unit,
        "units": result.units,
        "seconds": result.seconds,
        "rate": shown / result.seconds if ok else None,
        "per_cpu_second": shown / cpu if ok and cpu else None,
        "proxy_cpu_pct": pct(cpu, result.seconds) if ok else None,
        "cpu1_busy_pct": pct(window["cpu1_seconds"]["busy"], result.seconds)
        if ok and window["cpu1_seconds"]
        else None,
        "cpu0_busy_pct": pct(window["cpu0_seconds"]["busy"], result.seconds)
        if ok and window["cpu0_seconds"]
        else None,
        **window,
        "error": result.error,
        "details": result.details,
    }


def run_target(
    target: Target, scenarios: Sequence[Scenario], workdir: Path
) -> list[dict[str, Any]]:
    """Start the target once per upstream, run the scenarios that use it, stop it."""
    rows: list[dict[str, Any]] = []
    by_upstream: dict[int, list[Scenario]] = {}
    for scenario in scenarios:
        by_upstream.setdefault(scenario.upstream_port, []).append(scenario)
    skip_reason: str | None = None
    for upstream, group in by_upstream.items():
        if skip_reason is None:
            try:
                target.start(upstream, workdir)
            except (RuntimeError, OSError) as exc:
                log(f"SKIP {target.name}: {exc}")
                skip_reason = str(exc).splitlines()[0]
        if skip_reason is not None:
            rows += [skipped_row(target.name, s, skip_reason) for s in group]
            continue
        try:
            for scenario in group:
                log(f"{target.name}: {scenario.label}")
                try:
                    row = measure(target, scenario)
                except RuntimeError as exc:  # e.g. a proxy process left CPU 1
                    row = skipped_row(target.name, scenario, f"not measured: {exc}")
                log(
                    f"  -> {fmt_rate(row)}  proxy CPU {fmt(row['proxy_cpu_seconds'], 2)} s"
                    + (f"  ERROR {row['error']}" if row["error"] else "")
                )
                rows.append(row)
        finally:
            target.stop()
        time.sleep(0.5)
    return rows


def skipped_row(target: str, scenario: Scenario, reason: str) -> dict[str, Any]:
    error = reason if reason.startswith(("warm-up", "not measured")) else f"skipped: {reason}"
    return {
        "target": target,
        "scenario": scenario.name,
        "label": scenario.label,
        "unit": scenario.unit,
        "per_cpu_unit": scenario.per_cpu_unit,
        "rate": None,
        "proxy_cpu_seconds": None,
        "proxy_cpu_pct": None,
        "per_cpu_second": None,
        "cpu1_busy_pct": None,
        "cpu0_busy_pct": None,
        "splice_share": None,
        "error": error,
        "details": {},
    }


# ================================================================= report


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def fmt_idle(busy: dict[str, float]) -> str:
    return ", ".join(f"{cpu} {value:.0f}" for cpu, value in busy.items())


def fmt_rate(row: dict[str, Any]) -> str:
    return f"{fmt(row['rate'])} {row['unit']}"


def notes(row: dict[str, Any]) -> str:
    parts: list[str] = []
    if row.get("error"):
        parts.append(str(row["error"])[:80])
    details = row.get("details", {})
    errs = details.get("socket_errors")
    if errs and any(errs.values()):
        parts.append("sock err " + ",".join(f"{k}={v}" for k, v in errs.items() if v))
    if details.get("non_2xx"):
        parts.append(f"non-2xx={details['non_2xx']}")
    if "latency_p99_ms" in details:
        parts.append(
            f"p50 {details['latency_p50_ms']:.2f} ms, p99 {details['latency_p99_ms']:.2f} ms"
        )
    if row.get("splice_share") is not None:
        parts.append(f"spliced {100 * row['splice_share']:.0f}%")
    foreign = foreign_cpu1_pct(row)
    if foreign is not None and foreign > CONTENTION_PCT:
        parts.append(f"⚠ CPU1 {foreign:.0f}% busy with other work")
    return "; ".join(parts)


def foreign_cpu1_pct(row: dict[str, Any]) -> float | None:
    """CPU1 busy time not spent by the proxy: other processes sharing the proxy CPU."""
    busy = row.get("cpu1_busy_pct")
    if busy is None:
        return None
    return float(busy - (row.get("proxy_cpu_pct") or 0.0))


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        (
            "| scenario | target | throughput | proxy CPU s | proxy CPU % | per proxy CPU-s "
            "| CPU1 busy % | CPU0 busy % | notes |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        per_cpu = row["per_cpu_second"]
        lines.append(
            f"| {row['label']} | {row['target']} | {fmt_rate(row)} "
            f"| {fmt(row['proxy_cpu_seconds'], 2)} | {fmt(row['proxy_cpu_pct'])} "
            f"| {fmt(per_cpu) + ' ' + row['per_cpu_unit'] if per_cpu else '—'} "
            f"| {fmt(row['cpu1_busy_pct'])} | {fmt(row.get('cpu0_busy_pct'))} | {notes(row)} |"
        )
    return "\n".join(lines)


def ratio_table(rows: Sequence[dict[str, Any]], scenarios: Sequence[Scenario]) -> str:
    index = {(r["target"], r["scenario"]): r for r in rows}
    lines = [
        "| per proxy CPU-second | fastproxy/nginx | fastproxy/haproxy |",
        "|---|--:|--:|",
    ]
    for scenario in scenarios:
        fp = index.get(("fastproxy", scenario.name), {}).get("per_cpu_second")
        cells = []
        for other in ("nginx", "haproxy"):
            ref = index.get((other, scenario.name), {}).get("per_cpu_second")
            cells.append(f"{fp / ref:.2f}×" if fp and ref else "n/a")
        lines.append(
            f"| {scenario.per_cpu_unit}/CPU-s, {scenario.label} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def idle_check(seconds: float = 1.0) -> dict[str, float]:
    """Busy % of both CPUs before anything starts; warns if the machine is not idle."""
    before = {cpu: cpu_stat(cpu) for cpu in (LOAD_CPU, PROXY_CPU)}
    time.sleep(seconds)
    busy = {
        f"cpu{cpu}": 100 * cpu_stat_delta(before[cpu], cpu_stat(cpu))["busy"] / seconds
        for cpu in before
    }
    if any(value > CONTENTION_PCT for value in busy.values()):
        log(f"WARNING: machine not idle before the run ({busy}); results will be noisy")
    return busy


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else "n/a"

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": model,
        "python": platform.python_version(),
        "nginx": version(["nginx", "-v"]),
        "haproxy": version(["haproxy", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "repo_head": version(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"]),
    }


# =================================================================== main


def check_prerequisites(targets: Sequence[str]) -> None:
    missing = [tool for tool in ("taskset", "wrk", "nginx") if shutil.which(tool) is None]
    if any(t.startswith("haproxy") for t in targets) and shutil.which("haproxy") is None:
        missing.append("haproxy")
    if missing:
        raise SystemExit(
            f"missing tools: {missing}. Install (Debian, as root): apt-get update; "
            "apt-get install -y wrk nginx libnginx-mod-stream haproxy"
        )
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        raise SystemExit("needs at least 2 CPUs (load on CPU 0, proxy on CPU 1)")


@contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fpbench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="L4 proxy benchmark (see bench/README.md)")
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma list from {', '.join(ALL_TARGETS + EXTRA_TARGETS)}",
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per wrk scenario (default 10)"
    )
    parser.add_argument(
        "--bulk-mib", type=int, default=1024, help="MiB moved per bulk direction (default 1024)"
    )
    parser.add_argument(
        "--fastproxy-cmd",
        default=f"{shlex.quote(sys.executable)} -m fastproxy",
        help="command that starts fastproxy (`run -c FILE` is appended)",
    )
    parser.add_argument(
        "--json-out",
        type=Path,
        default=None,
        help="raw results file (default bench/out/tcp_bench-<time>.json)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="print and keep the temp dir with configs and logs",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1..600 seconds")
    if not 1 <= args.bulk_mib <= 65536:
        parser.error("--bulk-mib must be 1..65536")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    check_prerequisites(names)
    # SIGTERM (e.g. `timeout`) must still run the finally blocks that stop servers
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {LOAD_CPU})  # keep the orchestrator itself off the proxy CPU
    targets = make_targets(names, shlex.split(args.fastproxy_cmd))
    scenarios = make_scenarios(args.duration, args.bulk_mib)
    facts = machine_facts()
    facts["idle_check_busy_pct"] = idle_check()
    rows: list[dict[str, Any]] = []

    with workdir() as tmp:
        backends = Backends(tmp)
        try:
            backends.start()
            for target in targets:
                rows += run_target(target, scenarios, tmp)
        finally:
            for target in targets:
                target.stop()
            backends.stop()
            if args.keep_workdir:
                kept = Path(tempfile.mkdtemp(prefix="fpbench-kept-"))
                shutil.copytree(tmp, kept, dirs_exist_ok=True)
                log(f"configs and logs kept in {kept}")

    settings = {
        "targets": names,
        "duration_s": args.duration,
        "bulk_mib": args.bulk_mib,
        "load_cpu": LOAD_CPU,
        "proxy_cpu": PROXY_CPU,
        "wrk_connections": 50,
        "http_body_bytes": len(HTTP_BODY),
        "fastproxy_cmd": args.fastproxy_cmd,
    }
    report = "\n\n".join(
        [
            (
                f"### tcp_bench {facts['date']} — {facts['cpu_model']}, "
                f"{facts['nproc']} CPUs, kernel {facts['kernel']}"
            ),
            (
                f"duration {args.duration} s per wrk run, bulk {args.bulk_mib} MiB per "
                f"direction, load+backends on CPU {LOAD_CPU}, proxy on CPU {PROXY_CPU}; "
                f"idle check before start (busy %): {fmt_idle(facts['idle_check_busy_pct'])}; "
                f"repo HEAD {facts['repo_head']}"
            ),
            results_table(rows),
            ratio_table(rows, scenarios),
        ]
    )
    print(report)

    out = args.json_out or OUT_DIR / f"tcp_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": facts, "settings": settings, "results": rows, "markdown": report}, indent=2
        )
    )
    log(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
