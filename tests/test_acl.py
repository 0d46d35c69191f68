"""fastproxy.acl: client allow-list, CONNECT ports, the SSRF destination guard, Basic auth."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest

from fastproxy import acl
from fastproxy.acl import CHALLENGE, Authenticator, Denied, Policy, parent_resolves_locally
from fastproxy.cli import hash_password
from fastproxy.config import Forward, loads


def policy(**kw: tuple[object, ...]) -> Policy:
    return Policy.from_config(Forward(**kw))  # type: ignore[arg-type]


def denied(p: Policy, ip: str, host: str | None = None) -> str | None:
    try:
        p.check_address(ip, host)
    except Denied as exc:
        assert exc.status == 403 and not exc.retryable and str(exc) == exc.reason
        return exc.reason
    return None


# --- clients ---------------------------------------------------------------------------------

def test_default_clients_are_loopback_only() -> None:
    p = policy()
    assert p.client_allowed("127.0.0.1") and p.client_allowed("127.9.9.9")
    assert p.client_allowed("::1")
    assert p.client_allowed("::ffff:127.0.0.1")          # IPv4 client on a [::] listener
    assert not p.client_allowed("10.0.0.1")
    assert not p.client_allowed("::2")
    assert not p.client_allowed("::ffff:10.0.0.1")
    assert not p.client_allowed("not an address")


def test_client_cidrs_ipv4_and_ipv6() -> None:
    p = policy(allow_clients=("192.0.2.0/25", "2001:db8:1::/48"))
    assert p.client_allowed("192.0.2.1") and p.client_allowed("192.0.2.127")
    assert not p.client_allowed("192.0.2.128")
    assert p.client_allowed("::ffff:192.0.2.5")
    assert p.client_allowed("2001:db8:1:ffff::1")
    assert not p.client_allowed("2001:db8:2::1")
    # no cross-version confusion: ::c000:201 has the same integer value as 192.0.2.1
    assert not p.client_allowed("::c000:201")


def test_no_clients_means_nobody() -> None:
    assert not policy(allow_clients=()).client_allowed("127.0.0.1")


# --- CONNECT ports ---------------------------------------------------------------------------

def test_connect_ports() -> None:
    p = policy(connect_ports=(443, 8443))
    p.check_connect_port(443)
    p.check_connect_port(8443)
    with pytest.raises(Denied, match="port not allowed"):
        p.check_connect_port(22)
    with pytest.raises(Denied, match="port not allowed"):
        policy().check_connect_port(80)


# --- the SSRF guard: named classes -----------------------------------------------------------

ALL = ("unspecified", "loopback", "link-local", "private", "multicast", "reserved")


@pytest.mark.parametrize(("ip", "cls"), [
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),                     # IPv4-mapped: judged as IPv4
    ("64:ff9b::7f00:1", "loopback"),                      # NAT64 well-known prefix
    ("0.0.0.0", "loopback"), ("::", "loopback"),          # connect() to ANY goes local
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("100.64.0.1", "private"), ("fd00::1", "private"),
    ("fc00::1", "private"), ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"),
    ("64:ff9b:1::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),
])
def test_default_deny_classes(ip: str, cls: str) -> None:
    assert denied(policy(), ip) == f"destination denied: {cls}"


@pytest.mark.parametrize("ip", ["93.184.216.34", "2606:2800:220:1::1", "172.32.0.1",
                                "100.128.0.1", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_default_allows_public_and_undenied_classes(ip: str) -> None:
    assert denied(policy(), ip) is None


@pytest.mark.parametrize(("ip", "cls"), [
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"), ("0.1.2.3", "reserved"), ("::ffff:240.0.0.1", "reserved"),
])
def test_reserved_and_multicast_are_denied_by_default(ip: str, cls: str) -> None:
    assert denied(policy(), ip) == f"destination denied: {cls}"


def test_http_ports() -> None:
    p = policy(http_ports=((80, 80), (1025, 65535)))
    for port in (80, 1025, 8080, 65535):
        p.check_http_port(port)
    for port in (22, 25, 443, 1024):
        with pytest.raises(Denied, match="port not allowed"):
            p.check_http_port(port)


@pytest.mark.parametrize(("host", "local"), [
    ("2130706433", True), ("0x7f.1", True), ("127.1", True), ("017700000001", True),
    ("localhost", True), ("LocalHost.", True), ("db.localhost", True),
    ("127.0.0.1", False), ("example.com", False), ("1.example", False), ("0x.example", False),
])
def test_parent_resolves_locally(host: str, local: bool) -> None:
    assert parent_resolves_locally(host) is local


@pytest.mark.parametrize(("ip", "cls"), [
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("127.0.0.1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.1.1", "link-local"), ("fe80::abcd", "link-local"),
    ("10.0.0.1", "private"), ("fc00::5", "private"),
    ("224.0.0.251", "multicast"), ("239.1.1.1", "multicast"), ("ff02::1", "multicast"),
    ("0.1.2.3", "reserved"), ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("192.0.0.8", "reserved"), ("198.18.0.1", "reserved"), ("192.0.2.1", "reserved"),
    ("2001:db8::1", "reserved"), ("100::1", "reserved"),
])
def test_each_named_class(ip: str, cls: str) -> None:
    assert denied(policy(deny_destinations=(cls,)), ip) == f"destination denied: {cls}"
    # with every class denied, the first holding the address (in CLASS_ORDER) is named
    reason = denied(policy(deny_destinations=ALL), ip)
    assert reason is not None
    assert ALL.index(reason.removeprefix("destination denied: ")) <= ALL.index(cls)


def test_unspecified_is_loopback_too() -> None:
    assert denied(policy(deny_destinations=("loopback",)), "0.0.0.0") == \
        "destination denied: loopback"
    assert denied(policy(deny_destinations=("unspecified",)), "127.0.0.1") is None


def test_nothing_denied_allows_everything() -> None:
    p = policy(deny_destinations=())
    for ip in ("127.0.0.1", "10.0.0.1", "::1", "0.0.0.0"):
        assert denied(p, ip) is None


def test_deny_cidr() -> None:
    p = policy(deny_destinations=("203.0.113.0/24", "2001:db8:5::/48"))
    assert denied(p, "203.0.113.9") == "destination denied: network"
    assert denied(p, "::ffff:203.0.113.9") == "destination denied: network"
    assert denied(p, "2001:db8:5::1") == "destination denied: network"
    assert denied(p, "203.0.114.1") is None
    assert denied(p, "127.0.0.1") is None                 # classes only when listed


def test_unparsable_address_is_refused() -> None:
    assert denied(policy(deny_destinations=()), "localhost") == "destination not allowed"


# --- the allow list --------------------------------------------------------------------------

def test_allow_cidr_overrides_deny() -> None:
    p = policy(allow_destinations=("10.20.0.0/16",))
    assert denied(p, "10.20.3.4") is None
    assert denied(p, "::ffff:10.20.3.4") is None
    assert denied(p, "10.21.0.1") == "destination not allowed"


def test_allowed_name_still_passes_the_deny_list() -> None:
    """A name permits the name, not wherever DNS points it (SPEC: no way to
    loopback through DNS); a network is allowed by listing its CIDR."""
    p = policy(allow_destinations=("intranet.example.com",))
    assert denied(p, "93.184.216.34", "intranet.example.com") is None
    assert denied(p, "93.184.216.34", "INTRANET.Example.com.") is None
    assert denied(p, "10.0.0.5", "intranet.example.com") == "destination denied: private"
    assert denied(p, "127.0.0.1", "intranet.example.com") == "destination denied: loopback"
    assert denied(p, "::ffff:127.0.0.1", "intranet.example.com") == "destination denied: loopback"
    assert denied(p, "93.184.216.34", "other.example.com") == "destination not allowed"
    assert denied(p, "93.184.216.34", None) == "destination not allowed"
    internal = policy(allow_destinations=("intranet.example.com", "10.0.0.0/24"))
    assert denied(internal, "10.0.0.5", "intranet.example.com") is None


def test_non_empty_allow_list_denies_everything_else() -> None:
    p = policy(allow_destinations=("198.51.100.0/24", "*.example.org"), deny_destinations=())
    assert denied(p, "198.51.100.7") is None
    assert denied(p, "93.184.216.34", "a.example.org") is None
    assert denied(p, "93.184.216.34", "example.net") == "destination not allowed"
    assert denied(p, "93.184.216.34") == "destination not allowed"


def test_wildcard_domain_semantics() -> None:
    p = policy(allow_destinations=("*.example.com", "exact.example.net"))
    assert p.check_name("a.example.com")
    assert p.check_name("a.b.example.com")
    assert p.check_name("A.Example.COM.")
    assert not p.check_name("example.com")                # apex: list it on its own
    assert not p.check_name("badexample.com")
    assert not p.check_name("example.com.evil.test")
    assert p.check_name("exact.example.net")
    assert not p.check_name("sub.exact.example.net")
    assert not p.check_name("127.0.0.1") and not p.check_name("[::1]")
    both = policy(allow_destinations=("*.example.com", "example.com"))
    assert both.check_name("example.com") and both.check_name("www.example.com")


def test_from_loaded_config() -> None:
    cfg = loads('listener = [{ name = "f", listen = "127.0.0.1:8080", mode = "forward" }]\n'
                '[forward]\nallow_destinations = ["*.Example.com", "10.0.0.0/8"]\n')
    p = Policy.from_config(cfg.forward)
    assert p.check_name("www.example.com")
    assert denied(p, "10.1.1.1") is None


# --- Basic authentication --------------------------------------------------------------------

USERS = {"alice": hash_password("s3cret", 1000), "bob": hash_password("pa:ss wörd", 1000)}


def basic(credentials: str, scheme: str = "Basic") -> bytes:
    return f"{scheme} {base64.b64encode(credentials.encode()).decode()}".encode()


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(iterations)
        return real(name, password, salt, iterations)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    return calls


def test_required_only_with_users() -> None:
    assert not Authenticator.from_config(Forward()).required
    auth = Authenticator.from_config(Forward(users=USERS))
    assert auth.required


def test_valid_credentials() -> None:
    auth = Authenticator(USERS)
    assert auth.check(basic("alice:s3cret")) == "alice"
    assert auth.check(basic("bob:pa:ss wörd")) == "bob"     # split on the first colon, UTF-8
    assert auth.check(basic("alice:s3cret", "bAsIc")) == "alice"
    assert auth.check(b"  " + basic("alice:s3cret") + b" ") == "alice"


@pytest.mark.parametrize("header", [
    None, b"", b"Basic", b"Basic ", b"Bearer abc", basic("alice:s3cret", "Digest"),
    b"Basic !!notbase64!!",
])
def test_absent_or_not_basic(header: bytes | None) -> None:
    assert Authenticator(USERS).check(header) is None


def test_unpadded_base64_is_fine_when_no_padding_is_due() -> None:
    assert Authenticator(USERS).check(b"Basic YWxpY2U6czNjcmV0") == "alice"   # 12 bytes


@pytest.mark.parametrize("header", [
    b"Basic YWxpY2U6czNjcmV0=",          # stray padding
    b"Basic YWxpY2U6czNjcmV0\n",         # not in the alphabet
    b"Basic YWxpY2U6cw",                 # missing padding
    b"Basic YWxp Y2U6czNjcmV0",          # two tokens
    b"Basic " + base64.b64encode(b"alice"),                # no colon
    b"Basic " + base64.b64encode(b"alice:\xff\xfe"),       # not UTF-8
    b"Basic " + b"A" * 5000,                               # absurdly long
])
def test_strict_parsing(header: bytes) -> None:
    assert Authenticator(USERS).check(header) is None


def test_wrong_password_and_unknown_user(pbkdf2_calls: list[int]) -> None:
    auth = Authenticator(USERS)
    assert auth.check(basic("alice:wrong")) is None
    assert auth.check(basic("alice:S3cret")) is None
    assert pbkdf2_calls == [1000, 1000]
    assert auth.check(basic("mallory:s3cret")) is None
    assert pbkdf2_calls == [1000, 1000, 1000]              # a dummy hash, same cost


def test_cache_hit_avoids_pbkdf2(pbkdf2_calls: list[int]) -> None:
    clock = FakeClock()
    auth = Authenticator(USERS, clock)
    assert auth.check(basic("alice:s3cret")) == "alice"
    assert len(pbkdf2_calls) == 1
    for _ in range(5):
        assert auth.check(basic("alice:s3cret")) == "alice"
    assert auth.check(basic("alice:s3cret", "basic")) == "alice"   # same credentials
    assert len(pbkdf2_calls) == 1
    clock.t += acl.CACHE_TTL + 1
    assert auth.check(basic("alice:s3cret")) == "alice"
    assert len(pbkdf2_calls) == 2


def test_cache_is_keyed_on_the_password(pbkdf2_calls: list[int]) -> None:
    auth = Authenticator(USERS)
    assert auth.check(basic("alice:s3cret")) == "alice"
    assert auth.check(basic("alice:wrong")) is None
    assert len(pbkdf2_calls) == 2


def test_failures_cached_only_briefly(pbkdf2_calls: list[int]) -> None:
    clock = FakeClock()
    auth = Authenticator(USERS, clock)
    for _ in range(3):
        assert auth.check(basic("alice:wrong")) is None
    assert len(pbkdf2_calls) == 1
    clock.t += acl.NEGATIVE_TTL + 0.1
    assert auth.check(basic("alice:wrong")) is None
    assert len(pbkdf2_calls) == 2


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acl, "CACHE_MAX", 3)
    auth = Authenticator(USERS)
    for i in range(10):
        auth.check(basic(f"alice:wrong{i}"))
    assert len(auth._cache) == 3


def test_hash_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = Authenticator(USERS)
    assert auth.check(basic("alice:s3cret")) == "alice"
    assert auth.check(basic("alice:nope")) is None
    assert len(compared) == 2


def test_bad_hash_in_config_names_the_key() -> None:
    from fastproxy.errors import ConfigError
    with pytest.raises(ConfigError, match=r"forward\.users\.eve"):
        Authenticator({"eve": "pbkdf2_sha256$1000$!!!$abc="})


def test_challenge() -> None:
    auth = Authenticator(USERS)
    assert auth.challenge() == CHALLENGE == (
        b'Proxy-Authenticate: Basic realm="fastproxy", charset="UTF-8"\r\n')


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
