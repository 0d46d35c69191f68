"""kill -9 of a worker, then of the master, under an http listener with two workers.

- A worker killed with SIGKILL loses only its own connections: each client
  connection's owner is found by its socket (psutil: the worker holding the
  peer of the client's address); the victim's connections, idle or with a
  request in flight, end without a response, while the other worker's
  connections, idle and in flight, are answered and go on serving requests.
  The master respawns the slot (a new pid, two workers again) and new
  clients are served, by the new worker too.
- The master killed with SIGKILL: its workers see EOF on the master's pipe,
  close their idle keep-alive connections and exit within 2 s; afterwards
  nothing holds the listening or the admin port: both can be bound again,
  and a new master on the same ports serves (and removes the dead master's
  stats segment).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from fastproxy.stats.shm import segment_path
from tests.conftest import HOST, TIMEOUT, Backend, wait_until
from tests.integration.helpers import gone, kill_pids
from tests.integration.http_backends import heads
from tests.integration.http_helpers import (
    HttpClient,
    HttpProxy,
    ListenerSpec,
    Response,
    build_request,
    exchange,
)
from tests.reliability.conftest import ReliabilityRunner

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HELD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld"
PER_WORKER = 4          # connections wanted on each worker
MAX_CONNECTIONS = 80    # opened at most to get them
MASTER_DEATH_LIMIT = 2.0


class Gate:
    """A backend handler: ``GET /hold`` waits for ``open`` (counting ``holding``),
    anything else is answered ``ok`` at once."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.holding = 0

    def handler(self, conn: socket.socket, backend: Backend) -> None:
        for head in heads(conn):
            if head.startswith(b"GET /hold "):
                with self.lock:
                    self.holding += 1
                self.open.wait(TIMEOUT * 2)
                conn.sendall(HELD)
            else:
                conn.sendall(OK)


def owner(proxy: HttpProxy, client: HttpClient) -> int | None:
    """The pid of the worker holding the proxy's end of ``client``'s connection."""
    me = client.sock.getsockname()[:2]
    for pid in proxy.worker_pids():
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and tuple(conn.raddr)[:2] == me:
                    return pid
    return None


def spread_connections(proxy: HttpProxy) -> dict[int, list[HttpClient]]:
    """Keep-alive clients, each served once, until every worker holds PER_WORKER."""
    pids = proxy.worker_pids()
    by_worker: dict[int, list[HttpClient]] = {pid: [] for pid in pids}
    for _ in range(MAX_CONNECTIONS):
        if min(len(v) for v in by_worker.values()) >= PER_WORKER:
            break
        client = HttpClient(proxy.port)
        assert client.request("GET", "/first").status == 200
        pid = owner(proxy, client)
        assert pid in by_worker, (pid, pids)
        by_worker[pid].append(client)
    assert min(len(v) for v in by_worker.values()) >= PER_WORKER, \
        {pid: len(v) for pid, v in by_worker.items()}
    return by_worker


def ask_again(client: HttpClient) -> Response | None:
    """Another GET on ``client``; None if the connection is gone."""
    try:
        return client.request("GET", "/again")
    except (ConnectionError, EOFError):
        return None


def test_kill_9_of_a_worker_loses_only_its_connections(
        runner: ReliabilityRunner, backend_factory: Callable[..., Backend]) -> None:
    gate = Gate()
    backend = backend_factory(gate.handler)
    web = ListenerSpec("web", "app", timeouts={"idle": 30.0, "upstream_read": 30.0})
    proxy = runner.start({"app": [backend.address]}, web=web, workers=2)
    before = proxy.worker_pids()
    clients = spread_connections(proxy)
    try:
        victim, survivor = sorted(clients, key=lambda pid: -len(clients[pid]))
        in_flight: list[HttpClient] = []
        for pid in (victim, survivor):   # half of each worker's connections: a request held
            for client in clients[pid][: len(clients[pid]) // 2]:
                client.send(build_request("GET", "/hold"))
                in_flight.append(client)
        wait_until(lambda: gate.holding == len(in_flight), TIMEOUT, "the held requests")

        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: gone(victim), TIMEOUT, "the killed worker to die")
        victim_lost = sum(client.at_eof(TIMEOUT) for client in clients[victim])
        gate.open.set()
        held = [c.read_response() for c in clients[survivor] if c in in_flight]
        again = [ask_again(c) for c in clients[survivor]]

        after = proxy.wait_workers(2, timeout=15.0)
        respawned = set(after) - set(before)
        fresh = [exchange(proxy.port, "GET", f"/new/{i}").status for i in range(20)]
        new_pid = next(iter(respawned)) if len(respawned) == 1 else 0
        fresh += until_served_by(proxy, new_pid)
        print(f"\nRELIABILITY kill-worker: workers={before} victim={victim} "
              f"victim_connections={len(clients[victim])} lost={victim_lost} "
              f"survivor_connections={len(clients[survivor])} "
              f"survivor_in_flight_answered={sum(r.body == b'held' for r in held)} "
              f"survivor_reused={sum(r is not None and r.status == 200 for r in again)} "
              f"respawned={sorted(respawned)} new_requests_ok={fresh.count(200)}/{len(fresh)}")
        assert victim_lost == len(clients[victim])
        assert [(r.status, r.body) for r in held] == [(200, b"held")] * len(held) and held
        assert all(r is not None and (r.status, r.body) == (200, b"ok") for r in again)
        assert victim not in after and survivor in after and len(respawned) == 1
        assert fresh == [200] * len(fresh)
        assert served_by(proxy, new_pid), "no connection went to the respawned worker"
        proxy.assert_healthy()
    finally:
        gate.open.set()
        for group in clients.values():
            for client in group:
                client.close()


def served_by(proxy: HttpProxy, pid: int) -> bool:
    """True once worker ``pid`` has accepted a connection (its own stats slot)."""
    return any(w["pid"] == pid and w["counters"]["conn_accepted"] > 0
               for w in proxy.stats()["workers"])


def until_served_by(proxy: HttpProxy, pid: int, limit: int = 200) -> list[int]:
    """New connections (at most ``limit``) until worker ``pid`` has accepted one;
    the statuses they got."""
    statuses: list[int] = []
    while len(statuses) < limit and not served_by(proxy, pid):
        statuses.append(exchange(proxy.port, "GET", f"/until/{len(statuses)}").status)
    return statuses


# -- the master --------------------------------------------------------------------------------
def can_listen(port: int) -> bool:
    """True if a plain listening socket can take ``port`` (no other listener on it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen(1)
        except OSError:
            return False
        return True


def test_kill_9_of_the_master_takes_the_workers_and_frees_the_ports(
        runner: ReliabilityRunner, backend_factory: Callable[..., Backend]) -> None:
    backend = backend_factory(Gate().handler)
    upstreams = {"app": [backend.address]}
    proxy = runner.start(upstreams, web=ListenerSpec("web", "app"), workers=2)
    port, admin_port, master = proxy.port, proxy.admin_port, proxy.pid
    workers = proxy.worker_pids()
    assert len(workers) == 2
    idle = HttpClient(port)              # an idle keep-alive client: must not hold a worker
    try:
        assert idle.request("GET", "/").status == 200
        assert not can_listen(port) and not can_listen(admin_port)
        started = time.monotonic()
        proxy.signal(signal.SIGKILL)
        proxy.proc.wait(TIMEOUT)
        try:
            wait_until(lambda: all(gone(p) for p in workers),
                       MASTER_DEATH_LIMIT - (time.monotonic() - started), "the workers to exit")
        finally:
            kill_pids([p for p in workers if not gone(p)])
        elapsed = time.monotonic() - started
        idle_closed = idle.at_eof(TIMEOUT)
    finally:
        idle.close()
    ports_free = can_listen(port), can_listen(admin_port)
    again = runner.start(upstreams, web=ListenerSpec("web", "app", port=port),
                         admin_port=admin_port, workers=2)
    status = exchange(again.port, "GET", "/after").status
    stale_segment = Path(segment_path(master)).exists()
    print(f"\nRELIABILITY kill-master: workers={workers} gone_after={elapsed:.3f}s "
          f"idle_client_closed={idle_closed} port_free={ports_free[0]} "
          f"admin_port_free={ports_free[1]} new_master_status={status} "
          f"dead_master_segment_left={stale_segment}")
    assert elapsed <= MASTER_DEATH_LIMIT
    assert idle_closed
    assert ports_free == (True, True)
    assert status == 200 and again.port == port and again.admin_port == admin_port
    assert not stale_segment    # the new master removed the dead one's stats segment
    again.assert_healthy()
