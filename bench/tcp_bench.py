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
import json
import shlex
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bulkio  # bench/ is sys.path[0] when run as `python bench/tcp_bench.py`
import harness
from harness import (
    BENCH_DIR,
    CONTENTION_PCT,
    HOST,
    LOAD_CPU,
    MB,
    PROXY_CPU,
    REPO_DIR,
    START_TIMEOUT,
    DirectTarget,
    ManagedProcess,
    Meter,
    RunResult,
    Scenario,
    Target,
    fmt_idle,
    log,
    pinned,
    skipped_row,
    start_and_wait,
)

BULK_BACKEND_PORT = 18000
HTTP_BACKEND_PORT = 18001
FASTPROXY_PORT = 18080
NGINX_STREAM_PORT = 18081
HAPROXY_PORT = 18082
HAPROXY_SPLICE_PORT = 18083
FASTPROXY_ADMIN_PORT = 19901

HTTP_BODY = b"x" * 99 + b"\n"  # 100-byte response body
ALL_TARGETS = ("direct", "nginx", "haproxy", "fastproxy")
EXTRA_TARGETS = ("haproxy-splice",)

harness.set_log_name("tcp_bench")


# ================================================================ probes

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
    if harness.poll_ready(proc, lambda: PROBES[upstream](port), deadline):
        return
    why = "exited" if not proc.alive() else "does not relay to the backend"
    tail = proc.log_tail()
    proc.stop()
    raise RuntimeError(
        f"{proc.name} listens on {HOST}:{port} but {why} (upstream {upstream}) within "
        f"{START_TIMEOUT:.0f}s of start; log {proc.log_path}:\n{tail}"
    )


# ================================================================= targets

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
        return harness.nginx_stream_config(
            workdir / "nginx-stream.conf", workdir, self.listen_port, upstream_port
        )

    def command(self, config: Path) -> list[str]:
        return harness.nginx_command(config)


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
    return harness.build_targets(names, factories)


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


# =============================================================== scenarios

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
        result = harness.handshake_client(
            self.argv(port, nbytes), meter, self.timeout, "bulk client", "bulk client failed"
        )
        if isinstance(result, RunResult):
            return result
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
        extra = ["-H", "Connection: close"] if self.new_connections else []
        return harness.wrk_argv(port, self.connections, duration, "/", extra)

    def wrk(self, port: int, duration: int, meter: Meter | None) -> RunResult:
        return harness.run_wrk(self.argv(port, duration), duration, meter)

    def warmup(self, port: int) -> RunResult:
        result = self.wrk(port, self.warmup_seconds, None)
        if result.error is None and result.units == 0:
            result.error = "no request completed"
        return result

    def run(self, port: int, meter: Meter) -> RunResult:
        return self.wrk(port, self.duration, meter)

def make_scenarios(duration: int, bulk_mib: int) -> list[Scenario]:
    nbytes = bulk_mib * 1024 * 1024
    return [
        BulkScenario("up", nbytes),
        BulkScenario("down", nbytes),
        WrkScenario(duration, new_connections=False),
        WrkScenario(duration, new_connections=True),
    ]


# ================================================================== runner

def measure(target: Target, scenario: Scenario) -> dict[str, Any]:
    """Warm up, then run one scenario inside a Meter window; one result row."""
    skipped = harness.warm_up(target, scenario)
    if skipped:
        return skipped
    meter = Meter(target)
    result = scenario.run(target.listen_port, meter)
    return harness.result_row(target, scenario, result, meter.row())


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
                log(harness.progress_line(row))
                rows.append(row)
        finally:
            target.stop()
        time.sleep(0.5)
    return rows

# ================================================================= report

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

# =================================================================== main


def check_prerequisites(targets: Sequence[str]) -> None:
    haproxy = ["haproxy"] if any(t.startswith("haproxy") for t in targets) else []
    harness.missing_tools_exit(
        ["taskset", "wrk", "nginx", *haproxy], "wrk nginx libnginx-mod-stream haproxy"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="L4 proxy benchmark (see bench/README.md)")
    harness.add_targets_arg(parser, ALL_TARGETS, EXTRA_TARGETS)
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per wrk scenario (default 10)"
    )
    parser.add_argument(
        "--bulk-mib", type=int, default=1024, help="MiB moved per bulk direction (default 1024)"
    )
    harness.add_fastproxy_cmd_arg(parser)
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
    limits = [("bulk_mib", 1, 65536, "--bulk-mib must be 1..65536")]
    return harness.parse_checked(parser, argv, limits)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = harness.prepare(args, check_prerequisites)
    targets = make_targets(names, shlex.split(args.fastproxy_cmd))
    scenarios = make_scenarios(args.duration, args.bulk_mib)
    facts = harness.machine_facts()
    facts["idle_check_busy_pct"] = harness.idle_check()
    rows: list[dict[str, Any]] = []

    with harness.workdir() as tmp:
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

    settings = harness.run_settings(
        names,
        args,
        {"bulk_mib": args.bulk_mib},
        {"wrk_connections": 50, "http_body_bytes": len(HTTP_BODY)},
    )
    report = "\n\n".join(
        [
            harness.report_title("tcp_bench", facts),
            (
                f"duration {args.duration} s per wrk run, bulk {args.bulk_mib} MiB per "
                f"direction, load+backends on CPU {LOAD_CPU}, proxy on CPU {PROXY_CPU}; "
                f"idle check before start (busy %): {fmt_idle(facts['idle_check_busy_pct'])}; "
                f"repo HEAD {facts['repo_head']}"
            ),
            harness.results_table(rows, notes),
            harness.ratio_table(rows, scenarios, ("nginx", "haproxy")),
        ]
    )
    print(report)

    out = args.json_out or harness.default_json_out("tcp_bench")
    harness.write_json(out, facts, settings, rows, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
