"""The forward proxy's policy with Squid's defaults as the bar (SPEC "Forward-proxy policy"):
plain HTTP only to ``http_ports``, loops refused by the Via pseudonym, the
``reserved`` and ``multicast`` classes denied by default, and through parent
proxies no destination that the parent would resolve to somewhere local.

Every refusal here happens before any connection is made, and every path a
regression could open leads to loopback only: reserved and multicast targets
go through a stand-in parent on 127.0.0.1, port 25 is 127.0.0.1's, and the
names given to a parent resolve without DNS (numeric forms, ``localhost``;
``*.localhost`` is checked in tests/test_acl.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.integration.forward_helpers import PeerBackend, proxy_get
from tests.integration.http_helpers import Response

SPEC_DENY = ["private", "loopback", "link-local", "reserved", "multicast"]


@pytest.fixture
def app() -> Iterator[PeerBackend]:
    backend = PeerBackend("app")
    yield backend
    backend.close()


def refused(resp: Response, reason: str) -> None:
    assert resp.status == 403, (resp.status, resp.body)
    assert reason in resp.body.decode(), resp.body


def test_plain_http_only_to_http_ports(fresh, app: PeerBackend) -> None:
    proxy = fresh()
    before = proxy.totals()
    refused(proxy_get(proxy.port, "http://127.0.0.1:25/smtp"), "port not allowed")
    refused(proxy_get(proxy.port, "http://127.0.0.1:22/ssh"), "port not allowed")
    assert proxy_get(proxy.port, f"http://{app.address}/ok").status == 200   # 1025-65535
    assert proxy.totals()["denied_port"] - before["denied_port"] == 2

    narrow = fresh({"http_ports": [80, "8000-8080"]})
    refused(proxy_get(narrow.port, f"http://{app.address}/ok"), "port not allowed")
    assert app.accepted == 1


@pytest.mark.parametrize("anonymity", ["elite", "transparent"])
def test_a_request_naming_us_in_via_is_a_loop(fresh, app: PeerBackend, anonymity: str) -> None:
    proxy = fresh({"anonymity": anonymity})
    ours = socket.gethostname()   # server.name unset: the host name, as Squid's visible_hostname
    for via in (f"1.1 {ours}", f"1.0 other (comment), HTTP/1.1 {ours.upper()}"):
        resp = proxy_get(proxy.port, f"http://{app.address}/loop", headers=[("Via", via)])
        refused(resp, "forwarding loop")
    assert app.accepted == 0
    # another proxy's Via is no loop
    resp = proxy_get(proxy.port, f"http://{app.address}/ok", headers=[("Via", "1.1 elsewhere")])
    assert resp.status == 200


def test_reserved_and_multicast_are_denied(fresh, app: PeerBackend) -> None:
    """Through a stand-in parent on loopback (``app``): should the guard let one of
    these through, the request would reach ``app`` and nothing beyond loopback."""
    proxy = fresh({"deny_destinations": SPEC_DENY, "allow_destinations": [],
                   "upstream_proxies": [f"http://{app.address}"]})
    for url, reason in (("http://240.0.0.1/", "reserved"), ("http://0.1.2.3/", "reserved"),
                        ("http://224.0.0.1/", "multicast"), ("http://[ff02::1]/", "multicast"),
                        ("http://[::ffff:240.0.0.1]/", "reserved")):
        refused(proxy_get(proxy.port, url), f"destination denied: {reason}")
    assert proxy.totals()["denied_destination"] == 5
    # Not ``app.accepted == 0``: the master's TCP health checks of a parent
    # connect to it (the first one at a random moment of its 2 s interval) and
    # send nothing. A request let through would reach it as a request line.
    with app.lock:
        assert app.request_lines == [] and app.requests == [], app.request_lines


def test_parents_never_get_names_they_would_resolve_locally(fresh, app: PeerBackend) -> None:
    parent = fresh()
    front = fresh({"upstream_proxies": [parent.url], "allow_destinations": []})
    for host in ("2130706433", "0x7f.1", "127.1", "017700000001", "localhost"):
        refused(proxy_get(front.port, f"http://{host}:{app.port}/x"), "destination not allowed")
    assert parent.totals()["requests"] == 0
    assert app.accepted == 0
