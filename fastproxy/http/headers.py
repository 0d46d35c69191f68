"""Field-name sets the proxy acts on, head serialisation and chunked framing.

The forwarding rules themselves are applied in one pass by ``rewrite``;
this module holds the names they use, writes heads the proxy makes itself
(TRACE's echo) and frames chunks (``body.read_body``). The serialisers write
what they are given: fields built by the caller must already be valid.

Sources: RFC 9110 §7.6.1 (Connection and hop-by-hop fields), §7.6.3 (Via),
§6.5.1 (fields not allowed in trailers); RFC 9112 §3 and §4 (start lines),
§7.1 (chunked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastproxy.http.events import Data, Field, InformationalResponse, Request, Response

# RFC 9110 §7.6.1 and §11.7.1: fields that describe one connection. Transfer-
# Encoding is here too: the proxy rebuilds the framing.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"trailer", b"transfer-encoding", b"upgrade", b"http2-settings"))
# RFC 9110 §6.5.1: fields that must not be taken from trailers (framing,
# routing, connection management).
TRAILER_FORBIDDEN = HOP_BY_HOP | frozenset((b"content-length", b"host"))
# What the elite and anonymous modes remove (SPEC [forward] anonymity).
IDENTIFYING = frozenset((b"via", b"x-forwarded-for", b"forwarded", b"x-real-ip"))
# An IP address as X-Forwarded-For carries it (no zone id, no port).
ADDRESS = re.compile(rb"[0-9A-Fa-f.:]+")


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
