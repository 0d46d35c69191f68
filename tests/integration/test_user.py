"""`[server] user`: workers run as that user, the master keeps its identity."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import Backend, Proxy, connect, wait_until


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_user_is_applied_to_workers_only(run_proxy: Callable[..., Proxy],
                                         echo_backend: Backend, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = _nobody()
    import tests.conftest as conftest

    original = conftest.config_text

    def with_user(**kwargs: object) -> str:
        return original(**kwargs).replace("[server]\n", '[server]\nuser = "nobody"\n', 1)  # type: ignore[arg-type]

    monkeypatch.setattr(conftest, "config_text", with_user)
    log = tmp_path / "access.log"
    proxy = run_proxy([echo_backend.address], access=str(log))
    master = psutil.Process(proxy.pid)
    assert master.uids().effective == 0
    workers = [psutil.Process(pid) for pid in proxy.worker_pids()]
    assert workers and all(w.uids().real == nobody.pw_uid == w.uids().effective for w in workers)
    assert all(w.gids().effective == nobody.pw_gid for w in workers)
    with connect(proxy.ports["main"]) as s:
        s.sendall(b"as nobody")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(64) == b"as nobody"
    wait_until(lambda: log.exists() and " TCP main 200 " in log.read_text(), what="access line")


def test_user_without_root_is_refused() -> None:
    """A master that is not root cannot run workers as another user: exit 1,
    naming the key (run here as "nobody" when the tests run as root)."""
    import subprocess
    import sys
    import tempfile

    run_as = None
    if os.geteuid() == 0:
        run_as = _nobody().pw_name
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir="/tmp", delete=False) as f:
        f.write('[server]\nuser = "root"\npidfile = "/tmp/fastproxy-user-test.pid"\n'
                '[admin]\nlisten = "off"\n'
                '[[listener]]\nlisten = "127.0.0.1:1"\nmode = "forward"\n')
    try:
        os.chmod(f.name, 0o644)
        result = subprocess.run([sys.executable, "-m", "fastproxy", "run", "-c", f.name],
                                capture_output=True, text=True, timeout=30, user=run_as,
                                cwd="/tmp")
    except PermissionError:
        pytest.skip(f"this interpreter cannot be run as {run_as}")
    finally:
        os.unlink(f.name)
    if "No module named fastproxy" in result.stderr or "Permission denied" in result.stderr:
        pytest.skip(f"the tree is not readable by {run_as}")
    assert result.returncode == 1, result.stderr
    assert "config error: server.user:" in result.stderr
