"""A worker out of descriptors: it refuses work, not life.

The worker runs with ``server.rlimit_nofile = 64`` (SPEC: the workers'
descriptor limit) behind an http listener. Five clients are served one after
the other and keep their connections; then a crowd of 100 connects at once,
each sends a GET and keeps its connection. Shows:

- the crowd's clients beyond the limit get an error: a 5xx (no descriptor
  left for an upstream socket), a reset or a close, or no answer while they
  wait in the kernel's accept queue (the worker cannot accept them); some
  may be served (200) before the descriptors run out;
- the worker pid never changes (no crash), ``accept_errors`` and
  ``accept_paused`` count the EMFILE pauses, nothing is an internal error;
- once those clients close, timeouts still fire (a partial head is answered
  408 by the ``client_header`` timeout and closed), new clients are served
  200, and the worker is not out of descriptors any more (``accept_errors``
  stays put while they are served).
"""

from __future__ import annotations

import time
from collections import Counter

from tests.conftest import Backend, wait_until
from tests.integration.http_helpers import (
    HttpClient,
    HttpProxy,
    ListenerSpec,
    build_request,
    exchange,
)
from tests.reliability.conftest import ReliabilityRunner, fds_of

NOFILE = 64
EARLY = 5                    # clients served before the crowd, kept open
CLIENTS = 100
ANSWER_WAIT = 3.0            # seconds for all of them to be answered, or not
CLIENT_HEADER = 1.0
ERRORS = {"502", "503", "504", "reset", "closed", "unanswered"}


def outcome(client: HttpClient, deadline: float) -> str:
    """What one client got by ``deadline``: a status, reset, closed or unanswered."""
    client.sock.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        return str(client.read_response().status)
    except ConnectionResetError:
        return "reset"
    except EOFError:
        return "closed"
    except TimeoutError:
        return "unanswered"


def served_clients(port: int, count: int) -> list[HttpClient]:
    """``count`` keep-alive clients, one after the other, each served once."""
    clients = []
    for i in range(count):
        client = HttpClient(port)
        clients.append(client)
        assert client.request("GET", f"/early/{i}").status == 200
    return clients


def flood(port: int) -> tuple[Counter[str], list[HttpClient]]:
    """CLIENTS connections, each with a GET sent; what they got (they stay open)."""
    clients, got = [], Counter[str]()
    for _ in range(CLIENTS):
        try:
            client = HttpClient(port, timeout=ANSWER_WAIT)
            client.send(build_request("GET", "/crowd"))
        except ConnectionError:
            got["reset"] += 1
            continue
        except TimeoutError:
            got["unanswered"] += 1
            continue
        clients.append(client)
    deadline = time.monotonic() + ANSWER_WAIT
    got.update(outcome(client, deadline) for client in clients)
    return got, clients


def slowloris(proxy: HttpProxy) -> tuple[list[int], float]:
    """A partial head left hanging: the statuses it got until the close, and when."""
    started = time.monotonic()
    with HttpClient(proxy.port) as client:
        client.send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Partial: ")
        statuses = []
        try:
            statuses.append(client.read_response().status)
            closed = client.at_eof()
        except EOFError:
            closed = True
        assert closed, "the slowloris connection stayed open after its answer"
    return statuses, time.monotonic() - started


def test_descriptor_exhaustion_refuses_work_and_recovers(runner: ReliabilityRunner,
                                                         fast_backend: Backend) -> None:
    web = ListenerSpec("web", "app", timeouts={"client_header": CLIENT_HEADER, "idle": 30.0,
                                               "upstream_read": 5.0})
    proxy = runner.start({"app": {"servers": [fast_backend.address], "keepalive": 8}}, web=web,
                         workers=1, server={"rlimit_nofile": NOFILE})
    (pid,) = proxy.worker_pids()
    fds_idle = fds_of(pid)
    clients = served_clients(proxy.port, EARLY)   # served: the worker works under the limit
    got, crowd = flood(proxy.port)
    clients += crowd
    try:
        wait_until(lambda: fds_of(pid) >= NOFILE, 10.0, "the worker at its descriptor limit")
        fds_full = fds_of(pid)
        during = proxy.totals()
    finally:
        for client in clients:
            client.close()
    opened = len(clients)

    def all_done() -> bool:   # accepted (the queued ones late), then closed
        totals = proxy.totals()
        return bool(totals["conn_accepted"] >= opened and totals["conn_active"] == 0)
    wait_until(all_done, 30.0, "the crowd's connections accepted and closed")
    late, fds_freed = proxy.totals()["accept_errors"], fds_of(pid)
    slow_statuses, slow_seconds = slowloris(proxy)
    fresh = [exchange(proxy.port, "GET", f"/after/{i}").status for i in range(20)]
    after = proxy.totals()
    print(f"\nRELIABILITY nofile: limit={NOFILE} early_clients_served={EARLY} "
          f"crowd={CLIENTS} crowd_outcomes={dict(got)} "
          f"fds idle={fds_idle} full={fds_full} freed={fds_freed} "
          f"accept_errors={during['accept_errors']} "
          f"accept_paused={during['accept_paused']} slowloris={slow_statuses} "
          f"after {slow_seconds:.2f}s new_clients_ok={fresh.count(200)}/{len(fresh)}")
    assert got["200"] < CLIENTS and set(got) - {"200"} <= ERRORS, got
    assert during["accept_errors"] > 0 and during["accept_paused"] > 0
    assert proxy.worker_pids() == [pid]
    assert slow_statuses == [408] and slow_seconds >= CLIENT_HEADER
    assert fresh == [200] * len(fresh)
    assert after["accept_errors"] == late   # no EMFILE any more
    assert after["internal_errors"] == 0, proxy.log_text()
    proxy.assert_healthy([pid])
