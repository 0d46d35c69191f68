"""Forward-proxy mode (``mode = "forward"``) end to end, through real masters:
real HTTP clients (urllib, http.client, requests, curl), keep-alive and the
per-destination pool, CONNECT tunnels (bulk, half-close, TLS passed through
untouched), the ACLs (clients, CONNECT ports, the SSRF guard on resolved
addresses, allow lists), DNS, Basic authentication, anonymity levels, egress
source-address rotation, parent-proxy chains (rotation, health, credentials),
stats counters and the JSON access log.

Loopback only: backends on 127.0.0.1, 127.0.0.2/127.0.0.3 as source
addresses, names "localhost" and "*.invalid". Every socket has a timeout,
every wait a deadline, every master is stopped by pid; no assertion depends
on how fast anything is.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fastproxy.upstream.balance import IpHash
from tests.conftest import HOST, TIMEOUT, Backend, echo_handler, free_port, hash_handler, wait_until
from tests.integration.forward_helpers import (
    ForwardProxy,
    ForwardRunner,
    HalfCloseRecorder,
    MiB,
    PeerBackend,
    SourceClient,
    basic,
    exchange_bulk,
    make_cert,
    open_tunnel,
    passwd_line,
    proxy_get,
    recv_until_eof,
    tls_echo_handler,
)
from tests.integration.http_backends import HttpBackend, encode_chunked, payload, sha256
from tests.integration.http_helpers import HttpClient, Response

PASSWORD = "s3cret pass:word"   # a space and a colon: only the first ':' splits user-id
IDENTIFYING = [("Via", "1.1 client-side-proxy"), ("X-Forwarded-For", "10.9.8.7"),
               ("Forwarded", "for=10.9.8.7;proto=http"), ("X-Real-IP", "10.9.8.7"),
               ("Proxy-Foo", "bar"), ("Proxy-Connection", "keep-alive")]
PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
             "ALL_PROXY", "no_proxy", "NO_PROXY")


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("forward")


@pytest.fixture(scope="module")
def runner(workdir: Path) -> Iterator[ForwardRunner]:
    """Masters shared by several tests of this module (stopped at its end)."""
    r = ForwardRunner(workdir)
    try:
        yield r
    finally:
        r.stop_all()


@pytest.fixture(scope="module")
def app() -> Iterator[PeerBackend]:
    backend = PeerBackend("app")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def closer() -> Iterator[PeerBackend]:
    """Closes every connection after one response: each request is a new connection."""
    backend = PeerBackend("closer", close_each=True)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def other() -> Iterator[HttpBackend]:
    """An HTTP backend whose port is NOT in any connect_ports."""
    backend = HttpBackend("other")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def echo() -> Iterator[Backend]:
    backend = Backend(echo_handler)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hasher() -> Iterator[Backend]:
    backend = Backend(hash_handler)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def half_recorder() -> HalfCloseRecorder:
    return HalfCloseRecorder()


@pytest.fixture(scope="module")
def halfclose(half_recorder: HalfCloseRecorder) -> Iterator[Backend]:
    backend = Backend(half_recorder)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def cert(workdir: Path) -> tuple[Path, Path] | None:
    if shutil.which("openssl") is None:
        return None
    return make_cert(workdir)


@pytest.fixture(scope="module")
def tls_backend(cert: tuple[Path, Path] | None) -> Iterator[Backend | None]:
    if cert is None:
        yield None
        return
    backend = Backend(tls_echo_handler(*cert))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port nothing listens on (allowed for CONNECT, to see a failed one)."""
    return free_port()


@pytest.fixture(scope="module")
def tunnel_ports(app: PeerBackend, echo: Backend, hasher: Backend, halfclose: Backend,
                 tls_backend: Backend | None, closed_port: int) -> list[int]:
    ports = [443, app.port, echo.port, hasher.port, halfclose.port, closed_port]
    return ports + ([tls_backend.port] if tls_backend is not None else [])


@pytest.fixture(scope="module")
def fwd(runner: ForwardRunner, tunnel_ports: list[int]) -> ForwardProxy:
    """The main proxy: elite, loopback clients, 127.0.0.0/8 destinations allowed."""
    return runner.start({"connect_ports": tunnel_ports})


@pytest.fixture(scope="module")
def alice_hash(workdir: Path) -> str:
    name, digest = passwd_line("alice", PASSWORD, workdir)
    assert name == "alice"
    assert digest.startswith("pbkdf2_sha256$"), digest
    return digest


@pytest.fixture(scope="module")
def auth_proxy(runner: ForwardRunner, alice_hash: str, tunnel_ports: list[int]) -> ForwardProxy:
    """Requires alice; transparent, so only the credential stripping hides anything."""
    return runner.start({"users": {"alice": alice_hash}, "connect_ports": tunnel_ports,
                         "anonymity": "transparent"})


@pytest.fixture(scope="module")
def parents(runner: ForwardRunner, tunnel_ports: list[int]) -> list[ForwardProxy]:
    return [runner.start({"connect_ports": tunnel_ports}) for _ in range(2)]


@pytest.fixture(scope="module")
def front(runner: ForwardRunner, parents: list[ForwardProxy],
          tunnel_ports: list[int]) -> ForwardProxy:
    return runner.start({"connect_ports": tunnel_ports,
                         "upstream_proxies": [p.url for p in parents]})


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib and requests must not bypass (or add) a proxy because of the environment."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


# -- small helpers -------------------------------------------------------------------------------
def seen_headers(resp: Response) -> list[tuple[str, str]]:
    """The header fields the /headers backend path received, as it echoed them."""
    assert resp.status == 200, (resp.status, resp.body)
    return [(n, v) for n, v in json.loads(resp.body)]


def names(fields: list[tuple[str, str]]) -> set[str]:
    return {n.lower() for n, _ in fields}


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fields if n.lower() == name.lower()]


def delta(proxy: ForwardProxy, before: dict[str, int], *counters: str) -> dict[str, int]:
    after = proxy.totals()
    return {c: after[c] - before[c] for c in counters}


def assert_refused(resp: Response, status: int, reason: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert reason in resp.body.decode(), resp.body
    assert (resp.header("Connection") or "").lower() == "close"


def wait_record(proxy: ForwardProxy, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def match() -> bool:
        found[:] = [r for r in proxy.access_records() if predicate(r)]
        return bool(found)

    wait_until(match, TIMEOUT, "access log record")
    return found[-1]


# == 1. real clients, keep-alive ===================================================================
def test_urllib_proxy_handler(fwd: ForwardProxy, app: PeerBackend, no_proxy_env: None) -> None:
    before = fwd.totals()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": fwd.url}))
    with opener.open(f"http://{app.address}/via/urllib?q=1", timeout=TIMEOUT) as r:
        assert r.status == 200
        assert r.read() == b"app GET /via/urllib?q=1"
    assert delta(fwd, before, "forward_requests")["forward_requests"] == 1
    seen = app.last()
    assert seen.target == "/via/urllib?q=1"   # origin-form towards the server
    assert seen.header("Host") == app.address


def test_http_client_absolute_form(fwd: ForwardProxy, app: PeerBackend) -> None:
    before = fwd.totals()
    conn = http.client.HTTPConnection(HOST, fwd.port, timeout=TIMEOUT)
    try:
        conn.request("GET", f"http://{app.address}/via/http.client")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"app GET /via/http.client")
        conn.request("POST", f"http://{app.address}/hash", body=b"z" * 5000)
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, f"5000 {sha256(b'z' * 5000)}".encode())
    finally:
        conn.close()
    assert delta(fwd, before, "forward_requests")["forward_requests"] == 2


def test_requests_library(fwd: ForwardProxy, app: PeerBackend, no_proxy_env: None) -> None:
    requests = pytest.importorskip("requests")
    before = fwd.totals()
    with requests.Session() as session:
        session.trust_env = False
        r = session.get(f"http://{app.address}/via/requests", proxies={"http": fwd.url},
                        timeout=TIMEOUT)
        assert (r.status_code, r.content) == (200, b"app GET /via/requests")
        r = session.post(f"http://{app.address}/hash", data=b"q" * 70_000,
                         proxies={"http": fwd.url}, timeout=TIMEOUT)
        assert r.content == f"70000 {sha256(b'q' * 70_000)}".encode()
    assert delta(fwd, before, "forward_requests")["forward_requests"] == 2


def test_curl(fwd: ForwardProxy, app: PeerBackend) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    before = fwd.totals()
    plain = subprocess.run([curl, "-sS", "--max-time", "10", "-x", fwd.url,
                            f"http://{app.address}/via/curl"],
                           capture_output=True, timeout=30, env=env, check=False)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == b"app GET /via/curl"
    tunnelled = subprocess.run([curl, "-sS", "--max-time", "10", "-p", "-x", fwd.url,
                                f"http://{app.address}/via/curl-tunnel"],
                               capture_output=True, timeout=30, env=env, check=False)
    assert tunnelled.returncode == 0, tunnelled.stderr
    assert tunnelled.stdout == b"app GET /via/curl-tunnel"
    assert delta(fwd, before, "forward_requests", "tunnels") == {"forward_requests": 1,
                                                                  "tunnels": 1}


def test_keepalive_and_destination_pool(fwd: ForwardProxy, app: PeerBackend) -> None:
    """Several requests on one client connection, then on a second one: the
    client connection stays open and the backend sees at most one new
    connection (parked, then pooled per destination)."""
    accepted_before = app.snapshot()[0]
    for round_ in range(2):
        conn = http.client.HTTPConnection(HOST, fwd.port, timeout=TIMEOUT)
        try:
            first_sock = None
            for i in range(5):
                conn.request("GET", f"http://{app.address}/ka/{round_}/{i}")
                r = conn.getresponse()
                assert (r.status, r.read()) == (200, f"app GET /ka/{round_}/{i}".encode())
                assert not r.will_close
                first_sock = first_sock or conn.sock
                assert conn.sock is first_sock, "the proxy closed the client connection"
        finally:
            conn.close()
    assert app.snapshot()[0] - accepted_before <= 1


def test_keepalive_alternating_destinations(fwd: ForwardProxy, app: PeerBackend,
                                            other: HttpBackend) -> None:
    """One client connection, two destinations in turn: each request reaches
    its own destination (a parked connection is never reused for another)."""
    with HttpClient(fwd.port) as client:
        for i in range(4):
            for backend in (app, other):
                resp = client.request("GET", f"http://{backend.address}/mix/{i}",
                                      host=backend.address)
                assert (resp.status, resp.body) == (
                    200, f"{backend.name} GET /mix/{i}".encode())
                assert resp.header("X-Backend") == backend.name


def test_host_follows_the_target(fwd: ForwardProxy, app: PeerBackend) -> None:
    resp = proxy_get(fwd.port, f"http://{app.address}/headers", host="elsewhere.invalid")
    assert values(seen_headers(resp), "Host") == [app.address]


# == 2. CONNECT tunnels =========================================================================
def test_connect_http_client_set_tunnel(fwd: ForwardProxy, app: PeerBackend) -> None:
    before = fwd.totals()
    conn = http.client.HTTPConnection(HOST, fwd.port, timeout=TIMEOUT)
    conn.set_tunnel(HOST, app.port)
    try:
        for i in range(3):   # keep-alive inside the tunnel: it is the app's own connection
            conn.request("GET", f"/tunnelled/{i}")
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, f"app GET /tunnelled/{i}".encode())
    finally:
        conn.close()
    assert delta(fwd, before, "tunnels", "forward_requests") == {"tunnels": 1,
                                                                  "forward_requests": 0}


def test_connect_bytes_sent_with_the_request(fwd: ForwardProxy, echo: Backend) -> None:
    """Bytes the client sends right behind the CONNECT head (optimistic data)
    are delivered to the destination once the tunnel is up."""
    with socket.create_connection((HOST, fwd.port), timeout=TIMEOUT) as sock:
        sock.sendall(f"CONNECT {echo.address} HTTP/1.1\r\nHost: {echo.address}\r\n\r\n"
                     "early-bytes".encode())
        sock.shutdown(socket.SHUT_WR)
        got = recv_until_eof(sock)
    assert got == b"HTTP/1.1 200 Connection Established\r\n\r\nearly-bytes"


def test_connect_8mib_both_ways(fwd: ForwardProxy, echo: Backend) -> None:
    data = payload(8 * MiB)
    sock, status, head, rest = open_tunnel(fwd.port, echo.address)
    with sock:
        assert status == 200, head
        assert rest == b""
        got = rest + exchange_bulk(sock, data, len(data) + 1)
    assert len(got) == len(data)
    assert sha256(got) == sha256(data)


def test_connect_half_close_client_first(fwd: ForwardProxy, hasher: Backend) -> None:
    """The client's FIN reaches the server, and the server's answer (sent only
    after that FIN) still comes back on the half-open tunnel."""
    data = payload(8 * MiB + 3)
    sock, status, head, _ = open_tunnel(fwd.port, hasher.address)
    with sock:
        assert status == 200, head
        answer = exchange_bulk(sock, data, 1 << 30)   # reads up to EOF
    assert answer == f"{len(data)} {sha256(data)}\n".encode()


def test_connect_half_close_server_first(fwd: ForwardProxy, halfclose: Backend,
                                         half_recorder: HalfCloseRecorder) -> None:
    """The server's FIN reaches the client while the client may still send."""
    data = payload(1 * MiB)
    sock, status, head, rest = open_tunnel(fwd.port, halfclose.address)
    with sock:
        assert status == 200, head
        assert rest + recv_until_eof(sock) == HalfCloseRecorder.GREETING  # then EOF
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: (len(data), sha256(data)) in half_recorder.results, TIMEOUT,
                   "the server to read the client's bytes after its own FIN")


# == 3. TLS through a tunnel ===================================================================
def test_tls_passes_through_untouched(fwd: ForwardProxy, cert: tuple[Path, Path] | None,
                                      tls_backend: Backend | None) -> None:
    if cert is None or tls_backend is None:
        pytest.skip("openssl not available to make a test certificate")
    context = ssl.create_default_context(cafile=str(cert[0]))
    sock, status, head, rest = open_tunnel(fwd.port, tls_backend.address)
    assert status == 200, head
    assert rest == b""
    with context.wrap_socket(sock, server_hostname="localhost") as tls:
        peer = tls.getpeercert()
        assert ("commonName", "localhost") in [item for rdn in peer["subject"] for item in rdn]
        data = payload(1 * MiB + 17)
        tls.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = tls.recv(1 << 20)
            assert chunk, "TLS stream ended early"
            got += chunk
        assert sha256(bytes(got)) == sha256(data)


# == 4. ACLs =====================================================================================
def test_allow_clients(fresh: Callable[..., ForwardProxy], app: PeerBackend) -> None:
    proxy = fresh({"allow_clients": ["10.0.0.0/8", "127.0.0.2/32"],
                   "connect_ports": [443, app.port]})
    requests_before = app.snapshot()[2]
    before = proxy.totals()
    with SourceClient(proxy.port, "127.0.0.1") as client:
        resp = client.request("GET", f"http://{app.address}/denied", host=app.address)
        assert_refused(resp, 403, "client not allowed")
        assert client.at_eof()
    with SourceClient(proxy.port, "127.0.0.3") as client:
        client.send(f"CONNECT {app.address} HTTP/1.1\r\nHost: {app.address}\r\n\r\n".encode())
        assert_refused(client.read_response("CONNECT"), 403, "client not allowed")
    assert delta(proxy, before, "denied", "denied_client", "denied_port",
                 "denied_destination") == {"denied": 2, "denied_client": 2, "denied_port": 0,
                                           "denied_destination": 0}
    assert 'fastproxy_denied_total{reason="client"}' in proxy.metrics()
    assert app.snapshot()[2] == requests_before
    with SourceClient(proxy.port, "127.0.0.2") as client:   # the allowed one
        resp = client.request("GET", f"http://{app.address}/allowed", host=app.address)
        assert (resp.status, resp.body) == (200, b"app GET /allowed")
    assert delta(proxy, before, "denied")["denied"] == 2


def test_connect_ports(fwd: ForwardProxy, app: PeerBackend, other: HttpBackend) -> None:
    before = fwd.totals()
    accepted = other.snapshot()[0]
    sock, status, head, rest = open_tunnel(fwd.port, other.address)
    with sock:
        assert status == 403, head
        assert b"port not allowed" in rest + recv_until_eof(sock)
    assert delta(fwd, before, "denied", "denied_port", "tunnels") == {
        "denied": 1, "denied_port": 1, "tunnels": 0}
    assert other.snapshot()[0] == accepted
    # the same destination by absolute-form GET: only CONNECT is port-restricted
    resp = proxy_get(fwd.port, f"http://{other.address}/plain")
    assert (resp.status, resp.body) == (200, b"other GET /plain")
    sock, status, head, _ = open_tunnel(fwd.port, app.address)   # a listed port
    sock.close()
    assert status == 200, head
    assert delta(fwd, before, "denied", "tunnels") == {"denied": 1, "tunnels": 1}


def test_default_deny_refuses_loopback_in_every_spelling(
        fresh: Callable[..., ForwardProxy], app: PeerBackend) -> None:
    """The embedded default's [forward] (no allow list, deny private/loopback/
    link-local): loopback is refused by IP in every spelling and by name (the
    guard runs on the resolved address), for GET and CONNECT alike."""
    proxy = fresh({"allow_destinations": [], "connect_ports": [443, app.port]})
    port = app.port
    before = proxy.totals()
    seen_before = app.snapshot()
    targets = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
               f"[::ffff:127.0.0.1]:{port}", f"0.0.0.0:{port}", f"127.0.0.2:{port}"]
    for target in targets:
        resp = proxy_get(proxy.port, f"http://{target}/ssrf")
        assert_refused(resp, 403, "destination denied: loopback")
    for target in (f"127.0.0.1:{port}", f"localhost:{port}"):
        sock, status, head, rest = open_tunnel(proxy.port, target)
        with sock:
            assert status == 403, head
            assert b"destination denied: loopback" in rest + recv_until_eof(sock)
    counted = delta(proxy, before, "denied", "denied_destination", "forward_requests",
                    "tunnels", "responses_2xx")
    assert counted["denied"] == counted["denied_destination"] == len(targets) + 2
    assert counted["responses_2xx"] == 0
    assert app.snapshot()[0] == seen_before[0], "a refused request reached the backend"


def test_deny_destinations_cidr(fresh: Callable[..., ForwardProxy], app: PeerBackend) -> None:
    proxy = fresh({"allow_destinations": [], "deny_destinations": ["private", "127.0.0.2/32"]})
    before = proxy.totals()
    resp = proxy_get(proxy.port, f"http://127.0.0.2:{app.port}/cidr")
    assert_refused(resp, 403, "destination denied: network")
    assert "127.0.0.2" not in resp.body.decode()   # the CIDR itself is not shown
    resp = proxy_get(proxy.port, f"http://127.0.0.1:{app.port}/cidr")
    assert (resp.status, resp.body) == (200, b"app GET /cidr")
    assert delta(proxy, before, "denied")["denied"] == 1


def test_allow_destinations_cidr(fwd: ForwardProxy, app: PeerBackend) -> None:
    """127.0.0.0/8 in allow_destinations beats "loopback" in the deny list,
    by IP and by a name resolving into it."""
    before = fwd.totals()
    for host in ("127.0.0.1", "localhost"):
        resp = proxy_get(fwd.port, f"http://{host}:{app.port}/cidr-allowed")
        assert (resp.status, resp.body) == (200, b"app GET /cidr-allowed"), resp.body
    assert delta(fwd, before, "denied")["denied"] == 0


def test_allowed_name_resolving_to_loopback_is_denied(fresh: Callable[..., ForwardProxy],
                                                       app: PeerBackend) -> None:
    """An allowed name still passes the deny list where it resolves to: a name
    pointed at 127.0.0.1 (DNS rebinding) reaches nothing on loopback."""
    proxy = fresh({"allow_destinations": ["localhost"], "connect_ports": [443, app.port]})
    requests_before = app.snapshot()[2]
    resp = proxy_get(proxy.port, f"http://localhost:{app.port}/rebound")
    assert_refused(resp, 403, "destination denied: loopback")
    sock, status, head, _ = open_tunnel(proxy.port, f"localhost:{app.port}")
    sock.close()
    assert status == 403, head
    assert app.snapshot()[2] == requests_before


def test_allow_destinations_exact_name(fresh: Callable[..., ForwardProxy],
                                       app: PeerBackend) -> None:
    proxy = fresh({"allow_destinations": ["localhost"], "deny_destinations": [],
                   "connect_ports": [443, app.port]})
    before = proxy.totals()
    resp = proxy_get(proxy.port, f"http://localhost:{app.port}/by-name")
    assert (resp.status, resp.body) == (200, b"app GET /by-name")
    sock, status, head, _ = open_tunnel(proxy.port, f"localhost:{app.port}")
    sock.close()
    assert status == 200, head
    # a non-empty allow list denies everything it does not match, by IP too
    for host in ("127.0.0.1", "127.0.0.2"):
        resp = proxy_get(proxy.port, f"http://{host}:{app.port}/by-ip")
        assert_refused(resp, 403, "destination not allowed")
    assert delta(proxy, before, "denied")["denied"] >= 2


def test_origin_form_and_https_absolute_are_400(fwd: ForwardProxy, app: PeerBackend) -> None:
    before = fwd.totals()
    requests_before = app.snapshot()[2]
    resp = proxy_get(fwd.port, "/", host=app.address)
    assert resp.status == 400, resp.body
    resp = proxy_get(fwd.port, f"https://{app.address}/secure")
    assert resp.status == 400, resp.body
    assert b"CONNECT" in resp.body
    counted = delta(fwd, before, "client_errors", "forward_requests")
    assert counted == {"client_errors": 2, "forward_requests": 0}
    assert app.snapshot()[2] == requests_before


# == 5. DNS ========================================================================================
def test_dns_failure_and_cache(fwd: ForwardProxy, app: PeerBackend) -> None:
    before = fwd.totals()
    resp = proxy_get(fwd.port, "http://nonexistent.invalid/")
    assert resp.status == 502, resp.body
    sock, status, head, _ = open_tunnel(fwd.port, "nonexistent.invalid:443")
    sock.close()
    assert status == 502, head
    assert delta(fwd, before, "dns_lookups", "dns_failures") == {"dns_lookups": 2,
                                                                  "dns_failures": 2}
    resp = proxy_get(fwd.port, f"http://localhost:{app.port}/dns1")   # may be a miss
    assert resp.status == 200, resp.body
    middle = fwd.totals()
    resp = proxy_get(fwd.port, f"http://LOCALHOST:{app.port}/dns2")   # cached, any case
    assert resp.status == 200, resp.body
    assert delta(fwd, middle, "dns_lookups", "dns_cache_hits", "dns_failures") == {
        "dns_lookups": 1, "dns_cache_hits": 1, "dns_failures": 0}
    literal = fwd.totals()
    resp = proxy_get(fwd.port, f"http://127.0.0.1:{app.port}/dns3")   # a literal: no lookup
    assert resp.status == 200
    assert delta(fwd, literal, "dns_lookups")["dns_lookups"] == 0


# == 6. authentication ============================================================================
def test_auth_required(auth_proxy: ForwardProxy, app: PeerBackend) -> None:
    before = auth_proxy.totals()
    requests_before = app.snapshot()[2]
    url = f"http://{app.address}/headers"
    resp = proxy_get(auth_proxy.port, url)
    assert resp.status == 407, resp.body
    challenge = resp.header("Proxy-Authenticate") or ""
    assert challenge.lower().startswith("basic"), resp.headers
    assert delta(auth_proxy, before, "auth_failures")["auth_failures"] == 1
    for wrong in (basic("alice", "wrong"), basic("bob", PASSWORD), "Bearer abc",
                  basic("alice", PASSWORD)[:-2]):
        resp = proxy_get(auth_proxy.port, url, headers=[("Proxy-Authorization", wrong)])
        assert resp.status == 407, (wrong, resp.body)
        assert resp.has("Proxy-Authenticate")
    assert delta(auth_proxy, before, "auth_failures")["auth_failures"] == 5
    sock, status, head, _ = open_tunnel(auth_proxy.port, app.address)
    sock.close()
    assert status == 407, head
    assert app.snapshot()[2] == requests_before, "an unauthenticated request was forwarded"
    good = [("Proxy-Authorization", basic("alice", PASSWORD))]
    with HttpClient(auth_proxy.port) as client:   # verified once, then keep-alive works
        for _ in range(2):
            resp = client.request("GET", url, host=app.address, headers=good)
            fields = seen_headers(resp)
            assert "proxy-authorization" not in names(fields)
    sock, status, head, _ = open_tunnel(auth_proxy.port, app.address, headers=good)
    with sock:
        assert status == 200, head
        sock.sendall(f"GET /through HTTP/1.1\r\nHost: {app.address}\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert recv_until_eof(sock).endswith(b"app GET /through")
    assert delta(auth_proxy, before, "auth_failures")["auth_failures"] == 6


# == 7. anonymity ===============================================================================
def identify(proxy: ForwardProxy, app: PeerBackend) -> list[tuple[str, str]]:
    resp = proxy_get(proxy.port, f"http://{app.address}/headers",
                     headers=[*IDENTIFYING, ("Proxy-Authorization", basic("u", "p"))])
    return seen_headers(resp)


CLIENT_VALUES = {v for _, v in IDENTIFYING}


def test_anonymity_elite(fwd: ForwardProxy, app: PeerBackend) -> None:
    fields = identify(fwd, app)
    for name in ("via", "x-forwarded-for", "forwarded", "x-real-ip"):
        assert name not in names(fields), fields
    assert not [n for n in names(fields) if n.startswith("proxy-")], fields
    assert not CLIENT_VALUES & {v for _, v in fields}, fields
    assert values(fields, "Host") == [app.address]


def test_anonymity_anonymous(fresh: Callable[..., ForwardProxy], app: PeerBackend) -> None:
    proxy = fresh({"anonymity": "anonymous"})
    fields = identify(proxy, app)
    via = values(fields, "Via")
    assert via == [f"1.1 {socket.gethostname()}"], fields   # server.name unset: the host name
    for name in ("x-forwarded-for", "forwarded", "x-real-ip"):
        assert name not in names(fields), fields
    assert not [n for n in names(fields) if n.startswith("proxy-")], fields
    assert not CLIENT_VALUES & {v for _, v in fields}, fields


def test_anonymity_transparent(fresh: Callable[..., ForwardProxy], app: PeerBackend) -> None:
    proxy = fresh({"anonymity": "transparent"})
    fields = identify(proxy, app)
    assert f"1.1 {socket.gethostname()}" in values(fields, "Via"), fields
    xff = ", ".join(values(fields, "X-Forwarded-For"))
    assert "127.0.0.1" in xff, fields
    for name in ("proxy-authorization", "proxy-connection"):
        assert name not in names(fields), fields


def test_anonymity_transparent_strips_all_proxy_fields(fresh: Callable[..., ForwardProxy],
                                                       app: PeerBackend) -> None:
    proxy = fresh({"anonymity": "transparent"})
    fields = identify(proxy, app)
    assert not [n for n in names(fields) if n.startswith("proxy-")], fields


# == 8. egress source addresses =====================================================================
def peers_for(proxy: ForwardProxy, backend: PeerBackend, count: int,
              source: str = "127.0.0.1") -> list[str]:
    start = len(backend.peers)
    for i in range(count):
        with SourceClient(proxy.port, source) as client:
            resp = client.request("GET", f"http://{backend.address}/egress/{i}",
                                  host=backend.address, headers=[("Connection", "close")])
            assert resp.status == 200, resp.body
    wait_until(lambda: len(backend.peers) >= start + count, TIMEOUT, "backend connections")
    return backend.peers[start:start + count]


def test_source_addresses_round_robin(fresh: Callable[..., ForwardProxy],
                                      closer: PeerBackend) -> None:
    proxy = fresh({"source_addresses": ["127.0.0.2", "127.0.0.3"]})
    peers = peers_for(proxy, closer, 6)
    assert set(peers) == {"127.0.0.2", "127.0.0.3"}, peers
    assert all(a != b for a, b in itertools.pairwise(peers)), peers   # alternating
    record = wait_record(proxy, lambda r: r["target"].endswith("/egress/5"))
    assert record["upstream"] == closer.address


def test_source_addresses_sticky(fresh: Callable[..., ForwardProxy],
                                 closer: PeerBackend) -> None:
    proxy = fresh({"source_addresses": ["127.0.0.2", "127.0.0.3"], "rotation": "sticky"})
    chosen = {}
    for i in range(1, 9):
        client_ip = f"127.0.0.{i}"
        peers = peers_for(proxy, closer, 3, source=client_ip)
        assert len(set(peers)) == 1, (client_ip, peers)
        assert peers[0] in ("127.0.0.2", "127.0.0.3")
        chosen[client_ip] = peers[0]
    assert peers_for(proxy, closer, 2, source="127.0.0.1") == [chosen["127.0.0.1"]] * 2
    assert set(chosen.values()) == {"127.0.0.2", "127.0.0.3"}, chosen   # not one fixed source


def test_source_addresses_random(fresh: Callable[..., ForwardProxy],
                                 closer: PeerBackend) -> None:
    proxy = fresh({"source_addresses": ["127.0.0.2", "127.0.0.3"], "rotation": "random"})
    peers = peers_for(proxy, closer, 24)
    assert set(peers) == {"127.0.0.2", "127.0.0.3"}, peers   # 2 / 2**24 to fail by chance


def test_source_addresses_sticky_with_keepalive(fresh: Callable[..., ForwardProxy],
                                                app: PeerBackend, closer: PeerBackend) -> None:
    """Sticky: a client's requests always leave from its own source, also when
    the destination keeps connections alive and they are pooled."""
    proxy = fresh({"source_addresses": ["127.0.0.2", "127.0.0.3"], "rotation": "sticky"})

    def exit_of(client_ip: str, backend: PeerBackend) -> str:
        with SourceClient(proxy.port, client_ip) as client:
            resp = client.request("GET", f"http://{backend.address}/peer", host=backend.address)
            assert resp.status == 200, resp.body
            return resp.body.decode()

    # the sticky map, seen where every request needs a new connection
    expected = {ip: exit_of(ip, closer) for ip in ("127.0.0.1", "127.0.0.4")}
    assert set(expected.values()) == {"127.0.0.2", "127.0.0.3"}, expected
    seen = [(ip, exit_of(ip, app)) for ip in ("127.0.0.1", "127.0.0.4") * 2]
    assert seen == [(ip, expected[ip]) for ip, _ in seen], (expected, seen)


# == 9. parent proxies ===========================================================================
def test_parents_round_robin(front: ForwardProxy, parents: list[ForwardProxy],
                             app: PeerBackend) -> None:
    before = [p.totals()["forward_requests"] for p in parents]
    for i in range(6):
        resp = proxy_get(front.port, f"http://{app.address}/chain/{i}")
        assert (resp.status, resp.body) == (200, f"app GET /chain/{i}".encode())
    after = [p.totals()["forward_requests"] for p in parents]
    assert [a - b for a, b in zip(after, before)] == [3, 3]
    addresses = {f"{HOST}:{p.port}" for p in parents}
    exits = [wait_record(front, lambda r, i=i: r["target"].endswith(f"/chain/{i}"))["upstream"]
             for i in range(6)]
    assert set(exits) == addresses, exits
    assert all(a != b for a, b in itertools.pairwise(exits)), exits
    # the parent got the absolute form, and logged the real destination as its exit
    for parent in parents:
        record = wait_record(parent, lambda r: "/chain/" in r["target"])
        assert record["target"].startswith(f"http://{app.address}/chain/")
        assert record["upstream"] == app.address


def test_parents_connect_8mib(front: ForwardProxy, parents: list[ForwardProxy],
                              echo: Backend) -> None:
    before = [p.totals()["tunnels"] for p in parents]
    data = payload(8 * MiB + 1)
    sock, status, head, rest = open_tunnel(front.port, echo.address)
    with sock:
        assert status == 200, head
        got = rest + exchange_bulk(sock, data, len(data) + 1)
    assert sha256(got) == sha256(data) and len(got) == len(data)
    after = [p.totals()["tunnels"] for p in parents]
    assert sum(after) - sum(before) == 1
    record = wait_record(front, lambda r: r["method"] == "CONNECT"
                         and r["target"] == echo.address)
    assert record["upstream"] in {f"{HOST}:{p.port}" for p in parents}
    assert record["status"] == 200


def test_parents_connect_counts_one_tunnel(front: ForwardProxy, echo: Backend) -> None:
    before = front.totals()["tunnels"]
    sock, status, head, _ = open_tunnel(front.port, echo.address)
    with sock:
        assert status == 200, head
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    assert front.totals()["tunnels"] - before == 1


def test_failed_connect_is_not_a_tunnel(fwd: ForwardProxy, closed_port: int) -> None:
    before = fwd.totals()
    sock, status, head, _ = open_tunnel(fwd.port, f"{HOST}:{closed_port}")
    sock.close()
    assert status == 502, head
    assert delta(fwd, before, "upstream_connect_errors")["upstream_connect_errors"] >= 1
    assert delta(fwd, before, "tunnels")["tunnels"] == 0


def test_parents_chunked_request_body(front: ForwardProxy, app: PeerBackend) -> None:
    body = payload(100_000)
    with HttpClient(front.port) as client:
        client.send(f"POST http://{app.address}/hash HTTP/1.1\r\nHost: {app.address}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n".encode() + b"".join(encode_chunked(body)))
        resp = client.read_response()
    assert (resp.status, resp.body) == (200, f"{len(body)} {sha256(body)}".encode())


def test_parents_content_length_body(front: ForwardProxy, app: PeerBackend) -> None:
    body = payload(300_000)
    resp = proxy_get(front.port, f"http://{app.address}/hash", method="POST", body=body)
    assert (resp.status, resp.body) == (200, f"{len(body)} {sha256(body)}".encode())


def test_parents_names_need_the_allow_list(front: ForwardProxy, app: PeerBackend) -> None:
    """Through parents the front cannot check a resolved address, so with a
    CIDR-only allow list a name is refused (module docstring of forward.py)."""
    before = front.totals()
    resp = proxy_get(front.port, f"http://localhost:{app.port}/name-via-parent")
    assert_refused(resp, 403, "destination not allowed")
    assert delta(front, before, "denied")["denied"] == 1


def test_parents_sticky(fresh: Callable[..., ForwardProxy], parents: list[ForwardProxy],
                        app: PeerBackend, tunnel_ports: list[int]) -> None:
    """``sticky`` is ip_hash over the parents, whose ring points depend on
    their ports: the 16 clients are picked from 127.0.0.0/24 by that ring, 8
    per parent, so that both are used whatever the ports are."""
    proxy = fresh({"connect_ports": tunnel_ports, "rotation": "sticky",
                   "upstream_proxies": [p.url for p in parents]})
    ring = IpHash([(f"{HOST}:{p.port}", 1) for p in parents])
    clients: dict[int, list[str]] = {}
    for i in range(1, 255):
        owned = clients.setdefault(ring.candidates(f"127.0.0.{i}", [True, True])[0], [])
        if len(owned) < 8:
            owned.append(f"127.0.0.{i}")
    assert sorted(len(owned) for owned in clients.values()) == [8, 8], clients
    chosen: dict[str, set[str]] = {}
    for client_ip in sorted(ip for owned in clients.values() for ip in owned):
        i = int(client_ip.rsplit(".", 1)[1])
        for j in range(2):
            with SourceClient(proxy.port, client_ip) as client:
                path = f"/sticky/{i}/{j}"
                resp = client.request("GET", f"http://{app.address}{path}", host=app.address)
                assert resp.status == 200, resp.body
            record = wait_record(proxy, lambda r, path=path: r["target"].endswith(path))
            chosen.setdefault(client_ip, set()).add(record["upstream"])
    assert all(len(v) == 1 for v in chosen.values()), chosen
    assert chosen == {ip: {f"{HOST}:{parents[owner].port}"}
                      for owner, owned in clients.items() for ip in owned}, chosen


def test_dead_parent_skipped_and_down(fresh: Callable[..., ForwardProxy],
                                      parents: list[ForwardProxy], app: PeerBackend,
                                      tunnel_ports: list[int]) -> None:
    dead = free_port()
    proxy = fresh({"connect_ports": tunnel_ports,
                   "upstream_proxies": [*(p.url for p in parents), f"http://{HOST}:{dead}"]})
    for i in range(6):
        resp = proxy_get(proxy.port, f"http://{app.address}/dead/{i}")
        assert (resp.status, resp.body) == (200, f"app GET /dead/{i}".encode())
    dead_name = f"forward.parents/{HOST}:{dead}"
    wait_until(lambda: (proxy.server(dead_name) or {}).get("health") == "down", 15.0,
               f"{dead_name} down in /stats")
    for parent in parents:
        server = proxy.server(f"forward.parents/{HOST}:{parent.port}")
        assert server is not None and server["health"] != "down", server
    for i in range(4):   # with the verdict in place, still all fine
        resp = proxy_get(proxy.port, f"http://{app.address}/after/{i}")
        assert resp.status == 200, resp.body


def test_parent_credentials(fresh: Callable[..., ForwardProxy], auth_proxy: ForwardProxy,
                            app: PeerBackend, tunnel_ports: list[int]) -> None:
    parent = f"{HOST}:{auth_proxy.port}"
    good = fresh({"connect_ports": tunnel_ports,
                  "upstream_proxies": [f"http://alice:{quote(PASSWORD, safe='')}@{parent}"]})
    bad = fresh({"connect_ports": tunnel_ports,
                 "upstream_proxies": [f"http://alice:wrong@{parent}"]})
    before = auth_proxy.totals()
    resp = proxy_get(good.port, f"http://{app.address}/headers")
    fields = seen_headers(resp)
    assert "proxy-authorization" not in names(fields)
    sock, status, head, _ = open_tunnel(good.port, app.address)
    with sock:
        assert status == 200, head
        sock.sendall(f"GET /chained HTTP/1.1\r\nHost: {app.address}\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert recv_until_eof(sock).endswith(b"app GET /chained")
    assert delta(auth_proxy, before, "auth_failures")["auth_failures"] == 0
    resp = proxy_get(bad.port, f"http://{app.address}/nope")
    assert resp.status == 407, resp.body
    assert (resp.header("Proxy-Authenticate") or "").lower().startswith("basic")
    sock, status, head, _ = open_tunnel(bad.port, app.address)
    sock.close()
    assert status == 407, head
    assert delta(auth_proxy, before, "auth_failures")["auth_failures"] == 2


# == 10. stats and access log ====================================================================
def test_counters_and_access_log(fwd: ForwardProxy, app: PeerBackend, echo: Backend) -> None:
    before = fwd.totals()
    resp = proxy_get(fwd.port, f"http://{app.address}/logged?x=1",
                     headers=[("User-Agent", "forward-test")])
    assert resp.status == 200
    sock, status, head, _ = open_tunnel(fwd.port, echo.address)
    with sock:
        assert status == 200, head
        sock.sendall(b"abc")
        assert sock.recv(3) == b"abc"
    counted = delta(fwd, before, "forward_requests", "tunnels", "requests")
    assert counted == {"forward_requests": 1, "tunnels": 1, "requests": 2}
    get = wait_record(fwd, lambda r: r["target"] == f"http://{app.address}/logged?x=1")
    assert get["method"] == "GET" and get["status"] == 200
    assert get["upstream"] == app.address           # the exit: the address connected
    assert get["user_agent"] == "forward-test" and get["client"] == HOST
    tunnel = wait_record(fwd, lambda r: r["method"] == "CONNECT" and r["target"] == echo.address)
    assert tunnel["status"] == 200 and tunnel["upstream"] == echo.address
    resp = proxy_get(fwd.port, "http://nonexistent.invalid/logged-failure")
    assert resp.status == 502
    failure = wait_record(fwd, lambda r: r["target"].endswith("/logged-failure"))
    assert failure["status"] == 502 and failure["upstream"] == "-"


def test_password_hashing_does_not_block_the_worker(fresh: Callable[..., ForwardProxy],
                                                    app: PeerBackend) -> None:
    """A slow hash (many PBKDF2 rounds) for a new, wrong password runs off the
    event loop: a client with cached credentials is answered meanwhile.

    A request waits for its hash under the ``connect`` timeout (an admission
    step, 504 when it expires), and 3,000,000 rounds take about a second on an
    idle machine but several on a busy one: that timeout and the clients' are
    ``hash_wait``, far above either."""
    from fastproxy.cli import hash_password

    hash_wait = 60.0
    slow = hash_password(PASSWORD, 3_000_000)          # about a second here
    proxy = fresh({"users": {"alice": slow}}, timeouts={"connect": hash_wait})
    url = f"http://{app.address}/auth-offload"
    good = [("Proxy-Authorization", basic("alice", PASSWORD))]
    wrong = [("Proxy-Authorization", basic("alice", "wrong"))]
    with HttpClient(proxy.port, timeout=hash_wait) as warm:   # verify once: now cached
        assert warm.request("GET", url, host=app.address, headers=good).status == 200
        checks = proxy.totals()["auth_checks"]
        results: dict[str, float] = {}

        def wrong_password() -> None:
            with HttpClient(proxy.port, timeout=hash_wait) as client:
                status = client.request("GET", url, host=app.address, headers=wrong).status
            results["wrong"] = time.monotonic()
            results["wrong_status"] = status

        thread = threading.Thread(target=wrong_password, daemon=True)
        thread.start()
        wait_until(lambda: proxy.totals()["auth_checks"] == checks + 1, TIMEOUT,
                   "the wrong password's hash to start")   # counted as it is handed over
        resp = warm.request("GET", url, host=app.address, headers=good)
        results["cached"] = time.monotonic()
        thread.join(hash_wait)
    assert not thread.is_alive(), "the wrong password's request is still waiting"
    assert resp.status == 200
    assert results.get("wrong_status") == 407, results
    assert results["cached"] < results["wrong"], "the cached client waited for the hash"
