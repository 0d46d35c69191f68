"""The express lane of the forward proxy (``ForwardSession._express_plan``), end to end.

A canonical absolute-form body-less GET that arrives alone in one client
read, admitted as the general path would admit it (client address, cached
credentials), to a destination known without waiting (an IP literal or a
name in the worker's DNS cache) that the SSRF guard allows, is sent at once
when an idle connection to that destination exists; a whole canonical
answer in one upstream read goes straight back (``requests_express``).
The rule checked here: both paths put the same bytes on both wires, for
every anonymity level, and move ``requests``, ``forward_requests`` and the
DNS counters the same way.

How a request is steered onto one path or the other, with the same bytes:

- the first request to a destination on a fresh proxy has no idle upstream
  connection, so it takes the general path; later ones find one (attached
  to the client's session, or pooled per destination);
- a request head sent in two writes (``raw.ask_general``) is not alone in one
  client read, so it takes the general path whatever else holds.

Real processes, loopback only (backends on 127.0.0.1, the name
``localhost``); every socket has a timeout, every wait a deadline, every
master is stopped by pid.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, Backend, wait_until
from tests.integration import raw_http as raw
from tests.integration.forward_helpers import (
    ForwardProxy,
    ForwardRunner,
    SourceClient,
    basic,
    passwd_line,
)
from tests.integration.http_backends import sha256
from tests.integration.http_helpers import HttpClient, Response

PASSWORD = "s3cret pass:word"
LEVELS = ["elite", "anonymous", "transparent"]
CLIENT_FIELDS = (("User-Agent", "t"), ("Proxy-Connection", "Keep-Alive"))


# -- requests and what the backend must see ------------------------------------------------
def forward_get(authority: str, path: str = "/x",
                fields: Sequence[tuple[str, str]] = CLIENT_FIELDS) -> bytes:
    """An absolute-form GET of ``http://authority/path`` (Host first), canonical."""
    lines = [f"GET http://{authority}{path} HTTP/1.1", f"Host: {authority}",
             *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upstream_head(authority: str, path: str = "/x", level: str = "elite",
                  fields: Sequence[tuple[str, str]] = (("User-Agent", "t"),),
                  client: str = "127.0.0.1") -> bytes:
    """What the general path sends for ``forward_get`` (without the blank line):
    origin form, Host first, Proxy-* and Connection gone, then the anonymity
    level's fields (``_rewrite_headers``)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {authority}",
             *(f"{name}: {value}" for name, value in fields)]
    if level != "elite":
        lines.append("Via: 1.1 fastproxy")
    if level == "transparent":
        lines.append(f"X-Forwarded-For: {client}")
    return "\r\n".join(lines).encode()


def check_head_shape(head: bytes, authority: str, level: str) -> None:
    """The rules of a forwarded head, independently of ``upstream_head``."""
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /x HTTP/1.1", lines[0]           # origin form
    assert lines[1] == b"Host: " + authority.encode(), lines  # Host first
    names = [line.partition(b":")[0].lower() for line in lines[1:]]
    assert not [n for n in names if n.startswith(b"proxy-")], lines
    assert b"connection" not in names and b"keep-alive" not in names, lines
    assert (b"via" in names) == (level != "elite"), lines
    assert (b"x-forwarded-for: 127.0.0.1" in head.lower()) == (level == "transparent"), lines
    assert (b"x-forwarded-for" in names) == (level == "transparent"), lines
    assert b"forwarded" not in names and b"x-real-ip" not in names, lines


# -- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture
def start(tmp_path: Path, backend_factory: Callable[..., Backend]
          ) -> Iterator[Callable[..., tuple[ForwardProxy, Backend, raw.RawApp]]]:
    """A forward proxy (``forward_helpers.BASE_FORWARD`` updated with
    ``forward``: 127.0.0.0/8 destinations allowed unless changed; ``kwargs``
    for ``ForwardRunner.start``) and one raw backend on 127.0.0.1 answering
    with ``answer``."""
    runner = ForwardRunner(tmp_path)

    def make(answer: raw.Answer, forward: dict[str, Any] | None = None, **kwargs: Any
             ) -> tuple[ForwardProxy, Backend, raw.RawApp]:
        app = raw.RawApp(answer)
        backend = backend_factory(app)
        return runner.start(forward, **kwargs), backend, app

    try:
        yield make
    finally:
        runner.stop_all()


@pytest.fixture(scope="module")
def alice_hash(tmp_path_factory: pytest.TempPathFactory) -> str:
    name, digest = passwd_line("alice", PASSWORD, tmp_path_factory.mktemp("passwd"))
    assert name == "alice"
    return digest


def localhost_is_127_0_0_1() -> bool:
    try:
        infos = socket.getaddrinfo("localhost", None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except OSError:
        return False
    return {info[4][0] for info in infos} == {"127.0.0.1"}


needs_localhost = pytest.mark.skipif(
    not localhost_is_127_0_0_1(),
    reason="the name 'localhost' does not resolve to 127.0.0.1 alone here, so a backend on "
           "127.0.0.1 is not the one connection a name destination has")


COUNTED = ("requests", "requests_express", "forward_requests", "responses_2xx",
           "responses_4xx", "dns_lookups", "dns_cache_hits", "dns_failures", "denied",
           "denied_destination", "auth_failures")


def delta(proxy: ForwardProxy, before: dict[str, int], *names: str) -> dict[str, int]:
    """How the counters ``names`` (default: ``COUNTED``) moved since ``before``.
    The worker counts an exchange before it writes the response, so after a
    response arrived it is counted."""
    after = proxy.totals()
    return {name: after[name] - before[name] for name in names or COUNTED}


def express_count(proxy: ForwardProxy) -> int:
    return int(proxy.totals()["requests_express"])


def masked_records(proxy: ForwardProxy, count: int) -> list[dict[str, Any]]:
    """The first ``count`` access log records, their times masked (kind kept)."""
    def enough() -> bool:
        return len(proxy.access_records()) >= count
    wait_until(enough, TIMEOUT, f"{count} access log records")
    time.sleep(0.2)  # let a (wrong) extra record show up too
    records = proxy.access_records()
    assert len(records) == count, json.dumps(records, indent=1)
    for record in records:
        for key in ("time", "request_time", "upstream_time"):
            record[key] = type(record[key]).__name__
    return records


# == 1. keep-alive: the express lane's bytes are the general path's, per anonymity level =====
@pytest.mark.parametrize("level", LEVELS)
def test_keepalive_express_is_byte_identical(start, level: str) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX), {"anonymity": level})
    authority = backend.address
    request = forward_get(authority)
    before = proxy.totals()
    got, went_express = [], []
    with HttpClient(proxy.port) as client:
        for _ in range(5):  # the 1st general (no idle connection yet), the rest express
            express = express_count(proxy)
            got.append(raw.wire(raw.ask(client, request)))
            went_express.append(express_count(proxy) - express)
        assert not client.at_eof(0.2)
    assert went_express == [0, 1, 1, 1, 1]
    heads = app.only_heads()
    assert len(heads) == 5
    check_head_shape(heads[0], authority, level)
    assert heads == [upstream_head(authority, level=level)] * 5
    assert got == [raw.NGINX_TO_CLIENT] * 5
    assert backend.accepted == 1
    assert delta(proxy, before, "requests", "requests_express", "forward_requests",
                 "responses_2xx", "dns_lookups", "dns_cache_hits") == {
        "requests": 5, "requests_express": 4, "forward_requests": 5, "responses_2xx": 5,
        "dns_lookups": 0, "dns_cache_hits": 0}
    records = masked_records(proxy, 5)
    assert records[0]["target"] == f"http://{authority}/x"
    assert records[0]["upstream"] == authority and records[0]["status"] == 200
    assert all(record == records[0] for record in records), json.dumps(records, indent=1)
    proxy.assert_healthy()


# == 2. credentials: verified once (general path), then express while cached ================
def test_auth_cached_credentials_go_express(start, alice_hash: str) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX), {"users": {"alice": alice_hash},
                                                        "anonymity": "transparent"})
    authority = backend.address
    good = forward_get(authority, fields=[*CLIENT_FIELDS,
                                          ("Proxy-Authorization", basic("alice", PASSWORD))])
    expected_head = upstream_head(authority, level="transparent")
    before = proxy.totals()
    got, went_express = [], []
    with HttpClient(proxy.port) as client:
        for _ in range(4):  # the 1st: hash verified in a thread, general path
            express = express_count(proxy)
            got.append(raw.wire(raw.ask(client, good)))
            went_express.append(express_count(proxy) - express)
        assert not client.at_eof(0.2)
    assert went_express == [0, 1, 1, 1]
    assert got == [raw.NGINX_TO_CLIENT] * 4
    heads = app.only_heads()
    assert heads == [expected_head] * 4
    assert not [h for h in heads if b"proxy-authorization" in h.lower()]
    assert delta(proxy, before, "requests", "requests_express", "forward_requests",
                 "auth_failures") == {"requests": 4, "requests_express": 3,
                                      "forward_requests": 4, "auth_failures": 0}

    # Wrong or missing credentials, on new connections, while the pool holds an
    # idle connection to the destination: 407, never express, nothing sent.
    wrong = forward_get(authority, fields=[*CLIENT_FIELDS,
                                           ("Proxy-Authorization", basic("alice", "wrong"))])
    for request in (wrong, wrong, forward_get(authority)):  # the 2nd wrong: cached refusal
        before = proxy.totals()
        with HttpClient(proxy.port) as client:
            resp = raw.ask(client, request)
            assert resp.status == 407, raw.wire(resp)
            assert (resp.header("Proxy-Authenticate") or "").lower().startswith("basic")
            assert client.at_eof(5.0)
        assert delta(proxy, before, "requests", "requests_express", "forward_requests",
                     "auth_failures", "responses_4xx") == {
            "requests": 1, "requests_express": 0, "forward_requests": 0, "auth_failures": 1,
            "responses_4xx": 1}
    assert app.only_heads() == [expected_head] * 4

    # The right credentials on a new connection: cached, and the pool has a
    # connection, so express at once.
    before = proxy.totals()
    with HttpClient(proxy.port) as client:
        assert raw.wire(raw.ask(client, good)) == raw.NGINX_TO_CLIENT
    assert delta(proxy, before, "requests", "requests_express") == {
        "requests": 1, "requests_express": 1}
    assert app.only_heads() == [expected_head] * 5
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 3. the SSRF guard: a denied destination is never express ================================
# Configs test_forward.py uses for the same kind of check:
# test_deny_destinations_cidr (loopback allowed but for 127.0.0.2) and
# test_allow_destinations_exact_name (only the name localhost allowed: its
# address, written as an IP literal, is denied).
GUARDS = {
    "deny-cidr": ({"allow_destinations": [], "deny_destinations": ["private", "127.0.0.2/32"]},
                  "127.0.0.1", "127.0.0.2", "destination denied: network"),
    "allow-name": ({"allow_destinations": ["localhost"]},
                   "localhost", "127.0.0.1", "destination not allowed"),
}


@pytest.mark.parametrize("guard", list(GUARDS))
def test_denied_destination_is_never_express(start, guard: str) -> None:
    forward, allowed_host, denied_host, reason = GUARDS[guard]
    if allowed_host == "localhost" and not localhost_is_127_0_0_1():
        pytest.skip("the name 'localhost' does not resolve to 127.0.0.1 alone here")
    proxy, backend, app = start(raw.fixed(raw.NGINX), forward)
    allowed = f"{allowed_host}:{backend.port}"
    denied = f"{denied_host}:{backend.port}"
    with HttpClient(proxy.port) as client:  # warm: a connection to the allowed destination
        before = proxy.totals()
        assert raw.wire(raw.ask(client, forward_get(allowed))) == raw.NGINX_TO_CLIENT
        assert raw.wire(raw.ask(client, forward_get(allowed))) == raw.NGINX_TO_CLIENT
        assert delta(proxy, before, "requests_express")["requests_express"] == 1
        # On the same connection (its upstream connection attached) ...
        before = proxy.totals()
        resp = raw.ask(client, forward_get(denied))
        assert (resp.status, reason in resp.body.decode()) == (403, True), raw.wire(resp)
        assert client.at_eof(5.0)
    assert delta(proxy, before, "requests", "requests_express", "forward_requests",
                 "denied", "denied_destination") == {
        "requests": 1, "requests_express": 0, "forward_requests": 1, "denied": 1,
        "denied_destination": 1}
    # ... and on a new one (the connection is now in the pool).
    for _ in range(2):
        before = proxy.totals()
        with HttpClient(proxy.port) as client:
            resp = raw.ask(client, forward_get(denied))
            assert (resp.status, reason in resp.body.decode()) == (403, True), raw.wire(resp)
            assert client.at_eof(5.0)
        assert delta(proxy, before, "requests_express", "denied_destination") == {
            "requests_express": 0, "denied_destination": 1}
    # The pool was warm all along: the allowed destination goes express from it.
    before = proxy.totals()
    with HttpClient(proxy.port) as client:
        assert raw.wire(raw.ask(client, forward_get(allowed))) == raw.NGINX_TO_CLIENT
    assert delta(proxy, before, "requests_express")["requests_express"] == 1
    assert app.only_heads() == [upstream_head(allowed)] * 3  # nothing of the denied ones
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 4. a name destination: from the DNS cache, counted as the general path counts it ========
@needs_localhost
def test_name_destination_from_the_dns_cache(start) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX))
    authority = f"localhost:{backend.port}"
    request = forward_get(authority)
    dns = ("requests", "requests_express", "forward_requests", "dns_lookups",
           "dns_cache_hits", "dns_failures")
    steps = []
    with HttpClient(proxy.port) as client:
        for i in range(6):  # the 1st resolves; the 4th is made general by two writes
            before = proxy.totals()
            resp = raw.ask_general(client, request) if i == 3 else raw.ask(client, request)
            assert raw.wire(resp) == raw.NGINX_TO_CLIENT
            steps.append(delta(proxy, before, *dns))
        before = proxy.totals()  # the cache is by lowercased name; Host is kept as written
        upper = forward_get(authority.upper())
        assert raw.wire(raw.ask(client, upper)) == raw.NGINX_TO_CLIENT
        steps.append(delta(proxy, before, *dns))
        assert not client.at_eof(0.2)
    miss = {"requests": 1, "requests_express": 0, "forward_requests": 1, "dns_lookups": 1,
            "dns_cache_hits": 0, "dns_failures": 0}
    general_hit = {**miss, "dns_cache_hits": 1}
    express_hit = {**general_hit, "requests_express": 1}
    assert steps == [miss, express_hit, express_hit, general_hit, express_hit, express_hit,
                     express_hit]
    assert app.only_heads() == [upstream_head(authority)] * 6 + [
        upstream_head(authority.upper())]
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 5. Connection: close, one request per client connection: express from the pool =========
def test_connection_close_express_is_byte_identical(start) -> None:
    proxy, backend, app = start(raw.fixed(raw.NGINX))
    authority = backend.address
    request = forward_get(authority, fields=[("User-Agent", "t"), ("Connection", "close")])
    before = proxy.totals()
    got, went_express = [], []
    for _ in range(5):  # the 1st general (no idle connection), the rest from the pool
        with HttpClient(proxy.port) as client:
            express = express_count(proxy)
            got.append(raw.wire(raw.ask(client, request)))
            went_express.append(express_count(proxy) - express)
            assert client.at_eof(5.0), "the proxy kept a Connection: close client open"
    assert went_express == [0, 1, 1, 1, 1]
    assert got == [raw.NGINX_TO_CLOSING_CLIENT] * 5
    assert app.only_heads() == [upstream_head(authority)] * 5  # no Connection field upstream
    assert backend.accepted == 1  # the upstream connection went back to the pool each time
    assert delta(proxy, before, "requests", "requests_express", "forward_requests") == {
        "requests": 5, "requests_express": 4, "forward_requests": 5}
    proxy.assert_healthy()


# == 6. demotions: what the express lane cannot take is served as the general path serves it
def check_chunked(resp: Response) -> None:
    assert (resp.status, resp.framing, resp.body) == (200, "chunked", b"hello world")
    assert resp.raw_body == b"5\r\nhello\r\n6;e=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    assert sha256(resp.body) == sha256(b"hello world")


def check_big(resp: Response) -> None:
    assert resp.status == 200 and resp.header("Content-Length") == str(len(raw.BIG))
    assert len(resp.body) == len(raw.BIG) and sha256(resp.body) == sha256(raw.BIG)


@pytest.mark.parametrize("path,check", [("/chunked", check_chunked), ("/big", check_big)],
                         ids=["chunked", "300KiB"])
def test_demoted_response_is_served_as_the_general_path_serves_it(
        start, path: str, check: Callable[[Response], None]) -> None:
    proxy, backend, app = start(raw.demotion_answer)
    authority = backend.address
    with HttpClient(proxy.port) as client:
        raw.check_demotion(proxy, client, forward_get(authority), forward_get(authority, path),
                           check, {"requests": 1, "requests_express": 0, "forward_requests": 1})
    heads = app.only_heads()  # the last quick GET may have needed a second try
    assert heads[:4] == [upstream_head(authority)] + [upstream_head(authority, path)] * 3
    assert heads[4:] in ([upstream_head(authority)], [upstream_head(authority)] * 2)
    assert backend.accepted == 1
    proxy.assert_healthy()


# == 7. more than one destination, pipelining, egress rotation ================================
def test_alternating_destinations_each_get_their_own_connection(
        start, backend_factory: Callable[..., Backend]) -> None:
    """One client connection, two destinations in turn: after the first
    round each request goes express on the pooled connection of its own
    destination, never on the other's."""
    proxy, one, one_app = start(raw.echo_target("one"))
    two_app = raw.RawApp(raw.echo_target("two"))
    two = backend_factory(two_app)
    before = proxy.totals()
    with HttpClient(proxy.port) as client:
        for i in range(4):
            for name, backend in (("one", one), ("two", two)):
                resp = raw.ask(client, forward_get(backend.address, f"/mix/{i}"))
                assert (resp.status, resp.body) == (200, f"{name} /mix/{i}".encode())
    assert delta(proxy, before, "requests", "requests_express") == {
        "requests": 8, "requests_express": 6}
    for backend, app in ((one, one_app), (two, two_app)):
        assert app.only_heads() == [upstream_head(backend.address, f"/mix/{i}")
                                    for i in range(4)]
        assert backend.accepted == 1
    proxy.assert_healthy()


def test_two_pipelined_gets_in_one_send(start) -> None:
    """Two requests in one client read: not alone, so the general path serves both, in order."""
    proxy, backend, app = start(raw.echo_target("app"))
    authority = backend.address
    with HttpClient(proxy.port) as client:
        assert raw.ask(client, forward_get(authority, "/warm")).body == b"app /warm"
        before = proxy.totals()
        client.send(forward_get(authority, "/p1") + forward_get(authority, "/p2"))
        raw.read_ok(client, b"app /p1", b"app /p2")
        assert delta(proxy, before, "requests", "requests_express") == {
            "requests": 2, "requests_express": 0}
        assert raw.ask(client, forward_get(authority, "/after")).body == b"app /after"
    assert app.only_heads() == [upstream_head(authority, p) for p in ("/warm", "/p1", "/p2",
                                                                      "/after")]
    proxy.assert_healthy()


def test_source_addresses_take_the_general_path(start) -> None:
    """With egress rotation configured the express lane stands aside: every
    upstream connection leaves from the configured source address."""
    proxy, backend, app = start(raw.echo_target("app"), {"source_addresses": ["127.0.0.2"]})
    authority = backend.address
    before = proxy.totals()
    with SourceClient(proxy.port, "127.0.0.1") as client:
        for i in range(4):
            assert raw.ask(client, forward_get(authority, f"/s{i}")).body == f"app /s{i}".encode()
    assert delta(proxy, before, "requests", "requests_express", "forward_requests") == {
        "requests": 4, "requests_express": 0, "forward_requests": 4}
    with app.lock:
        assert app.peers and set(app.peers) == {"127.0.0.2"}, app.peers
    assert app.only_heads() == [upstream_head(authority, f"/s{i}") for i in range(4)]
    proxy.assert_healthy()


# == 8. request shapes: whatever the express lane takes, it forwards as the general path does ==
def raw_get(target: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """A GET of ``target`` with exactly ``fields``, in this order."""
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


VARIANTS: dict[str, Callable[[str], bytes]] = {
    "keep-alive-fields": lambda a: raw_get(f"http://{a}/x", [
        ("Host", a), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=300"),
        ("User-Agent", "t")]),
    "no-path": lambda a: raw_get(f"http://{a}", [("Host", a), ("Accept", "*/*")]),
    "query": lambda a: raw_get(f"http://{a}/x?a=1&b=%20c", [("Host", a)]),
    "other-host-field": lambda a: raw_get(f"http://{a}/x", [("Host", "elsewhere.invalid"),
                                                                ("Accept", "*/*")]),
    "proxy-fields": lambda a: raw_get(f"http://{a}/x", [
        ("Proxy-Authorization", basic("u", "p")), ("Host", a), ("Proxy-Foo", "bar"),
        ("X-Keep", "1"), ("Proxy-Connection", "close")]),
    "lowercase-names": lambda a: raw_get(f"http://{a}/x", [
        ("host", a), ("proxy-connection", "keep-alive"), ("user-agent", "t"),
        ("accept-encoding", "gzip, deflate")]),
    "host-last": lambda a: raw_get(f"http://{a}/x", [("User-Agent", "t"), ("Host", a)]),
}


@pytest.mark.parametrize("level", LEVELS)
def test_request_shapes_express_like_general(start, level: str) -> None:
    proxy, backend, app = start(raw.echo_target("app"), {"anonymity": level})
    authority = backend.address
    failures = []
    for name, make in VARIANTS.items():
        request = make(authority)
        with HttpClient(proxy.port) as client:
            raw.ask(client, forward_get(authority, "/warm"))
            general = raw.ask_general(client, request)
            express = express_count(proxy)
            quick = raw.ask(client, request)
            went = express_count(proxy) - express
        heads = app.only_heads()[-2:]
        lines = heads[0].split(b"\r\n")
        assert lines[0].split(b" ")[1].startswith(b"/"), (name, lines)  # origin form
        assert lines[1] == b"Host: " + authority.encode(), (name, lines)  # the target's
        if went != 1 or heads[0] != heads[1] or raw.wire(general) != raw.wire(quick):
            failures.append((name, went, heads, raw.wire(general), raw.wire(quick)))
    assert not failures, "\n".join(repr(f) for f in failures)
    proxy.assert_healthy()


# == 9. failures and expiries on the express lane ==============================================
def test_reused_connection_closed_after_the_request_is_retried(start) -> None:
    """The server closes a kept-alive connection at its next request, unanswered
    (``raw.answer_first_only``): the request is sent again on a fresh connection."""
    proxy, backend, app = start(raw.answer_first_only)
    authority = backend.address
    with HttpClient(proxy.port) as client:
        for i in range(4):
            resp = raw.ask(client, forward_get(authority, f"/n{i}"))
            assert (resp.status, resp.body) == (200, f"ok /n{i}".encode())
        assert not client.at_eof(0.2)
    targets = [raw.target_of(h) for h in app.only_heads()]
    assert targets == [b"/n0", b"/n1", b"/n1", b"/n2", b"/n2", b"/n3", b"/n3"]
    heads = app.only_heads()
    assert heads[1] == heads[2] == upstream_head(authority, "/n1")  # the same head again
    assert backend.accepted == 4
    proxy.assert_healthy()


def test_upstream_read_timeout_is_a_504_either_way(start) -> None:
    """An express request whose answer does not come in ``upstream_read`` is
    answered as the general path answers it: 504, connection closed."""
    def slow_after_first(conn: socket.socket, head: bytes, nth: int) -> bool:
        if raw.target_of(head) == b"/slow":
            time.sleep(3.0)
            return False
        conn.sendall(raw.NGINX)
        return True

    proxy, backend, app = start(slow_after_first, timeouts={"upstream_read": 1.0})
    authority = backend.address
    slow = forward_get(authority, "/slow")
    results = []
    for send in (raw.ask_general, raw.ask):  # general, then express: the same answer
        with HttpClient(proxy.port) as client:
            assert raw.wire(raw.ask(client, forward_get(authority))) == raw.NGINX_TO_CLIENT
            before = proxy.totals()
            resp = send(client, slow)
            assert client.at_eof(5.0)
        results.append((resp.status, raw.wire(resp),
                        delta(proxy, before, "requests", "requests_express", "forward_requests")))
    assert results[0][0] == 504, results
    assert results[1] == results[0]
    assert results[0][2] == {"requests": 1, "requests_express": 0, "forward_requests": 1}
    assert app.only_heads() == [upstream_head(authority), upstream_head(authority, "/slow")] * 2
    proxy.assert_healthy()


def test_client_not_allowed_is_never_express(start) -> None:
    """As test_forward.py's test_allow_clients: only 127.0.0.2 may use the proxy.
    With the pool warm, a refused client is refused, never served express."""
    proxy, backend, app = start(raw.fixed(raw.NGINX),
                                {"allow_clients": ["10.0.0.0/8", "127.0.0.2/32"]})
    request = forward_get(backend.address)
    with SourceClient(proxy.port, "127.0.0.2") as client:
        assert raw.wire(raw.ask(client, request)) == raw.NGINX_TO_CLIENT
        assert raw.wire(raw.ask(client, request)) == raw.NGINX_TO_CLIENT
    for _ in range(2):
        before = proxy.totals()
        with SourceClient(proxy.port, "127.0.0.1") as client:
            resp = raw.ask(client, request)
            assert (resp.status, b"client not allowed" in resp.body) == (403, True), raw.wire(resp)
            assert client.at_eof(5.0)
        assert delta(proxy, before, "requests_express", "denied")["requests_express"] == 0
    before = proxy.totals()
    with SourceClient(proxy.port, "127.0.0.2") as client:  # from the pool, allowed: express
        assert raw.wire(raw.ask(client, request)) == raw.NGINX_TO_CLIENT
    assert delta(proxy, before, "requests_express")["requests_express"] == 1
    assert len(app.only_heads()) == 3 and backend.accepted == 1
    proxy.assert_healthy()


@needs_localhost
def test_expired_dns_entry_takes_the_general_path(start) -> None:
    """Past ``dns_cache_ttl`` the name is not known without waiting: resolved
    again on the general path (a miss), then express from the new entry."""
    proxy, backend, app = start(raw.fixed(raw.NGINX), {"dns_cache_ttl": 2.0})
    authority = f"localhost:{backend.port}"
    request = forward_get(authority)
    dns = ("requests_express", "dns_lookups", "dns_cache_hits")
    steps = []
    with HttpClient(proxy.port) as client:
        for pause in (0.0, 0.0, 2.5, 0.0):
            time.sleep(pause)
            before = proxy.totals()
            assert raw.wire(raw.ask(client, request)) == raw.NGINX_TO_CLIENT
            steps.append(delta(proxy, before, *dns))
    miss = {"requests_express": 0, "dns_lookups": 1, "dns_cache_hits": 0}
    hit = {"requests_express": 1, "dns_lookups": 1, "dns_cache_hits": 1}
    assert steps == [miss, hit, miss, hit]
    assert app.only_heads() == [upstream_head(authority)] * 4
    proxy.assert_healthy()
