"""The HTTP/1.1 grammar as precompiled regular expressions (after h11 ``_abnf.py``).

Every pattern is used with ``fullmatch`` (or anchored with ``^`` in
MULTILINE mode), is written so that no two alternatives or adjacent
repetitions can match the same byte, and therefore runs in linear time on
hostile input. Sources: RFC 9110 §5.1 (field names are ``token``), §5.5
(field values), §5.6.2 (``tchar``), §5.6.4 (quoted-string); RFC 9112 §3
(request line), §4 (status line), §5 (field lines), §7.1 (chunks); RFC 3986
§3.2 (authority).

Deliberately stricter than the RFC grammar, per the SPEC's parsing policy:

- field names may not contain ``_`` (it is a ``tchar``, but some servers map
  ``_`` and ``-`` to the same CGI variable: a header-smuggling vector);
- a request-target is VCHAR only, without ``#`` (no obs-text, no controls,
  no spaces, no fragment);
- chunk lines allow no whitespace at all (no BWS around ``;`` or ``=``);
- a host is ``IP-literal`` or a non-empty ``reg-name`` without ``,`` (a comma
  would read as a list separator to some recipients), the port 1-5 digits.
"""

from __future__ import annotations

import re

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
# "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA (as a character class body).
TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# Field names: tchar without "_" (see the module docstring).
NAME_CHAR = rb"!#$%&'*+\-.^`|~0-9A-Za-z"
# field-vchar = VCHAR / obs-text (RFC 9110 §5.5).
FIELD_VCHAR = rb"\x21-\x7e\x80-\xff"

# A whole field line ending in CRLF, at the start of a line (RFC 9112 §5):
#   field-line = field-name ":" OWS field-value OWS
#   field-value = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
# Groups: name, value without the surrounding OWS.
FIELD_LINE = re.compile(
    rb"^([" + NAME_CHAR + rb"]+):[ \t]*"
    rb"((?:[" + FIELD_VCHAR + rb"](?:[ \t" + FIELD_VCHAR + rb"]*[" + FIELD_VCHAR + rb"])?)?)"
    rb"[ \t]*\r\n",
    re.MULTILINE,
)
FIELD_NAME = re.compile(rb"[" + NAME_CHAR + rb"]+")
TOKEN = re.compile(rb"[" + TCHAR + rb"]+")
# The longest run of tchar at the start of a buffer (an unfinished method).
TOKEN_PREFIX = re.compile(rb"[" + TCHAR + rb"]*")
# Any byte that may not appear in a field value: CTLs other than HTAB, and DEL.
VALUE_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# A CR not followed by LF, or an LF not preceded by CR (RFC 9112 §2.2: we
# accept CRLF only). A CR at the very end of a buffer is not yet bare.
BARE_CR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version.
# Only the two versions we serve match; everything else is diagnosed slowly.
_TARGET_CHAR = rb"\x21\x22\x24-\x7e"  # VCHAR without "#" (no fragment, RFC 9112 §3.2)
REQUEST_LINE = re.compile(rb"([" + TCHAR + rb"]+) ([" + _TARGET_CHAR + rb"]+) HTTP/(1\.[01])")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ];
# the SP before an empty reason is tolerated when missing, as h11 does.
STATUS_LINE = re.compile(
    rb"HTTP/(1\.[01]) ([1-5][0-9][0-9])(?: ([\t \x21-\x7e\x80-\xff]*))?")
# RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT (well formed, any value).
HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
REQUEST_TARGET = re.compile(rb"[" + _TARGET_CHAR + rb"]+")

# Whole heads in canonical form (``fields.py``): the start line and field lines
# ``Name: value`` CRLF with one SP after the colon and no OWS around the value,
# each line checked as FIELD_LINE checks it. The parser tries these first and
# falls back to the line-by-line path for anything else. The possessive
# quantifiers never give back a byte (the next byte is always a delimiter),
# and the look-behind refuses a value that ends in SP or HTAB. Groups: the
# request line's method, target, version; the status line's version, code,
# reason (None when the SP before an empty reason is missing).
_CANONICAL_FIELDS = (
    rb"(?:[" + NAME_CHAR + rb"]++: (?:[" + FIELD_VCHAR + rb"][\t " + FIELD_VCHAR
    + rb"]*+(?<![\t ]))?\r\n)*+")
CANONICAL_REQUEST_HEAD = re.compile(
    rb"([" + TCHAR + rb"]++) ([" + _TARGET_CHAR + rb"]++) HTTP/(1\.[01])\r\n" + _CANONICAL_FIELDS)
CANONICAL_RESPONSE_HEAD = re.compile(
    rb"HTTP/(1\.[01]) ([1-5][0-9][0-9])(?: ([\t \x21-\x7e\x80-\xff]*+))?\r\n"
    + _CANONICAL_FIELDS)

# RFC 3986 §3.2.2 host (reg-name without ","; IP-literal loosely: hex, ":" and
# "." between brackets) and §3.2.3 port.
# (Possessive: a run of plain bytes is taken whole; "%" starts no run, ":" ends the host.)
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+;=]++|%[0-9A-Fa-f]{2})++"
_HOST = rb"(?:\[[0-9A-Fa-f:.]+\]|" + _REG_NAME + rb")"
HOST = re.compile(_HOST + rb"(?::[0-9]{1,5})?")
# RFC 9112 §3.2.3: authority-form = uri-host ":" port (CONNECT only).
AUTHORITY_FORM = re.compile(_HOST + rb":[0-9]{1,5}")
# RFC 9112 §3.2.2: absolute-form = absolute-URI. Groups: scheme, authority, rest.
ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)(.*)")

# RFC 9112 §7.1: chunk-size = 1*HEXDIG (at most 16 digits: 64 bits), then
# chunk-ext = *( ";" chunk-ext-name [ "=" chunk-ext-val ] ) with no BWS.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;[" + TCHAR + rb"]+(?:=(?:[" + TCHAR + rb"]+|" + _QUOTED + rb"))?)*)")
HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]*")
