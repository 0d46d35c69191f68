"""Locust end to end: bench/locustfile_forward.py through a real fastproxy forward proxy.

bench/locust_backend.py (subprocess) <- fastproxy (subprocess, mode = "forward",
allow_destinations = 127.0.0.0/8) <- ``python -m locust --headless``
(subprocess) whose users send absolute-form requests to the proxy
(``FASTPROXY_PROXY``) for ``--host`` = the backend. Passes when Locust exits 0,
its CSV stats show requests and no failure (every response is checked by the
locustfile: status, body bytes, echo length and sha256), and fastproxy's own
``forward_requests`` counter (admin ``/stats``) moved, so the traffic really
went through the proxy and not straight to the backend.

Skipped when Locust is not installed (it is the ``bench`` extra, not ``test``).
Locust is only looked up here, never imported: importing it would let gevent
monkey-patch the pytest process. Loopback only; every process is stopped by
pid in ``finally``; the whole test is bounded well under 60 s.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import HOST, ROOT, free_port

pytestmark = pytest.mark.slow

LOCUST_SECONDS = 5
LOCUST_TIMEOUT = 40.0  # hard cap on the locust run (start-up + 5 s + shutdown)
START_TIMEOUT = 10.0


def _locust_available() -> bool:
    return importlib.util.find_spec("locust") is not None


def _get_1k(port: int, target: str) -> bool:
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


def _wait_serving(proc: subprocess.Popen[bytes], port: int, target: str, what: str,
                  log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _get_1k(port, target):
            return
        time.sleep(0.05)
    state = f"exited rc={proc.returncode}" if proc.poll() is not None else "not serving"
    pytest.fail(f"{what} {state} on {HOST}:{port}; log:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process, then SIGKILL it and any child it left (by pid)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)


def _fastproxy_config(tmp_path: Path, port: int, admin_port: int) -> Path:
    config = tmp_path / "fastproxy-forward.toml"
    config.write_text(textwrap.dedent(f"""\
        [server]
        workers = 1
        pidfile = "{tmp_path / 'fastproxy.pid'}"
        graceful_timeout = 5.0

        [log]
        access = "off"

        [admin]
        listen = "{HOST}:{admin_port}"

        [[listener]]
        name = "fwd"
        listen = "{HOST}:{port}"
        mode = "forward"

        [forward]
        allow_clients = ["127.0.0.0/8"]
        allow_destinations = ["127.0.0.0/8"]   # loopback is denied by default
        connect_ports = [443]
        """))
    return config


def _counters(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/stats", timeout=5) as resp:
        return dict(json.loads(resp.read())["totals"]["counters"])


@pytest.mark.skipif(not _locust_available(), reason="locust not installed (pip install locust)")
def test_locustfile_forward_through_fastproxy(tmp_path: Path) -> None:
    backend_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    backend_url = f"http://{HOST}:{backend_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend_log = tmp_path / "backend.log"
        with open(backend_log, "wb") as out:
            backend = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "locust_backend.py"),
                 "--port", str(backend_port)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        procs.append(backend)
        _wait_serving(backend, backend_port, "/1k", "locust_backend", backend_log)

        config = _fastproxy_config(tmp_path, proxy_port, admin_port)
        proxy_log = tmp_path / "fastproxy.log"
        with open(proxy_log, "wb") as out:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "fastproxy", "run", "-c", str(config)],
                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proxy)
        _wait_serving(proxy, proxy_port, f"{backend_url}/1k", "fastproxy forward", proxy_log)
        before = int(_counters(admin_port)["forward_requests"])

        prefix = tmp_path / "locust"
        locust_log = tmp_path / "locust.log"
        env = {**os.environ, "FASTPROXY_PROXY": f"http://{HOST}:{proxy_port}"}
        with open(locust_log, "wb") as out:
            locust = subprocess.Popen(
                [sys.executable, "-m", "locust",
                 "-f", str(ROOT / "bench" / "locustfile_forward.py"),
                 "--headless", "-u", "5", "-r", "5", "-t", f"{LOCUST_SECONDS}s",
                 "--host", backend_url, "--csv", str(prefix),
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
        assert "ForwardProxyUser" in output, output[-3000:]
        assert "ReverseProxyUser" not in output, "the reverse user ran too"

        assert proxy.poll() is None, "fastproxy exited during the locust run"
        counters = _counters(admin_port)
        forwarded = int(counters["forward_requests"]) - before
        assert forwarded > 0, f"fastproxy forwarded nothing: {counters}"
        # every request Locust completed went through the proxy (a few more may have
        # been cut off by the stop, none may have bypassed it)
        assert forwarded >= requests, (forwarded, requests)
        assert int(counters.get("denied", 0)) == 0, counters
    finally:
        for proc in reversed(procs):
            _stop(proc)
