"""A flood of bogus Proxy-Authorization tokens against a forward proxy with users.

Each distinct token costs a 600,000-round PBKDF2 on the worker's credential
threads (apart from DNS). After ``FAILURES_PER_WINDOW`` failed checks in a
minute a client's new tokens are refused without hashing (``auth_checks``
stops growing), while a valid user elsewhere is served and names still
resolve. Distinct checks waiting or hashing are bounded (CHECKS_PENDING in all,
PER_CLIENT_CHECKS per client, then 503).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from fastproxy.acl import Authenticator, Policy
from fastproxy.config import Forward
from fastproxy.http import Request
from fastproxy.modes.exchange import Answer
from fastproxy.modes.lifecycle import Conn
from fastproxy.modes.forward import (
    CHECKS_PENDING,
    FAILURES_PER_WINDOW,
    HASH_THREADS,
    PER_CLIENT_CHECKS,
    Admission,
)
from fastproxy.modes.phases import PENDING
from fastproxy.stats.shm import N_COUNTERS
from tests.integration.forward_helpers import (
    PeerBackend,
    SourceClient,
    basic,
    passwd_line,
    proxy_get,
)

FLOODER = "127.0.0.2"


def test_bogus_tokens_are_throttled_per_client(fresh, tmp_path: Path) -> None:
    app = PeerBackend("app")
    try:
        _, alice = passwd_line("alice", "right", tmp_path)
        proxy = fresh({"users": {"alice": alice}})
        url = f"http://{app.address}/x"
        for i in range(FAILURES_PER_WINDOW + 5):
            with SourceClient(proxy.port, FLOODER) as client:
                resp = client.request("GET", url, host=app.address,
                                      headers=[("Proxy-Authorization", basic("mallory", f"g{i}"))])
            assert resp.status == 407, resp
        totals = proxy.totals()
        assert totals["auth_checks"] == FAILURES_PER_WINDOW   # the last five were not hashed
        assert totals["auth_failures"] == FAILURES_PER_WINDOW + 5
        # another client, with the right password, by name (the resolver answers)
        valid = [("Proxy-Authorization", basic("alice", "right"))]
        resp = proxy_get(proxy.port, f"http://localhost:{app.port}/ok", headers=valid)
        assert resp.status == 200, resp
        # valid credentials checked once (cached) pass even from the throttled client:
        # the throttle only stops new hashing
        with SourceClient(proxy.port, FLOODER) as client:
            resp = client.request("GET", url, host=app.address, headers=valid)
        assert resp.status == 200   # cached by alice's check: no hashing needed
        assert proxy.totals()["auth_checks"] == FAILURES_PER_WINDOW + 1
        assert proxy.totals()["internal_errors"] == 0
    finally:
        app.close()


def test_distinct_checks_in_flight_are_bounded() -> None:
    """Without sockets: distinct tokens wait in a bounded queue, CHECKS_PENDING in
    all and PER_CLIENT_CHECKS per client (then 503); only HASH_THREADS hash at once."""
    forward = Forward(users={"alice": "pbkdf2_sha256$600000$c2FsdA==$"
                                      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="})
    started: list[object] = []
    finish: list[Callable[[str | None], None]] = []
    hasher = SimpleNamespace(run_blocking=lambda work, done: (started.append(work),
                                                              finish.append(done)))
    admission = Admission(forward, Policy.from_config(forward),
                          Authenticator.from_config(forward), hasher, b"proxy-1")
    mode = SimpleNamespace(error=lambda status, detail, extra=b"": Answer(status, b""))

    def attempt(client: str, i: int) -> object:
        token = basic("mallory", f"guess-{i}").encode()
        request = Request(b"GET", b"http://127.0.0.1/", ((b"Host", b"127.0.0.1"),
                                                        (b"Proxy-Authorization", token)))
        ex = SimpleNamespace(request=request)
        conn = SimpleNamespace(c=[0] * N_COUNTERS, client_ip=client, mode=mode, ex=ex,
                               state=Conn.OPEN, reactor=SimpleNamespace(now=0.0),
                               resume=lambda ex: None)
        conns.append(conn)
        return admission.request_filter(conn, ex)

    conns: list[SimpleNamespace] = []

    one = "127.0.0.1"
    assert all(attempt(one, i) is PENDING for i in range(PER_CLIENT_CHECKS))
    busy = attempt(one, PER_CLIENT_CHECKS)
    assert isinstance(busy, Answer) and busy.status == 503       # this client holds enough
    assert attempt(one, 0) is PENDING         # the same token joins its check
    clients = [f"127.0.{i // 250}.{i % 250 + 2}" for i in range(CHECKS_PENDING)]
    for i, client in enumerate(clients[:CHECKS_PENDING - PER_CLIENT_CHECKS]):
        assert attempt(client, 1000 + i) is PENDING
    busy = attempt(clients[-1], 5000)
    assert isinstance(busy, Answer) and busy.status == 503       # the queue is full
    assert len(started) == HASH_THREADS       # the others wait their turn, unhashed
    # a check whose requests are gone is dropped, not hashed, when its turn comes
    for conn in conns:
        conn.state = Conn.CLOSED
    finish[0](None)                           # a thread is free: the queue is looked at
    assert len(started) == HASH_THREADS       # ... and nothing hashed for the gone
    assert len(admission._checking) == 1      # only the other check still running
