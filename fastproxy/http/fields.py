"""Canonical field sections: the one representation of a head's fields.

A parsed head keeps its field section as one ``bytes`` block in *canonical
form*: every field line is exactly ``Name: value\\r\\n`` (the name as
received, one SP after the colon, the value without the optional
whitespace around it, RFC 9110 §5.5 and RFC 9112 §5), and there is no
final empty line. A field line with an empty value is ``Name: \\r\\n``. The
list of ``(name, value)`` pairs and the block say the same thing; the block
is what a proxy forwards, the list is built only when someone asks for it.

Beside the block a head carries ``special``: in order, every line whose
lowercase name is in ``SPECIAL_NAMES`` or starts with ``proxy-``, as
``(lowercase name, value, start, end)`` where ``block[start:end]`` is the
whole line with its CRLF. These are the fields a proxy acts on: framing
(RFC 9112 §6), routing (Host, RFC 9112 §3.2), connection management and
hop-by-hop fields (RFC 9110 §7.6.1), Expect (§10.1.1), Max-Forwards
(§7.6.2), Via (§7.6.3), the forwarding headers (RFC 7239 and the de-facto
X-Forwarded-*) and credentials (Authorization, Cookie, Proxy-*). Everything
a proxy decides is decided from ``special``; every rewrite cuts the block at
its spans (``rewrite.py``).

``special_of`` finds those lines with one ``finditer`` of ``SPECIAL_LINE``:
in a canonical block an LF is always the end of a line, so each match starts
at the LF before a line and needs no validation of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastproxy.http import syntax

Field = tuple[bytes, bytes]
Headers = tuple[Field, ...]
Special = tuple[tuple[bytes, bytes, int, int], ...]

SPECIAL_NAMES = frozenset((
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade", b"http2-settings", b"expect",
    b"max-forwards", b"via", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
    b"forwarded", b"x-real-ip", b"authorization", b"cookie",
))
SPECIAL_PREFIX = b"proxy-"


def is_special(name: bytes) -> bool:
    """Whether lines named ``name`` (lowercase) are listed in ``special``."""
    return name in SPECIAL_NAMES or name.startswith(SPECIAL_PREFIX)


def _alternation(names: Iterable[bytes]) -> bytes:
    """A regex alternation of ``names`` factored by common prefixes, so that a
    line whose name is not special is refused after a byte or two."""
    by_first: dict[bytes, list[bytes]] = {}
    ends_here = False
    for name in names:
        if name:
            by_first.setdefault(name[:1], []).append(name[1:])
        else:
            ends_here = True
    branches = [re.escape(first) + _alternation(rests) for first, rests in sorted(by_first.items())]
    if not branches:
        return b""
    body = b"(?:" + b"|".join(branches) + b")" if len(branches) > 1 else branches[0]
    return b"(?:" + body + b")?" if ends_here else body


# From the LF before a canonical line: groups name, value. A name is matched
# whole because ": " follows it (a colon is not a name byte).
SPECIAL_LINE = re.compile(
    rb"\n(" + _alternation(n for n in SPECIAL_NAMES if not n.startswith(SPECIAL_PREFIX))
    + rb"|proxy-[" + syntax.NAME_CHAR + rb"]*): ([^\r]*+)",
    re.IGNORECASE)
# Any canonical line: groups name, value.
_LINE = re.compile(rb"([^:\r\n]*+): ([^\r\n]*+)\r\n")


def special_of(text: bytes, base: int) -> Special:
    """The special lines of the canonical block ``text[base:]``, spans relative
    to ``base``; ``text[base - 1]`` must be an LF (use ``b"\\n" + block``, 1)."""
    found = []
    for match in SPECIAL_LINE.finditer(text, base - 1):
        name, value = match.groups()
        start, end = match.span()
        found.append((name.lower(), value, start + 1 - base, end + 2 - base))
    return tuple(found)


def canonical_block(fields: Iterable[Field]) -> bytes:
    """The canonical block of ``(name, value)`` pairs (values already stripped)."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])


def fields_of(block: bytes) -> Headers:
    """The ``(name, value)`` pairs of a canonical block."""
    return tuple(_LINE.findall(block))


def all_lines(block: bytes) -> Special:
    """Every line of a canonical block in the form of ``special`` (for the rare
    rewrite that must find fields by a name that is not special)."""
    return tuple([(m.group(1).lower(), m.group(2), m.start(), m.end())
                  for m in _LINE.finditer(block)])


def grouped(special: Special) -> dict[bytes, list[bytes]]:
    """The values of the special lines, grouped by lowercase name, in order."""
    found: dict[bytes, list[bytes]] = {}
    for name, value, _, _ in special:
        if name in found:
            found[name].append(value)
        else:
            found[name] = [value]
    return found
