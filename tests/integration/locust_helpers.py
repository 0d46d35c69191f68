"""Shared by the Locust end-to-end tests (``test_locust*.py``).

Locust is an optional dependency (the ``bench`` extra, not ``test``); it is only
looked up here, never imported: importing it would let gevent monkey-patch the
pytest process. Loopback only; every process these helpers start is appended
to the caller's ``procs`` so that the test stops it by pid (``stop``) in
``finally``; each test is bounded well under 60 s.
"""

from __future__ import annotations

import csv
import importlib.util
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.conftest import HOST, ROOT, _stop

LOCUST_SECONDS = 5
LOCUST_TIMEOUT = 40.0  # hard cap on the locust run (start-up + 5 s + shutdown)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def locust_available() -> bool:
    return importlib.util.find_spec("locust") is not None


def get_1k(port: int, target: str = "/1k") -> bool:
    """One GET of ``target`` (origin- or absolute-form) with Connection: close;
    True on a 200 with a 1024-byte body."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and len(body) == 1024


def wait_serving(proc: subprocess.Popen[bytes], port: int, what: str, log: Path,
                 target: str = "/1k") -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if get_1k(port, target):
            return
        time.sleep(0.05)
    state = f"exited rc={proc.returncode}" if proc.poll() is not None else "not serving"
    pytest.fail(f"{what} {state} on {HOST}:{port}; log:\n{log.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process, then SIGKILL it and any child it left (by pid)."""
    _stop(proc, STOP_TIMEOUT)


def write_config(tmp_path: Path, name: str, admin_port: int, rest: str) -> Path:
    """Write ``tmp_path/name``: one worker, no access log, the admin listener on
    ``admin_port``, then ``rest`` (the listener and what it needs)."""
    config = tmp_path / name
    config.write_text(textwrap.dedent(f"""\
        [server]
        workers = 1
        pidfile = "{tmp_path / 'fastproxy.pid'}"
        graceful_timeout = 5.0

        [log]
        access = "off"

        [admin]
        listen = "{HOST}:{admin_port}"

        """) + textwrap.dedent(rest))
    return config


def start_backend(tmp_path: Path, port: int,
                  procs: list[subprocess.Popen[bytes]]) -> None:
    """Run bench/locust_backend.py on ``port`` and wait until it serves /1k."""
    backend_log = tmp_path / "backend.log"
    with open(backend_log, "wb") as out:
        backend = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "locust_backend.py"),
             "--port", str(port)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    procs.append(backend)
    wait_serving(backend, port, "locust_backend", backend_log)


def start_fastproxy(tmp_path: Path, config: Path,
                    procs: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], Path]:
    """Run a fastproxy master on ``config``; returns it and its log (not waited for)."""
    proxy_log = tmp_path / "fastproxy.log"
    with open(proxy_log, "wb") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "run", "-c", str(config)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    procs.append(proxy)
    return proxy, proxy_log


def run_locust(tmp_path: Path, locustfile: str, host: str, procs: list[subprocess.Popen[bytes]],
               env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """Run ``python -m locust --headless`` on bench/``locustfile`` for LOCUST_SECONDS;
    asserts it exits 0 within LOCUST_TIMEOUT. Returns (CSV prefix, its output)."""
    prefix = tmp_path / "locust"
    locust_log = tmp_path / "locust.log"
    with open(locust_log, "wb") as out:
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust",
             "-f", str(ROOT / "bench" / locustfile),
             "--headless", "-u", "5", "-r", "5", "-t", f"{LOCUST_SECONDS}s",
             "--host", host, "--csv", str(prefix),
             "--exit-code-on-error", "1", "--only-summary", "--stop-timeout", "2"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
    procs.append(locust)
    try:
        rc = locust.wait(LOCUST_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"locust still running after {LOCUST_TIMEOUT:.0f}s")
    output = locust_log.read_text(errors="replace")
    assert rc == 0, f"locust exit code {rc}; output:\n{output[-3000:]}"
    return prefix, output


def check_stats(prefix: Path, output: str) -> int:
    """Check Locust's CSV stats: an Aggregated row with no failure and some
    requests, and every request type of the locustfile. Returns the request count."""
    stats_csv = Path(f"{prefix}_stats.csv")
    assert stats_csv.exists(), f"no {stats_csv.name}; locust output:\n{output[-3000:]}"
    with open(stats_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    aggregated = [row for row in rows if row["Name"] == "Aggregated"]
    assert len(aggregated) == 1, rows
    total = aggregated[0]
    assert int(total["Failure Count"]) == 0, f"failures:\n{output[-3000:]}"
    requests = int(total["Request Count"])
    assert requests > 0, rows
    names = {row["Name"] for row in rows}
    assert {"GET /1k", "GET /1m", "POST /echo 64k"} <= names, names
    return requests
