"""A reload either serves the new configuration or gives the old one back.

- a generation whose workers cannot start (here: an access log in a
  directory that does not exist) is rolled back after three failed starts:
  ``fastproxy reload`` exits 1 with the workers' own reason, the old workers
  (same pids) serve on, and what the new configuration brought (a listener,
  an admin endpoint, a pidfile) is gone; it used to crash-loop for ever
  while the master already took the new configuration as its own;
- a generation that is not ready within READY_TIMEOUT (its workers hang) is
  rolled back the same way;
- the master's own keys are applied by a reload, not silently ignored:
  ``[admin] listen`` and ``allow``, ``server.pidfile``, ``log.level``; the
  outcome ``fastproxy reload`` prints names them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import HOST, TIMEOUT, echo_handler, free_port, read_log, wait_until
from tests.integration.helpers import echo_ok, port_refuses, second_listener
from tests.integration.http_helpers import HttpProxyRunner, exchange


def healthz(port: int, source: str = HOST) -> int:
    """The admin endpoint's /healthz status, asked from ``source``; 0 when
    the connection is closed without an answer."""
    data = b""
    with socket.create_connection((HOST, port), timeout=TIMEOUT, source_address=(source, 0)) as s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return int(data.split()[1]) if data else 0


def test_a_generation_that_cannot_start_is_rolled_back(run_proxy, backend_factory,
                                                       tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address], workers=2)
    good = proxy.config_path.read_text()
    generation = proxy.stats()["generation"]
    pids = proxy.worker_pids()
    extra_port, new_admin = free_port(), free_port()
    new_pidfile = tmp_path / "moved.pid"
    broken = (good.replace('access = "off"', f'access = "{tmp_path}/missing/access.log"')
              .replace(f'"{HOST}:{proxy.admin_port}"', f'"{HOST}:{new_admin}"')
              .replace(str(proxy.pidfile), str(new_pidfile))
              + second_listener("extra", extra_port))
    proxy.config_path.write_text(broken)

    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "failed to start" in err and "missing/access.log" in err, err
    assert f"rolled back: generation {generation} serves" in err, err

    # the old generation alone serves: no crash loop, the same processes
    wait_until(lambda: proxy.worker_pids() == pids, TIMEOUT, "only the old workers")
    stats = proxy.stats()                       # on the old admin endpoint
    assert stats["generation"] == generation
    assert stats["reload_status"] == "failed"
    assert echo_ok(proxy.ports["main"])
    # what the failed configuration brought is gone again
    wait_until(lambda: port_refuses(extra_port), TIMEOUT, "the new listener to close")
    assert port_refuses(new_admin)
    assert not new_pidfile.exists()
    assert int(proxy.pidfile.read_text()) == proxy.pid
    assert proxy.proc.poll() is None

    proxy.config_path.write_text(good)          # a good configuration is taken again
    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr.decode()
    assert proxy.stats()["generation"] == generation + 2   # numbers are never reused
    assert echo_ok(proxy.ports["main"])


# Workers of any generation after the first never report ready; the master
# gives a generation 2 seconds. A hanging worker leaves when its master does.
HANGING_RELOADS = """
import select, sys
from fastproxy import master, worker
from fastproxy.cli import main

master.READY_TIMEOUT = 2.0
run = worker.Worker.run

def run_or_hang(self):
    if self.spec.generation == 1:
        return run(self)
    select.select([self.spec.alive_fd], [], [])
    return 1

worker.Worker.run = run_or_hang
sys.exit(main(sys.argv[1:]))
"""


def test_a_generation_not_ready_in_time_is_rolled_back(tmp_path: Path,
                                                       http_backend_factory) -> None:
    runner = HttpProxyRunner(tmp_path)
    runner.python_args = ["-c", HANGING_RELOADS]
    try:
        proxy = runner.start({"app": [http_backend_factory().address]}, workers=2)
        pids = proxy.worker_pids()
        result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
        assert result.returncode == 1, result
        assert "generation 2 not ready after 2s" in result.stderr.decode(), result
        wait_until(lambda: proxy.worker_pids() == pids, TIMEOUT, "the hanging workers to go")
        assert proxy.stats()["generation"] == 1
        assert exchange(proxy.port, "GET", "/after").status == 200

        # a HUP while a generation is starting replaces it; both reloads see the outcome
        first = subprocess.Popen([sys.executable, "-m", "fastproxy", "reload", "--pidfile",
                                  str(proxy.pidfile)], cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        try:
            wait_until(lambda: 3 in {w["generation"] for w in proxy.stats()["workers"]},
                       TIMEOUT, "generation 3 to start")
            second = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
            assert second.returncode == 1, second
            assert "generation 4 not ready after 2s" in second.stderr.decode(), second
            _, err = first.communicate(timeout=TIMEOUT)
            assert first.returncode == 1 and b"generation 4 not ready" in err, err
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(TIMEOUT)
        wait_until(lambda: proxy.worker_pids() == pids, TIMEOUT, "the hanging workers to go")
        assert proxy.stats()["generation"] == 1
        proxy.assert_healthy(pids)
    finally:
        runner.stop_all()


def test_a_reload_applies_the_masters_own_keys(run_proxy, backend_factory, tmp_path: Path) -> None:
    backend = backend_factory(echo_handler)
    proxy = run_proxy(upstreams=[backend.address])
    old_admin, new_admin = proxy.admin_port, free_port()
    new_pidfile = tmp_path / "moved.pid"
    text = (proxy.config_path.read_text()
            .replace(f'"{HOST}:{old_admin}"', f'"{HOST}:{new_admin}"')
            .replace(str(proxy.pidfile), str(new_pidfile))
            .replace('level = "info"', 'level = "debug"'))
    proxy.config_path.write_text(text)

    result = proxy.cli("reload", "--pidfile", str(proxy.pidfile))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert f"admin endpoint {HOST}:{new_admin}" in out, out
    assert f"pidfile {new_pidfile}" in out and "log.level debug" in out, out

    assert healthz(new_admin) == 200
    wait_until(lambda: port_refuses(old_admin), TIMEOUT, "the old admin endpoint to close")
    assert int(new_pidfile.read_text()) == proxy.pid
    assert not proxy.pidfile.exists()
    assert "[DEBUG] master[" in read_log(proxy).split("reloading")[-1]
    assert echo_ok(proxy.ports["main"])

    # admin.allow as well: only 127.0.0.3 from now on
    proxy.config_path.write_text(text.replace(f'listen = "{HOST}:{new_admin}"',
                                              f'listen = "{HOST}:{new_admin}"\n'
                                              'allow = ["127.0.0.3/32"]'))
    result = proxy.cli("reload", "--pidfile", str(new_pidfile))
    assert result.returncode == 0, result.stderr.decode()
    assert "admin.allow 127.0.0.3/32" in result.stdout.decode()
    assert healthz(new_admin, "127.0.0.3") == 200
    assert healthz(new_admin) == 0              # closed at accept
    try:
        urllib.request.urlopen(f"http://{HOST}:{new_admin}/stats", timeout=TIMEOUT)
        raise AssertionError("the admin endpoint answered a peer no longer allowed")
    except OSError:
        pass
