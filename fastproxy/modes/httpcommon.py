"""What the HTTP listener modes share: error responses, routing of requests
to upstreams, and the access-log line for one exchange."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from fastproxy.config import Config, Limits, Route
from fastproxy.http import Limits as HttpLimits
from fastproxy.http import Request, serialize_request

REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


def error_response(status: int, detail: str = "", *, extra: bytes = b"") -> bytes:
    """A complete ``Connection: close`` response with a short text body."""
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}\n{detail}\n" if detail else f"{status} {reason}\n"
    data = body.encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nCache-Control: no-store\r\n%sConnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(data), extra, data))


def max_forwards_answer(request: Request) -> bytes:
    """The proxy's own answer to OPTIONS or TRACE with ``Max-Forwards: 0``
    (RFC 9110 §7.6.2): TRACE echoes the request head as message/http."""
    if request.method == b"TRACE":
        body = serialize_request(request)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)
    return (b"HTTP/1.1 200 OK\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n")


def parser_limits(limits: Limits) -> HttpLimits:
    """The parser's limits from a listener's ``limits`` table."""
    return HttpLimits(max_header_bytes=limits.max_header_bytes,
                      max_body_bytes=limits.max_body_bytes)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    host: bytes | None          # exact host, lowercase, without port
    suffix: bytes | None        # for "*.example.com": b".example.com"
    path_prefix: bytes | None
    upstream: str

    @classmethod
    def from_config(cls, route: Route) -> CompiledRoute:
        host = suffix = None
        if route.host is not None:
            if route.host.startswith("*."):
                suffix = route.host[1:].encode()
            else:
                host = route.host.encode()
        prefix = route.path_prefix.encode() if route.path_prefix is not None else None
        return cls(host, suffix, prefix, route.upstream)

    def matches(self, host: bytes, path: bytes) -> bool:
        if self.host is not None and host != self.host:
            return False
        if self.suffix is not None and not host.endswith(self.suffix):
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


def pseudonym(config: Config) -> bytes:
    """This proxy's name in the Via it adds (``server.name``, else the host name)."""
    return (config.server.name or socket.gethostname()).encode("ascii", "replace")


def via(version: bytes, name: bytes) -> bytes:
    """``Via: <received protocol version> <name>`` (RFC 9110 §7.6.3)."""
    return b"Via: " + version + b" " + name + b"\r\n"


def names_in_via(request: Request, name: bytes) -> bool:
    """Whether a Via of ``request`` lists ``name`` as a proxy it went through
    (the request has looped back to us), case-insensitively."""
    name = name.lower()
    for field, value, _, _ in request.special:
        if field == b"via":
            for hop in value.split(b","):
                parts = hop.split()
                if len(parts) >= 2 and parts[1].lower() == name:
                    return True
    return False


def host_of(authority: bytes) -> bytes:
    """The lowercase host of an authority, without port or IPv6 brackets kept."""
    authority = authority.lower()
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[:end + 1] if end > 0 else authority
    return authority.rsplit(b":", 1)[0] if b":" in authority else authority


def access_line(fmt: str, *, client: str, method: bytes, target: bytes, version: bytes,
                status: int, sent: int, referer: bytes | None, agent: bytes | None,
                upstream: str, request_time: float, upstream_time: float | None
                ) -> tuple[dict[str, object], str]:
    """The JSON record and the ``combined`` line (nginx's, plus upstream
    address, request time and upstream time) for one exchange."""
    request = f"{method.decode('latin-1')} {target.decode('latin-1')} HTTP/{version.decode()}"
    ref = (referer or b"-").decode("latin-1")
    ua = (agent or b"-").decode("latin-1")
    ut = "-" if upstream_time is None else f"{upstream_time:.3f}"
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": client,
              "request": request, "method": method.decode("latin-1"),
              "target": target.decode("latin-1"), "status": status, "bytes_sent": sent,
              "referer": ref, "user_agent": ua, "upstream": upstream or "-",
              "request_time": round(request_time, 6),
              "upstream_time": None if upstream_time is None else round(upstream_time, 6)}
    line = (f'{client} - - [{time.strftime("%d/%b/%Y:%H:%M:%S %z")}] '
            f'{json.dumps(request)} {status} {sent} {json.dumps(ref)} {json.dumps(ua)} '
            f'"{upstream or "-"}" {request_time:.3f} {ut}\n')
    return record, line
