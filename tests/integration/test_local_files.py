"""The master's files in shared directories, and the moment its pidfile appears.

- the stats segment in /dev/shm is a new regular file readable by the
  master's user only (it was 0644, opened without O_EXCL or O_NOFOLLOW);
- the pidfile appears only once the signal handlers are installed: a HUP
  sent the instant it can be read (here: by the master itself, right after
  writing it) is a reload, not the signal's default action, which killed
  the master.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.conftest import TIMEOUT, wait_until
from tests.integration.http_helpers import HttpProxyRunner

# The master with a HUP to itself right after the pidfile is written.
HUP_AT_PIDFILE = """
import os, signal, sys
from fastproxy import master
from fastproxy.cli import main

write = master.Master._write_pidfile

def write_then_hup(self):
    write(self)
    os.kill(os.getpid(), signal.SIGHUP)

master.Master._write_pidfile = write_then_hup
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
