"""Locust scenario for fastproxy's HTTP reverse-proxy mode.

Point ``--host`` at the proxy's base URL; the proxy forwards to a backend that
serves the routes of ``bench/locust_backend.py`` (``/1k``, ``/1m``, ``POST
/echo``). Only loopback hosts are accepted. See bench/README.md::

    python bench/locust_backend.py --port 9000 &          # backend
    python -m fastproxy run --mode http --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000 &
    locust -f bench/locustfile.py --headless -u 20 -r 10 -t 30s --host http://127.0.0.1:8080

Every response is checked, not only its status: a body of the wrong length
or content, or an echo whose length/sha256 differ from what was sent, counts
as a failure (``catch_response``), so a proxy that corrupts, truncates or
mixes up responses shows up in Locust's failure count.

Weights (per user, no think time): 10 small GETs : 2 large GETs : 3 POSTs.
"""

from __future__ import annotations

import hashlib
import os
import random
from urllib.parse import urlsplit

from locust import HttpUser, constant, events, task


def _body(n: int) -> bytes:  # the same pattern as locust_backend.body()
    pattern = b"fastproxy-locust-0123456789abcdef\n"
    return (pattern * (n // len(pattern) + 1))[:n]


SMALL = _body(1024)
LARGE_SHA256 = hashlib.sha256(_body(1024 * 1024)).hexdigest()
POST_BYTES = 64 * 1024
# a few distinct 64 KiB bodies, made once: building one per request would cost
# more client CPU than the request itself
POST_BODIES = [
    (data, hashlib.sha256(data).hexdigest())
    for data in (random.Random(seed).randbytes(POST_BYTES) for seed in range(8))
]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@events.init.add_listener
def _only_loopback(environment, **_kwargs):  # type: ignore[no-untyped-def]
    host = environment.host or ""
    if host and urlsplit(host).hostname not in LOOPBACK and not os.environ.get(
        "FPBENCH_ALLOW_REMOTE"
    ):
        raise SystemExit(f"locustfile: --host {host} is not a loopback address")


class ReverseProxyUser(HttpUser):
    """One user = one keep-alive connection through the proxy (requests.Session)."""

    wait_time = constant(0)

    @task(10)
    def get_small(self) -> None:
        with self.client.get("/1k", name="GET /1k", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
            elif resp.content != SMALL:
                resp.failure(f"1k body differs ({len(resp.content)} bytes)")

    @task(2)
    def get_large(self) -> None:
        with self.client.get("/1m", name="GET /1m", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
            elif len(resp.content) != 1024 * 1024:
                resp.failure(f"1m body has {len(resp.content)} bytes")
            elif hashlib.sha256(resp.content).hexdigest() != LARGE_SHA256:
                resp.failure("1m body differs")

    @task(3)
    def post_echo(self) -> None:
        data, digest = random.choice(POST_BODIES)
        with self.client.post(
            "/echo",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            name="POST /echo 64k",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            try:
                answer = resp.json()
            except ValueError:
                resp.failure(f"not JSON: {resp.text[:80]!r}")
                return
            if answer.get("length") != len(data) or answer.get("sha256") != digest:
                resp.failure(f"echo mismatch: {answer}")
