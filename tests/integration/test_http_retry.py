"""Retrying a request whose upstream connection failed before any response byte."""

from __future__ import annotations

from tests.integration.http_backends import HttpBackend, close_without_answer_handler
from tests.integration.http_helpers import build_request, raw_exchange


def test_idempotent_request_goes_to_the_next_server_when_one_drops_it(
        run_http_proxy, backend_factory) -> None:
    dropper = backend_factory(close_without_answer_handler)
    good = HttpBackend("good")
    try:
        proxy = run_http_proxy({"app": {"servers": [dropper.address, good.address],
                                        "retries": 1}})
        for i in range(4):
            resp, _ = raw_exchange(proxy.port, build_request("GET", f"/r/{i}", headers=[("Connection", "close")]))
            assert resp is not None and resp.status == 200, resp
        assert good.snapshot()[2] == 4
        assert dropper.accepted >= 1          # it really was tried
        assert proxy.totals()["upstream_retries"] >= 1
        # A POST with a body is not sent twice: the client gets the 502.
        statuses = set()
        for i in range(4):
            resp, _ = raw_exchange(proxy.port, build_request("POST", f"/p/{i}", body=b"x" * 10,
                                                           headers=[("Connection", "close")]))
            assert resp is not None
            statuses.add(resp.status)
        assert 502 in statuses
        proxy.assert_healthy()
    finally:
        good.close()
