"""50,000 mixed requests, hostile ones among them: the worker gives back every
descriptor and its memory stays put.

One master, one worker (so "the worker" is one process), an http listener
with a 1 s ``client_header`` timeout, in front of the fast keep-alive backend.
Traffic, from a fixed seed, in client threads at once:

- keep-alive clients (the majority): pipelined GETs (``/bytes/N``, bodies
  checked) and POSTs (the backend's sha256 of the body checked), a new
  connection every few hundred requests;
- hostile clients, one action per connection: every case of the request
  corpus (tests/http/corpus) that fails with the default limits, answered
  with its expected status then closed; seeded random mutations of valid
  requests (as test_hostile_input: a status from its list, or a close);
  aborts mid-request (a POST body cut short, closed with a FIN or a reset)
  and mid-response (a 1 MB response, spliced, read in part then closed with
  a FIN or a reset); half-closes (the request, then SHUT_WR: the whole
  response, then EOF); oversized heads (431);
- slowloris clients: partial heads left hanging, each cut off with 408.

First a warm-up of the same mix (a tenth of it), then the idle upstream pool
is filled to its bound (``keepalive``), then the baseline: the worker's
descriptors (psutil ``num_fds``) and RSS. After the 50,000, once every
connection is closed, the descriptors come back to the baseline (at most it:
a bounded poll, no fixed sleep), counted apart from the worker's two pools:
the idle upstream connections (the backend may close some meanwhile, which
could hide a leak; they must stay within ``keepalive``) and the pooled splice
pipes (the ``pipes_pooled`` gauge); RSS is within +10 % of the baseline; the
worker never changed, no client saw a failure, nothing counted as an
internal error.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import TIMEOUT, Backend, wait_until
from tests.integration.http_backends import payload
from tests.integration.http_helpers import HttpClient, HttpProxy, ListenerSpec, build_request
from tests.integration.test_hostile_input import ALLOWED, mutate
from tests.reliability.conftest import (
    LoadThread,
    ReliabilityRunner,
    Tally,
    expect,
    expect_body,
    fds_of,
    hash_answer,
    rss_of,
)

SEED = 50_000
TOTAL = 50_000
KEEPALIVE_CLIENTS = 4
BATCH = 10                       # requests pipelined in one write
BATCHES_PER_CONNECTION = 40
SLOWLORIS_AT_ONCE = 25
SLOWLORIS_ROUNDS = 16            # 400 slowloris connections
HOSTILE = 2_600                  # one hostile action per connection
NORMAL = TOTAL - HOSTILE - SLOWLORIS_AT_ONCE * SLOWLORIS_ROUNDS
WARMUP_SHARE = 10                # the warm-up is a tenth of the run
UPSTREAM_KEEPALIVE = 8
CLIENT_HEADER = 1.0
GET_SIZES = (1, 100, 4096, 20_000)
BIG = 1_000_000                  # spliced (>= 256 KiB)
RSS_GROWTH = 1.10
CORPUS = Path(__file__).resolve().parent.parent / "http" / "corpus"


# -- keep-alive clients -----------------------------------------------------------------------
def keepalive_client(port: int, seed: int) -> Callable[[int], int]:
    """A step: one pipelined batch of BATCH GETs and POSTs on a kept connection."""
    rng = random.Random(seed)
    state: dict[str, HttpClient | None] = {"client": None}

    def step(i: int) -> int:
        client = state["client"]
        if client is None or i % BATCHES_PER_CONNECTION == 0:
            if client is not None:
                client.close()
            client = state["client"] = HttpClient(port)
        wanted = []
        requests = []
        for _ in range(BATCH):
            if rng.random() < 0.7:
                n = rng.choice(GET_SIZES)
                requests.append(build_request("GET", f"/bytes/{n}"))
                wanted.append(payload(n))
            else:
                body = rng.randbytes(rng.randrange(1, 20_000))
                requests.append(build_request("POST", "/hash", body=body))
                wanted.append(hash_answer(body))
        try:
            client.send(b"".join(requests))
            for body in wanted:
                expect_body(client.read_response(), body)
        except BaseException:
            client.close()
            state["client"] = None
            raise
        return BATCH

    return step


def keepalive_loads(port: int, tally: Tally, total: int, seed: int) -> list[LoadThread]:
    steps = total // BATCH // KEEPALIVE_CLIENTS
    return [LoadThread("keepalive", keepalive_client(port, seed + i), tally, max_steps=steps)
            for i in range(KEEPALIVE_CLIENTS)]


# -- hostile clients ----------------------------------------------------------------------------
@dataclass
class CorpusCase:
    name: str
    raw: bytes
    statuses: list[int]       # what the client must get, in order, before the close


def corpus_cases() -> list[CorpusCase]:
    """The corpus cases that fail with the default limits and without EOF."""
    cases = []
    for path in sorted(CORPUS.glob("*/*.http")):
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta["status"] is None or meta["limits"] or meta["eof"]:
            continue
        statuses = [200] * len(meta["messages"]) + [meta["status"]]
        cases.append(CorpusCase(f"{path.parent.name}/{path.stem}", path.read_bytes(), statuses))
    return cases


def responses_until_close(client: HttpClient, limit: int = 10) -> list[int]:
    """The statuses of the responses read until the proxy closes (``limit`` at most)."""
    got: list[int] = []
    while len(got) < limit:
        try:
            got.append(client.read_response().status)
        except EOFError:
            break
    return got


def close_abruptly(sock: socket.socket, reset: bool) -> None:
    if reset:   # SO_LINGER 0: close() sends a RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Hostile:
    """The hostile actions; ``step(i)`` runs the i-th of a seeded plan."""

    def __init__(self, port: int, seed: int) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.cases = corpus_cases()
        assert len(self.cases) >= 100, len(self.cases)
        self.actions = [self.corpus, self.mutation, self.mid_request, self.mid_response,
                        self.half_close, self.oversized_head]
        self.weights = [35, 15, 15, 10, 15, 10]

    def step(self, i: int) -> None:
        self.rng.choices(self.actions, self.weights)[0](i)

    def corpus(self, i: int) -> None:
        case = self.cases[i % len(self.cases)]
        with HttpClient(self.port) as client:
            client.send(case.raw)
            got = responses_until_close(client)
        expect(got == case.statuses, f"corpus {case.name}: {got}, want {case.statuses}")

    def mutation(self, i: int) -> None:
        data = mutate(random.Random(self.rng.randrange(1 << 30)))
        with HttpClient(self.port) as client:
            try:
                client.send(data)
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return   # the proxy closed first: allowed
            got = responses_until_close(client)
        expect(set(got) <= ALLOWED, f"mutation {data[:60]!r}: {got}")

    def mid_request(self, i: int) -> None:
        body = self.rng.randbytes(5000)
        with HttpClient(self.port) as client:
            client.send(b"POST /hash HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
                        + body)
            close_abruptly(client.sock, reset=i % 2 == 0)

    def mid_response(self, i: int) -> None:
        with HttpClient(self.port) as client:
            client.send(build_request("GET", f"/bytes/{BIG}"))
            head = client.read_head()
            expect(head.status == 200, f"big GET: {head.status}")
            close_abruptly(client.sock, reset=i % 2 == 0)

    def half_close(self, i: int) -> None:
        n = self.rng.choice(GET_SIZES)
        with HttpClient(self.port) as client:
            client.send(build_request("GET", f"/bytes/{n}"))
            client.sock.shutdown(socket.SHUT_WR)
            expect_body(client.read_response(), payload(n))
            expect(client.at_eof(TIMEOUT), "no EOF after the response to a half-closed client")

    def oversized_head(self, i: int) -> None:
        fields = [(f"X-Big-{k}", "b" * 1000) for k in range(70)]   # 70 KB > 64 KiB
        with HttpClient(self.port) as client:
            client.send(build_request("GET", "/big-head", headers=fields))
            got = responses_until_close(client)
        expect(got == [431], f"oversized head: {got}")


def slowloris_round(port: int) -> Callable[[int], int]:
    """A step: SLOWLORIS_AT_ONCE partial heads at once, each must get 408 then EOF."""
    def step(i: int) -> int:
        clients = [HttpClient(port) for _ in range(SLOWLORIS_AT_ONCE)]
        try:
            for client in clients:
                client.send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            got = [responses_until_close(client) for client in clients]
        finally:
            for client in clients:
                client.close()
        expect(all(g == [408] for g in got), f"slowloris: {got}")
        return SLOWLORIS_AT_ONCE
    return step


# -- running the mix ----------------------------------------------------------------------------
def run_mix(proxy: HttpProxy, share: int, seed: int) -> tuple[Tally, float]:
    """The whole mix divided by ``share``; its tally and seconds."""
    tally = Tally()
    loads = keepalive_loads(proxy.port, tally, NORMAL // share, seed)
    loads.append(LoadThread("hostile", Hostile(proxy.port, seed).step, tally,
                            max_steps=HOSTILE // share))
    loads.append(LoadThread("slowloris", slowloris_round(proxy.port), tally,
                            max_steps=max(1, SLOWLORIS_ROUNDS // share)))
    started = time.monotonic()
    for load in loads:
        load.start()
    for load in loads:
        load.join(180.0)
    return tally, time.monotonic() - started


def fill_upstream_pool(proxy: HttpProxy) -> None:
    """More clients than ``keepalive`` at once, each served: as they close, the
    idle upstream pool fills to its bound."""
    clients = [HttpClient(proxy.port) for _ in range(UPSTREAM_KEEPALIVE + 4)]
    try:
        for client in clients:
            client.send(build_request("GET", "/fill"))
        for client in clients:
            assert client.read_response().status == 200
    finally:
        for client in clients:
            client.close()


@dataclass(frozen=True)
class Fds:
    """A worker's descriptors: all of them, and those of its two pools: idle
    upstream connections (which the backend may close meanwhile) and pooled
    splice pipes (two descriptors a pair; one is pooled or not depending on
    how an aborted transfer left it)."""

    total: int
    upstream: int
    pipes: int

    @property
    def own(self) -> int:
        """Every descriptor outside the two pools."""
        return self.total - self.upstream - self.pipes


def census(proxy: HttpProxy, pid: int, backend_port: int) -> Fds:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    (slot,) = [w for w in proxy.stats()["workers"] if w["pid"] == pid]
    return Fds(fds_of(pid), sum(1 for c in conns if c.raddr and c.raddr[1] == backend_port),
               2 * slot["counters"]["pipes_pooled"])


def settled(proxy: HttpProxy, pid: int, backend_port: int) -> Fds:
    """The worker's descriptors once no connection is open and their count
    held still for 10 polls in a row."""
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 30.0, "every connection closed")
    seen: list[Fds] = []

    def still() -> bool:
        seen.append(census(proxy, pid, backend_port))
        return len(seen) >= 10 and len(set(seen[-10:])) == 1
    wait_until(still, 30.0, "the worker's descriptor count to settle")
    return seen[-1]


def eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    """``wait_until`` that answers False instead of raising at the deadline."""
    try:
        wait_until(predicate, timeout)
    except AssertionError:
        return False
    return True


@pytest.mark.slow
def test_50000_mixed_requests_leave_no_descriptor_and_no_growth(
        runner: ReliabilityRunner, fast_backend: Backend) -> None:
    web = ListenerSpec("web", "app", timeouts={"client_header": CLIENT_HEADER, "idle": 5.0,
                                               "upstream_read": 5.0})
    upstreams = {"app": {"servers": [fast_backend.address], "keepalive": UPSTREAM_KEEPALIVE}}
    proxy = runner.start(upstreams, web=web, workers=1)
    (pid,) = proxy.worker_pids()
    warm, warm_seconds = run_mix(proxy, WARMUP_SHARE, SEED + 1)
    assert warm.failures == [], "\n".join(warm.failures[:20])
    fill_upstream_pool(proxy)
    fds_before, rss_before = settled(proxy, pid, fast_backend.port), rss_of(pid)
    before = proxy.totals()

    tally, seconds = run_mix(proxy, 1, SEED)
    wait_until(lambda: proxy.totals()["conn_active"] == 0, 30.0, "every connection closed")
    back = eventually(lambda: census(proxy, pid, fast_backend.port).own <= fds_before.own, 30.0)
    fds_after, rss_after = census(proxy, pid, fast_backend.port), rss_of(pid)
    after = proxy.totals()
    print(f"\nRELIABILITY soak: requests={tally.total()} by_kind={dict(tally.done)} "
          f"failures={len(tally.failures)} resets={tally.resets} seconds={seconds:.1f} "
          f"(warm-up {warm.total()} in {warm_seconds:.1f}s) "
          f"fds before={fds_before.total} after={fds_after.total} "
          f"(outside the pools {fds_before.own} -> {fds_after.own}, idle upstream "
          f"{fds_before.upstream} -> {fds_after.upstream}, pooled pipe fds "
          f"{fds_before.pipes} -> {fds_after.pipes}) "
          f"rss before={rss_before / 2**20:.1f}MiB after={rss_after / 2**20:.1f}MiB "
          f"({(rss_after / rss_before - 1) * 100:+.1f}%) "
          f"proxy requests={after['requests'] - before['requests']} "
          f"client_errors={after['client_errors'] - before['client_errors']} "
          f"spliced={after['bytes_spliced'] - before['bytes_spliced']}")
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert tally.total() == TOTAL, tally.done
    assert proxy.worker_pids() == [pid]
    assert back and fds_after.own <= fds_before.own, (fds_before, fds_after)
    assert fds_after.upstream <= UPSTREAM_KEEPALIVE
    assert rss_after <= rss_before * RSS_GROWTH
    assert after["internal_errors"] == 0, proxy.log_text()
    assert after["client_errors"] > before["client_errors"]
    proxy.assert_healthy([pid])
