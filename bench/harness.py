"""Shared machinery of the benchmarks (tcp_bench.py, http_bench.py, forward_bench.py).

Process start/stop by process group, port waiting, CPU accounting (schedstat,
utime+stime, /proc/stat), idle checks, wrk running/parsing, result rows,
report formatting and the common command-line options. Nothing here knows a
particular proxy or scenario: that stays in the scripts.

Traffic only ever goes to 127.0.0.1; every process is started and stopped by
process group.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("tcp_bench needs psutil: pip install psutil")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

HOST = "127.0.0.1"
LOAD_CPU = 0  # load generators + backends
PROXY_CPU = 1  # the proxy under test (whole process tree)

CONTENTION_PCT = 15.0  # flag a row when this much of CPU1 went to something else
IDLE_PCT = CONTENTION_PCT  # wait_idle: both CPUs below this much busy
START_TIMEOUT = 10.0  # seconds for any server to start listening
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
MB = 1_000_000  # reported MB are decimal megabytes

LOG_NAME = "tcp_bench"  # progress prefix; each script sets its own with set_log_name()


def set_log_name(name: str) -> None:
    global LOG_NAME
    LOG_NAME = name


def log(msg: str) -> None:
    print(f"[{LOG_NAME}] {msg}", file=sys.stderr, flush=True)


# ============================================================== processes


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def with_env(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """Prefix ``env K=V``; `env` execs the command: the pid (and group) stay the same."""
    if env:
        return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    return list(argv)


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


def poll_ready(proc: ManagedProcess, ready: Callable[[], bool], deadline: float) -> bool:
    """Poll ``ready()`` every 0.1 s until it holds (True), the process exits or the deadline."""
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        if ready():
            return True
        time.sleep(0.1)
    return False


def nginx_stream_config(path: Path, workdir: Path, listen_port: int, upstream_port: int) -> Path:
    """nginx `stream` relay HOST:listen_port -> HOST:upstream_port (pid/log named after path)."""
    stem = path.stem
    path.write_text(
        f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {workdir}/{stem}.pid;
error_log {workdir}/{stem}.error.log warn;
events {{ worker_connections 8192; }}
stream {{
    server {{
        listen {HOST}:{listen_port} backlog=4096;
        proxy_pass {HOST}:{upstream_port};
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }}
}}
"""
    )
    return path


def nginx_command(config: Path) -> list[str]:
    return ["nginx", "-p", str(config.parent), "-c", str(config), "-e", "stderr"]


# ============================================================ CPU accounting


def tree_procs(root_pid: int) -> list[psutil.Process]:
    """The root and all its descendants (raises psutil.NoSuchProcess if the root is gone)."""
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


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
        procs = tree_procs(root_pid)
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


def tree_tids(root: int | None) -> set[int]:
    """Every thread id of the process tree rooted at ``root``."""
    if root is None:
        return set()
    tids: set[int] = set()
    try:
        procs = tree_procs(root)
    except psutil.NoSuchProcess:
        return tids
    for proc in procs:
        try:
            tids.update(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
        except OSError:
            continue
    return tids


def check_affinity(target: Target) -> None:
    """Refuse to measure a proxy process that is not confined to PROXY_CPU."""
    root = target.root_pid()
    if root is None:
        return
    try:
        for proc in tree_procs(root):
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


def pct(seconds: float | None, over: float | None) -> float | None:
    return 100 * seconds / over if seconds is not None and over else None


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


def wait_idle(max_wait: float, window: float = 3.0) -> dict[str, float]:
    """Wait (up to max_wait s) for a `window`-second stretch with both CPUs < IDLE_PCT busy.

    Returns the busy % of the last window (the run goes on regardless: a busy
    machine is reported, the rows are flagged by the contention check)."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = idle_check(window)
        if all(v <= IDLE_PCT for v in busy.values()) or time.monotonic() >= deadline:
            return busy
        log(f"waiting for an idle machine (busy %: {fmt_idle(busy)})")


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


def build_targets(names: Sequence[str], factories: dict[str, Callable[[], Any]]) -> list[Any]:
    """One target per name from ``factories``; SystemExit on an unknown name."""
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose from {sorted(factories)}")
    return [factories[name]() for name in names]


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


def handshake_client(
    argv: Sequence[str], meter: Meter | None, timeout: float, what: str, failed: str
) -> dict[str, Any] | RunResult:
    """Run a client that prints "ready", waits for "go" on stdin, then prints JSON.

    The meter window is opened right before "go" and closed when the client
    exits. Returns the client's JSON, or a RunResult carrying the error
    (``what``: "<what> failed: …" if it never got ready; ``failed``: prefix
    when it exits non-zero)."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        if not ready or proc.stdout.readline().strip() != "ready":
            _, err = proc.communicate(timeout=STOP_TIMEOUT) if proc.poll() is not None else ("", "")
            last = (err.strip().splitlines() or ["client not ready"])[-1]
            return RunResult(0, 0, error=f"{what} failed: {last}")
        if meter:
            meter.begin()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return RunResult(0, timeout, error=f"timed out after {timeout:.0f}s")
        if meter:
            meter.end()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"rc={proc.returncode}"])[-1]
            return RunResult(0, 0, error=f"{failed}: {last}")
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ==================================================================== wrk


def wrk_argv(
    port: int, connections: int, duration: int, path: str = "/", extra: Sequence[str] = ()
) -> list[str]:
    """wrk -t1 -c<N> -d<D>s --latency --timeout 5s [extra] URL, pinned to LOAD_CPU."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    return pinned(LOAD_CPU, [*argv, *extra, f"http://{HOST}:{port}{path}"])


def run_wrk(argv: Sequence[str], duration: int, meter: Meter | None) -> RunResult:
    """Run wrk inside the meter window (if any) and parse its output."""
    if meter:
        meter.begin()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired:
        return RunResult(0, duration, error="wrk timed out")
    if meter:
        meter.end()
    if done.returncode != 0:
        return RunResult(0, duration, error=f"wrk rc={done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk_latencies(out: str, pcts: Sequence[str], details: dict[str, Any]) -> None:
    """Add latency_p<N>_ms for each percentile of wrk's --latency distribution found in out."""
    for pct_ in pcts:
        lat = re.search(rf"^\s+{pct_}%\s+(\S+)", out, re.MULTILINE)
        if lat:
            details[f"latency_p{pct_}_ms"] = _ms(lat.group(1))


def parse_wrk(out: str) -> RunResult:
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not match:
        return RunResult(0, 0, error=f"cannot parse wrk output: {out[-300:]!r}")
    requests = float(match.group(1))
    seconds = _ms(match.group(2) + match.group(3)) / 1e3
    details: dict[str, Any] = {"wrk_output": out}
    wrk_latencies(out, ("50", "99"), details)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        details["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups()))
        )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        details["non_2xx"] = int(non2xx.group(1))
    return RunResult(requests, seconds, details)


def wrk_problems(rows: Sequence[dict[str, Any]]) -> str:
    """Every wrk error line (non-2xx, socket errors) and failed row, verbatim."""
    lines = []
    for row in rows:
        out = row.get("details", {}).get("wrk_output", "")
        bad = [
            line.strip()
            for line in out.splitlines()
            if line.strip().startswith(("Socket errors", "Non-2xx"))
        ]
        if row.get("error"):
            bad.append(f"error: {row['error']}")
        if bad:
            lines.append(f"* {row['target']}, {row['label']}: " + " / ".join(bad))
    return (
        "\n".join(lines) if lines else "No wrk socket errors, no non-2xx responses, no failed row."
    )


# ================================================================== rows


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


def warm_up(target: Target, scenario: Scenario) -> dict[str, Any] | None:
    """Warm-up run before a measurement: None if fine, else the skipped row."""
    warm = scenario.warmup(target.listen_port)
    if warm.error:
        return skipped_row(target.name, scenario, f"warm-up failed: {warm.error}")
    time.sleep(0.2)
    return None


def result_row(
    target: Target,
    scenario: Scenario,
    result: RunResult,
    window: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One result row from a scenario's result and its meter window.

    Percentages are over the load generator's own duration: the window adds
    only the few ms a process needs to exit, with the proxy idle."""
    ok = result.error is None and result.seconds > 0
    shown = result.units / scenario.scale
    cpu = window["proxy_cpu_seconds"]
    row = {
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
        **(extra or {}),
        **window,
        "error": result.error,
        "details": result.details,
    }
    return row


# ================================================================= report


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def fmt_idle(busy: dict[str, float]) -> str:
    return ", ".join(f"{cpu} {value:.0f}" for cpu, value in busy.items())


def fmt_rate(row: dict[str, Any]) -> str:
    return f"{fmt(row['rate'])} {row['unit']}"


def progress_line(row: dict[str, Any]) -> str:
    """The `  -> rate  proxy CPU s  [ERROR …]` progress line after a measured row."""
    return f"  -> {fmt_rate(row)}  proxy CPU {fmt(row['proxy_cpu_seconds'], 2)} s" + (
        f"  ERROR {row['error']}" if row["error"] else ""
    )


def results_table(rows: Sequence[dict[str, Any]], notes: Callable[[dict[str, Any]], str]) -> str:
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


def ratio_table(
    rows: Sequence[dict[str, Any]],
    scenarios: Sequence[Scenario],
    others: Sequence[str],
    key: str = "per_cpu_second",
    title: str = "per proxy CPU-second",
) -> str:
    """fastproxy/<other> ratio of ``key`` per scenario."""
    index = {(r["target"], r["scenario"]): r for r in rows}
    lines = [
        f"| {title} | " + " | ".join(f"fastproxy/{o}" for o in others) + " |",
        "|---|" + "--:|" * len(others),
    ]
    for scenario in scenarios:
        fp = index.get(("fastproxy", scenario.name), {}).get(key)
        cells = []
        for other in others:
            ref = index.get((other, scenario.name), {}).get(key)
            cells.append(f"{fp / ref:.2f}×" if fp and ref else "n/a")
        unit = scenario.per_cpu_unit + "/CPU-s" if key == "per_cpu_second" else scenario.unit
        lines.append(f"| {unit}, {scenario.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_title(name: str, facts: dict[str, Any]) -> str:
    return (
        f"### {name} {facts['date']} — {facts['cpu_model']}, "
        f"{facts['nproc']} CPUs, kernel {facts['kernel']}"
    )


def first_line(argv: list[str], timeout: float = 5) -> str:
    """First line of a command's output (version strings); "n/a" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "n/a"


def machine_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    version = first_line

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


def run_settings(
    names: Sequence[str],
    args: argparse.Namespace,
    sizes: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The "settings" block of the raw results: targets, duration, sizes, CPUs, extra, command."""
    return {
        "targets": list(names),
        "duration_s": args.duration,
        **sizes,
        "load_cpu": LOAD_CPU,
        "proxy_cpu": PROXY_CPU,
        **(extra or {}),
        "fastproxy_cmd": args.fastproxy_cmd,
    }


def write_json(
    out: Path,
    facts: dict[str, Any],
    settings: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    report: str,
    **dumps: Any,
) -> None:
    """The raw results file: machine facts, settings, rows and the Markdown report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": facts, "settings": settings, "results": rows, "markdown": report},
            indent=2,
            **dumps,
        )
    )
    log(f"raw results: {out}")


def default_json_out(name: str) -> Path:
    return OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


# =================================================================== main


def missing_tools_exit(tools: Sequence[str], install: str) -> None:
    """SystemExit if a tool is missing or there are fewer than 2 CPUs."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"missing tools: {list(missing)}. Install (Debian, as root): apt-get update; "
            f"apt-get install -y {install}"
        )
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (load on CPU 0, proxy on CPU 1)")


def target_names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def enter_main() -> None:
    """SIGTERM (e.g. `timeout`) must still run the finally blocks that stop servers;
    keep the orchestrator itself off the proxy CPU."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {LOAD_CPU})


def add_targets_arg(
    parser: argparse.ArgumentParser, names: Sequence[str], extra: Sequence[str]
) -> None:
    parser.add_argument(
        "--targets",
        default=",".join(names),
        help=f"comma list from {', '.join([*names, *extra])}",
    )


def add_fastproxy_cmd_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fastproxy-cmd",
        default=f"{shlex.quote(sys.executable)} -m fastproxy",
        help="command that starts fastproxy (`run -c FILE` is appended)",
    )


def add_wait_idle_and_output_args(parser: argparse.ArgumentParser) -> None:
    """--wait-idle, --json-out, --keep-workdir (http_bench, forward_bench)."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="seconds to wait for a 3 s idle stretch on both CPUs before starting",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--keep-workdir", action="store_true")


def parse_checked(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    limits: Sequence[tuple[str, int, int, str]],
) -> argparse.Namespace:
    """Parse; --duration must be 1..600 s, and each (attr, low, high, message) must hold."""
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1..600 seconds")
    for attr, low, high, message in limits:
        if not low <= getattr(args, attr) <= high:
            parser.error(message)
    return args


def prepare(
    args: argparse.Namespace, check_prerequisites: Callable[[Sequence[str]], None]
) -> list[str]:
    """Target names from --targets, prerequisites checked, signals and affinity set."""
    names = target_names(args.targets)
    check_prerequisites(names)
    enter_main()
    return names


@contextmanager
def workdir(prefix: str = "fpbench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
