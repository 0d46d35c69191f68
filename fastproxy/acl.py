"""Forward-proxy policy: who may use the proxy, where it may go, and Basic-auth verification.

Pure decisions over plain data (layer L0: stdlib only, no sockets); ``modes/forward.py`` asks
and acts. Every "no" is a ``Denied`` (403) or, for authentication, ``None`` from
``Authenticator.check`` (407 with ``challenge()``).

Rules
1. Clients: the peer address must fall in one of ``[forward].allow_clients``. An IPv4-mapped
   IPv6 peer (``::ffff:a.b.c.d``, what a dual-stack ``[::]`` listener reports for IPv4 clients)
   is judged as the IPv4 address it carries (RFC 4291 §2.5.5.2).
2. ``CONNECT`` may reach only the ports in ``connect_ports`` (plain absolute-form requests are
   not port-restricted here).
3. The SSRF guard runs on the address actually connected to, after resolution, so a name that
   resolves (or re-resolves, "DNS rebinding") to an internal address is caught:
   a. ``allow_destinations`` matches (a CIDR holding the address, or the requested host name
      matching a name pattern) -> allowed, whatever the deny list says;
   b. otherwise a non-empty ``allow_destinations`` -> ``Denied("destination not allowed")``;
   c. otherwise an address in a denied class -> ``Denied("destination denied: <class>")``, or
      in a denied CIDR -> ``Denied("destination denied: network")`` (the CIDR is not shown);
   d. otherwise allowed.
4. Addresses are judged by what they reach, not by their spelling:
   - IPv4-mapped IPv6 ``::ffff:a.b.c.d`` is the IPv4 address (``::ffff:127.0.0.1`` is loopback);
   - the NAT64 well-known prefix ``64:ff9b::/96`` (RFC 6052 §2.1) is the IPv4 address embedded
     in its low 32 bits, since a DNS64/NAT64 path delivers the connection there;
   - the unspecified address (``0.0.0.0``, ``::``) is *also* loopback: Linux sends a connect()
     to it to the local host (net/ipv4/route.c ``ip_route_output_key_hash_rcu``: "if
     (!fl4->daddr) ... daddr = saddr = INADDR_LOOPBACK"; net/ipv6/tcp_ipv6.c: "connect() to
     INADDR_ANY means loopback (BSD'ism)"), so denying "loopback" denies it too;
   - 6to4 (``2002::/16``) and Teredo (``2001::/32``) are NOT decoded: the packets go to a
     relay as IPv6-in-IPv4/UDP, never to a TCP service on the embedded IPv4 address.
   A CIDR (in either list) matches the address as written or its IPv4 meaning.
5. Name patterns (``allow_destinations``) follow nginx ``server_name``: ``example.com`` matches
   only that name; ``*.example.com`` matches ``a.example.com`` and ``a.b.example.com`` but NOT
   ``example.com`` itself (list both to allow both). Matching ignores case and one trailing
   dot. An IP literal never matches a name pattern (config.py rejects numeric patterns).

The named classes are tables below (the IANA special-purpose registries, RFC 6890), not
``ipaddress.is_*`` properties, whose contents change between Python patch releases. An
address may belong to several classes (``0.0.0.0`` is unspecified, loopback and reserved); the
reason names the first denied one in ``CLASS_ORDER``.

Basic authentication (RFC 7617, RFC 9110 §11.7.1 Proxy-Authorization)
``users`` hold ``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>`` (``fastproxy passwd``). A
PBKDF2 at 600 000 iterations costs ~0.15 s of CPU, and it runs in the worker's event loop, so:
- a verified header is cached per Authenticator (a new config builds a new one, so a reload
  drops it): key = HMAC-SHA256(per-process random pepper, credentials) - never the password
  in clear or an unkeyed fast hash of it - value (user, expiry), TTL ``CACHE_TTL`` (300 s),
  at most ``CACHE_MAX`` entries, the oldest evicted first;
- a failed header is cached as a negative entry for ``NEGATIVE_TTL`` (5 s), so a client that
  retries the same wrong credentials does not cost a PBKDF2 per request; a different wrong
  password always costs one (rate-limiting that is the caller's concern);
- an unknown user name still costs one dummy PBKDF2 at the iteration count most configured
  users have (normally all: ``fastproxy passwd`` uses one default), so an unknown name takes
  as long as a wrong password - never longer - and reveals nothing about which names exist;
- the hash comparison is ``hmac.compare_digest`` (constant time).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from fastproxy.config import Forward
from fastproxy.errors import ConfigError, ProxyError, Side

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLASS_ORDER: Final = ("unspecified", "loopback", "link-local", "private", "multicast",
                      "reserved")

# IANA IPv4 / IPv6 Special-Purpose Address Registries (RFC 6890 and the RFCs cited).
CLASSES: Final[Mapping[str, tuple[str, ...]]] = {
    "unspecified": ("0.0.0.0/32", "::/128"),                        # RFC 1122 §3.2.1.3, RFC 4291
    "loopback": ("127.0.0.0/8", "::1/128",                          # RFC 1122, RFC 4291
                 "0.0.0.0/32", "::/128"),                           # connect() goes local: rule 4
    "link-local": ("169.254.0.0/16", "fe80::/10"),                  # RFC 3927, RFC 4291
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",     # RFC 1918
                "100.64.0.0/10",                                    # RFC 6598 shared (CGNAT)
                "fc00::/7",                                         # RFC 4193 unique local
                "fec0::/10",                                        # RFC 3879 site-local
                "64:ff9b:1::/48"),                                  # RFC 8215 local-use NAT64
    "multicast": ("224.0.0.0/4", "ff00::/8"),                       # RFC 5771, RFC 4291
    "reserved": ("0.0.0.0/8",                                       # RFC 1122 "this network"
                 "192.0.0.0/24",                                    # RFC 6890 IETF protocol
                 "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # RFC 5737 docs
                 "198.18.0.0/15",                                   # RFC 2544 benchmarking
                 "192.88.99.0/24",                                  # RFC 7526 old 6to4 anycast
                 "240.0.0.0/4",                                     # RFC 1112, incl. broadcast
                 "::/8", "100::/8", "200::/7", "400::/6", "800::/5",  # RFC 4291 §2.4: all
                 "1000::/4", "4000::/3", "6000::/3", "8000::/3",     # outside 2000::/3 and the
                 "a000::/3", "c000::/3", "e000::/4", "f000::/5",     # named blocks, as in
                 "f800::/6", "fe00::/9",                            # ipaddress.is_reserved
                 "2001:db8::/32", "3fff::/20",                      # RFC 3849, 9637 docs
                 "2001:2::/48"),                                    # RFC 5180 benchmarking
}

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
CACHE_TTL: Final = 300.0
NEGATIVE_TTL: Final = 5.0
CACHE_MAX: Final = 10_000
MAX_CREDENTIALS: Final = 4096   # bytes of "Basic <token>"; far above any real user:password
CHALLENGE: Final = b'Proxy-Authenticate: Basic realm="fastproxy", charset="UTF-8"\r\n'


class Denied(ProxyError):
    """The policy refuses the request: 403, the client's side, never retried.
    ``reason`` is short and safe to show ("port not allowed", "destination denied: private")."""

    status = 403
    side = Side.CLIENT
    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address (brackets and an IPv6 zone allowed), or None if it is not one."""
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") else text)
    except ValueError:
        return None


def effective(addr: IPAddress) -> IPAddress:
    """The address a connection to ``addr`` really reaches (rule 4): IPv4-mapped and NAT64
    well-known-prefix IPv6 addresses become the IPv4 address they carry."""
    if addr.version == 6:
        assert isinstance(addr, ipaddress.IPv6Address)
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


class _NetSet:
    """A set of CIDRs tested by integer masks, per IP version (no cross-version matches)."""

    __slots__ = ("_nets",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._nets: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            self._nets[net.version].append((int(net.network_address), int(net.netmask)))

    def __contains__(self, addr: IPAddress) -> bool:
        value = int(addr)
        return any(value & mask == base for base, mask in self._nets[addr.version])

    def __bool__(self) -> bool:
        return bool(self._nets[4] or self._nets[6])


class AddressSet:
    """Peers by CIDR: ``ip in peers`` for an address string (an IPv4-mapped
    IPv6 address, as a dual-stack socket reports IPv4 peers, also matches the
    IPv4 ranges; anything that is not an address never matches)."""

    __slots__ = ("_nets",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._nets = _NetSet(cidrs)

    def __contains__(self, ip: str) -> bool:
        addr = parse_ip(ip.partition("%")[0])
        return addr is not None and (addr in self._nets or _ipv4_meaning(addr) in self._nets)


def _normal_name(host: str) -> str:
    host = host.lower()
    return host.removesuffix(".")


class Policy:
    """The forward proxy's access rules (module rules 1-5), built from ``[forward]``.

    Methods for the caller: ``client_allowed(ip)``; ``check_connect_port(port)``,
    ``check_name(host)``, ``check_address(ip, host)``. Raises: ``Denied`` (the check_ ones).
    """

    def __init__(self, allow_clients: Iterable[str], connect_ports: Iterable[int],
                 deny_destinations: Iterable[str], allow_destinations: Iterable[str],
                 http_ports: Iterable[tuple[int, int]] = ((1, 65535),)) -> None:
        self._clients = AddressSet(allow_clients)
        self._ports = frozenset(connect_ports)
        self._http_ports = tuple(http_ports)
        deny = list(deny_destinations)
        self._deny_classes = [(name, _NetSet(CLASSES[name])) for name in CLASS_ORDER
                              if name in deny]
        self._deny_cidrs = _NetSet(d for d in deny if d not in CLASSES)
        allow = list(allow_destinations)
        self._allow_any = bool(allow)
        self._allow_cidrs = _NetSet(a for a in allow if _is_cidr(a))
        names = [_normal_name(a) for a in allow if not _is_cidr(a)]
        self._allow_exact = frozenset(n for n in names if not n.startswith("*."))
        self._allow_suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".example.com"

    @classmethod
    def from_config(cls, forward: Forward) -> Policy:
        return cls(forward.allow_clients, forward.connect_ports, forward.deny_destinations,
                   forward.allow_destinations, forward.http_ports)

    def client_allowed(self, ip: str) -> bool:
        """True if the peer address ``ip`` is in allow_clients (rule 1); False if not or if
        ``ip`` is not an address at all."""
        return ip in self._clients

    @property
    def has_allow_list(self) -> bool:
        """True when ``allow_destinations`` is set (everything else is denied)."""
        return self._allow_any

    def check_connect_port(self, port: int) -> None:
        """Rule 2. Raises Denied("port not allowed")."""
        if port not in self._ports:
            raise Denied("port not allowed")

    def check_http_port(self, port: int) -> None:
        """Plain HTTP goes only to ``http_ports`` (Squid's Safe_ports: no requests
        smuggled into SSH or SMTP). Raises Denied("port not allowed")."""
        for low, high in self._http_ports:
            if low <= port <= high:
                return
        raise Denied("port not allowed")

    def check_name(self, host: str) -> bool:
        """True if the DNS name ``host`` matches an allow_destinations name pattern (rule 5).
        Lets the caller accept early; a False is not a denial by itself."""
        if parse_ip(host) is not None:
            return False
        name = _normal_name(host)
        return name in self._allow_exact or name.endswith(self._allow_suffixes)

    def check_address(self, ip: str, host: str | None) -> None:
        """The SSRF guard (rule 3) for a connection to ``ip``, the resolved address, made
        for the requested ``host`` (a name, or None/the literal when the client gave an IP).
        Raises Denied("destination not allowed" | "destination denied: <class or CIDR>")."""
        addr = parse_ip(ip)
        if addr is None:
            raise Denied("destination not allowed")
        real = effective(addr)
        if self._allow_any:
            if addr in self._allow_cidrs or real in self._allow_cidrs:
                return                      # an allowed network overrides the deny list
            if host is None or not self.check_name(host):
                raise Denied("destination not allowed")
            # an allowed name permits the name only: where it resolves to must
            # still pass the deny list (no way to loopback through DNS)
        for name, nets in self._deny_classes:
            if real in nets:
                raise Denied(f"destination denied: {name}")
        if addr in self._deny_cidrs or real in self._deny_cidrs:
            raise Denied("destination denied: network")   # the CIDR itself stays private


_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def parent_resolves_locally(host: str) -> bool:
    """Whether a parent proxy would resolve ``host`` to a local or chosen address
    we cannot check: ``localhost`` names and IPv4 in a non-canonical numeric
    form (``2130706433``, ``0x7f.1``, ``127.1``), which ``inet_aton`` accepts."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    if parse_ip(host) is not None:
        return False
    labels = name.split(".")
    return len(labels) <= 4 and all(_INET_ATON_PART.fullmatch(label) for label in labels)


def _ipv4_meaning(addr: IPAddress) -> IPAddress:
    if addr.version == 6:
        assert isinstance(addr, ipaddress.IPv6Address)
        return addr.ipv4_mapped or addr
    return addr


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# --- Basic authentication ----------------------------------------------------------------------

class _Hash:
    __slots__ = ("digest", "iterations", "salt")

    def __init__(self, iterations: int, salt: bytes, digest: bytes) -> None:
        self.iterations = iterations
        self.salt = salt
        self.digest = digest

    @classmethod
    def parse(cls, text: str, key: str) -> _Hash:
        """``pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>``. Raises ConfigError."""
        try:
            scheme, iterations, salt, digest = text.split("$")
            if scheme != "pbkdf2_sha256" or int(iterations) < 1:
                raise ValueError(scheme)
            return cls(int(iterations), base64.b64decode(salt, validate=True),
                       base64.b64decode(digest, validate=True))
        except (ValueError, binascii.Error):
            raise ConfigError.one(key, 'expected "pbkdf2_sha256$<iterations>$<salt>$<hash>" '
                                  "(made by `fastproxy passwd NAME`)") from None

    def matches(self, password: bytes) -> bool:
        computed = hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations)
        return hmac.compare_digest(computed, self.digest)


@dataclass(frozen=True, slots=True)
class PendingCheck:
    """Credentials not in the cache yet (see ``Authenticator.cached``)."""

    key: bytes
    token: bytes


class Authenticator:
    """Verifies ``Proxy-Authorization: Basic`` against ``[forward].users`` (module docstring).

    Methods for the caller: ``required`` (True when users are configured), ``check(value)`` ->
    user name or None, ``challenge()`` -> the 407's ``Proxy-Authenticate`` line.
    Raises: ``from_config`` raises ConfigError for a malformed hash; ``check`` never raises.
    """

    def __init__(self, users: Mapping[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users = {name: _Hash.parse(h, f"forward.users.{name}") for name, h in users.items()}
        self.required = bool(self._users)
        self._clock = clock
        self._pepper = secrets.token_bytes(32)
        self._cache: collections.OrderedDict[bytes, tuple[str | None, float]] = (
            collections.OrderedDict())
        counts = collections.Counter(h.iterations for h in self._users.values())
        iterations = counts.most_common(1)[0][0] if counts else 1
        self._dummy = _Hash(iterations, secrets.token_bytes(16), secrets.token_bytes(32))

    @classmethod
    def from_config(cls, forward: Forward) -> Authenticator:
        return cls(forward.users)

    def check(self, header: bytes | None) -> str | None:
        """The user named by a valid ``Proxy-Authorization`` value, else None (absent,
        malformed, not Basic, unknown user or wrong password)."""
        found = self.cached(header)
        if isinstance(found, PendingCheck):
            user = self.verify(found)
            self.remember(found, user)
            return user
        return found

    def cached(self, header: bytes | None) -> str | None | PendingCheck:
        """What is known without hashing: the user, None (refused), or a
        ``PendingCheck`` to hand to ``verify`` (which may run in a thread)
        and then to ``remember`` (in the loop)."""
        token = _basic_token(header)
        if token is None:
            return None
        key = hmac.digest(self._pepper, token, "sha256")
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] > self._clock():
                return hit[0]
            del self._cache[key]
        return PendingCheck(key, token)

    def verify(self, pending: PendingCheck) -> str | None:
        """The expensive part (PBKDF2); touches no shared state, so it may run
        in another thread."""
        return self._verify(pending.token)

    def remember(self, pending: PendingCheck, user: str | None) -> None:
        ttl = CACHE_TTL if user is not None else NEGATIVE_TTL
        self._remember(pending.key, user, self._clock() + ttl)

    def challenge(self) -> bytes:
        """The header line a 407 response carries (RFC 7617 §2, §2.1 charset)."""
        return CHALLENGE

    def _verify(self, token: bytes) -> str | None:
        try:
            raw = base64.b64decode(token, validate=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        if base64.b64encode(raw) != token:  # only the canonical form (RFC 4648 §3.5): no
            return None                     # stray "=", no non-zero pad bits
        name, colon, password = text.partition(":")   # a user-id has no ':' (RFC 7617 §2)
        if not colon:
            return None
        stored = self._users.get(name)
        if stored is None:
            self._dummy.matches(password.encode())    # same cost as a wrong password
            return None
        return name if stored.matches(password.encode()) else None

    def _remember(self, key: bytes, user: str | None, expiry: float) -> None:
        cache = self._cache
        while len(cache) >= CACHE_MAX:
            cache.popitem(last=False)
        cache[key] = (user, expiry)


def _basic_token(header: bytes | None) -> bytes | None:
    """The token68 of ``Basic <token68>`` (scheme case-insensitive, RFC 9110 §11.1), or None."""
    if not header or len(header) > MAX_CREDENTIALS:
        return None
    scheme, _, token = header.strip(b" \t").partition(b" ")
    token = token.strip(b" \t")
    if scheme.lower() != b"basic" or not token or b" " in token or b"\t" in token:
        return None
    return token
