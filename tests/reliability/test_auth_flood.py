"""A concurrent flood of bogus Proxy-Authorization tokens from eight client
addresses: valid users are still served within 1 s, and names still resolve.

A forward proxy (one worker) with ``[forward.users]``: the valid users
(``alice``, ``dave``, ``erin``, ``frank``) hashed with few PBKDF2 rounds, so
that their own checks are cheap; ``bob`` and ``carol`` with the default
600,000, so that each bogus token (a wrong password for bob, or an unknown
name: the dummy hash follows the most common count) costs 600,000 rounds.

The flood: from each of 127.0.0.2 .. 127.0.0.9 at once, a burst of
connections, each with a token of its own: more distinct checks than the
credential threads can hash for seconds (and more than the 64 a worker keeps
in flight). The listener's ``timeouts.connect`` (the wait for admission) is
long, so a flood request is answered only once its hash is done (or at once:
503 "busy", or 407 when throttled). Once the flood is sent and its first
checks are under way, while it still waits for its hashes (checked: flood
requests still unanswered when the measurements end), from 127.0.0.1:

- ``test_a_returning_user_...``: alice, verified once before the flood (as a
  user with an open session is), three requests on fresh connections;
- ``test_new_users_...``: dave, erin and frank, never seen before, one
  request each: their checks are made during the flood;

each must be 200, the best of the three < 1 s (SPEC's rule is no timing
assertions; the issue asks for this one), and a name, ``http://localhost:PORT/``
(``/etc/hosts``, never real DNS), resolves and is served (a resolver lookup
counted). Every flood answer that came is a refusal (407, 503), never a 200;
at most one hash per distinct token; the worker is the same, with no
internal error. The flood's requests still waiting are then
abandoned (the proxy's checks go on without their clients). (The per-client
throttle after FAILURES_PER_WINDOW failures is test_forward_auth_flood's
subject.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastproxy.cli import hash_password
from tests.conftest import TIMEOUT, wait_until
from tests.integration.forward_helpers import (
    ForwardProxy,
    ForwardRunner,
    PeerBackend,
    SourceClient,
    basic,
    passwd_line,
)
from tests.integration.http_helpers import HttpClient, Response

FLOODERS = [f"127.0.0.{i}" for i in range(2, 10)]
BURST = 12                       # connections at once per flooder, each its own token
CHEAP = 1_000                    # PBKDF2 rounds of the valid users' hashes
LIMIT = 1.0                      # seconds: "a valid user is still served within 1 s"
VALID = ("alice", "dave", "erin", "frank")
REFUSALS = {407, 503}
ADMISSION_WAIT = 60.0            # timeouts.connect of the forward listener


def password(user: str) -> str:
    return f"{user}-secret"


class Flooder:
    """One source address: BURST requests with distinct bogus tokens sent at
    once, then their answers read (``answers``: statuses) until ``stop()``."""

    def __init__(self, port: int, source: str, url: str, index: int) -> None:
        self.port, self.source, self.url, self.index = port, source, url, index
        self.clients: list[SourceClient] = []
        self.answers: list[int] = []
        self.errors: list[str] = []
        self.sent = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def token(self, k: int) -> str:
        if k % 2:
            return basic("bob", f"guess-{self.index}-{k}")
        return basic(f"nobody{self.index}x{k}", "pw")

    def _run(self) -> None:
        try:
            for k in range(BURST):
                client = SourceClient(self.port, self.source, timeout=TIMEOUT * 3)
                self.clients.append(client)
                client.send(request_bytes(self.url, self.token(k)))
            self.sent.set()
            for client in self.clients:
                self.answers.append(client.read_response().status)
        except (OSError, EOFError) as exc:
            if not self.stopping.is_set():
                self.errors.append(f"{self.source}: {exc!r}")
        finally:
            self.sent.set()

    def stop(self) -> None:
        """Leave the answers still outstanding: the proxy's checks go on without us."""
        self.stopping.set()
        if self.sent.wait(TIMEOUT):
            for client in self.clients:
                with contextlib.suppress(OSError):
                    client.sock.shutdown(socket.SHUT_RDWR)   # wakes the reading thread
        self.thread.join(TIMEOUT)
        for client in self.clients:
            client.close()


def request_bytes(url: str, credentials: str) -> bytes:
    authority = url.split("/", 3)[2]
    return (f"GET {url} HTTP/1.1\r\nHost: {authority}\r\n"
            f"Proxy-Authorization: {credentials}\r\n\r\n").encode()


def timed(port: int, url: str, user: str) -> tuple[float, Response]:
    """One request as ``user`` on a new connection from 127.0.0.1; (seconds, response)."""
    started = time.monotonic()
    with HttpClient(port) as client:
        client.send(request_bytes(url, basic(user, password(user))))
        resp = client.read_response()
    return time.monotonic() - started, resp


@dataclass
class Outcome:
    valid: list[tuple[float, Response]]
    resolved: tuple[float, Response]
    flood: Counter[int]       # the flood's answers before it was left
    outstanding: int          # flood requests not answered when the measurements ended
    errors: list[str]
    hashed: int
    lookups: int
    internal_errors: int
    same_worker: bool


def start_proxy(tmp_path: Path, runner: ForwardRunner) -> ForwardProxy:
    _, bob = passwd_line("bob", password("bob"), tmp_path)   # the CLI's default rounds
    assert bob.split("$")[1] == "600000", bob
    users = {name: hash_password(password(name), iterations=CHEAP) for name in VALID}
    users.update(bob=bob, carol=hash_password(password("carol")))
    # connect: the time a request may wait for admission (then 504): here the
    # flood's requests wait for their hashes, so that their answers tell when
    # the hashing is over
    return runner.start({"users": users}, access=False, workers=1,
                        timeouts={"connect": ADMISSION_WAIT})


def flood_and_measure(tmp_path: Path, users: list[str], warm: bool) -> Outcome:
    """The flood, and during it one request per name in ``users`` and one by name."""
    app = PeerBackend("app")
    runner = ForwardRunner(tmp_path)
    flooders: list[Flooder] = []
    try:
        proxy = start_proxy(tmp_path, runner)
        (pid,) = proxy.worker_pids()
        url = f"http://{app.address}/"
        assert timed(proxy.port, url + "warm", "alice")[1].status == 200
        if warm:
            for user in set(users):
                assert timed(proxy.port, url + "warm", user)[1].status == 200
        before = proxy.totals()
        flooders = [Flooder(proxy.port, src, url + "flood", i) for i, src in enumerate(FLOODERS)]
        for flooder in flooders:
            flooder.thread.start()
        wait_until(lambda: all(f.sent.is_set() for f in flooders), TIMEOUT, "the flood sent")
        wait_until(lambda: proxy.totals()["auth_checks"] > before["auth_checks"], TIMEOUT,
                   "the flood's checks under way")
        valid = [timed(proxy.port, url + f"valid/{i}", user) for i, user in enumerate(users)]
        resolved = timed(proxy.port, f"http://localhost:{app.port}/by-name", "alice")
        outstanding = len(FLOODERS) * BURST - sum(len(f.answers) for f in flooders)
        for flooder in flooders:
            flooder.stop()
        after = proxy.totals()
        return Outcome(valid, resolved, Counter(s for f in flooders for s in f.answers),
                       outstanding, [e for f in flooders for e in f.errors],
                       after["auth_checks"] - before["auth_checks"],
                       after["dns_lookups"] - before["dns_lookups"],
                       after["internal_errors"], proxy.worker_pids() == [pid])
    finally:
        for flooder in flooders:
            flooder.stop()
        runner.stop_all()
        app.close()


def check(outcome: Outcome, who: str) -> None:
    best = min(seconds for seconds, _ in outcome.valid)
    each = [round(seconds * 1000, 1) for seconds, _ in outcome.valid]
    print(f"\nRELIABILITY auth-flood ({who}): flooders={len(FLOODERS)}x{BURST} "
          f"flood_answers={dict(outcome.flood)} hashed={outcome.hashed} "
          f"valid statuses={[r.status for _, r in outcome.valid]} "
          f"latency best={best * 1000:.1f}ms all={each}ms "
          f"localhost status={outcome.resolved[1].status} "
          f"latency={outcome.resolved[0] * 1000:.1f}ms "
          f"flood_unanswered_after_measurements={outcome.outstanding}/{len(FLOODERS) * BURST}")
    assert [r.status for _, r in outcome.valid] == [200] * len(outcome.valid), outcome.valid
    assert best < LIMIT, outcome.valid
    assert (outcome.resolved[1].status, outcome.resolved[1].body) == (200, b"app GET /by-name")
    assert outcome.lookups > 0
    assert outcome.outstanding > 0, "the flood was over before the measurements ended"
    assert outcome.errors == []
    assert set(outcome.flood) <= REFUSALS, outcome.flood
    assert outcome.hashed <= len(FLOODERS) * BURST + len(outcome.valid)
    assert outcome.same_worker and outcome.internal_errors == 0


@pytest.mark.slow
def test_a_returning_user_is_served_during_a_token_flood(tmp_path: Path) -> None:
    check(flood_and_measure(tmp_path, ["alice"] * 3, warm=True), "returning user")


@pytest.mark.slow
def test_new_users_are_served_during_a_token_flood(tmp_path: Path) -> None:
    check(flood_and_measure(tmp_path, ["dave", "erin", "frank"], warm=False), "new users")
