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
- ``headers``     the field-name sets the rules use, serialisation and chunk
  framing;
- ``memo``        recently parsed heads, so that a head seen again is not parsed again.
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
                                   encode_chunk,
                                   encode_last_chunk,
                                   encode_piece,
                                   serialize_request,
                                   serialize_response,
)
from fastproxy.http.rewrite import (
                                   connection_options,
                                   edit_head,
                                   forwarded_for,
                                   framing_field,
                                   max_forwards,
                                   upgrade_protocols,
)
from fastproxy.http.state import ParserUsageError, RequestParser, ResponseParser, State

__all__ = [
    "DEFAULT_LIMITS", "NEED_DATA", "PAUSED", "SPECIAL_NAMES", "BodyKind", "ConnectionClosed",
    "Data", "EndOfMessage", "Event", "Field", "Headers", "InformationalResponse", "Limits",
    "ParserUsageError", "Request", "RequestParser", "Response", "ResponseParser", "Signal",
    "Special", "State", "connection_options", "edit_head", "encode_chunk", "encode_last_chunk",
    "encode_piece", "forwarded_for", "framing_field", "max_forwards", "serialize_request",
    "serialize_response", "upgrade_protocols",
]
