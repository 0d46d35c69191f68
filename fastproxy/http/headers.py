"""Header-list operations a proxy applies between parsing and forwarding.

Every function takes fields as ``(name, value)`` pairs (names in any case,
as parsed) and returns a new list; nothing is modified in place and field
order is kept. Names are compared in lowercase. The serialisers write what
they are given: fields built by the caller must already be valid (parsed
fields are; the helpers here validate what they add).

Sources: RFC 9110 §7.6.1 (Connection and hop-by-hop fields), §7.6.2
(Max-Forwards), §7.6.3 (Via), §6.5.1 (fields not allowed in trailers);
RFC 9112 §3 and §4 (start lines), §7.1 (chunked); RFC 7239 (Forwarded) and
the de-facto X-Forwarded-For/-Proto/-Host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastproxy.errors import ProtocolError
from fastproxy.http.events import Data, Field, InformationalResponse, Request, Response
from fastproxy.http.framing import BodyKind, list_tokens

# RFC 9110 §7.6.1 and §11.7.1: fields that describe one connection. Transfer-
# Encoding is here too: the framing is rebuilt with ``frame_headers``.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"http2-settings"))
# Never removed because a client named them in Connection: routing depends on it.
_PROTECTED = frozenset((b"host",))
# RFC 9110 §6.5.1: fields that must not be taken from trailers (framing,
# routing, connection management).
TRAILER_FORBIDDEN = HOP_BY_HOP | frozenset((b"content-length", b"host"))
# What the elite and anonymous modes remove (SPEC [forward] anonymity).
IDENTIFYING = frozenset((b"via", b"x-forwarded-for", b"forwarded", b"x-real-ip"))
# An IP address as X-Forwarded-For carries it (no zone id, no port).
ADDRESS = re.compile(rb"[0-9A-Fa-f.:]+")
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


def is_field_address(address: str) -> bool:
    """Whether ``add_forwarded_for`` takes ``address`` as it is (an IP
    address without a zone id)."""
    return ADDRESS.fullmatch(address.encode()) is not None


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


# -- serialisation --------------------------------------------------------------------
def _fields(headers: Iterable[Field]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def serialize_request(request: Request, headers: Iterable[Field] | None = None, *,
                      target: bytes | None = None, version: bytes = b"1.1") -> bytes:
    """The request head as bytes: ``METHOD SP target SP HTTP/version CRLF fields CRLF``.

    ``headers`` and ``target`` replace the request's own; ``version`` is ours
    by default (an intermediary sends its own version, RFC 9110 §6.2).
    """
    block = request.block if headers is None else _fields(headers)
    return b"%s %s HTTP/%s\r\n%s\r\n" % (request.method, request.target if target is None
                                        else target, version, block)


def serialize_response(response: Response | InformationalResponse,
                       headers: Iterable[Field] | None = None, *,
                       version: bytes = b"1.1") -> bytes:
    """The response head as bytes: ``HTTP/version SP status SP reason CRLF fields CRLF``."""
    block = response.block if headers is None else _fields(headers)
    return b"HTTP/%s %d %s\r\n%s\r\n" % (version, response.status, response.reason, block)


def encode_chunk(data: bytes, ext: bytes = b"") -> bytes:
    """One complete chunk; ``b""`` for empty data (a 0 chunk would end the body)."""
    if not data:
        return b""
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


def encode_piece(event: Data) -> bytes:
    """Re-frame a Data event for a chunked body.

    A piece of a chunked body keeps the original chunk boundaries and
    extensions (the chunk line goes before its first piece, CRLF after its
    last); any other piece becomes a chunk of its own.
    """
    if not event.chunk_size:
        return encode_chunk(event.data)
    head = b"%x%s\r\n" % (event.chunk_size, event.chunk_ext) if event.chunk_start else b""
    return head + event.data + (b"\r\n" if event.chunk_end else b"")


def encode_last_chunk(trailers: Iterable[Field] = ()) -> bytes:
    """The last chunk and trailer section, without the fields that may not be
    trailers (framing, routing, hop-by-hop: ``TRAILER_FORBIDDEN``)."""
    kept = [(n, v) for n, v in trailers if n.lower() not in TRAILER_FORBIDDEN]
    return b"0\r\n" + _fields(kept) + b"\r\n"
