"""Operations, with the test playing the service manager's part.

- systemd readiness (``NOTIFY_SOCKET``): READY=1 once workers serve;
  RELOADING=1 with MONOTONIC_USEC at a HUP, READY=1 after it (a failed one
  too); STOPPING=1 at QUIT; after a USR2, MAINPID=<new> from the new master
  and nothing more from the old one (its STOPPING would stop the service);
- socket activation: sockets passed as systemd passes them (fds 3..,
  LISTEN_PID/FDS/FDNAMES) serve the listeners of those names, survive
  HUP, and are never closed by a reload that drops the listener;
- /healthz: 503 as soon as a QUIT drain starts, and "handing over" from the
  old master during a USR2 hand-over;
- USR2 / ``fastproxy upgrade``: a new master on the same sockets, the old
  one gone, ``fastproxy stats`` on the new one; a new master that cannot
  start (bad configuration, workers that fail) leaves the old one serving
  with its pidfile back; WINCH stops the old workers, not the master.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import HOST, TIMEOUT, config_text, echo_handler, free_port, wait_until
from tests.integration.helpers import echo_ok, port_refuses
from tests.integration.ops_helpers import (
    Masters,
    NotifySocket,
    gone,
    inode,
    monotonic_usec,
    read_pid,
    socket_inodes,
    wait_pidfile,
)


@pytest.fixture
def masters(tmp_path: Path):  # type: ignore[no-untyped-def]
    m = Masters(tmp_path)
    try:
        yield m
    finally:
        m.stop_all()


@pytest.fixture
def notify(tmp_path: Path):  # type: ignore[no-untyped-def]
    n = NotifySocket(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.close()


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=TIMEOUT) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def cli(workdir: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], check=False, cwd=workdir,
                          capture_output=True, timeout=timeout)


def write_config(tmp_path: Path, backend: str, workers: int = 2, **kwargs: object) -> dict:
    port, admin = int(kwargs.pop("port", 0)) or free_port(), free_port()
    pidfile = tmp_path / "fp.pid"
    path = tmp_path / "fp.toml"
    path.write_text(config_text(port=port, admin_port=admin, pidfile=pidfile,
                                upstreams=[backend], workers=workers, **kwargs))  # type: ignore[arg-type]
    return {"port": port, "admin": admin, "pidfile": pidfile, "config": path}


def running_workers(admin: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{admin}/stats", timeout=TIMEOUT) as r:
        return sum(1 for w in json.loads(r.read())["workers"] if w["state"] == "running")


# -- systemd ----------------------------------------------------------------------------------
def test_notify_messages_in_order(masters, notify, backend_factory, tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    cfg = write_config(tmp_path, backend.address)
    masters.start(cfg["config"], env={"NOTIFY_SOCKET": notify.path})

    ready = notify.next()
    assert ready["READY"] == "1", ready
    assert running_workers(cfg["admin"]) == 2          # sent once the workers serve
    assert echo_ok(cfg["port"])
    pid = read_pid(cfg["pidfile"])

    before = monotonic_usec()
    result = cli(tmp_path, "reload", "--pidfile", str(cfg["pidfile"]))
    assert result.returncode == 0, result.stderr
    reloading = notify.next()
    assert reloading["RELOADING"] == "1", reloading
    assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
    assert notify.next()["READY"] == "1"

    good = cfg["config"].read_text()                   # a failed reload ends with READY too
    cfg["config"].write_text(good.replace("workers = 2", "workers = nope"))
    assert cli(tmp_path, "reload", "--pidfile", str(cfg["pidfile"])).returncode == 1
    assert notify.next()["RELOADING"] == "1"
    assert notify.next()["READY"] == "1"

    os.kill(pid, signal.SIGQUIT)
    assert notify.next()["STOPPING"] == "1"
    wait_until(lambda: gone(pid), TIMEOUT, "the master to exit")
    assert notify.pending() == []


def test_socket_activation(masters, backend_factory, tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    passed = socket.socket()        # as systemd's: no SO_REUSEADDR/SO_REUSEPORT, so fastproxy
    passed.bind((HOST, 0))          # could not bind this address itself
    passed.listen(64)
    port = passed.getsockname()[1]
    cfg = write_config(tmp_path, backend.address, port=port)
    try:
        masters.start(cfg["config"], passed={"main": [passed]})
        pid = wait_pidfile(cfg["pidfile"])
        wait_until(lambda: running_workers(cfg["admin"]) == 2, TIMEOUT, "workers")
        assert echo_ok(port, b"served on the passed socket")
        assert inode(passed) in socket_inodes(pid)

        assert cli(tmp_path, "reload", "--pidfile", str(cfg["pidfile"])).returncode == 0
        assert echo_ok(port, b"still after HUP")
        assert inode(passed) in socket_inodes(pid)

        # a reload that drops the listener keeps the manager's socket; it comes back by name
        good = cfg["config"].read_text()
        other = free_port()
        cfg["config"].write_text(good.replace('name = "main"', 'name = "gone"')
                                 .replace(f"{HOST}:{port}", f"{HOST}:{other}"))
        assert cli(tmp_path, "reload", "--pidfile", str(cfg["pidfile"])).returncode == 0
        assert echo_ok(other)
        wait_until(lambda: running_workers(cfg["admin"]) == 2, TIMEOUT, "workers")
        assert inode(passed) in socket_inodes(pid)
        cfg["config"].write_text(good)
        assert cli(tmp_path, "reload", "--pidfile", str(cfg["pidfile"])).returncode == 0
        assert echo_ok(port, b"back by name")
        assert inode(passed) in socket_inodes(pid)
    finally:
        passed.close()


# -- /healthz ---------------------------------------------------------------------------------
def test_healthz_flips_when_a_drain_starts(masters, backend_factory, tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    cfg = write_config(tmp_path, backend.address, workers=1, graceful_timeout=30.0)
    masters.start(cfg["config"])
    pid = wait_pidfile(cfg["pidfile"])
    wait_until(lambda: healthz(cfg["admin"])[0] == 200, TIMEOUT, "healthz 200")
    with socket.create_connection((HOST, cfg["port"]), timeout=TIMEOUT) as held:
        held.sendall(b"x")
        assert held.recv(1) == b"x"                     # a session that keeps the drain going
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: port_refuses(cfg["port"]), TIMEOUT, "the listener to close")
        assert healthz(cfg["admin"]) == (503, "draining")   # the first poll after the QUIT
        held.sendall(b"y")
        assert held.recv(1) == b"y"                     # and the session is still served
    wait_until(lambda: gone(pid), 40.0, "the master to exit")


# -- USR2 -------------------------------------------------------------------------------------
def test_upgrade_hands_over_to_a_new_master(masters, notify, backend_factory,
                                            tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    cfg = write_config(tmp_path, backend.address)
    masters.start(cfg["config"], env={"NOTIFY_SOCKET": notify.path})
    assert notify.next()["READY"] == "1"
    old = read_pid(cfg["pidfile"])
    assert echo_ok(cfg["port"])

    result = cli(tmp_path, "upgrade", "--pidfile", str(cfg["pidfile"]))
    assert result.returncode == 0, result.stderr.decode()
    new = int(result.stdout.decode().split()[-1])
    masters.track(new)
    assert new != old and read_pid(cfg["pidfile"]) == new
    assert gone(old)
    assert not Path(str(cfg["pidfile"]) + ".oldbin").exists()
    assert echo_ok(cfg["port"], b"served by the new master")
    # the new master told the manager it is the main process; the old one said nothing more
    handed = notify.next()
    assert handed["MAINPID"] == str(new) and handed["READY"] == "1", handed
    assert all("STOPPING" not in m for m in notify.pending())
    # its own stats: the old master's counters stay with it
    stats = cli(tmp_path, "stats", "--pidfile", str(cfg["pidfile"]), "--json")
    assert stats.returncode == 0, stats.stderr
    snap = json.loads(stats.stdout)
    assert snap["master_pid"] == new
    assert snap["totals"]["counters"]["conn_accepted"] == 1


def test_upgrade_to_a_broken_configuration_leaves_the_old_master(masters, backend_factory,
                                                                 tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    cfg = write_config(tmp_path, backend.address)
    masters.start(cfg["config"])
    old = wait_pidfile(cfg["pidfile"])
    wait_until(lambda: running_workers(cfg["admin"]) == 2, TIMEOUT, "workers")
    workers = sorted(c.pid for c in psutil.Process(old).children())
    good = cfg["config"].read_text()

    cfg["config"].write_text(good.replace("workers = 2", "wrokers = 2"))
    result = cli(tmp_path, "upgrade", "--pidfile", str(cfg["pidfile"]))
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "upgrade failed" in err and "server.wrokers" in err, err
    assert read_pid(cfg["pidfile"]) == old                 # the pidfile is back
    assert not Path(str(cfg["pidfile"]) + ".oldbin").exists()
    assert echo_ok(cfg["port"])
    wait_until(lambda: sorted(c.pid for c in psutil.Process(old).children())
               == workers, TIMEOUT, "no new master left")

    # workers that cannot start: the new master gives up after three attempts
    cfg["config"].write_text(good.replace('access = "off"',
                                          f'access = "{tmp_path}/missing/access.log"'))
    result = cli(tmp_path, "upgrade", "--pidfile", str(cfg["pidfile"]))
    assert result.returncode == 1, result
    assert "failed to start" in result.stderr.decode() and "missing/access.log" in \
        result.stderr.decode()
    assert read_pid(cfg["pidfile"]) == old
    wait_until(lambda: sorted(c.pid for c in psutil.Process(old).children())
               == workers, TIMEOUT, "no new master left")
    assert echo_ok(cfg["port"])

    cfg["config"].write_text(good)                         # and then a good one goes through
    result = cli(tmp_path, "upgrade", "--pidfile", str(cfg["pidfile"]))
    assert result.returncode == 0, result.stderr.decode()
    masters.track(int(result.stdout.decode().split()[-1]))
    assert echo_ok(cfg["port"])


def test_hand_over_health_and_winch(masters, backend_factory, tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    cfg = write_config(tmp_path, backend.address)
    masters.start(cfg["config"])
    old = wait_pidfile(cfg["pidfile"])
    wait_until(lambda: running_workers(cfg["admin"]) == 2, TIMEOUT, "workers")
    old_workers = [c.pid for c in psutil.Process(old).children()]
    os.kill(old, signal.SIGUSR2)
    new = wait_pidfile(cfg["pidfile"], other_than=old)
    masters.track(new)
    assert read_pid(Path(str(cfg["pidfile"]) + ".oldbin")) == old
    # both masters answer on the admin address (a socket each); once the new one
    # serves, the old one says it hands over
    handing_over = (503, f"handing over to master {new}")
    wait_until(lambda: healthz(cfg["admin"]) == handing_over, TIMEOUT, "the hand-over")
    answers = {healthz(cfg["admin"]) for _ in range(30)}
    assert answers <= {(200, "ok"), handing_over}, answers

    os.kill(old, signal.SIGWINCH)                          # old workers go, the old master stays
    wait_until(lambda: all(gone(p) for p in old_workers), TIMEOUT, "old workers to exit")
    assert not gone(old)
    assert echo_ok(cfg["port"], b"the new master's workers serve")
    os.kill(old, signal.SIGQUIT)
    wait_until(lambda: gone(old), TIMEOUT, "the old master to exit")
    assert read_pid(cfg["pidfile"]) == new
    assert echo_ok(cfg["port"])
