"""Forward proxy mode: absolute-form HTTP requests and CONNECT tunnels.

The engine with the forward proxy's steps:

1. ``Admission`` (request filter), in this order: the client address
   (``allow_clients``), loops (a Via naming ``server.name``: 403), credentials
   (``users``: 407 with a challenge; a new token is hashed on the worker's
   credential threads while the exchange waits: identical tokens share one
   check; checks wait in a ``FairQueue``: at most CHECKS_PENDING in all and
   PER_CLIENT_CHECKS per client (then 503), a client in good standing first;
   a check whose requests are all gone is dropped unhashed; a client past
   FAILURES_PER_WINDOW failures a minute gets 407 without hashing), the
   request form (absolute-form ``http://`` or CONNECT; anything else is 400),
   the port (``connect_ports`` for CONNECT, ``http_ports`` for plain HTTP).
   Every refusal is a 403 with a short reason and is counted (``denied`` by
   reason, ``auth_failures``).
2. ``Destination`` (upstream peer): the parent proxies when configured;
   otherwise the destination's addresses, resolved without blocking the loop
   (``resolver.Resolver``: a thread pool and a per-worker cache; IP literals
   skip it), each checked by the SSRF guard (``acl.Policy.check_address``):
   only allowed addresses are dialled, so a name that resolves to a private
   or loopback address is refused (the address checked is the address
   dialled). The egress address rotates over ``source_addresses``.
3. ``Tunnel`` (connected): a CONNECT straight to its destination is answered
   ``200 Connection Established`` and both sockets go to a relay (splice).
4. ``Anonymity`` and ``ParentHead`` (upstream request filter): ``elite``
   strips Via, X-Forwarded-For, Forwarded, X-Real-IP and Proxy-* and adds
   nothing; ``anonymous`` also adds Via; ``transparent`` adds Via and
   X-Forwarded-For. Proxy-Authorization never leaves the proxy, except the
   parent's own credentials towards that parent.
"""

from __future__ import annotations

import functools
import random
import socket
import zlib
from typing import TYPE_CHECKING, Any

from fastproxy.acl import (
    Authenticator,
    Denied,
    PendingCheck,
    Policy,
    parent_resolves_locally,
    parse_ip,
)
from fastproxy.config import Forward, Listener
from fastproxy.errors import ProtocolError
from fastproxy.fairqueue import FairQueue
from fastproxy.http.rewrite import forwarded_for
from fastproxy.modes.exchange import Answer, Exchange
from fastproxy.modes.httpcommon import names_in_via, pseudonym, via
from fastproxy.modes.httpmode import HttpMode
from fastproxy.modes.lifecycle import Conn
from fastproxy.modes.phases import PENDING, HeadEdit, Pending, Step
from fastproxy.modes.reverse import MaxForwards, client_address
from fastproxy.resolver import Resolver
from fastproxy.stats.shm import C
from fastproxy.upstream.parents import PARENTS, ParentProxy, parent_proxies

if TYPE_CHECKING:
    from fastproxy.context import WorkerContext
    from fastproxy.modes.client import ClientConnection

KEEPALIVE_PER_DESTINATION = 32
HASH_THREADS = 2
CHECKS_PENDING = 64          # distinct credentials queued or hashing, per worker ...
PER_CLIENT_CHECKS = 4        # ... and per client address
FAILURES_PER_WINDOW = 10     # failed credential checks per client ...
FAILURE_WINDOW = 60.0        # ... per minute; then its new tokens are refused unhashed
_CACHE_MAX = 10_000   # per-worker caches: literal destinations, decisions, peers
_CONNECTED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
_IDENTIFYING = frozenset((b"via", b"x-forwarded-for", b"forwarded", b"x-real-ip"))


class Destination:
    """A resolved destination as a peer (``dialer.Peer``): its allowed
    addresses in order, and the egress address connections leave from."""

    def __init__(self, name: str, addresses: list[tuple[int, Any]], bind: str | None) -> None:
        self.name = name if bind is None else f"{name}@{bind}"   # the pool key
        self.retries = len(addresses) - 1
        self.keepalive = KEEPALIVE_PER_DESTINATION
        self.bind = bind
        self.sockaddrs = [(sockaddr, family) for family, sockaddr in addresses]
        self.names = [f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
                      for a, _ in self.sockaddrs]
        self._all = list(range(len(addresses)))

    def candidates(self, client_ip: str) -> list[int]:
        return self._all

    def record_success(self, i: int) -> None:
        pass

    def record_failure(self, i: int) -> None:
        pass

    def session_closed(self, i: int, sent: int, received: int) -> None:
        pass


class Target:
    """Where a request goes: ``host`` (lowercase), ``port``, and whether it is a CONNECT."""

    __slots__ = ("host", "port", "tunnel", "via_parent")

    def __init__(self, host: str, port: int, tunnel: bool) -> None:
        self.host = host
        self.port = port
        self.tunnel = tunnel
        self.via_parent = False


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


class Admission(Step):
    """Client address, credentials, request form, CONNECT port (module docstring, 1)."""

    def __init__(self, forward: Forward, policy: Policy, auth: Authenticator,
                 hasher: Resolver | None, name: bytes) -> None:
        self.name = name   # our pseudonym: a Via naming it means the request looped
        self.policy = policy
        self.auth = auth
        self.hasher = hasher   # threads of their own: a flood of tokens never delays DNS
        self._checking: dict[bytes, list[tuple[ClientConnection, Exchange]]] = {}
        self._queue: FairQueue[PendingCheck] = FairQueue(PER_CLIENT_CHECKS, CHECKS_PENDING)
        self._hashing = 0
        self._failed: dict[str, tuple[int, float]] = {}   # client -> (failures, window start)
        self._clients: dict[str, bool] = {}  # the policy is fixed for a worker: cached

    def request_filter(self, conn: ClientConnection, ex: Exchange) -> Answer | Pending | None:
        c = conn.c
        allowed = self._clients.get(conn.client_ip)
        if allowed is None:
            allowed = self.policy.client_allowed(conn.client_ip)
            _remember(self._clients, conn.client_ip, allowed)
        if not allowed:
            return deny(conn, C.denied_client, "client not allowed")
        if names_in_via(ex.request, self.name):
            c[C.denied] += 1
            return conn.mode.error(403, "forwarding loop")
        auth = self.auth
        if auth.required:
            found = auth.cached(ex.request.get(b"proxy-authorization"))
            if isinstance(found, PendingCheck):
                client, now = conn.client_ip, conn.reactor.now
                waiting = self._checking.get(found.key)
                if waiting is not None:    # the same token is being checked: wait for it
                    waiting.append((conn, ex))
                    return PENDING
                if self._throttled(client, now):
                    found = None   # too many failures from this client: no more hashing
                elif not self._queue.add(client, found, self._in_good_standing(client, now)):
                    return conn.mode.error(503, "credential checks busy")
                else:
                    self._checking[found.key] = [(conn, ex)]
                    self._hash_next()
                    return PENDING
            if found is None:
                c[C.auth_failures] += 1
                return conn.mode.error(407, "proxy authentication required", auth.challenge())
        target = destination(ex)
        try:
            if target.tunnel:
                self.policy.check_connect_port(target.port)
            else:
                self.policy.check_http_port(target.port)
        except Denied as exc:
            return deny(conn, C.denied_port, exc.reason)
        if not target.tunnel:
            c[C.forward_requests] += 1
        ex.note = target
        return None

    def _hash_next(self) -> None:
        """Start queued checks on the credential threads while one is free."""
        assert self.hasher is not None
        while self._hashing < HASH_THREADS:
            taken = self._queue.take()
            if taken is None:
                return
            client, pending = taken
            waiting = [(conn, ex) for conn, ex in self._checking.get(pending.key, ())
                       if conn.ex is ex and conn.state is not Conn.CLOSED]
            if not waiting:   # every request that asked is gone (timed out, closed)
                self._checking.pop(pending.key, None)
                self._queue.done(client)
                continue
            self._checking[pending.key] = waiting
            self._hashing += 1
            waiting[0][0].c[C.auth_checks] += 1
            self.hasher.run_blocking(functools.partial(self.auth.verify, pending),
                                     functools.partial(self._checked, client, pending))

    def _checked(self, client: str, pending: PendingCheck, user: str | None) -> None:
        self._hashing -= 1
        self._queue.done(client)
        self.auth.remember(pending, user)
        for conn, ex in self._checking.pop(pending.key, []):
            if user is None:
                self._failure(conn.client_ip, conn.reactor.now)
            conn.resume(ex)
        self._hash_next()

    def _in_good_standing(self, client: str, now: float) -> bool:
        count, since = self._failed.get(client, (0, now))
        return count == 0 or now - since >= FAILURE_WINDOW

    def _throttled(self, client: str, now: float) -> bool:
        count, since = self._failed.get(client, (0, now))
        return count >= FAILURES_PER_WINDOW and now - since < FAILURE_WINDOW

    def _failure(self, client: str, now: float) -> None:
        count, since = self._failed.get(client, (0, now))
        if now - since >= FAILURE_WINDOW:
            count, since = 0, now
        _remember(self._failed, client, (count + 1, since))


def deny(conn: ClientConnection, counter: int, reason: str) -> Answer:
    """A 403, counted in total and by reason (client, port, destination)."""
    conn.c[C.denied] += 1
    conn.c[counter] += 1
    return conn.mode.error(403, reason)


_AUTHORITIES: dict[tuple[bytes, int], tuple[str, int]] = {}


def destination(ex: Exchange) -> Target:
    request = ex.request
    if request.method == b"CONNECT":
        return Target(*_split_cached(request.authority, 443), True)
    if request.form == "absolute" and request.scheme == b"http":
        return Target(*_split_cached(request.authority, 80), False)
    if request.form == "absolute":
        raise ProtocolError("only http:// targets are forwarded; use CONNECT", status=400)
    raise ProtocolError("not a proxy request (absolute-form or CONNECT expected)")


class DestinationStep(Step):
    """Parents, or resolution and the SSRF guard (module docstring, 2)."""

    def __init__(self, ctx: WorkerContext, forward: Forward, policy: Policy,
                 resolver: Resolver, parents: tuple[ParentProxy, ...]) -> None:
        self.policy = policy
        self.resolver = resolver
        self.parents = ctx.upstreams[PARENTS] if parents else None
        self.sources = list(forward.source_addresses)
        self.rotation = forward.rotation
        self._next_source = 0
        self._literals: dict[tuple[str, int], list[tuple[int, Any]] | None] = {}
        self._peers: dict[tuple[str, tuple[Any, ...], str | None], Destination] = {}
        # (host, port, addresses, egress) -> the peer, or the refusal reason
        self._decided: dict[tuple[Any, ...], Destination | str] = {}

    def upstream_peer(self, conn: ClientConnection, ex: Exchange) -> Any:
        target: Target = ex.note
        if self.parents is not None:
            return self._via_parents(conn, target)
        literal = self.literal(target.host, target.port)
        if literal is not None:  # an IP address: no resolver round trip
            return self.allowed(conn, target, literal)
        self.resolver.resolve(target.host, target.port,
                              functools.partial(self._resolved, conn, ex))
        return PENDING

    def _resolved(self, conn: ClientConnection, ex: Exchange,
                  addresses: list[tuple[int, Any]] | None, error: str | None) -> None:
        target: Target = ex.note
        if addresses is None:
            conn.deliver_peer(ex, conn.mode.error(502, f"cannot resolve {target.host}: {error}"))
        else:
            conn.deliver_peer(ex, self.allowed(conn, target, addresses))

    def _via_parents(self, conn: ClientConnection, target: Target) -> Any:
        """The parent resolves the name, so the guard applies to what is known
        here: an IP literal is checked as an address, a name against a
        non-empty allow list."""
        policy = self.policy
        try:
            if parent_resolves_locally(target.host):
                raise Denied("destination not allowed")
            if parse_ip(target.host) is not None:
                policy.check_address(target.host, None)
            elif policy.has_allow_list and not policy.check_name(target.host):
                raise Denied("destination not allowed")
        except Denied as exc:
            return deny(conn, C.denied_destination, exc.reason)
        target.via_parent = True
        return self.parents

    def allowed(self, conn: ClientConnection, target: Target,
                addresses: list[tuple[int, Any]]) -> Destination | Answer:
        bind = self.source_for(conn.client_ip)
        key = (target.host, target.port, tuple(addresses), bind)
        found = self._decided.get(key)
        if found is None:
            found = self._decide(target, addresses, bind)
            _remember(self._decided, key, found)
        if isinstance(found, str):
            return deny(conn, C.denied_destination, found)
        return found

    def _decide(self, target: Target, addresses: list[tuple[int, Any]],
                bind: str | None) -> Destination | str:
        """The peer of the allowed addresses, or the refusal reason when none is."""
        allowed: list[tuple[int, Any]] = []
        refusal = "destination not allowed"
        for family, sockaddr in addresses:
            try:
                self.policy.check_address(sockaddr[0], target.host)
            except Denied as exc:
                refusal = exc.reason
            else:
                allowed.append((family, sockaddr))
        if not allowed:
            return refusal
        name = f"{target.host}:{target.port}"
        key = (name, tuple(allowed), bind)
        peer = self._peers.get(key)
        if peer is None:  # one object per destination, so attached connections are recognised
            peer = Destination(name, allowed, bind)
            _remember(self._peers, key, peer)
        return peer

    def literal(self, host: str, port: int) -> list[tuple[int, Any]] | None:
        """``[(family, sockaddr)]`` when ``host`` is an IP address, else None."""
        key = (host, port)
        found = self._literals.get(key, False)
        if found is False:
            ip = parse_ip(host.strip("[]"))
            found = None if ip is None else [
                (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (str(ip), port))]
            _remember(self._literals, key, found)
        return found  # type: ignore[return-value]

    def source_for(self, client_ip: str) -> str | None:
        """The egress address for a new connection, per ``rotation``."""
        sources = self.sources
        if not sources:
            return None
        if self.rotation == "random":
            return random.choice(sources)
        if self.rotation == "sticky":
            return sources[zlib.crc32(client_ip.encode()) % len(sources)]
        source = sources[self._next_source % len(sources)]
        self._next_source += 1
        return source


class Tunnel(Step):
    """A CONNECT straight to its destination: 200, then relay (module docstring, 3)."""

    methods = frozenset((b"CONNECT",))

    def connected(self, conn: ClientConnection, ex: Exchange) -> bytes | None:
        target: Target = ex.note
        if target.tunnel and not target.via_parent:
            return _CONNECTED
        return None


class Anonymity(Step):
    """The ``anonymity`` level's fields (module docstring, 4)."""

    upstream_drop_prefix = b"proxy-"

    def __init__(self, level: str, name: bytes) -> None:
        self.level = level
        self.name = name   # the pseudonym in Via
        # transparent: the client's X-Forwarded-For chain is re-appended, extended
        self.upstream_drop = (_IDENTIFYING if level != "transparent"
                              else frozenset((b"x-forwarded-for",)))

    def upstream_request_filter(self, conn: ClientConnection, ex: Exchange,
                                edit: HeadEdit) -> None:
        if self.level == "elite":
            return
        edit.append.append(via(ex.request.version, self.name))
        if self.level == "transparent":  # the client's chain is kept and extended
            edit.append.append(forwarded_for(ex.request, client_address(conn)))


class ParentHead(Step):
    """Through a parent: the absolute-form target, and that parent's credentials."""

    def __init__(self, parents: tuple[ParentProxy, ...]) -> None:
        self.parents = parents

    def upstream_request_filter(self, conn: ClientConnection, ex: Exchange,
                                edit: HeadEdit) -> None:
        target: Target = ex.note
        if not target.via_parent:
            return
        request = ex.request
        auth = self.parents[ex.server].authorization
        credentials = b"Proxy-Authorization: " + auth + b"\r\n" if auth else b""
        if target.tunnel:
            authority = request.authority
            edit.whole = (b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority
                          + b"\r\n" + credentials + b"\r\n")
            return
        edit.start = (request.method + b" http://" + request.authority + request.path
                      + b" HTTP/1.1\r\n")
        if credentials:
            edit.append.append(credentials)


class ForwardMode(HttpMode):
    """Per-listener handler for ``mode = "forward"``."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        forward = ctx.config.forward
        if ctx.resolver is None:
            ctx.resolver = Resolver(ctx.reactor, forward.dns_cache_ttl, counters=ctx.c)
        auth = Authenticator.from_config(forward)
        if auth.required and ctx.hasher is None:
            ctx.hasher = Resolver(ctx.reactor, 0.0, threads=HASH_THREADS)
        policy = Policy.from_config(forward)
        parents = parent_proxies(forward)
        steps: list[Step] = [
            Admission(forward, policy, auth, ctx.hasher, pseudonym(ctx.config)),
            MaxForwards(),
            DestinationStep(ctx, forward, policy, ctx.resolver, parents),
            Tunnel(), Anonymity(forward.anonymity, pseudonym(ctx.config))]
        if parents:
            steps.append(ParentHead(parents))
        super().__init__(ctx, listener, steps)


def _split_cached(authority: bytes, default: int) -> tuple[str, int]:
    found = _AUTHORITIES.get((authority, default))
    if found is None:
        found = split_authority(authority, default)
        _remember(_AUTHORITIES, (authority, default), found)
    return found


def split_authority(authority: bytes, default: int) -> tuple[str, int]:
    """``(host in lowercase, port)`` of a request's authority; ProtocolError when unusable."""
    text = authority.decode("ascii", "replace")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port = int(port_text) if port_text.isdigit() else default
    if not host or not 0 < port < 65536:
        raise ProtocolError("bad destination")
    return host.lower(), port
