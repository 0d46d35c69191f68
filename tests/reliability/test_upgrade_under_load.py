"""A binary upgrade (``fastproxy upgrade``: USR2, then QUIT to the old master)
under load: no client sees a failure.

While client threads run keep-alive GETs, GETs on a new connection each and
POSTs of random bodies, the test runs ``fastproxy upgrade``: a new master
starts on the same listening sockets, the old one drains and exits. Then the
load goes on against the new master alone. Shows: exit 0 with the new pid,
no failed request and no reset (a keep-alive connection the old workers close
while idle is retried on a new one, as HTTP clients do: counted apart), the
old master and its workers gone, the new master serving from its own stats.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from tests.conftest import TIMEOUT, Backend, wait_until
from tests.integration.http_helpers import ListenerSpec
from tests.reliability.conftest import LoadThread, ReliabilityRunner, Tally
from tests.reliability.test_reload_under_load import KeepAliveGets, fresh_get, fresh_post

WORKERS = 2
KINDS = ("keepalive_get", "fresh_get", "post")


def kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        master = psutil.Process(pid)
        procs = [master, *master.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=TIMEOUT)


def test_upgrade_during_load(runner: ReliabilityRunner, fast_backend: Backend,
                             backend_factory: Callable[..., Backend]) -> None:
    web = ListenerSpec("web", "app", timeouts={"client_header": 5.0, "idle": 30.0,
                                               "upstream_read": 10.0})
    proxy = runner.start({"app": [fast_backend.address]}, web=web, workers=WORKERS,
                         graceful_timeout=20.0)
    port, old = proxy.ports["web"], proxy.pid
    old_workers = proxy.worker_pids()
    tally = Tally()
    gets = [KeepAliveGets(port), KeepAliveGets(port)]
    loads = [LoadThread("keepalive_get", gets[0], tally),
             LoadThread("keepalive_get", gets[1], tally),
             LoadThread("fresh_get", fresh_get(port), tally),
             LoadThread("post", fresh_post(port, seed=2), tally)]
    new = 0
    started = time.monotonic()
    try:
        for load in loads:
            load.start()
        wait_until(lambda: all(tally.attempts(k) >= 20 for k in KINDS), 30.0, "load")
        before = tally.total()
        result = subprocess.run([sys.executable, "-m", "fastproxy", "upgrade", "--pidfile",
                                 str(proxy.pidfile)], capture_output=True, timeout=120,
                                check=False)
        new = int(result.stdout.split()[-1]) if result.returncode == 0 else 0
        assert result.returncode == 0, result.stderr.decode()
        during = tally.total() - before
        marks = {k: tally.attempts(k) for k in KINDS}
        wait_until(lambda: all(tally.attempts(k) >= marks[k] + 20 for k in KINDS), 30.0,
                   "load on the new master")
    finally:
        for load in loads:
            load.stop()
        for get in gets:
            get.close()
        if new:
            snap = proxy.stats()                     # the new master's (same admin address)
            kill_tree(new)
    elapsed = time.monotonic() - started
    idle_closes = sum(get.idle_closes for get in gets)
    print(f"\nRELIABILITY upgrade: requests={tally.total()} during_upgrade={during} "
          f"by_kind={dict(tally.done)} failures={len(tally.failures)} resets={tally.resets} "
          f"idle_closes_retried={idle_closes} old={old} new={new} seconds={elapsed:.1f}")
    assert tally.failures == [], "\n".join(tally.failures[:40])
    assert tally.resets == 0
    assert new != old and proxy.proc.poll() is not None     # the old master exited
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in old_workers)
    assert snap["master_pid"] == new
    assert snap["totals"]["counters"]["requests"] >= 3 * 20   # counted from its own start
    assert snap["totals"]["counters"]["internal_errors"] == 0
