"""fastproxy.stats.admin without sockets: who may ask, and how often /proc is read."""

from __future__ import annotations

import os
from typing import Any

import pytest

from fastproxy.config import Address
from fastproxy.stats import admin
from fastproxy.stats.shm import Segment


class Clock:
    now = 100.0


def server(monkeypatch: pytest.MonkeyPatch, reads: list[list[int]]) -> Any:
    def process_info(pids: list[int]) -> dict[int, dict[str, float]]:
        reads.append(list(pids))
        return {}

    monkeypatch.setattr(admin, "process_info", process_info)
    segment = Segment.create(bytearray(Segment.size_for(2, 4)), 2, 4, master_pid=os.getpid())
    return admin.AdminServer(Clock(), Address("127.0.0.1", 1), segment,  # type: ignore[arg-type]
                             lambda: None, ["127.0.0.1/32", "::1/128"])


def test_process_figures_are_read_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[list[int]] = []
    srv = server(monkeypatch, reads)
    for _ in range(50):
        assert srv.respond("GET", "/metrics")[0] == 200
        assert srv.respond("GET", "/stats")[0] == 200
    assert len(reads) == 1
    srv.reactor.now += admin.PROCESS_INFO_TTL
    srv.respond("GET", "/metrics")
    assert len(reads) == 2


def test_healthz_says_why_it_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    srv = server(monkeypatch, [])
    assert srv.respond("GET", "/healthz") == (200, "text/plain", b"ok\n")
    srv.unready_because = lambda: "draining"
    assert srv.respond("GET", "/healthz") == (503, "text/plain", b"draining\n")


def test_allow_list() -> None:
    allow = admin.AddressSet(["127.0.0.1/32", "::1/128"])
    assert "127.0.0.1" in allow and "::1" in allow and "::ffff:127.0.0.1" in allow
    assert "127.0.0.2" not in allow and "10.0.0.1" not in allow and "garbage" not in allow
