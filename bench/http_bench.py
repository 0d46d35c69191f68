#!/usr/bin/env python3
"""HTTP reverse-proxy benchmark: fastproxy vs nginx vs HAProxy vs proxy.py vs direct.

    python bench/http_bench.py                          # all targets, 10 s wrk runs
    python bench/http_bench.py --targets direct,fastproxy --duration 5

Same method as tcp_bench.py, whose process, CPU-accounting, measurement and
report code this imports (see bench/README.md): load generator and backend on
CPU 0, the proxy's whole process tree on CPU 1, work per CPU-second of the
proxy as the headline figure. The backend is one nginx serving static files
(/1k, /1m, /big) with sendfile; every proxy keeps idle connections to it.

Scenarios:
  (a) keepalive  wrk -t1 -c50 GET /1k over keep-alive
  (b) new_conn   the same with "Connection: close" (one connection per request)
  (c) download   GET /big (256 MiB) N times over one connection (http_download.py)
  (d) latency    wrk -t1 -c1 GET /1k: sequential requests, p50/p99 vs direct

Traffic only ever goes to 127.0.0.1; every run is bounded by a duration or a
byte count and a hard timeout; every process is started and stopped here, by
process group, in try/finally (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import tcp_bench as tb  # bench/ is sys.path[0] when run as `python bench/http_bench.py`
from harness import (
    BENCH_DIR,
    HOST,
    LOAD_CPU,
    MB,
    PROXY_CPU,
    DirectTarget,
    ManagedProcess,
    Meter,
    RunResult,
    Scenario,
    Target,
    fmt,
    log,
    pinned,
    start_and_wait,
)
from tcp_bench import ProxyTarget

BACKEND_PORT = 18001  # nginx HTTP backend (static files)
FASTPROXY_PORT = 18090
NGINX_PORT = 18091
HAPROXY_PORT = 18092
PROXYPY_PORT = 18093
DIRECT_CPU1_PORT = 18002  # second backend, on the proxy CPU (direct-cpu1 reference)
FASTPROXY_ADMIN_PORT = tb.FASTPROXY_ADMIN_PORT  # 19901

PROXYPY_VENV = Path("/tmp/proxypy-venv")
SMALL_PATH, SMALL_BYTES = "/1k", 1024
MEDIUM_PATH, MEDIUM_BYTES = "/1m", 1024 * 1024  # not used by a scenario; for manual runs
BIG_PATH = "/big"

ALL_TARGETS = ("direct", "direct-cpu1", "nginx", "haproxy", "proxypy", "fastproxy")
COMPARED = ("nginx", "haproxy", "proxypy")  # fastproxy/<x> ratio columns
NOISE_PCT = 15.0  # flag a row when other processes used this much of a CPU (both CPUs summed)


harness.set_log_name("http_bench")  # the shared helpers log with this prefix


# ================================================================= probes


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET with Connection: close; (status, body). Raises OSError/ValueError."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(data) < 4 * SMALL_BYTES:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def serves_small(port: int) -> bool:
    try:
        status, body = http_get(port, SMALL_PATH)
    except (OSError, ValueError, IndexError):
        return False
    return status == 200 and len(body) == SMALL_BYTES


# ================================================================ targets


class HttpProxyTarget(ProxyTarget):
    """A reverse proxy pinned to PROXY_CPU; ready when GET /1k through it works."""

    def env(self) -> dict[str, str]:
        return {}

    def start(self, upstream_port: int, workdir: Path) -> None:
        config = self.write_config(upstream_port, workdir)
        argv = harness.with_env(self.command(config), self.env())
        self.proc = ManagedProcess(
            self.name,
            pinned(PROXY_CPU, argv),
            workdir / f"{self.name}-http.log",
            cwd=self.cwd(),
        )
        deadline = time.monotonic() + self.start_timeout
        start_and_wait(self.proc, self.listen_port, self.start_timeout)
        if harness.poll_ready(self.proc, lambda: serves_small(self.listen_port), deadline):
            return
        why = "exited" if not self.proc.alive() else f"does not serve GET {SMALL_PATH} (200, 1 KiB)"
        tail = self.proc.log_tail()
        self.stop()
        raise RuntimeError(
            f"{self.name} listens on {HOST}:{self.listen_port} but {why} within "
            f"{self.start_timeout:.0f}s of start; log {workdir / f'{self.name}-http.log'}:\n{tail}"
        )

    def notes(self) -> list[str]:
        """Remarks from the proxy's own logs, collected after a scenario."""
        return []


class NginxHttpTarget(HttpProxyTarget):
    name = "nginx"
    listen_port = NGINX_PORT

    def __init__(self) -> None:
        super().__init__()
        self.error_log: Path | None = None
        self.seen = 0

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "nginx-proxy.conf"
        self.error_log = workdir / "nginx-proxy.error.log"
        (workdir / "nginx-proxy-temp").mkdir(exist_ok=True)
        path.write_text(
            f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {self.error_log} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {workdir}/nginx-proxy-temp/client;
    proxy_temp_path {workdir}/nginx-proxy-temp/proxy;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {HOST}:{self.listen_port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["nginx", "-p", str(config.parent), "-c", str(config), "-e", "stderr"]

    def notes(self) -> list[str]:
        """nginx (default proxy_buffering) spills a response to disk when the client
        is slower than the backend; it says so at `warn` level."""
        if self.error_log is None:
            return []
        try:
            lines = self.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        new, self.seen = lines[self.seen :], len(lines)
        spilled = sum("buffered to a temporary file" in line for line in new)
        return [f"{spilled}× response buffered to a temp file"] if spilled else []


class HaproxyHttpTarget(HttpProxyTarget):
    name = "haproxy"
    listen_port = HAPROXY_PORT

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "haproxy-http.cfg"
        path.write_text(
            f"""global
    nbthread 1
    maxconn 8192
    pidfile {workdir}/haproxy-http.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

listen bench
    bind {HOST}:{self.listen_port}
    server b {HOST}:{upstream_port}
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["haproxy", "-db", "-f", str(config)]


class ProxypyTarget(HttpProxyTarget):
    """proxy.py (PyPI `proxy.py`, own venv) as a reverse proxy via bench/proxypy_plugin.py."""

    name = "proxypy"
    listen_port = PROXYPY_PORT
    start_timeout = 20.0  # imports a lot on start

    def __init__(self, venv: Path = PROXYPY_VENV) -> None:
        super().__init__()
        self.python = venv / "bin" / "python"
        self.upstream_port = BACKEND_PORT

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        if not self.python.exists():
            raise RuntimeError(
                f"{self.python} missing: python -m venv {PROXYPY_VENV} && "
                f"{PROXYPY_VENV}/bin/pip install proxy.py"
            )
        self.upstream_port = upstream_port
        data_dir = workdir / "proxypy-data"
        data_dir.mkdir(exist_ok=True)
        return data_dir  # proxy.py takes flags, not a file; this is its data dir

    def env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": str(BENCH_DIR),
            "FPBENCH_UPSTREAM": f"http://{HOST}:{self.upstream_port}",
        }

    def command(self, config: Path) -> list[str]:
        return [
            str(self.python),
            "-m",
            "proxy",
            "--hostname",
            HOST,
            "--port",
            str(self.listen_port),
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--backlog",
            "4096",
            "--timeout",
            "60",
            "--enable-reverse-proxy",
            "--disable-http-proxy",
            "--plugins",
            "proxypy_plugin.BenchReverseProxy",
            "--log-level",
            "WARNING",
            "--data-dir",
            str(config),
            "--pid-file",
            str(config / "proxy.pid"),
        ]


class FastproxyHttpTarget(HttpProxyTarget, tb.FastproxyTarget):
    name = "fastproxy"
    listen_port = FASTPROXY_PORT

    def __init__(self, cmd: Sequence[str]) -> None:
        tb.FastproxyTarget.__init__(self, cmd)

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "fastproxy-http.toml"
        path.write_text(
            f"""[server]
workers = 1
pidfile = "{workdir}/fastproxy-http.pid"

[log]
access = "off"

[admin]
listen = "{HOST}:{FASTPROXY_ADMIN_PORT}"

[[listener]]
name = "web"
listen = "{HOST}:{self.listen_port}"
mode = "http"
upstream = "b"

[upstream.b]
servers = ["{HOST}:{upstream_port}"]
keepalive = 64
"""
        )
        return path


class DirectCpu1Target(Target):
    """No proxy; a second backend nginx pinned to PROXY_CPU (latency scenario only).

    Every proxied request crosses CPUs (client CPU 0 -> proxy CPU 1 -> backend
    CPU 0 and back), so each one wakes an idle CPU. On a VM that wake-up has a
    tail of its own (milliseconds when the host is busy). This target crosses
    CPUs once each way with no proxy at all: the latency floor of a cross-CPU
    request on this machine, next to `direct` (everything on CPU 0).
    """

    name = "direct-cpu1"
    listen_port = DIRECT_CPU1_PORT
    only_scenarios = ("latency",)

    def __init__(self) -> None:
        self.backend: Backend | None = None

    def start(self, upstream_port: int, workdir: Path) -> None:
        self.backend = Backend(workdir, 1, cpu=PROXY_CPU, port=self.listen_port, name="nginx-cpu1")
        self.backend.start()

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def known_pids(self) -> list[int]:
        """Processes whose CPU is part of the setup, not 'other work'."""
        return [self.backend.proc.pid] if self.backend and self.backend.proc else []


def make_targets(names: Sequence[str], fastproxy_cmd: Sequence[str]) -> list[Target]:
    factories: dict[str, Any] = {
        "direct": DirectTarget,
        "direct-cpu1": DirectCpu1Target,
        "nginx": NginxHttpTarget,
        "haproxy": HaproxyHttpTarget,
        "proxypy": ProxypyTarget,
        "fastproxy": lambda: FastproxyHttpTarget(fastproxy_cmd),
    }
    return harness.build_targets(names, factories)


# ================================================================ backend


class Backend:
    """nginx serving static files with sendfile from a temp docroot (CPU 0 by default)."""

    def __init__(
        self,
        workdir: Path,
        big_mib: int,
        cpu: int = LOAD_CPU,
        port: int = BACKEND_PORT,
        name: str = "nginx-backend",
    ) -> None:
        self.workdir = workdir
        self.big_bytes = big_mib * 1024 * 1024
        self.cpu, self.port, self.name = cpu, port, name
        self.proc: ManagedProcess | None = None

    def make_docroot(self) -> Path:
        root = self.workdir / "www"
        if (root / BIG_PATH.lstrip("/")).exists():
            return root  # made by the main backend already
        root.mkdir(exist_ok=True)
        pattern = (b"fastproxy-http-bench-0123456789\n" * 32768)[: 1024 * 1024]  # 1 MiB
        (root / SMALL_PATH.lstrip("/")).write_bytes(pattern[:SMALL_BYTES])
        (root / MEDIUM_PATH.lstrip("/")).write_bytes(pattern[:MEDIUM_BYTES])
        with open(root / BIG_PATH.lstrip("/"), "wb") as fh:
            left = self.big_bytes
            while left:
                left -= fh.write(pattern[: min(len(pattern), left)])
        return root

    def start(self) -> None:
        root = self.make_docroot()
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(
            f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {self.workdir}/{self.name}.pid;
error_log {self.workdir}/{self.name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {self.workdir}/{self.name}-body;
    server {{
        listen {HOST}:{self.port} backlog=4096;
        root {root};
        location = / {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )
        self.proc = ManagedProcess(
            self.name,
            pinned(self.cpu, ["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"]),
            self.workdir / f"{self.name}.log",
        )
        start_and_wait(self.proc, self.port)
        # read the big file once so that every target gets it from the page cache
        with open(root / BIG_PATH.lstrip("/"), "rb") as fh:
            while fh.read(1 << 22):
                pass
        if not serves_small(self.port):
            tail = self.proc.log_tail()
            self.stop()
            raise RuntimeError(f"{self.name} does not serve {SMALL_PATH}: {tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


# ============================================================== scenarios


class WrkHttpScenario(tb.WrkScenario):
    """wrk -t1 -c<N> GET <path>, keep-alive or Connection: close."""

    upstream_port = BACKEND_PORT

    def __init__(
        self,
        name: str,
        label: str,
        duration: int,
        connections: int,
        new_connections: bool = False,
        path: str = SMALL_PATH,
    ) -> None:
        super().__init__(duration, new_connections, connections)
        self.name, self.label, self.path = name, label, path
        self.unit, self.per_cpu_unit = "req/s", "req"

    def argv(self, port: int, duration: int) -> list[str]:
        extra = ["-H", "Connection: close"] if self.new_connections else []
        return harness.wrk_argv(port, self.connections, duration, self.path, extra)

    def run(self, port: int, meter: Meter) -> RunResult:
        result = super().run(port, meter)
        out = result.details.get("wrk_output", "")
        # harness.parse_wrk keeps p50 and p99 only
        harness.wrk_latencies(out, ("75", "90"), result.details)
        return result


class DownloadScenario(Scenario):
    """GET /big `count` times over one keep-alive connection (http_download.py)."""

    name = "download"
    upstream_port = BACKEND_PORT
    unit = "MB/s"
    per_cpu_unit = "MB"
    scale = MB

    def __init__(self, big_mib: int, count: int) -> None:
        self.big_bytes = big_mib * 1024 * 1024
        self.count = count
        self.label = f"(c) download {big_mib} MiB ×{count}, 1 conn"
        # bounded: floor of 60 s, or as if the proxy only managed 20 MB/s
        self.timeout = max(60.0, self.big_bytes * count / (20 * MB))

    def argv(self, port: int, count: int) -> list[str]:
        return pinned(
            LOAD_CPU,
            [
                sys.executable,
                str(BENCH_DIR / "http_download.py"),
                "--port",
                str(port),
                "--path",
                BIG_PATH,
                "--count",
                str(count),
                "--handshake",
            ],
        )

    def transfer(self, port: int, count: int, meter: Meter | None) -> RunResult:
        result = harness.handshake_client(
            self.argv(port, count), meter, self.timeout, "download client", "download failed"
        )
        if isinstance(result, RunResult):
            return result
        bad = [s for s in result["statuses"] if s != 200]
        if bad or result["bytes"] != self.big_bytes * len(result["statuses"]):
            return RunResult(0, 0, error=f"statuses {result['statuses']}, {result['bytes']} bytes")
        details = {"connections": result["connections"], "requests": result["requests"]}
        return RunResult(float(result["bytes"]), float(result["seconds"]), details)

    def warmup(self, port: int) -> RunResult:
        return self.transfer(port, 1, None)

    def run(self, port: int, meter: Meter) -> RunResult:
        return self.transfer(port, self.count, meter)


def make_scenarios(duration: int, big_mib: int, downloads: int) -> list[Scenario]:
    return [
        WrkHttpScenario("keepalive", "(a) GET 1 KiB, keep-alive, c50", duration, 50),
        WrkHttpScenario("new_conn", "(b) GET 1 KiB, conn per request, c50", duration, 50, True),
        DownloadScenario(big_mib, downloads),
        WrkHttpScenario("latency", "(d) GET 1 KiB, c1 (sequential)", duration, 1),
    ]


# ============================================================ measurement

FP_COUNTERS = (
    "requests",
    "conn_accepted",
    "responses_2xx",
    "responses_4xx",
    "responses_5xx",
    "upstream_connect_errors",
    "upstream_connect_timeouts",
    "upstream_retries",
    "client_errors",
    "internal_errors",
    "idle_timeouts",
    "accept_errors",
)
FP_ERROR_COUNTERS = FP_COUNTERS[3:]


def own_cpu_seconds() -> tuple[float, float]:
    """CPU of this harness and of its reaped children (wrk, http_download.py)."""
    me = os.times()
    return me.user + me.system, me.children_user + me.children_system


class HttpMeter(Meter):
    """harness.Meter plus two things for a shared machine and for fastproxy:

    * foreign CPU: busy time of both CPUs minus what the known processes used
      (proxy tree, backend tree, the load generator, this harness) — work of
      other processes that shared the cores during the run;
    * the delta of fastproxy's /stats counters (requests, errors, upstream
      connects) over the run.
    """

    def __init__(self, target: Target, backend_pids: Sequence[int]) -> None:
        super().__init__(target)
        self.backend_pids = list(backend_pids)

    def backend_runtime(self) -> dict[str, float]:
        runtime: dict[str, float] = {}
        for pid in self.backend_pids:
            tree = harness.tree_cpu_seconds(pid)["runtime"]
            runtime.update({f"{pid}/{key}": value for key, value in tree.items()})
        return runtime

    def begin(self) -> None:
        super().begin()
        self.backend_tree_before = self.backend_runtime()
        self.own_before = own_cpu_seconds()

    def end(self) -> None:
        self.backend_cpu = harness.cpu_delta(self.backend_tree_before, self.backend_runtime())
        own = own_cpu_seconds()
        self.harness_cpu = own[0] - self.own_before[0]
        self.loadgen_cpu = own[1] - self.own_before[1]
        super().end()

    def row(self) -> dict[str, Any]:
        row = super().row()
        if not (self.began and self.ended):
            return row
        known = (self.proxy_cpu or 0.0) + self.backend_cpu + self.harness_cpu + self.loadgen_cpu
        row["backend_cpu_seconds"] = self.backend_cpu
        row["loadgen_cpu_seconds"] = self.loadgen_cpu
        row["harness_cpu_seconds"] = self.harness_cpu
        row["foreign_cpu_seconds"] = self.cpu0["busy"] + self.cpu1["busy"] - known
        row["fastproxy_counters"] = counter_delta(self.stats_before, self.stats_after)
        return row


def counter_delta(before: Any, after: Any) -> dict[str, float] | None:
    try:
        b, a = before["totals"]["counters"], after["totals"]["counters"]
        hb_, ha = before["totals"]["hists"], after["totals"]["hists"]
        delta = {k: float(a[k] - b[k]) for k in FP_COUNTERS if k in a and k in b}
        key = "upstream_connect_seconds"
        if key in ha and key in hb_:
            delta["upstream_connects"] = float(ha[key]["count"] - hb_[key]["count"])
        return delta
    except (KeyError, TypeError):
        return None


def measure(target: Target, scenario: Scenario, backend_pid: int | None) -> dict[str, Any]:
    """tcp_bench.measure with HttpMeter: warm up, run inside the window, one row."""
    skipped = harness.warm_up(target, scenario)
    if skipped:
        return skipped
    known = [backend_pid] if backend_pid else []
    meter = HttpMeter(target, known + list(getattr(target, "known_pids", list)()))
    result = scenario.run(target.listen_port, meter)
    window = meter.row()
    ok = result.error is None and result.seconds > 0
    foreign = window.get("foreign_cpu_seconds")
    extra = {
        "foreign_cpu_pct": harness.pct(foreign, result.seconds)
        if ok and foreign is not None
        else None
    }
    return harness.result_row(target, scenario, result, window, extra)


# ================================================================= runner


def run_target(
    target: Target, scenarios: Sequence[Scenario], workdir: Path, backend_pid: int | None
) -> list[dict[str, Any]]:
    """Start the target once, run every scenario through it, stop it."""
    wanted = getattr(target, "only_scenarios", None)
    scenarios = [s for s in scenarios if wanted is None or s.name in wanted]
    try:
        target.start(BACKEND_PORT, workdir)
    except (RuntimeError, OSError) as exc:
        log(f"SKIP {target.name}: {exc}")
        reason = str(exc).splitlines()[0]
        return [harness.skipped_row(target.name, s, reason) for s in scenarios]
    rows: list[dict[str, Any]] = []
    try:
        for scenario in scenarios:
            log(f"{target.name}: {scenario.label}")
            try:
                row = measure(target, scenario, backend_pid)
            except RuntimeError as exc:  # e.g. a proxy process left CPU 1
                row = harness.skipped_row(target.name, scenario, f"not measured: {exc}")
            if isinstance(target, HttpProxyTarget):
                row["proxy_notes"] = target.notes()
            if isinstance(target, ProxyTarget) and not (target.proc and target.proc.alive()):
                row["proxy_notes"] = [*row.get("proxy_notes", []), "proxy process died"]
                log(f"{target.name} died; log tail:\n{target.proc.log_tail() if target.proc else ''}")
            log(harness.progress_line(row) + (f"  {notes(row)}" if notes(row) else ""))
            rows.append(row)
            if "proxy process died" in row.get("proxy_notes", []):
                rest = scenarios[len(rows) :]
                rows += [harness.skipped_row(target.name, s, "proxy process died") for s in rest]
                break
            time.sleep(0.5)
    finally:
        target.stop()
    time.sleep(0.5)
    return rows


# ================================================================= report


def notes(row: dict[str, Any]) -> str:
    if row["target"] == "direct-cpu1":  # its backend is on CPU 1: that is not other work
        row = {**row, "cpu1_busy_pct": None}
    parts = [tb.notes(row)] if tb.notes(row) else []
    parts += row.get("proxy_notes", [])
    foreign = row.get("foreign_cpu_pct")
    if foreign is not None and foreign > NOISE_PCT:
        parts.append(f"⚠ noisy: {foreign:.0f}% of a CPU went to other processes")
    counters = row.get("fastproxy_counters") or {}
    errors = {k: int(v) for k, v in counters.items() if k in FP_ERROR_COUNTERS and v}
    if errors:
        parts.append("fastproxy /stats: " + ", ".join(f"{k}={v}" for k, v in errors.items()))
    if "upstream_connects" in counters and row["scenario"] != "download":
        parts.append(f"{int(counters['upstream_connects'])} upstream connects")
    conns = row.get("details", {}).get("connections")
    if conns and conns > 1:
        parts.append(f"server closed: {conns} connections used")
    return "; ".join(parts)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """Scenario (d): p50/p90/p99 per target and what the proxy adds over the references."""
    lat = {r["target"]: r.get("details", {}) for r in rows if r["scenario"] == "latency"}
    base, xcpu = lat.get("direct", {}), lat.get("direct-cpu1", {})
    lines = [
        (
            "| c1 latency, GET 1 KiB | p50 ms | p90 ms | p99 ms | added p50 over direct "
            "| added p99 over direct | added p99 over direct-cpu1 |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|",
    ]

    def added(d: dict[str, Any], ref: dict[str, Any], key: str) -> str:
        if d is ref or key not in d or key not in ref:
            return "—"
        return f"{1000 * (d[key] - ref[key]):+,.0f} µs"

    for target, d in lat.items():
        lines.append(
            f"| {target} | {fmt(d.get('latency_p50_ms'), 3)} | {fmt(d.get('latency_p90_ms'), 3)} "
            f"| {fmt(d.get('latency_p99_ms'), 3)} "
            f"| {added(d, base, 'latency_p50_ms')} | {added(d, base, 'latency_p99_ms')} "
            f"| {added(d, xcpu, 'latency_p99_ms') if target.startswith(COMPARED + ('fastproxy',)) else '—'} |"
        )
    return "\n".join(lines)


# =================================================================== main


def check_prerequisites(targets: Sequence[str]) -> None:
    tools = ["taskset", "wrk", "nginx"] + (["haproxy"] if "haproxy" in targets else [])
    harness.missing_tools_exit(tools, "wrk nginx haproxy")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="HTTP reverse-proxy benchmark (bench/README.md)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma list")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--big-mib", type=int, default=256, help="size of /big in MiB")
    parser.add_argument("--downloads", type=int, default=4, help="GET /big per download run")
    harness.add_fastproxy_cmd_arg(parser)
    harness.add_wait_idle_and_output_args(parser)
    return harness.parse_checked(
        parser,
        argv,
        [
            ("big_mib", 1, 4096, "--big-mib must be 1..4096"),
            ("downloads", 1, 64, "--downloads must be 1..64"),
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = harness.prepare(args, check_prerequisites)
    targets = make_targets(names, shlex.split(args.fastproxy_cmd))
    scenarios = make_scenarios(args.duration, args.big_mib, args.downloads)
    facts = harness.machine_facts()
    facts["proxypy"] = proxypy_version()
    facts["idle_check_busy_pct"] = harness.wait_idle(args.wait_idle)
    rows: list[dict[str, Any]] = []

    workdir = Path(tempfile.mkdtemp(prefix="fpbench-http-"))
    workdir.chmod(0o755)  # nginx workers (www-data) must reach the docroot below it
    backend = Backend(workdir, args.big_mib)
    try:
        backend.start()
        for target in targets:
            rows += run_target(target, scenarios, workdir, backend.proc.pid if backend.proc else None)
    finally:
        for target in targets:
            target.stop()
        backend.stop()
        if args.keep_workdir:
            for big in workdir.glob("www/*"):
                big.unlink()  # the 256 MiB file is not worth keeping
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    settings = harness.run_settings(
        names, args, {"big_mib": args.big_mib, "downloads": args.downloads}
    )
    report = "\n\n".join(
        [
            harness.report_title("http_bench", facts),
            (
                f"duration {args.duration} s per wrk run, /big {args.big_mib} MiB ×"
                f"{args.downloads} per download run, load+backend on CPU {LOAD_CPU}, proxy on "
                f"CPU {PROXY_CPU}; idle check before start (busy %): "
                f"{harness.fmt_idle(facts['idle_check_busy_pct'])}; repo HEAD {facts['repo_head']}; "
                f"proxy.py {facts['proxypy']}"
            ),
            harness.results_table(rows, notes),
            harness.ratio_table(rows, scenarios, COMPARED),
            latency_table(rows),
            "wrk errors and failures:\n\n" + harness.wrk_problems(rows),
        ]
    )
    print(report)
    out = args.json_out or harness.default_json_out("http_bench")
    harness.write_json(out, facts, settings, rows, report)
    return 0


def proxypy_version() -> str:
    python = PROXYPY_VENV / "bin" / "python"
    try:
        done = subprocess.run(
            [str(python), "-m", "proxy", "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (done.stdout.strip() or done.stderr.strip() or "n/a").splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())
