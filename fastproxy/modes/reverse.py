"""HTTP reverse proxy mode: the engine with the reverse proxy's steps.

1. ``ReverseAdmission`` (request filter): CONNECT is not served (501);
   OPTIONS and TRACE with ``Max-Forwards: 0`` are answered by the proxy and
   a larger Max-Forwards is decremented on the way (RFC 9110 §7.6.2).
2. ``Routing`` (upstream peer): the first route matching host and path
   prefix, else the listener's upstream; its balancer orders the servers.
3. ``ForwardingFields`` (upstream request filter): ``X-Forwarded-For`` (the
   client appended to the chain it sent), ``X-Forwarded-Proto``,
   ``X-Forwarded-Host`` (replacing what the client sent) and ``Via``.

Everything else (parsing, framing, keep-alive on both sides, pooling,
retries, splice, tunnels for WebSocket upgrades, timeouts, errors) is the
engine's (``client``, ``httpmode``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastproxy.config import Listener
from fastproxy.errors import ProtocolError
from fastproxy.http import Request
from fastproxy.http.rewrite import forwarded_for, max_forwards
from fastproxy.modes.exchange import Answer, Exchange
from fastproxy.modes.httpcommon import (
    CompiledRoute,
    host_of,
    max_forwards_answer,
    pseudonym,
    via,
)
from fastproxy.modes.httpmode import HttpMode
from fastproxy.modes.phases import HeadEdit, Step
from fastproxy.upstream.runtime import UpstreamRuntime

if TYPE_CHECKING:
    from fastproxy.context import WorkerContext
    from fastproxy.modes.client import ClientConnection

_TRACE_OR_OPTIONS = (b"OPTIONS", b"TRACE")
FORWARDING_LINES = 1024


class MaxForwards(Step):
    """OPTIONS/TRACE: answered at ``Max-Forwards: 0``, else decremented (RFC 9110 §7.6.2)."""

    methods = frozenset(_TRACE_OR_OPTIONS)

    def request_filter(self, conn: ClientConnection, ex: Exchange) -> Answer | None:
        request = ex.request
        if max_forwards(request)[1]:
            return Answer(200, max_forwards_answer(request), close=False)
        return None

    def upstream_request_filter(self, conn: ClientConnection, ex: Exchange,
                                edit: HeadEdit) -> None:
        line = max_forwards(ex.request)[0]
        if line is not None:
            edit.drop = edit.drop | {b"max-forwards"}
            edit.append.append(line)


class ReverseAdmission(Step):
    methods = frozenset((b"CONNECT",))

    def request_filter(self, conn: ClientConnection, ex: Exchange) -> Answer | None:
        if ex.request.method == b"CONNECT":
            raise ProtocolError("CONNECT is not served by a reverse proxy", status=501)
        return None


class Routing(Step):
    """Routes (first match of host and path prefix), else the default upstream."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        self.upstreams = ctx.upstreams
        self.routes = [CompiledRoute.from_config(r) for r in listener.routes]
        assert listener.upstream is not None
        self.default = ctx.upstreams[listener.upstream]

    def upstream_peer(self, conn: ClientConnection, ex: Exchange) -> UpstreamRuntime:
        if not self.routes:
            return self.default
        request = ex.request
        host = host_of(request.authority)
        for route in self.routes:
            if route.matches(host, request.path):
                return self.upstreams[route.upstream]
        return self.default


class ForwardingFields(Step):
    """X-Forwarded-For/-Proto/-Host and Via on every forwarded request.

    Without an X-Forwarded-For chain from the client the lines depend only on
    the client's address, the authority and the version: they are built once
    for each such triple (at most ``FORWARDING_LINES`` kept)."""

    upstream_drop = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))

    def __init__(self, name: bytes) -> None:
        self.name = name   # the pseudonym in Via
        self._lines: dict[tuple[str, bytes, bytes], bytes] = {}

    def upstream_request_filter(self, conn: ClientConnection, ex: Exchange,
                                edit: HeadEdit) -> None:
        request = ex.request
        for name, _, _, _ in request.special:
            if name == b"x-forwarded-for":  # a chain to extend: this request's own lines
                edit.append.append(self.lines(conn, request))
                return
        key = (conn.client_ip, request.authority, request.version)
        lines = self._lines.get(key)
        if lines is None:
            if len(self._lines) >= FORWARDING_LINES:
                self._lines.clear()
            lines = self._lines[key] = self.lines(conn, request)
        edit.append.append(lines)

    def lines(self, conn: ClientConnection, request: Request) -> bytes:
        host = b"X-Forwarded-Host: " + request.authority + b"\r\n" if request.authority else b""
        return (forwarded_for(request, client_address(conn)) + b"X-Forwarded-Proto: http\r\n"
                + host + via(request.version, self.name))


def client_address(conn: ClientConnection) -> bytes:
    """The client's address as a field value (an IPv6 zone id left out)."""
    return conn.client_ip.partition("%")[0].encode()


class ReverseMode(HttpMode):
    """Per-listener handler for ``mode = "http"``."""

    def __init__(self, ctx: WorkerContext, listener: Listener) -> None:
        super().__init__(ctx, listener, [ReverseAdmission(), MaxForwards(),
                                         Routing(ctx, listener),
                                         ForwardingFields(pseudonym(ctx.config))])
