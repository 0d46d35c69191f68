"""Fixtures shared by several integration test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.forward_helpers import ForwardProxy, ForwardRunner
from tests.integration.http_backends import HttpBackend
from tests.integration.http_helpers import run_http_proxy  # noqa: F401  (the fixture)


@pytest.fixture
def http_backend_factory() -> Iterator[Callable[..., HttpBackend]]:
    made: list[HttpBackend] = []

    def make(name: str = "app") -> HttpBackend:
        backend = HttpBackend(name)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[..., ForwardProxy]]:
    """Forward-proxy masters for one test (stopped at its end)."""
    r = ForwardRunner(tmp_path)
    try:
        yield r.start
    finally:
        r.stop_all()
