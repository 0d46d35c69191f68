"""Sans-IO HTTP/1.1: bytes in, events out (no sockets, no selectors, no signals).

- ``events``      Request, InformationalResponse, Response (lazy heads over a
  canonical field block), Data, EndOfMessage, ConnectionClosed, and the
  NEED_DATA / PAUSED signals;
- ``fields``      the canonical field block, SPECIAL_NAMES and the special lines;
- ``state``       RequestParser and ResponseParser, the per-direction drivers,
  over ``transitions`` (the table) and ``body`` (body readers, ``read_body``);
- ``heads``       whole heads to events: the canonical fast path and the general one;
- ``framing``     Limits, BodyKind and the RFC 9112 head and framing rules;
- ``syntax``      the grammar as precompiled regular expressions;
- ``rewrite``     ``edit_head``: the single-pass head rewrite, and the field
  lines a proxy adds (X-Forwarded-For, framing, Max-Forwards);
- ``headers``     the same operations on field lists (hop-by-hop removal,
  Via/X-Forwarded-For, anonymisation, Max-Forwards), serialisation and
  chunked re-framing.

``connection_options`` and ``upgrade_protocols`` here are the field-list
versions (``headers``); the head versions are ``rewrite.connection_options``
and ``rewrite.upgrade_protocols``.
"""

from fastproxy.http.events import (
                                   NEED_DATA,
                                   PAUSED,
                                   SPECIAL_NAMES,
                                   ConnectionClosed,
                                   Data,
                                   EndOfMessage,
                                   Event,
                                   Field,
                                   Headers,
                                   InformationalResponse,
                                   Request,
                                   Response,
                                   Signal,
                                   Special,
)
from fastproxy.http.framing import DEFAULT_LIMITS, BodyKind, Limits
from fastproxy.http.headers import (
                                   add_forwarded_for,
                                   add_via,
                                   anonymize,
                                   connection_options,
                                   decrement_max_forwards,
                                   encode_chunk,
                                   encode_last_chunk,
                                   encode_piece,
                                   frame_headers,
                                   remove_fields,
                                   remove_hop_by_hop,
                                   serialize_request,
                                   serialize_response,
                                   upgrade_protocols,
)
from fastproxy.http.rewrite import edit_head, forwarded_for, framing_field, max_forwards
from fastproxy.http.state import ParserUsageError, RequestParser, ResponseParser, State

__all__ = [
    "DEFAULT_LIMITS", "NEED_DATA", "PAUSED", "SPECIAL_NAMES", "BodyKind", "ConnectionClosed",
    "Data", "EndOfMessage", "Event", "Field", "Headers", "InformationalResponse", "Limits",
    "ParserUsageError", "Request", "RequestParser", "Response", "ResponseParser", "Signal",
    "Special", "State", "add_forwarded_for", "add_via", "anonymize", "connection_options",
    "decrement_max_forwards", "edit_head", "encode_chunk", "encode_last_chunk", "encode_piece",
    "forwarded_for", "frame_headers", "framing_field", "max_forwards", "remove_fields",
    "remove_hop_by_hop", "serialize_request", "serialize_response", "upgrade_protocols",
]
