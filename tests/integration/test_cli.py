"""The ``fastproxy`` command line against real processes: check, run (bad
config, busy port, flags only), stats/metrics/healthz and passwd."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import HOST, TIMEOUT, config_text, echo_handler, free_port, wait_until
from tests.integration.helpers import echo_ok, gone, port_refuses, roundtrip

FASTPROXY = [sys.executable, "-m", "fastproxy"]


def _fastproxy(*args: str, cwd: Path, timeout: float = 30.0,
               input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a fastproxy command that is expected to return by itself; if it does
    not, kill it and whatever it started, by pid."""
    proc = subprocess.Popen([*FASTPROXY, *args], cwd=cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.kill()
    proc.wait(TIMEOUT)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=TIMEOUT)


def _config(tmp_path: Path, **kwargs: object) -> tuple[Path, dict[str, object]]:
    params: dict[str, object] = {"port": free_port(), "admin_port": free_port(),
                                 "pidfile": tmp_path / "fastproxy.pid",
                                 "upstreams": ["127.0.0.1:9"]}
    params.update(kwargs)
    path = tmp_path / "fastproxy.toml"
    path.write_text(config_text(**params))  # type: ignore[arg-type]
    return path, params


def _problem_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.strip()]


# -- check ---------------------------------------------------------------------------------
def test_check_good_config(tmp_path: Path) -> None:
    path, _ = _config(tmp_path)
    result = _fastproxy("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""


BAD_KEYS = ("server.wrokers", "upstream.app.balance", "listener[0].listen")


def _break(text: str, key: str, params: dict[str, object]) -> str:
    """Introduce the one problem named by ``key``."""
    old, new = {
        "server.wrokers": ("workers = 1", "wrokers = 1"),
        "upstream.app.balance": ('balance = "round_robin"', 'balance = "fastest"'),
        "listener[0].listen": (f'listen = "{HOST}:{params["port"]}"', 'listen = "127.0.0.1:http"'),
    }[key]
    assert text.count(old) == 1, (old, text)
    return text.replace(old, new)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_bad_config_names_the_key(tmp_path: Path, key: str) -> None:
    path, params = _config(tmp_path)
    path.write_text(_break(path.read_text(), key, params))
    result = _fastproxy("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1
    lines = _problem_lines(result.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"config error: {key}:"), lines


def test_check_reports_every_problem_one_line_each(tmp_path: Path) -> None:
    path, params = _config(tmp_path)
    text = path.read_text()
    for key in BAD_KEYS:
        text = _break(text, key, params)
    path.write_text(text)
    result = _fastproxy("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1
    lines = _problem_lines(result.stderr)
    assert len(lines) == len(BAD_KEYS), lines
    for key in BAD_KEYS:
        assert sum(line.startswith(f"config error: {key}:") for line in lines) == 1, (key, lines)


# -- run -------------------------------------------------------------------------------------
def test_run_with_bad_config_exits_1_without_starting(tmp_path: Path) -> None:
    path, params = _config(tmp_path)
    path.write_text(path.read_text().replace('balance = "round_robin"', 'balance = "fastest"'))
    result = _fastproxy("run", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "config error: upstream.app.balance:" in result.stderr.decode()
    assert not Path(str(params["pidfile"])).exists()
    assert port_refuses(int(params["port"]))  # type: ignore[arg-type]
    assert port_refuses(int(params["admin_port"]))  # type: ignore[arg-type]


def test_run_on_a_busy_port_exits_2(tmp_path: Path) -> None:
    with socket.socket() as busy:   # plain socket: no SO_REUSEPORT
        busy.bind((HOST, 0))
        busy.listen(8)
        port = busy.getsockname()[1]
        path, params = _config(tmp_path, port=port)
        result = _fastproxy("run", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr.decode()
    assert not Path(str(params["pidfile"])).exists()
    assert port_refuses(int(params["admin_port"]))  # type: ignore[arg-type]


@contextlib.contextmanager
def _running(args: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(cwd / "run.log", "wb") as log:
        proc = subprocess.Popen([*FASTPROXY, *args], cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _kill_tree(proc)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_run_from_flags_only(tmp_path: Path, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    port, admin = free_port(), free_port()
    pidfile = tmp_path / "flags.pid"
    args = ["run", "--mode", "tcp", "--listen", f"{HOST}:{port}", "--upstream", backend.address,
            "--workers", "1", "--admin", f"{HOST}:{admin}", "--pidfile", str(pidfile)]
    with _running(args, tmp_path) as proc:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                return _get(f"http://{HOST}:{admin}/healthz")[0] == 200
            except OSError:
                return False
        wait_until(up, 20.0, "the flags-only proxy to be healthy")
        assert pidfile.exists()
        assert int(pidfile.read_text()) == proc.pid
        assert roundtrip(port, b"flags only") == b"flags only"
        pids = [c.pid for c in psutil.Process(proc.pid).children()]
        assert len(pids) == 1

        stop = subprocess.Popen([*FASTPROXY, "stop", "--pidfile", str(pidfile), "--timeout", "20"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.wait(TIMEOUT) == 0
            _, err = stop.communicate(timeout=30.0)
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait(TIMEOUT)
        assert stop.returncode == 0, err.decode()
        wait_until(lambda: all(gone(p) for p in pids), 10.0, "the worker to exit")
        assert not pidfile.exists()


# -- stats / metrics / healthz -----------------------------------------------------------------
def test_stats_command_metrics_and_healthz(run_proxy, backend_factory) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    for i in range(3):
        assert echo_ok(proxy.ports["main"], f"stats {i}".encode())
    wait_until(lambda: proxy.totals()["conn_closed"] == 3, 10.0, "3 closed sessions")

    table = proxy.cli("stats", "--pidfile", str(proxy.pidfile))
    assert table.returncode == 0, table.stderr.decode()
    text = table.stdout.decode()
    assert "connections" in text
    assert re.search(r"accepted\s+3\b", text), text
    for pid in proxy.worker_pids():
        assert str(pid) in text

    result = proxy.cli("stats", "--pidfile", str(proxy.pidfile), "--json")
    assert result.returncode == 0, result.stderr.decode()
    snap = json.loads(result.stdout)
    assert snap["totals"]["counters"]["conn_accepted"] == 3
    assert snap["totals"]["counters"]["bytes_in"] == sum(len(f"stats {i}") for i in range(3))
    assert snap["master_pid"] == proxy.pid
    assert sorted(w["pid"] for w in snap["workers"]) == proxy.worker_pids()

    metrics = proxy.metrics()
    assert "# HELP fastproxy_conn_accepted_total " in metrics
    assert "# TYPE fastproxy_conn_accepted_total counter" in metrics
    assert re.search(r"^fastproxy_conn_accepted_total 3(\.0)?$", metrics, re.MULTILINE), metrics

    status, body = _get(f"http://{HOST}:{proxy.admin_port}/healthz")
    assert status == 200
    assert body.strip() == b"ok"


# -- passwd ------------------------------------------------------------------------------------
def test_passwd_from_stdin(tmp_path: Path) -> None:
    password = "correct horse battery staple"
    result = _fastproxy("passwd", "alice", cwd=tmp_path, input=f"{password}\n".encode())
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    m = re.fullmatch(r'alice = "pbkdf2_sha256\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)"',
                     lines[0])
    assert m, lines[0]
    iterations, salt, digest = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
    assert iterations >= 100_000
    assert len(salt) >= 8
    assert hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations) == digest
    assert hashlib.pbkdf2_hmac("sha256", b"wrong", salt, iterations) != digest


def test_passwd_empty_password_is_refused(tmp_path: Path) -> None:
    result = _fastproxy("passwd", "alice", cwd=tmp_path, input=b"\n")
    assert result.returncode == 1
    assert result.stdout == b""
