"""Sans-IO HTTP/1.1: bytes in, events out (no sockets, no selectors, no signals).

- ``events``  Request, InformationalResponse, Response, Data, EndOfMessage,
  ConnectionClosed, and the NEED_DATA / PAUSED signals;
- ``state``   RequestParser and ResponseParser, the per-direction drivers;
- ``framing`` Limits, BodyKind and the RFC 9112 head and framing rules;
- ``syntax``  the grammar as precompiled regular expressions;
- ``headers`` hop-by-hop removal, Via/X-Forwarded-For, anonymisation,
  Max-Forwards, serialisation and chunked re-framing.
"""

from fastproxy.http.events import (
                                   NEED_DATA,
                                   PAUSED,
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
from fastproxy.http.state import ParserUsageError, RequestParser, ResponseParser, State

__all__ = [
    "DEFAULT_LIMITS", "NEED_DATA", "PAUSED", "BodyKind", "ConnectionClosed", "Data",
    "EndOfMessage", "Event", "Field", "Headers", "InformationalResponse", "Limits",
    "ParserUsageError", "Request", "RequestParser", "Response", "ResponseParser", "Signal",
    "State", "add_forwarded_for", "add_via", "anonymize", "connection_options",
    "decrement_max_forwards", "encode_chunk", "encode_last_chunk", "encode_piece",
    "frame_headers", "remove_fields", "remove_hop_by_hop", "serialize_request",
    "serialize_response", "upgrade_protocols",
]
