"""Head checks and body framing: limits, field lines, start lines, the body length rules.

Theory of operation
-------------------
The parser driver (``state.py``) finds a complete head with one
``find(b"\\r\\n\\r\\n")`` and hands it to ``heads.py`` in one piece. A head
in canonical form is checked by one regex there; any other head is checked
here in a few C-level passes (one regex for the start line, one ``findall``
for all field lines, one ``count`` for the line total) and only a failure
walks the lines one by one to name the precise fault. An unfinished head is
checked with ``check_partial_head`` each time bytes arrive, so that oversized
or garbled input is refused at once rather than at the header timeout.

Rules (the SPEC's "HTTP parsing policy", which picks the strict side wherever
RFC 9110/9112 leave a choice):

1. CRLF only (RFC 9112 §2.2): a bare CR or bare LF anywhere is a 400.
2. Limits: method 501, request line 414, field line / field count / head
   bytes 431, announced Content-Length over ``max_body_bytes`` 413.
3. Body length (RFC 9112 §6.3): Transfer-Encoding and Content-Length
   together, an invalid or ambiguous Content-Length, Transfer-Encoding in an
   HTTP/1.0 message, a final coding other than ``chunked`` or ``chunked``
   twice are framing errors (400), never guessed around (§6.1 smuggling).
   Any coding besides ``chunked`` is 501: we do not decode, and forwarding a
   coding we cannot re-frame is not safe.
4. ``Connection`` may not name Content-Length or Transfer-Encoding (a peer
   that drops hop-by-hop fields would otherwise drop the framing).
5. Content-Length is ``1*DIGIT`` (leading zeros allowed: ``005`` is 5); a
   list, or repeated fields, must repeat the very same bytes (``5, 5``),
   else 400. More than 18 significant digits is 413.

Responses go through the same checks; ``state.ResponseParser`` maps every
error it raises to 502 (an upstream fault).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Literal

from fastproxy.errors import ProtocolError
from fastproxy.http import syntax
from fastproxy.http.fields import Field

CRLF = b"\r\n"
Role = Literal["request", "response", "trailers"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of one parser (SPEC "Limits"; 0 for max_body_bytes = unlimited)."""

    max_method: int = 32             # bytes; longer -> 501
    max_request_line: int = 8192     # bytes without CRLF; longer -> 414
    max_field_line: int = 8192       # bytes without CRLF; longer -> 431
    max_fields: int = 100            # field lines per head or trailer section -> 431
    max_header_bytes: int = 65536    # whole head with its CRLFs -> 431
    max_body_bytes: int = 0          # announced or streamed body -> 413; 0 = unlimited
    max_chunk_ext: int = 4096        # chunk extension bytes per chunk line -> 400
    max_leading_crlf: int = 4        # empty lines tolerated before a request line


DEFAULT_LIMITS = Limits()


class BodyKind(str, enum.Enum):
    """How the body of the message just parsed is delimited (RFC 9112 §6.3)."""

    NONE = "none"          # no body
    LENGTH = "length"      # Content-Length bytes (possibly 0)
    CHUNKED = "chunked"    # chunked transfer coding
    CLOSE = "close"        # response body read until the connection closes
    TUNNEL = "tunnel"      # no body; the connection switches protocol after the head


def fail(message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(message, status=status)


# -- unfinished heads ---------------------------------------------------------------
def check_partial_head(buf: bytearray, checked: int, limits: Limits, role: Role) -> None:
    """Refuse an unfinished head (no CRLFCRLF yet) that can already never be valid.

    ``role`` is ``"request"``, ``"response"`` or ``"trailers"`` (no start
    line); ``checked`` is how many leading bytes an earlier call examined.
    Raises ProtocolError (400, 414, 431, 501 or 505).
    """
    n = len(buf)
    end = n - 1 if buf.endswith(b"\r") else n
    if syntax.BARE_CR_LF.search(buf, max(checked - 1, 0), end):
        raise fail("bare CR or LF in a head (lines must end in CRLF)")
    if role != "trailers":
        _check_partial_start_line(buf, checked, limits, role == "request")
    last = buf.rfind(CRLF)
    field_start = last + 2 if last >= 0 else 0 if role == "trailers" else end
    if end - field_start > limits.max_field_line:
        raise fail("field line too long", 431)
    if n > limits.max_header_bytes:
        raise fail("head too large", 431)


def _check_partial_start_line(buf: bytearray, checked: int, limits: Limits, request: bool) -> None:
    line_end = buf.find(CRLF)
    if line_end >= 0:
        if checked < line_end + 2:  # the start line has just completed: check it now
            if request:
                request_line(bytes(buf[:line_end]), limits)
            else:
                status_line(bytes(buf[:line_end]))
        return
    if request:
        _check_method_prefix(buf, limits)
    elif not b"HTTP/".startswith(buf[:5]):
        raise fail("status line does not start with HTTP/")
    if len(buf) > limits.max_request_line + 1:
        raise fail("start line too long", 414)


def _check_method_prefix(buf: bytes | bytearray, limits: Limits) -> None:
    k = syntax.TOKEN_PREFIX.match(buf, 0, limits.max_method + 2).end()  # type: ignore[union-attr]
    if k > limits.max_method:
        raise fail("method too long", 501)
    if k < len(buf) and buf[k] != 0x20:
        raise fail("method is not a token")
    if k == 0 and buf:
        raise fail("empty method")


# -- field lines ----------------------------------------------------------------------
def parse_fields(block: bytes, limits: Limits) -> list[Field]:
    """Field lines (each ending in CRLF) to ``[(name, value), ...]``.

    Raises ProtocolError: 431 for too many or too long lines, else 400.
    """
    if not block:
        return []
    count = check_field_limits(block, limits)
    fields: list[Field] = syntax.FIELD_LINE.findall(block)
    if len(fields) != count:
        _diagnose_fields(block)
    return fields


def check_field_limits(block: bytes, limits: Limits) -> int:
    """The number of lines of a field block ending in CRLF; 431 if there are
    too many or one is too long (rule 2)."""
    count = block.count(b"\n")
    if count > limits.max_fields:
        raise fail(f"more than {limits.max_fields} field lines", 431)
    if len(block) > limits.max_field_line and \
            max(map(len, block.split(CRLF))) > limits.max_field_line:
        raise fail("field line too long", 431)
    return count


def _diagnose_fields(block: bytes) -> None:
    """Raise the 400 that names the first bad line of ``block``."""
    for index, line in enumerate(block[:-2].split(CRLF)):
        if b"\r" in line or b"\n" in line:
            raise fail("bare CR or LF in a field line (lines must end in CRLF)")
        if line[:1] in (b" ", b"\t"):
            raise fail("whitespace before the first field line" if index == 0
                       else "obs-fold (line folding) is not allowed")
        name, colon, value = line.partition(b":")
        if not colon:
            raise fail("field line without a colon")
        if not name:
            raise fail("empty field name")
        if name[-1:] in (b" ", b"\t"):
            raise fail("whitespace before the colon")
        if b"_" in name:
            raise fail("underscore in a field name")
        if not syntax.FIELD_NAME.fullmatch(name):
            raise fail("field name is not a token")
        if syntax.VALUE_CTL.search(value):
            raise fail("control byte in a field value")
    raise fail("malformed field line")


def list_tokens(values: Sequence[bytes]) -> set[bytes]:
    """Lowercase elements of a comma-separated list field, empty ones dropped."""
    tokens = {t.strip(b" \t").lower() for v in values for t in v.split(b",")}
    tokens.discard(b"")
    return tokens


_TOKENS: dict[bytes, frozenset[bytes]] = {}


def value_tokens(value: bytes) -> frozenset[bytes]:
    """``list_tokens`` of one field value, memoised for short values: the few
    Connection values that recur (``keep-alive``, ``close``, ``Upgrade``) cost
    a dictionary look-up. The memo holds at most 256 values of 64 bytes."""
    tokens = _TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(list_tokens((value,)))
        if len(value) <= 64:
            if len(_TOKENS) >= 256:
                _TOKENS.clear()
            _TOKENS[value] = tokens
    return tokens


# -- framing --------------------------------------------------------------------------
_NO_OPTIONS: frozenset[bytes] = frozenset()
_KNOWN_CODINGS = frozenset((b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"))


def content_length(values: Sequence[bytes]) -> int:
    """The one Content-Length the field lines ``values`` state (rule 5)."""
    digits = values[0]
    if len(values) != 1 or not digits.isdigit():
        elements = [e.strip(b" \t") for v in values for e in v.split(b",")]
        digits = elements[0]
        for element in elements:
            if not element.isdigit():
                raise fail("Content-Length is not a decimal number")
            if element != digits:
                raise fail("Content-Length lists different values")
    significant = digits.lstrip(b"0") or b"0"
    if len(significant) > 18:
        raise fail("Content-Length too large", 413)
    return int(significant)


def check_codings(values: Sequence[bytes]) -> None:
    """Accept only a Transfer-Encoding whose sole coding is ``chunked`` (rule 3)."""
    codings = [c.strip(b" \t").lower() for v in values for c in v.split(b",")]
    codings = [c for c in codings if c]
    for coding in codings:
        if not syntax.TOKEN.fullmatch(coding.partition(b";")[0].rstrip(b" \t")):
            raise fail("Transfer-Encoding has an invalid coding")
    if codings.count(b"chunked") > 1:
        raise fail("Transfer-Encoding names chunked twice")
    if not codings or codings[-1] != b"chunked":
        raise fail("Transfer-Encoding does not end with chunked")
    if len(codings) > 1:
        other = codings[0].partition(b";")[0].rstrip(b" \t")
        what = "unsupported" if other in _KNOWN_CODINGS else "unknown"
        raise fail(f"{what} transfer coding {other.decode('ascii')!r}", 501)


def framing(found: dict[bytes, list[bytes]], version: bytes) -> tuple[BodyKind, int, bool]:
    """``(kind, length, keep_alive)`` the fields announce (RFC 9112 §6.3, §9.3).

    ``kind`` is NONE when the fields announce no body; the caller applies
    the rules that do not depend on fields (HEAD, 1xx, 204, 304, CONNECT).
    """
    values = found.get(b"connection")
    if values is None:
        options: Set[bytes] = _NO_OPTIONS
    else:
        options = (_TOKENS.get(values[0]) or value_tokens(values[0])) if len(values) == 1 \
            else list_tokens(values)
    if options:
        if b"content-length" in options or b"transfer-encoding" in options:
            raise fail("Connection names a framing field")
        alive = b"close" not in options and (version == b"1.1" or b"keep-alive" in options)
    else:
        alive = version == b"1.1"
    te = found.get(b"transfer-encoding")
    if te is not None:
        if version == b"1.0":
            raise fail("Transfer-Encoding in an HTTP/1.0 message")
        if b"content-length" in found:
            raise fail("both Content-Length and Transfer-Encoding")
        check_codings(te)
        return BodyKind.CHUNKED, 0, alive
    cl = found.get(b"content-length")
    if cl is not None:
        return BodyKind.LENGTH, content_length(cl), alive
    return BodyKind.NONE, 0, alive


def check_body_limit(kind: BodyKind, length: int, limits: Limits) -> None:
    if kind is BodyKind.LENGTH and limits.max_body_bytes and length > limits.max_body_bytes:
        raise fail(f"Content-Length {length} exceeds {limits.max_body_bytes}", 413)


# -- chunk lines ----------------------------------------------------------------------
def parse_chunk_line(line: bytes, limits: Limits) -> tuple[int, bytes]:
    """``chunk-size [ chunk-ext ]`` without its CRLF to ``(size, ext)`` (RFC 9112 §7.1)."""
    match = syntax.CHUNK_LINE.fullmatch(line)
    if match is not None:
        size, ext = match.groups()
        if len(ext) > limits.max_chunk_ext:
            raise fail("chunk extensions too long")
        return int(size, 16), ext
    digits = syntax.HEX_DIGITS.match(line).end()  # type: ignore[union-attr]
    if digits > 16:
        raise fail("chunk size has more than 16 hex digits")
    if b"\r" in line or b"\n" in line:
        raise fail("bare CR or LF in a chunk line")
    if digits == 0:
        raise fail("chunk size is not hexadecimal (no sign, prefix or space allowed)")
    if line[digits:digits + 1] in (b"x", b"X"):
        raise fail("chunk size has a 0x prefix")
    if line[digits:digits + 1] in (b" ", b"\t"):
        raise fail("whitespace after the chunk size")
    if len(line) - digits > limits.max_chunk_ext:
        raise fail("chunk extensions too long")
    raise fail("malformed chunk extension")


# -- start lines ----------------------------------------------------------------
def status_line(line: bytes) -> tuple[bytes, int, bytes]:
    """``(version, status, reason)`` of a status line without its CRLF."""
    match = syntax.STATUS_LINE.fullmatch(line)
    if match is None:
        if b"\r" in line or b"\n" in line:
            raise fail("bare CR or LF in the status line")
        if syntax.HTTP_VERSION.fullmatch(line.partition(b" ")[0]):
            raise fail("unsupported HTTP version", 505)
        raise fail("malformed status line")
    version, code, reason = match.groups()
    return version, int(code), reason or b""


def request_line(line: bytes, limits: Limits) -> tuple[bytes, bytes, bytes]:
    """``(method, target, version)`` of a request line without its CRLF."""
    if len(line) > limits.max_request_line:
        raise fail("request line too long", 414)
    match = syntax.REQUEST_LINE.fullmatch(line)
    if match is None:
        _diagnose_request_line(line, limits)
    method, target, version = match.groups()  # type: ignore[union-attr]
    if len(method) > limits.max_method:
        raise fail("method too long", 501)
    return method, target, version


def _diagnose_request_line(line: bytes, limits: Limits) -> None:
    """Raise the error that names what is wrong with a request line."""
    if b"\r" in line or b"\n" in line:
        raise fail("bare CR or LF in the request line")
    _check_method_prefix(line, limits)
    parts = line.split(b" ")
    if len(parts) == 2:
        raise fail("HTTP/0.9 request (no HTTP version)")
    if len(parts) != 3 or not parts[1]:
        raise fail("request line is not method SP target SP version")
    if not syntax.REQUEST_TARGET.fullmatch(parts[1]):
        raise fail("invalid byte in the request-target")
    if syntax.HTTP_VERSION.fullmatch(parts[2]):
        raise fail("unsupported HTTP version", 505)
    raise fail("malformed HTTP version")
