"""The master's files and limits: its files in shared directories, the moment
its pidfile appears, the workers' descriptor limit.

- the stats segment in /dev/shm is a new regular file readable by the
  master's user only (it was 0644, opened without O_EXCL or O_NOFOLLOW);
- the pidfile appears only once the signal handlers are installed: a HUP
  sent the instant it can be read (here: by the master itself, right after
  writing it) is a reload, not the signal's default action, which killed
  the master;
- the workers raise their soft descriptor limit as far as max_connections
  needs (they kept the 1,024 they were started with), or set
  ``server.rlimit_nofile``, and say so when it cannot hold max_connections.
"""

from __future__ import annotations

import os
import resource
import socket
import stat
from pathlib import Path

import psutil
import pytest

from tests.conftest import HOST, TIMEOUT, wait_until
from tests.integration.http_helpers import HttpProxyRunner

# The master with a HUP to itself right after the pidfile is written.
HUP_AT_PIDFILE = """
import os, signal, sys
from fastproxy import master
from fastproxy.cli import main

write = master.write_pid

def write_then_hup(path):
    write(path)
    os.kill(os.getpid(), signal.SIGHUP)

master.write_pid = write_then_hup
sys.exit(main(sys.argv[1:]))
"""


def test_the_stats_segment_is_private(tmp_path: Path, backend_factory) -> None:
    runner = HttpProxyRunner(tmp_path)
    try:
        proxy = runner.start({"app": [backend_factory().address]})
        info = os.lstat(f"/dev/shm/fastproxy.{proxy.pid}.stats")
        assert stat.S_ISREG(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()
    finally:
        runner.stop_all()


def test_a_hup_as_soon_as_the_pidfile_exists_is_a_reload(tmp_path: Path,
                                                         backend_factory) -> None:
    runner = HttpProxyRunner(tmp_path)
    runner.python_args = ["-c", HUP_AT_PIDFILE]
    try:
        proxy = runner.start({"app": [backend_factory().address]})
        wait_until(lambda: proxy.stats()["reload_seq"] >= 1, TIMEOUT, "the HUP's reload")
        assert proxy.proc.poll() is None, proxy.log_text()
        assert int(proxy.pidfile.read_text()) == proxy.pid
        proxy.wait_workers(1)
        proxy.assert_healthy()
    finally:
        runner.stop_all()


# The master started under a soft descriptor limit of 1,024 (the hard one unchanged).
LOW_SOFT_LIMIT = """
import resource, sys
from fastproxy.cli import main

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
sys.exit(main(sys.argv[1:]))
"""


def worker_nofile(proxy) -> tuple[int, int]:
    (pid,) = proxy.worker_pids()
    return psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)


def test_workers_raise_their_descriptor_limit_for_max_connections(tmp_path: Path,
                                                                   backend_factory) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard descriptor limit {hard}: nothing to raise to")
    runner = HttpProxyRunner(tmp_path)
    runner.python_args = ["-c", LOW_SOFT_LIMIT]
    try:
        proxy = runner.start({"app": [backend_factory().address]},
                             server={"max_connections": 1500})
        soft, _ = worker_nofile(proxy)
        assert soft >= 2 * 1500, soft   # was 1,024: the workers kept the master's limit
        assert "descriptor limit" not in proxy.log_text()

        pinned = runner.start({"app": [backend_factory().address]},
                              server={"max_connections": 1500, "rlimit_nofile": 2000})
        assert worker_nofile(pinned)[0] == 2000
        # 2,000 descriptors cannot hold 1,500 proxied connections: said at start
        wait_until(lambda: "descriptor limit 2000 holds" in pinned.log_text(), TIMEOUT,
                   "the warning")
        pinned.assert_healthy()
    finally:
        runner.stop_all()


def admin_get(proxy, path: str, source: str) -> bytes:
    """What the admin endpoint sends to ``source`` for ``GET path`` (b"": closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        got = bytearray()
        try:
            sock.connect((HOST, proxy.admin_port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
            while chunk := sock.recv(65536):
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return bytes(got)


def test_the_admin_endpoint_serves_only_admin_allow(tmp_path: Path, backend_factory) -> None:
    runner = HttpProxyRunner(tmp_path)
    try:
        proxy = runner.start({"app": [backend_factory().address]},
                             admin={"allow": ["127.0.0.1/32"]})   # the harness reads /stats
        assert admin_get(proxy, "/healthz", "127.0.0.2") == b""
        assert admin_get(proxy, "/metrics", "127.0.0.3") == b""
        assert admin_get(proxy, "/healthz", "127.0.0.1").startswith(b"HTTP/1.1 200 ")
        # a burst of /metrics is answered (the process figures: one read per second)
        for _ in range(20):
            assert b"fastproxy_worker_open_fds" in admin_get(proxy, "/metrics", "127.0.0.1")
    finally:
        runner.stop_all()
