"""Process handling and CPU accounting for bench/bench.py.

* processes: every server is started in its own session (process group),
  pinned with ``taskset``, and stopped by killing that group (SIGTERM, then
  SIGKILL after 5 s); ports are waited for with bounded loops;
* CPU accounting: ``Meter`` samples the proxy's process tree right before and
  right after a measured run: schedstat on-CPU time (ns) of every thread, and
  utime/stime (``/proc/PID/stat``, 10 ms ticks, user and system separately,
  exited threads and reaped children included), plus ``/proc/stat`` of both
  CPUs and the CPU of every process the harness knows, so that work of other
  processes on the machine shows up as "foreign" CPU;
* machine facts and the idle wait before a run.

Nothing here knows a proxy or a scenario. Traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - explained to the user
    sys.exit("bench needs psutil: pip install psutil")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

HOST = "127.0.0.1"
LOAD_CPU = 0  # load generators + backends
PROXY_CPU = 1  # the proxy under test (whole process tree)

NOISE_PCT = 15.0  # flag a row when other processes used this much of a CPU
START_TIMEOUT = 10.0  # seconds for a server to listen (and relay)
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
PORT_FREE_WAIT = 30.0  # a port still held by someone else: wait this long, then give up
MB = 1_000_000  # reported MB are decimal megabytes


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ============================================================== processes


def pinned(cpu: int, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """``taskset -c CPU [env K=V ...] argv``; env execs, so pid and group stay the same."""
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return ["taskset", "-c", str(cpu), *prefix, *argv]


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
        with open(self.log_path, "ab") as out:
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
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f}s; killing")
        self._signal(signal.SIGKILL)  # stragglers (workers) or a stuck leader
        self.popen.wait(timeout=STOP_TIMEOUT)
        self.popen = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)  # session leader: pgid == pid
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 12) -> str:
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


def wait_port_free(port: int, max_wait: float = PORT_FREE_WAIT) -> None:
    """Another run may still hold the port: wait (bounded) for it to go away."""
    deadline = time.monotonic() + max_wait
    if port_open(port):
        log(f"port {HOST}:{port} is busy; waiting up to {max_wait:.0f}s")
    while port_open(port):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"port {HOST}:{port} still in use after {max_wait:.0f}s")
        time.sleep(1)


def poll_until(proc: ManagedProcess, ready: Callable[[], bool], deadline: float) -> bool:
    """Poll ``ready()`` every 0.05 s until it holds, the process exits or the deadline."""
    while time.monotonic() < deadline:
        if not proc.alive():
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


def start_server(
    proc: ManagedProcess,
    port: int,
    ready: Callable[[], bool] | None = None,
    timeout: float = START_TIMEOUT,
    what: str = "",
) -> None:
    """Start ``proc``; it must listen on ``port`` and then satisfy ``ready()`` (a request
    relayed end to end: a master may listen while its workers crash) within ``timeout``."""
    wait_port_free(port)
    deadline = time.monotonic() + timeout
    proc.start()
    if poll_until(proc, lambda: port_open(port), deadline):
        if ready is None or poll_until(proc, ready, deadline):
            return
        why = f"listens but {what or 'is not ready'}"
    else:
        why = "did not listen"
    if not proc.alive():
        why += " (exited)"
    tail = proc.log_tail()
    proc.stop()
    raise RuntimeError(f"{why} on port {port} within {timeout:.0f}s\n{proc.log_path}:\n{tail}")


# ============================================================ CPU accounting


def thread_runtime(pid: int) -> float | None:
    """On-CPU seconds of the live threads of ``pid`` (schedstat, ns resolution)."""
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


def tree_sample(root: int) -> dict[str, dict[str, float]]:
    """Per process of the tree rooted at ``root``: user, system (ticks) and runtime.

    Key "reaped" holds the CPU of children the root already waited for, so a
    worker that exits during a run is still counted (tick resolution)."""
    user: dict[str, float] = {}
    system: dict[str, float] = {}
    runtime: dict[str, float] = {}
    try:
        root_proc = psutil.Process(root)
        procs = [root_proc, *root_proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"user": user, "system": system, "runtime": runtime, "tids": {}}
    tids: dict[str, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                key = f"{proc.pid}:{proc.create_time()}"
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                tids[tid] = 1.0
        except (psutil.NoSuchProcess, OSError):
            continue
        user[key], system[key] = times.user, times.system
        precise = thread_runtime(proc.pid)
        runtime[key] = precise if precise is not None else times.user + times.system
        if proc.pid == root:
            user["reaped"] = runtime["reaped"] = times.children_user
            system["reaped"] = times.children_system
            runtime["reaped"] += times.children_system
    return {"user": user, "system": system, "runtime": runtime, "tids": tids}


def delta(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(value - before.get(key, 0.0) for key, value in after.items())


def tree_confined(root: int, cpu: int) -> None:
    """Refuse to measure a proxy process that is not confined to ``cpu``."""
    try:
        root_proc = psutil.Process(root)
        for proc in [root_proc, *root_proc.children(recursive=True)]:
            if proc.cpu_affinity() != [cpu]:
                raise RuntimeError(f"pid {proc.pid} runs on CPUs {proc.cpu_affinity()}")
    except psutil.NoSuchProcess:
        pass


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


def cpu_busy(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(after[k] - before[k] for k in CPU_STAT_FIELDS if k not in ("idle", "iowait"))


def own_cpu() -> tuple[float, float]:
    """CPU of this harness and of its reaped children (wrk, the Python clients)."""
    me = os.times()
    return me.user + me.system, me.children_user + me.children_system


class Meter:
    """CPU snapshots around the measured part of a run (begin() right before the load
    starts, end() right after it stops).

    Proxy CPU is the schedstat sum over the tree's threads; when a thread of the
    tree exited during the run (thread per connection: tinyproxy) that sum loses
    its time, so utime+stime is used instead (``cpu_source``). User and system
    seconds always come from utime/stime (tick resolution)."""

    def __init__(
        self,
        proxy_pid: int | None,
        known_pids: Sequence[int] = (),
        stats: Callable[[], dict[str, Any] | None] | None = None,
        thread_churn: bool = False,
    ) -> None:
        self.root = proxy_pid
        self.known = [p for p in known_pids if p]
        self.stats = stats or (lambda: None)
        self.thread_churn = thread_churn
        self.began = self.ended = False

    def _known_runtime(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid in self.known:
            for key, value in tree_sample(pid)["runtime"].items():
                out[f"{pid}/{key}"] = value
        return out

    def begin(self) -> None:
        self.stats_before = self.stats()  # outside the CPU window
        if self.root:
            tree_confined(self.root, PROXY_CPU)
            self.tree_before = tree_sample(self.root)
        self.known_before = self._known_runtime()
        self.own_before = own_cpu()
        self.cpu_before = (cpu_stat(LOAD_CPU), cpu_stat(PROXY_CPU))
        self.t0 = time.monotonic()
        self.began = True

    def end(self) -> None:
        self.wall = time.monotonic() - self.t0
        cpu0, cpu1 = cpu_stat(LOAD_CPU), cpu_stat(PROXY_CPU)
        self.cpu0_busy = cpu_busy(self.cpu_before[0], cpu0)
        self.cpu1_busy = cpu_busy(self.cpu_before[1], cpu1)
        own = own_cpu()
        self.harness_cpu = own[0] - self.own_before[0]
        self.loadgen_cpu = own[1] - self.own_before[1]
        self.known_cpu = delta(self.known_before, self._known_runtime())
        self.proxy: dict[str, Any] = {}
        if self.root:
            after = tree_sample(self.root)
            b = self.tree_before
            user, system = delta(b["user"], after["user"]), delta(b["system"], after["system"])
            runtime = delta(b["runtime"], after["runtime"])
            gone = len(set(b["tids"]) - set(after["tids"]))
            use_ticks = self.thread_churn or gone > 0
            self.proxy = {
                "cpu": user + system if use_ticks else runtime,
                "user": user,
                "system": system,
                "schedstat": runtime,
                "ticks": user + system,
                "source": "schedstat" if not use_ticks else "utime+stime ("
                + (f"{gone} threads exited)" if gone else "thread per connection)"),
            }
        self.stats_after = self.stats()
        self.ended = True

    def window(self) -> dict[str, Any]:
        """CPU figures of the window (empty if it never closed)."""
        if not (self.began and self.ended):
            return {}
        proxy_cpu = self.proxy.get("cpu", 0.0)
        known = proxy_cpu + self.known_cpu + self.harness_cpu + self.loadgen_cpu
        return {
            "window_seconds": self.wall,
            "proxy_cpu": self.proxy or None,
            "cpu0_busy_seconds": self.cpu0_busy,
            "cpu1_busy_seconds": self.cpu1_busy,
            "known_cpu_seconds": self.known_cpu,
            "loadgen_cpu_seconds": self.loadgen_cpu,
            "harness_cpu_seconds": self.harness_cpu,
            "foreign_cpu_seconds": self.cpu0_busy + self.cpu1_busy - known,
            "stats_before": self.stats_before,
            "stats_after": self.stats_after,
        }


def wait_idle(max_wait: float, window: float = 3.0) -> dict[str, float]:
    """Wait (up to max_wait s) for a ``window``-second stretch with both CPUs below
    NOISE_PCT busy. Returns the busy % of the last window; the run goes on regardless
    (the rows carry the noise flags)."""
    deadline = time.monotonic() + max_wait
    while True:
        before = {cpu: cpu_stat(cpu) for cpu in (LOAD_CPU, PROXY_CPU)}
        time.sleep(window)
        busy = {
            f"cpu{cpu}": 100 * cpu_busy(before[cpu], cpu_stat(cpu)) / window for cpu in before
        }
        if all(v <= NOISE_PCT for v in busy.values()) or time.monotonic() >= deadline:
            return busy
        log(f"waiting for an idle machine (busy %: {busy})")


# ============================================================ machine facts


def first_line(argv: list[str], timeout: float = 20) -> str:
    """First line of a command's output (version strings); "n/a" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "n/a"


def machine_facts(proxypy_python: Path) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    git = ["git", "--no-optional-locks", "-C", str(REPO_DIR)]
    dirty = subprocess.run(
        [*git, "diff", "--name-only", "HEAD", "--", "fastproxy"],
        capture_output=True, text=True, timeout=20, check=False,
    ).stdout.split()
    proxypy = "n/a"
    if proxypy_python.exists():
        proxypy = first_line([str(proxypy_python), "-m", "proxy", "--version"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "tinyproxy": first_line(["tinyproxy", "-v"]),
        "squid": first_line(["squid", "-v"]),
        "proxypy": proxypy,
        "repo_head": first_line([*git, "rev-parse", "--short", "HEAD"]),
        "fastproxy_worktree": f"{len(dirty)} modified files under fastproxy/" if dirty else "clean",
    }
