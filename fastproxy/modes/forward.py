"""Forward proxy mode: absolute-form HTTP requests and CONNECT tunnels.

It is the reverse proxy's session (``reverse.HttpSession``) with a different
way of choosing where a request goes:

1. *admission*, in this order: the client address (``allow_clients``),
   credentials (``users``: 407 with a challenge), the request form
   (absolute-form ``http://`` or CONNECT; anything else is 400), the CONNECT
   port (``connect_ports``). Every refusal is a 403 with a short reason and
   is counted (``denied``, ``auth_failures``);
2. *resolution* without blocking the loop (``resolver.Resolver``: a thread
   pool and a per-worker cache);
3. *the SSRF guard on what is connected to*: every resolved address is
   checked (``acl.Policy.check_address``) and only allowed ones are tried,
   so a name that resolves to a private or loopback address is refused even
   when the name itself looked harmless (no DNS-rebinding bypass: the
   address checked is the address dialled);
4. *the exit*: the outgoing socket is bound to the next ``source_addresses``
   entry (``rotation``: round_robin, random, sticky per client IP);
5. *anonymity*: ``elite`` strips Via, X-Forwarded-For, Forwarded, X-Real-IP
   and Proxy-* and adds nothing; ``anonymous`` also adds Via; ``transparent``
   adds Via and X-Forwarded-For. Proxy-Authorization never leaves the proxy.

A CONNECT is answered ``200 Connection Established`` once the destination
is connected, and both sockets are handed to a ``Relay`` (splice both ways).
Plain requests keep both connections alive as the reverse mode does, with a
per-worker idle pool per destination.
"""

from __future__ import annotations

import functools
import random
import socket
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastproxy.acl import Authenticator, Denied, PendingCheck, Policy, parse_ip
from fastproxy.errors import ProtocolError
from fastproxy.http import (
    Field,
    Request,
    add_forwarded_for,
    add_via,
    anonymize,
    remove_fields,
    remove_hop_by_hop,
    serialize_request,
)
from fastproxy.http.quick import quick_forward_get, quick_response_head, without_credentials
from fastproxy.modes.httpcommon import REASONS, Phase, error_response
from fastproxy.modes.reverse import HttpMode, HttpSession
from fastproxy.resolver import Cancel, Resolver
from fastproxy.stats.shm import C
from fastproxy.upstream.parents import PARENTS, parent_proxies

if TYPE_CHECKING:
    from fastproxy.config import Listener
    from fastproxy.worker import WorkerContext

KEEPALIVE_PER_DESTINATION = 32
_CACHE_MAX = 10_000   # per-worker caches of literal destinations and verdicts
_CONNECTED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


@dataclass(frozen=True, slots=True)
class _DestinationConfig:
    name: str
    retries: int
    keepalive: int


class Destination:
    """A resolved destination, shaped like ``worker.UpstreamRuntime`` so the
    session's connect/retry/pool logic serves both modes unchanged."""

    def __init__(self, name: str, addresses: list[tuple[int, Any]]) -> None:
        self.config = _DestinationConfig(name, len(addresses) - 1, KEEPALIVE_PER_DESTINATION)
        self.sockaddrs = [(sockaddr, family) for family, sockaddr in addresses]
        self.names = [f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
                      for a, _ in self.sockaddrs]
        self.shm: list[int] = []

    def candidates(self, client_ip: str) -> list[int]:
        return list(range(len(self.sockaddrs)))

    def record_success(self, i: int) -> None:
        pass

    def record_failure(self, i: int) -> None:
        pass

    def session_closed(self, i: int, sent: int, received: int) -> None:
        pass


class ForwardMode(HttpMode):
    """Per-listener handler for ``mode = "forward"``."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        self.ctx = ctx
        self.listener = listener
        from fastproxy.modes.httpcommon import parser_limits

        self.limits = parser_limits(listener.limits)
        # Requests with credentials are parsed each time: no password stays in the memo.
        self.quick_requests = self.quick_memo(quick_forward_get, keep=without_credentials)
        self.quick_responses = (self.quick_memo(quick_response_head, keep_alive=False),
                                self.quick_memo(quick_response_head, keep_alive=True))
        forward = ctx.config.forward
        self.forward = forward
        self.policy = Policy.from_config(forward)
        self.auth = Authenticator.from_config(forward)
        self.sources = list(forward.source_addresses)
        self.parents = parent_proxies(forward)
        self._literals: dict[tuple[str, int], list[tuple[int, Any]] | None] = {}
        self._verdicts: dict[tuple[str, str], str | None] = {}
        self._destinations: dict[tuple[str, tuple[Any, ...]], Destination] = {}
        self._next_source = 0
        # What the anonymity level appends to a forwarded head (``_rewrite_headers``).
        self.anonymity_suffix = b"" if forward.anonymity == "elite" else b"Via: 1.1 fastproxy\r\n"
        if ctx.resolver is None:
            ctx.resolver = Resolver(ctx.reactor, forward.dns_cache_ttl, counters=ctx.c)
        self.resolver: Resolver = ctx.resolver

    def accepted(self, sock: socket.socket, addr: tuple[str, int], initial: bytes = b"") -> None:
        session = ForwardSession(self, sock, addr)
        if initial:
            session.parser.receive_data(initial)
        session.start()

    def literal(self, host: str, port: int) -> list[tuple[int, Any]] | None:
        """``[(family, sockaddr)]`` when ``host`` is an IP address, else None."""
        key = (host, port)
        found = self._literals.get(key, False)
        if found is False:
            ip = parse_ip(host.strip("[]"))
            found = None if ip is None else [
                (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (str(ip), port))]
            self._remember(self._literals, key, found)
        return found  # type: ignore[return-value]

    def verdict(self, ip: str, host: str) -> str | None:
        """The guard's refusal reason for connecting to ``ip`` (for ``host``),
        or None when allowed; the policy is fixed for a worker, so cached."""
        key = (ip, host)
        if key not in self._verdicts:
            try:
                self.policy.check_address(ip, host)
                reason = None
            except Denied as exc:
                reason = exc.reason
            self._remember(self._verdicts, key, reason)
        return self._verdicts[key]

    def destination(self, name: str, allowed: list[tuple[int, Any]]) -> Destination:
        """One Destination object per name and address set, so that a client's
        attached connection is recognised on its next request."""
        key = (name, tuple(allowed))
        found = self._destinations.get(key)
        if found is None:
            found = Destination(name, allowed)
            self._remember(self._destinations, key, found)
        return found

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = value

    def source_for(self, client_ip: str) -> str | None:
        """The egress address for a new connection, per ``rotation``."""
        if not self.sources:
            return None
        rotation = self.forward.rotation
        if rotation == "random":
            return random.choice(self.sources)
        if rotation == "sticky":
            return self.sources[zlib.crc32(client_ip.encode()) % len(self.sources)]
        source = self.sources[self._next_source % len(self.sources)]
        self._next_source += 1
        return source


class ForwardSession(HttpSession):
    """A client of the forward proxy; see the module docstring."""

    mode: ForwardMode

    def __init__(self, mode: ForwardMode, client: socket.socket, addr: tuple[str, int]) -> None:
        super().__init__(mode, client, addr)
        self.lookup: Cancel | None = None
        self.dest_host = ""
        self.dest_port = 0
        self.tunnel_request = False
        self.via_parent = False
        self.source: str | None = None
        self.checking = False      # credentials being verified in a thread
        self.express_dns = False   # the express request's addresses came from the DNS cache

    # -- admission ------------------------------------------------------------------------
    def _admit(self, request: Request) -> bool:
        mode = self.mode
        self.tunnel_request = request.method == b"CONNECT"
        if not mode.policy.client_allowed(self.addr[0]):
            self._deny(C.denied_client, "client not allowed")
            return False
        if mode.auth.required:
            found = mode.auth.cached(request.get(b"proxy-authorization"))
            if isinstance(found, PendingCheck):  # hash off the loop, then admit again
                self.checking = True
                mode.resolver.run_blocking(functools.partial(mode.auth.verify, found),
                                           functools.partial(self._checked, found, request))
                return False
            if found is None:
                self.ctx.c[C.auth_failures] += 1
                self._refuse(407, "proxy authentication required", mode.auth.challenge())
                return False
        host, port = self._destination(request)
        if self.tunnel_request:
            try:
                mode.policy.check_connect_port(port)
            except Denied as exc:
                self._deny(C.denied_port, exc.reason)
                return False
        self.dest_host, self.dest_port = host, port
        if self.tunnel_request:
            self.reuse_ok = False  # a tunnel gets a connection of its own
        else:
            self.ctx.c[C.forward_requests] += 1
        return True

    def _destination(self, request: Request) -> tuple[str, int]:
        if self.tunnel_request:
            authority = request.authority
            default = 443
        elif request.form == "absolute" and request.scheme == b"http":
            authority = request.authority
            default = 80
        elif request.form == "absolute":
            raise ProtocolError("only http:// targets are forwarded; use CONNECT", status=400)
        else:
            raise ProtocolError("not a proxy request (absolute-form or CONNECT expected)")
        return split_authority(authority, default)

    # -- the express lane (``express``) -------------------------------------------------
    def _express_plan(self, data: bytes) -> tuple[Any, list[int], bytes, bool] | None:
        """The forward proxy's quick GET: admitted as ``_admit`` would admit it
        (client address, cached credentials), to a destination known without
        waiting (an IP literal or a cached name) that the guard allows.
        Parent proxies and egress rotation take the general path."""
        mode = self.mode
        if mode.parents or mode.sources:
            return None
        found = mode.quick_requests(data)
        if found is None:
            return None
        authority, path, keep_alive, fields, credentials = found
        client = self.addr[0]
        if not mode.policy.client_allowed(client):
            return None
        if mode.auth.required and not isinstance(mode.auth.cached(credentials), str):
            return None
        try:
            host, port = split_authority(authority, 80)
        except ProtocolError:
            return None
        addresses = mode.literal(host, port)
        self.express_dns = addresses is None
        if addresses is None:
            addresses = mode.resolver.peek(host, port)
            if addresses is None:
                return None
        allowed = [(family, sockaddr) for family, sockaddr in addresses
                   if mode.verdict(sockaddr[0], host) is None]
        if not allowed:
            return None
        destination = mode.destination(f"{host}:{port}", allowed)
        self.dest_host, self.dest_port = host, port
        head = (b"GET " + path + b" HTTP/1.1\r\nHost: " + authority + b"\r\n" + fields
                + mode.anonymity_suffix + (b"X-Forwarded-For: " + client.encode() + b"\r\n\r\n"
                                           if mode.forward.anonymity == "transparent" else b"\r\n"))
        return destination, destination.candidates(client), head, keep_alive

    def _express_admitted(self) -> None:
        c = self.ctx.c
        c[C.forward_requests] += 1
        if self.express_dns:
            c[C.dns_lookups] += 1
            c[C.dns_cache_hits] += 1

    def _checked(self, pending: PendingCheck, request: Request, user: str | None) -> None:
        """Credentials verified in a resolver thread: cache, then admit again."""
        self.mode.auth.remember(pending, user)
        self.checking = False
        if self.phase is Phase.CONNECT and self.request is request:
            self.readmitted = True
            self._run(self._begin, request)

    def _deny(self, counter: int, reason: str) -> None:
        """A 403, counted in total and by reason (client, port, destination)."""
        self.ctx.c[C.denied] += 1
        self.ctx.c[counter] += 1
        self._refuse(403, reason)

    def _refuse(self, status: int, reason: str, extra: bytes = b"") -> None:
        """Answer a refusal; the connection closes after it."""
        self.cout += error_response(status, reason, extra=extra)
        self.ctx.c[C.responses_4xx] += 1
        self._log(status, 0)
        self._close_after_flush()

    # -- the request as forwarded -----------------------------------------------------------
    def _rewrite_headers(self, request: Request, headers: Sequence[Field]) -> list[Field]:
        headers = remove_hop_by_hop(headers, keep_upgrade=self.upgrade)
        headers = remove_fields(headers, (b"proxy-authorization", b"host"))
        headers.insert(0, (b"Host", request.authority))
        level = self.mode.forward.anonymity
        if level == "elite":
            return anonymize(headers)
        if level == "anonymous":
            return add_via(anonymize(headers), request.version)
        # transparent: the client's chain is kept and extended; Proxy-* fields
        # are addressed to the proxy and never forwarded.
        headers = [(n, v) for n, v in headers if not n.lower().startswith(b"proxy-")]
        return add_forwarded_for(add_via(headers, request.version), self.addr[0].encode())

    def _forward_target(self, request: Request) -> bytes:
        if self.mode.parents:  # a parent proxy gets the absolute form
            return b"http://" + request.authority + request.path
        return request.path

    # -- where it goes ----------------------------------------------------------------------
    def _choose_upstream(self, request: Request) -> None:
        self.last_upstream = self.ctx.reactor.now
        if self.mode.parents:
            self._via_parents()
            return
        literal = self.mode.literal(self.dest_host, self.dest_port)
        if literal is not None:  # an IP address: no resolver round trip
            self._connect_allowed(literal)
            return
        self.lookup = self.mode.resolver.resolve(self.dest_host, self.dest_port, self._resolved)

    def _via_parents(self) -> None:
        """Chain through a parent proxy. The parent resolves the name, so the
        guard applies to what is known here: an IP literal is checked as an
        address, a name against a non-empty allow list."""
        policy = self.mode.policy
        try:
            if parse_ip(self.dest_host) is not None:
                policy.check_address(self.dest_host, None)
            elif policy.has_allow_list and not policy.check_name(self.dest_host):
                raise Denied("destination not allowed")
        except Denied as exc:
            self._deny(C.denied_destination, exc.reason)
            return
        self.via_parent = True
        self.upstream = self.ctx.upstreams[PARENTS]
        self.candidates = self.upstream.candidates(self.addr[0])
        if not self.candidates:
            self._fail(502, "no parent proxy available")
            return
        self._next_server()

    def _parent_head(self) -> bytes:
        """The request for the chosen parent, with that parent's credentials."""
        assert self.request is not None
        auth = self.mode.parents[self.server].authorization
        extra = [(b"Proxy-Authorization", auth)] if auth else []
        if self.tunnel_request:
            target = self.request.authority
            return serialize_request(self.request, [(b"Host", target), *extra], target=target)
        return serialize_request(self.request, [*self.out_headers, *extra],
                                 target=self._forward_target(self.request))

    def _resolved(self, addresses: list[tuple[int, Any]] | None, error: str | None) -> None:
        self.lookup = None
        if self.phase is Phase.CONNECT:
            self._run(self._on_addresses, addresses, error)

    def _on_addresses(self, addresses: list[tuple[int, Any]] | None, error: str | None) -> None:
        if addresses is None:
            self._fail(502, f"cannot resolve {self.dest_host}: {error}")
        else:
            self._connect_allowed(addresses)

    def _connect_allowed(self, addresses: list[tuple[int, Any]]) -> None:
        allowed: list[tuple[int, Any]] = []
        refusal = "destination not allowed"
        for family, sockaddr in addresses:
            reason = self.mode.verdict(sockaddr[0], self.dest_host)
            if reason is None:
                allowed.append((family, sockaddr))
            else:
                refusal = reason
        if not allowed:
            self._deny(C.denied_destination, refusal)
            return
        # Pooled connections are per destination and egress address, so a
        # reused connection leaves from the address rotation chose.
        self.source = self.mode.source_for(self.addr[0])
        name = f"{self.dest_host}:{self.dest_port}"
        destination = self.mode.destination(
            name if self.source is None else f"{name}@{self.source}", allowed)
        self.upstream = destination  # type: ignore[assignment]
        self.candidates = destination.candidates(self.addr[0])
        self._next_server()

    def _prepare_socket(self, sock: socket.socket) -> None:
        if self.source is not None and not self.via_parent:
            sock.bind((self.source, 0))

    def _connected(self) -> None:
        """A CONNECT tunnel starts as soon as the destination answers; through
        a parent, the parent's own answer to our CONNECT decides."""
        if self.via_parent:
            self.head = self._parent_head()
            self.uout = bytearray(self.head)
            return
        if self.tunnel_request:
            assert self.request is not None
            self.uout.clear()
            self._log(200, 0)
            self.ctx.c[C.responses_2xx] += 1
            self.ctx.c[C.tunnels] += 1
            self._tunnel(_CONNECTED)

    def close(self, reset: bool = False) -> None:
        if self.lookup is not None:
            self.lookup.cancel()
            self.lookup = None
        super().close(reset)


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


__all__ = ["REASONS", "ForwardMode", "ForwardSession", "split_authority"]
