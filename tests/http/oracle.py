"""The proxy's header rules as list operations over ``(name, value)`` fields.

These were the engine's implementation before the one-pass rewrite
(``fastproxy.http.rewrite``); they are kept here, in the tests, as the
oracle that the rewrite is checked against (``test_rewrite.py``) and as a
readable statement of each rule (``test_headers.py``). Sources: RFC 9110
§7.6.1 (Connection and hop-by-hop fields), §7.6.2 (Max-Forwards), §7.6.3
(Via); RFC 7239 and the de-facto X-Forwarded-For/-Proto/-Host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastproxy.errors import ProtocolError
from fastproxy.http.events import Field
from fastproxy.http.framing import BodyKind, list_tokens
from fastproxy.http.headers import ADDRESS, HOP_BY_HOP, IDENTIFYING

_PROTECTED = frozenset((b"host",))
_SAFE_VALUE = re.compile(rb"[\x21-\x7e](?:[ \x21-\x7e]*[\x21-\x7e])?")


def connection_options(headers: Iterable[Field]) -> set[bytes]:
    """The lowercase options listed in every Connection field."""
    return list_tokens([v for n, v in headers if n.lower() == b"connection"])


def upgrade_protocols(headers: Iterable[Field]) -> list[bytes]:
    """The protocols of an ``Upgrade`` the client really asked for (``Connection:
    upgrade`` present), lowercase, without ``h2c`` (we stay on HTTP/1.1)."""
    fields = list(headers)
    if b"upgrade" not in connection_options(fields):
        return []
    protocols = [p.strip(b" \t") for n, v in fields if n.lower() == b"upgrade"
                 for p in v.split(b",")]
    return [p.lower() for p in protocols if p and p.lower() != b"h2c"]


def remove_hop_by_hop(headers: Iterable[Field], *, keep_upgrade: bool = False) -> list[Field]:
    """Drop hop-by-hop fields, every field named in Connection (except Host),
    ``HTTP2-Settings`` and ``Upgrade: h2c``.

    With ``keep_upgrade`` (a WebSocket-style upgrade being tunnelled) the
    Upgrade field stays, without h2c, and ``Connection: upgrade`` is added.
    """
    fields = list(headers)
    drop = (HOP_BY_HOP | connection_options(fields)) - _PROTECTED
    out: list[Field] = []
    upgrading = False
    for name, value in fields:
        key = name.lower()
        if key == b"upgrade" and keep_upgrade:
            kept = [p.strip(b" \t") for p in value.split(b",")]
            kept = [p for p in kept if p and p.lower() != b"h2c"]
            if kept:
                out.append((name, b", ".join(kept)))
                upgrading = True
        elif key not in drop:
            out.append((name, value))
    if upgrading:
        out.append((b"Connection", b"upgrade"))
    return out


def remove_fields(headers: Iterable[Field], names: Iterable[bytes]) -> list[Field]:
    """Drop every field whose lowercase name is in ``names``."""
    drop = frozenset(names)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def anonymize(headers: Iterable[Field]) -> list[Field]:
    """Drop Via, X-Forwarded-For, Forwarded, X-Real-IP and every Proxy-* field."""
    return [(n, v) for n, v in headers
            if n.lower() not in IDENTIFYING and not n.lower().startswith(b"proxy-")]


def add_via(headers: Iterable[Field], received_version: bytes = b"1.1",
            pseudonym: bytes = b"fastproxy") -> list[Field]:
    """Append ``Via: <received protocol version> <pseudonym>`` (RFC 9110 §7.6.3)."""
    return [*headers, (b"Via", received_version + b" " + pseudonym)]


def add_forwarded_for(headers: Iterable[Field], client: bytes, *, proto: bytes | None = None,
                      host: bytes | None = None, replace: bool = False) -> list[Field]:
    """Record the client in X-Forwarded-For, and set X-Forwarded-Proto/-Host if given.

    The client address is appended to the values already present (folded into
    one field), or replaces them with ``replace`` (an edge proxy that trusts
    nothing in front of it). Raises ValueError for an address or value that
    is not safe to put in a field.
    """
    if not ADDRESS.fullmatch(client):
        raise ValueError(f"not an IP address: {client!r}")
    for value in (proto, host):
        if value is not None and not _SAFE_VALUE.fullmatch(value):
            raise ValueError(f"not a field value: {value!r}")
    fields = list(headers)
    chain = [] if replace else [v for n, v in fields if n.lower() == b"x-forwarded-for"]
    drop = {b"x-forwarded-for"}
    drop.update(name for name, value in ((b"x-forwarded-proto", proto),
                                         (b"x-forwarded-host", host)) if value is not None)
    out = remove_fields(fields, drop)
    out.append((b"X-Forwarded-For", b", ".join([*chain, client])))
    if proto is not None:
        out.append((b"X-Forwarded-Proto", proto))
    if host is not None:
        out.append((b"X-Forwarded-Host", host))
    return out


def decrement_max_forwards(method: bytes, headers: Iterable[Field]) -> tuple[list[Field], bool]:
    """Apply Max-Forwards for OPTIONS and TRACE (RFC 9110 §7.6.2).

    Returns the fields with Max-Forwards decremented and whether it was 0,
    in which case the proxy answers the request itself instead of forwarding
    it. Other methods come back unchanged. Raises ProtocolError (400) for a
    Max-Forwards that is not one decimal number.
    """
    fields = list(headers)
    if method not in (b"OPTIONS", b"TRACE"):
        return fields, False
    found = [i for i, (n, _) in enumerate(fields) if n.lower() == b"max-forwards"]
    if not found:
        return fields, False
    value = fields[found[0]][1]
    if len(found) > 1 or not value.isdigit() or len(value) > 18:
        raise ProtocolError("invalid Max-Forwards")
    hops = int(value)
    if hops == 0:
        return fields, True
    fields[found[0]] = (fields[found[0]][0], b"%d" % (hops - 1))
    return fields, False


def frame_headers(headers: Iterable[Field], kind: BodyKind, length: int | None = None
                  ) -> list[Field]:
    """Set the framing fields for forwarding a body of ``kind``.

    LENGTH: exactly one ``Content-Length: <length>`` (collapses ``5, 5``,
    ``005``); CHUNKED: ``Transfer-Encoding: chunked`` and no Content-Length;
    CLOSE and TUNNEL: neither; NONE: fields unchanged (a response to HEAD or
    a 304 keeps its Content-Length, RFC 9110 §8.6).
    """
    if kind is BodyKind.NONE:
        return list(headers)
    out = remove_fields(headers, (b"content-length", b"transfer-encoding"))
    if kind is BodyKind.LENGTH:
        out.append((b"Content-Length", b"%d" % (length or 0)))
    elif kind is BodyKind.CHUNKED:
        out.append((b"Transfer-Encoding", b"chunked"))
    return out
