"""The express lane's parsers: the two most common heads, read in one regex each.

Most traffic through a reverse proxy is a body-less ``GET`` in canonical form
answered by a response with one ``Content-Length``. For exactly that shape
these functions produce, in a few microseconds, the same bytes the strict
parser (``state``/``framing``) and the header rewrite (``headers``) produce
together in tens of microseconds. Anything else returns None and the caller
uses the strict path, so these functions decide nothing on their own: they
accept a strict *subset* of what the strict parser accepts (canonical
``Name: value`` fields of printable ASCII, no field the proxy must act on),
and ``tests/http/test_quick.py`` checks, with hypothesis, that whatever
they accept gives byte for byte what the strict path gives.

Sans-IO like the rest of ``fastproxy.http``: bytes in, bytes out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from fastproxy.http import syntax
from fastproxy.http.framing import Limits

# A canonical field line: name, ": ", a value of printable ASCII (inner
# spaces allowed) without surrounding whitespace, CRLF. The strict parser
# accepts more (HTAB, obs-text, OWS, empty values); those take the strict path.
_NAME = rb"[" + syntax.NAME_CHAR + rb"]+"
_VALUE = rb"[\x21-\x7e](?:[ \x21-\x7e]*[\x21-\x7e])?"
_FIELDS = rb"(?:" + _NAME + rb": " + _VALUE + rb"\r\n)*"

# Groups: target, fields (each line with its CRLF).
_GET = re.compile(rb"GET (/[\x21\x22\x24-\x7e]*) HTTP/1\.1\r\n(" + _FIELDS + rb")\r\n")
# Fields a request must not carry to be quick: framing, connection
# management, what the proxy rewrites itself, and "close" (a field named
# by ``Connection: close`` would be removed). Host and Connection are
# listed to be found; the patterns match at the LF before a field line.
_REQUEST_SPECIAL = re.compile(
    rb"\n(host|connection|content-length|transfer-encoding|keep-alive|close|"
    rb"proxy-connection|te|trailer|upgrade|http2-settings|expect|max-forwards|"
    rb"x-forwarded-for|x-forwarded-proto|x-forwarded-host|via): ([^\r]*)", re.IGNORECASE)

# A forward proxy's GET: groups authority, path (may be absent), fields.
_FORWARD_GET = re.compile(
    rb"GET http://([\x21\x22\x24-\x2e\x30-\x3e\x40-\x7e]+)(/[\x21\x22\x24-\x7e]*)? HTTP/1\.1\r\n("
    + _FIELDS + rb")\r\n")
# As _REQUEST_SPECIAL, for what a forward proxy removes or refuses: Host,
# Connection, Keep-Alive and every Proxy-* field are removed; the
# identifying fields (Via, X-Forwarded-For, Forwarded, X-Real-IP) take the
# strict path, which applies the anonymity level to them.
_FORWARD_SPECIAL = re.compile(
    rb"\n(host|connection|keep-alive|proxy-[^:\r\n]*|content-length|transfer-encoding|close|"
    rb"te|trailer|upgrade|http2-settings|expect|max-forwards|via|x-forwarded-for|forwarded|"
    rb"x-real-ip): ([^\r]*)", re.IGNORECASE)

# Groups: status, fields. 1xx, 101, 204 and 304 take the strict path.
_RESPONSE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [ \x21-\x7e]*\r\n(" + _FIELDS + rb")\r\n")
_RESPONSE_SPECIAL = re.compile(
    rb"\n(content-length|connection|keep-alive|close|transfer-encoding|proxy-connection|"
    rb"te|trailer|upgrade|http2-settings): ([^\r]*)", re.IGNORECASE)
_LENGTH = re.compile(rb"0|[1-9][0-9]{0,17}")
_FIELD = re.compile(rb"([^:\r\n]+): ([^\r\n]*)\r\n")


def quick_limit(limits: Limits) -> int:
    """The largest head the quick functions take under ``limits``: within it
    no line can exceed a per-line limit, so only the field count is left to check."""
    if limits.max_method < len(b"GET"):
        return 0
    return min(limits.max_header_bytes, limits.max_request_line, limits.max_field_line)


def quick_get(data: bytes, limit: int, max_fields: int
              ) -> tuple[bytes, bytes, bool, bytes] | None:
    """``(target, host, keep_alive, kept)`` when ``data`` is exactly one
    canonical body-less GET head in origin form (and nothing after it), with
    one valid Host, at most one ``Connection: close`` or ``Connection:
    keep-alive`` and none of the other fields in ``_REQUEST_SPECIAL``; else None.

    ``kept`` is the head to forward without its final CRLF: ``data[:-2]``
    less the Connection line. The proxy appends its own fields and the
    final CRLF (``forwarded_suffix``).
    """
    match = _head(_GET, data, limit, max_fields)
    if match is None:
        return None
    start, stop = match.span(2)
    host = None
    keep_alive = True
    cut: list[re.Match[bytes]] = []
    for special in _REQUEST_SPECIAL.finditer(data, start - 1, stop):
        name = special.group(1).lower()
        if name == b"host" and host is None:
            host = special.group(2)
        elif name == b"connection" and not cut:
            option = _connection_option(special.group(2))
            if option is None:
                return None
            keep_alive = option
            cut.append(special)
        else:
            return None
    if host is None or not syntax.HOST.fullmatch(host):
        return None
    kept = data[:start] + _without(data, start, stop, cut) if cut else data[:-2]
    return match.group(1), host, keep_alive, kept


def quick_forward_get(data: bytes, limit: int, max_fields: int
                      ) -> tuple[bytes, bytes, bool, bytes, bytes | None] | None:
    """``(authority, path, keep_alive, fields, credentials)`` when ``data``
    is exactly one canonical body-less GET in absolute form (``http://``),
    with one valid Host, at most one ``Connection: close`` or ``keep-alive``,
    at most one Proxy-Authorization, and none of the other fields in
    ``_FORWARD_SPECIAL`` but Keep-Alive and Proxy-*; else None.

    ``fields`` are the field lines to forward (without Host, Connection,
    Keep-Alive and Proxy-*); ``credentials`` the Proxy-Authorization value.
    """
    match = _head(_FORWARD_GET, data, limit, max_fields)
    if match is None or not syntax.HOST.fullmatch(match.group(1)):
        return None
    start, stop = match.span(3)
    host = False
    option = None  # the Connection field's: keep-alive True, close False
    credentials = None
    cut = list(_FORWARD_SPECIAL.finditer(data, start - 1, stop))
    for special in cut:
        name = special.group(1).lower()
        value = special.group(2)
        if name == b"host" and not host:
            host = True
            if not syntax.HOST.fullmatch(value):
                return None
        elif name == b"connection" and option is None:
            option = _connection_option(value)
            if option is None:
                return None
        elif name == b"proxy-authorization" and credentials is None:
            credentials = value
        elif name == b"proxy-authorization" or (
                name != b"keep-alive" and not name.startswith(b"proxy-")):
            return None
    if not host:
        return None
    return (match.group(1), match.group(2) or b"/", option is not False,
            _without(data, start, stop, cut), credentials)


def quick_fields(data: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The fields of a head ``quick_get`` accepted, as the strict parser gives them."""
    return tuple(_FIELD.findall(data, data.index(b"\r\n") + 2))


def forwarded_suffix(client: bytes, host: bytes) -> bytes:
    """What the reverse proxy appends to a quick GET head (after ``data[:-2]``):
    X-Forwarded-For/-Proto/-Host and Via, as ``headers.add_forwarded_for``
    and ``headers.add_via`` add them to a request that had none, then the end of the head."""
    return (b"X-Forwarded-For: " + client + b"\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: " + host + b"\r\nVia: 1.1 fastproxy\r\n\r\n")


def quick_response(data: bytes, limit: int, max_fields: int, keep_alive: bool = True
                   ) -> tuple[bytes, int, bool] | None:
    """``(bytes for the client, status, reusable)`` when ``data`` is exactly
    one whole HTTP/1.1 response to a GET, 2xx-5xx other than 204 and 304,
    delimited by one Content-Length, whose only hop-by-hop fields are
    ``Keep-Alive`` and one ``Connection: keep-alive`` or ``Connection:
    close``; else None. ``reusable``: the server keeps the connection open.

    The bytes for the client are what the strict path forwards: the
    hop-by-hop fields removed, Content-Length moved to the end of the head,
    and ``Connection: close`` after it when the client is not ``keep_alive``.
    """
    return quick_answer(data, functools.partial(
        quick_response_head, limit=limit, max_fields=max_fields, keep_alive=keep_alive))


def quick_answer(data: bytes, head_of: Callable[[bytes], tuple[bytes | None, int, bool, int] | None]
                 ) -> tuple[bytes, int, bool] | None:
    """``quick_response`` with the head judged by ``head_of`` (``quick_response_head``
    under fixed limits, possibly through a ``Memo``): the head is cut off, judged,
    and the body must be exactly its Content-Length."""
    end = data.find(b"\r\n\r\n") + 4
    found = head_of(data[:end]) if end >= 4 else None
    if found is None or len(data) - end != found[3]:
        return None
    head, status, reusable, _ = found
    return data if head is None else head + data[end:], status, reusable


def quick_response_head(head: bytes, limit: int, max_fields: int, keep_alive: bool
                        ) -> tuple[bytes | None, int, bool, int] | None:
    """``quick_response`` for the head alone (up to and with its blank line):
    ``(head for the client, or None when it is the same, status, reusable,
    Content-Length)``, or None."""
    match = _RESPONSE.fullmatch(head)
    if match is None:
        return None
    start, stop = match.span(2)
    status = int(match.group(1))
    if len(head) > limit or status in (204, 304) or head.count(b"\n", start, stop) > max_fields:
        return None
    length = -1
    option = None  # the Connection field's: keep-alive True, close False
    canonical = False  # Content-Length spelled as the strict path writes it
    cut = list(_RESPONSE_SPECIAL.finditer(head, start - 1, stop))
    for special in cut:
        name = special.group(1).lower()
        value = special.group(2)
        if name == b"content-length":
            if length >= 0 or not _LENGTH.fullmatch(value):
                return None
            length = int(value)
            canonical = special.group(1) == b"Content-Length"
        elif name == b"connection" and option is None:
            option = _connection_option(value)
            if option is None:
                return None
        elif name != b"keep-alive":
            return None
    if length < 0:
        return None
    reusable = option is not False
    if keep_alive and canonical and len(cut) == 1 and cut[0].end() + 2 == stop:
        return None, status, reusable, length  # Content-Length alone and last: as received
    framing = (b"Content-Length: %d\r\n\r\n" if keep_alive
               else b"Content-Length: %d\r\nConnection: close\r\n\r\n") % length
    return (head[:start] + _without(head, start, stop, cut) + framing, status, reusable, length)


class Memo:
    """A bounded memo of one quick function with a listener's fixed limits.

    The quick functions are pure, and the same heads come again and again
    (a client's requests, a server's answers within one Date second), so a
    dictionary hit (hashing the head) replaces the regexes. Heads longer
    than ``longest`` are not kept; a full memo is emptied, so hostile input
    costs at most a rebuild. ``keep(data)`` False keeps a head out (e.g.
    one carrying credentials, which must not stay in memory as plain text)."""

    def __init__(self, function: Callable[[bytes], Any], size: int = 512,
                 longest: int = 4096, keep: Callable[[bytes], bool] | None = None) -> None:
        self.function = function
        self.size = size
        self.longest = longest
        self.keep = keep
        self.entries: dict[bytes, Any] = {}

    def __call__(self, data: bytes) -> Any:
        found = self.entries.get(data, _UNKNOWN)
        if found is _UNKNOWN:
            found = self.function(data)
            if len(data) <= self.longest and (self.keep is None or self.keep(data)):
                if len(self.entries) >= self.size:
                    self.entries.clear()
                self.entries[data] = found
        return found


_UNKNOWN = object()
_CREDENTIALS = re.compile(rb"\n[Pp][Rr][Oo][Xx][Yy]-[Aa][Uu][Tt][Hh]")


def without_credentials(data: bytes) -> bool:
    """Whether a head carries no Proxy-Authorization (nor Proxy-Authenticate) field."""
    return _CREDENTIALS.search(data) is None


def _head(pattern: re.Pattern[bytes], data: bytes, limit: int, max_fields: int
          ) -> re.Match[bytes] | None:
    """``pattern``'s full match of a request head within the limits, else None."""
    if len(data) > limit or data[-4:] != b"\r\n\r\n":
        return None
    match = pattern.fullmatch(data)
    if match is None:
        return None
    fields_start = match.start(match.lastindex or 0)  # the fields are the last group
    return None if data.count(b"\n", fields_start, len(data) - 2) > max_fields else match


def _connection_option(value: bytes) -> bool | None:
    """A Connection value the quick path takes: keep-alive True, close False, else None."""
    value = value.lower()
    if value == b"keep-alive":
        return True
    return False if value == b"close" else None


def _without(data: bytes, start: int, stop: int, cut: list[re.Match[bytes]]) -> bytes:
    """The field lines ``data[start:stop]`` less the lines ``cut`` matched
    (each match runs from the LF before its line to just before its CRLF)."""
    pieces = []
    kept = start
    for special in cut:
        pieces.append(data[kept:special.start() + 1])
        kept = special.end() + 2
    pieces.append(data[kept:stop])
    return b"".join(pieces)
