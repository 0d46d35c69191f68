"""Sans-IO decoder (and test encoders) for the PROXY protocol, versions 1 and 2.

A load balancer in front of a listener with ``proxy_protocol = true`` sends one
header naming its client before that client's first byte.  Source of truth:
HAProxy's "The PROXY protocol, Versions 1 & 2"; section numbers refer to it.

Format.  v1 (2.1): one ASCII line, at most 107 bytes including the CRLF:
"PROXY TCP4|TCP6 <src ip> <dst ip> <src port> <dst port>\r\n" or
"PROXY UNKNOWN[ <ignored>]\r\n".  v2 (2.2): 12-byte signature; byte 13 =
version 2 << 4 | command (0 LOCAL, 1 PROXY); byte 14 = family (UNSPEC 0, INET 1,
INET6 2, UNIX 3) << 4 | transport (STREAM 1, DGRAM 2), or 0x00; u16 big-endian
length of the rest; the address block (INET 12 / INET6 36 bytes: src, dst,
src port, dst port; UNIX 216: two 108-byte paths); then raw TLVs (2.2.7: type
u8, length u16 big-endian, value).

Rules (strict: a violation raises ProxyProtocolError as early as possible)
  1. Input fails at the first byte that makes it a prefix of neither b"PROXY "
     nor the v2 signature: on the very first byte unless it is "P" or CR.
  2. v1: a bare CR or LF, or 107 bytes without a LF, fail at once.  The line
     must match the grammar exactly: single spaces, IPv4 without leading
     zeros, no IPv6 zone ids, ports 0-65535 without leading zeros.
  3. v2: version and command are checked at byte 13; the family at byte 14
     must be one 2.2 defines ("other values ... must be rejected") and PROXY
     over datagrams is unsupported (listeners are streams).  The length must be
     <= MAX_V2_LENGTH (ours) and is checked before the payload is awaited.  The
     family's address block must fit in it (for LOCAL too, whose addresses are
     then ignored) and the TLVs must tile the remainder exactly.
  4. v2 LOCAL and v1 UNKNOWN give command "LOCAL"; they and v2 PROXY over
     UNSPEC give family "unknown" and ``source`` None: use the real peer
     address.  Unix endpoints are (path, 0), trailing NULs stripped.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastproxy.errors import ProtocolError

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LINE = 107          # 2.1: "at most 107 characters", CRLF included
MAX_V2_LENGTH = 4096       # bound on the v2 u16 length field (ours)
UNIX_PATH = 108            # 2.2: sun_path size in the UNIX address block

Address = tuple[str, int]
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Reader = Callable[[bytes], "tuple[ProxyHeader, int] | None"]   # None: need more bytes
_COMMANDS = ("LOCAL", "PROXY")           # v2 low nibble of byte 13
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_IP_TEXT = {b"TCP4": (re.compile(rb"[0-9.]+"), ipaddress.IPv4Address),
            b"TCP6": (re.compile(rb"[0-9A-Fa-f:.]+"), ipaddress.IPv6Address)}


class AddressFamily(enum.IntEnum):         # high nibble of the v2 family byte (2.2)
    UNSPEC = 0
    INET = 1
    INET6 = 2
    UNIX = 3


_FAMILY_BYTES = ({0x00} | {af << 4 | tr for af in (1, 2, 3) for tr in (1, 2)},  # LOCAL: any
                 {0x00, 0x11, 0x21, 0x31})                       # PROXY: no datagrams (UDP)
_FAMILIES = {AddressFamily.UNSPEC: ("unknown", 0), AddressFamily.INET: ("tcp4", 12),
             AddressFamily.INET6: ("tcp6", 36), AddressFamily.UNIX: ("unix", 2 * UNIX_PATH)}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One decoded header; ``source is None`` means "use the real peer address"."""
    version: int                          # 1 or 2
    command: str                          # "PROXY" or "LOCAL" (v1 UNKNOWN -> "LOCAL")
    family: str                           # "tcp4", "tcp6", "unix", "unknown"
    source: Address | None                # original client; (path, 0) for unix
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()   # v2 TLVs (type, value), raw


class ProxyProtocolError(ProtocolError, ValueError):
    """Malformed or unsupported PROXY header; ``reason`` names the broken rule.
    Side client, not retryable: close the connection (status 400 is unused)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"PROXY protocol: {reason}", retryable=False)
        self.reason = reason


class ProxyDecoder:
    """Incremental decoder for the PROXY header at the start of one connection.

    feed(data) -> ProxyHeader | None: append bytes; return the header once
    complete, None while more are needed.  Raises ProxyProtocolError as soon as
    the input cannot be a valid header (and again on every later call), and
    RuntimeError if called after the header was returned.  Then ``header``
    holds it and ``rest`` the bytes that followed: the start of the stream.
    """

    def __init__(self) -> None:
        self._reader: _Reader | None = None      # None while matching the signature
        self._buf = bytearray()
        self._error: ProxyProtocolError | None = None
        self.header: ProxyHeader | None = None
        self.rest = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self.header is not None:
            raise RuntimeError("PROXY header already decoded; the stream continues in .rest")
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            self._reader = self._reader or _detect(self._buf)
            result = self._reader(bytes(self._buf)) if self._reader else None
        except ProxyProtocolError as exc:
            self._error = exc
            raise
        if result is not None:
            self.header, used = result
            self.rest, self._buf = bytes(self._buf[used:]), bytearray()
        return self.header


def _detect(buf: bytearray) -> _Reader | None:
    for signature, reader in ((V1_SIGNATURE, _read_v1), (V2_SIGNATURE, _read_v2)):
        n = min(len(buf), len(signature))
        if buf[:n] == signature[:n]:
            return reader if n == len(signature) else None
    raise ProxyProtocolError("no PROXY protocol signature")


def _read_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    end = buf.find(b"\n", 0, V1_MAX_LINE)
    if end == -1 and len(buf) >= V1_MAX_LINE:
        raise ProxyProtocolError("v1: no CRLF within 107 bytes")
    cr = buf.find(b"\r", 0, len(buf) if end == -1 else end)
    if (end != -1 and cr != end - 1) or (cr != -1 and cr + 1 < len(buf) and cr + 1 != end):
        raise ProxyProtocolError("v1: bare CR or LF (only CRLF, ending the line)")
    if end == -1:
        return None
    return _parse_v1(buf[:cr].split(b" ")), end + 1


def _parse_v1(fields: list[bytes]) -> ProxyHeader:
    if fields[1:2] == [b"UNKNOWN"]:          # 2.1: the rest of the line is ignored
        return ProxyHeader(1, "LOCAL", "unknown", None, None)
    if fields[1] not in _IP_TEXT:
        raise ProxyProtocolError(f"v1: unknown protocol {fields[1]!r}")
    if len(fields) != 6 or b"" in fields:
        raise ProxyProtocolError("v1: want 'PROXY TCPn src dst sport dport', single spaces")
    _, proto, src, dst, sport, dport = fields
    return ProxyHeader(1, "PROXY", proto.decode().lower(),
                       _v1_endpoint(proto, src, sport), _v1_endpoint(proto, dst, dport))


def _v1_endpoint(proto: bytes, address: bytes, port: bytes) -> Address:
    pattern, parse = _IP_TEXT[proto]
    if not _PORT.fullmatch(port) or int(port) > 0xFFFF:
        raise ProxyProtocolError(f"v1: bad port {port!r}")
    if pattern.fullmatch(address):
        with contextlib.suppress(ValueError):
            return str(parse(address.decode("ascii"))), int(port)
    raise ProxyProtocolError(f"v1: bad {proto.decode()} address {address!r}")


def _read_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    if len(buf) > 12 and (buf[12] >> 4 != 2 or buf[12] & 0x0F >= len(_COMMANDS)):
        raise ProxyProtocolError(f"v2: bad version/command byte 0x{buf[12]:02x}")
    if len(buf) > 13 and buf[13] not in _FAMILY_BYTES[buf[12] & 0x0F]:
        raise ProxyProtocolError(f"v2: undefined or unsupported family byte 0x{buf[13]:02x}")
    if len(buf) < 16:
        return None
    length = int.from_bytes(buf[14:16], "big")
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError(f"v2: length {length} exceeds {MAX_V2_LENGTH}")
    command, family = _COMMANDS[buf[12] & 0x0F], AddressFamily(buf[13] >> 4)
    name, block = _FAMILIES[family]
    if length < block:
        raise ProxyProtocolError(f"v2: {block}-byte address block exceeds length {length}")
    if len(buf) < 16 + length:
        return None
    tlvs = _parse_tlvs(buf[16 + block:16 + length])
    if command == "LOCAL" or family is AddressFamily.UNSPEC:
        return ProxyHeader(2, command, "unknown", None, None, tlvs), 16 + length
    return ProxyHeader(2, command, name, *_v2_addresses(buf[16:16 + block]), tlvs), 16 + length


def _v2_addresses(block: bytes) -> tuple[Address, Address]:
    if len(block) == 2 * UNIX_PATH:
        paths = (block[i:i + UNIX_PATH].rstrip(b"\0") for i in (0, UNIX_PATH))
        src, dst = (path.decode("utf-8", "surrogateescape") for path in paths)
        return (src, 0), (dst, 0)
    n, ports = (len(block) - 4) // 2, block[-4:]      # 4 (INET) or 16 (INET6) bytes each
    return ((str(ipaddress.ip_address(block[:n])), int.from_bytes(ports[:2], "big")),
            (str(ipaddress.ip_address(block[n:2 * n])), int.from_bytes(ports[2:], "big")))


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        end = pos + 3 + int.from_bytes(data[pos + 1:pos + 3], "big")
        if end > len(data):
            raise ProxyProtocolError(f"v2: TLV type 0x{data[pos]:02x} overruns the header")
        tlvs.append((data[pos], data[pos + 3:end]))
        pos = end
    return tuple(tlvs)


def encode_v1(src: Address | None, dst: Address | None) -> bytes:
    """The v1 line for src -> dst, "PROXY UNKNOWN" if either is None; ValueError if bad."""
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    s, d = _ip_endpoints(src, dst)
    return f"PROXY TCP{s.version} {s} {d} {src[1]} {dst[1]}\r\n".encode()


def encode_v2(src: Address | None, dst: Address | None, command: str = "PROXY",
              tlvs: Iterable[tuple[int, bytes]] = ()) -> bytes:
    """A v2 header; LOCAL or a None address gives UNSPEC, a "/" or NUL prefix a unix
    path (<= 108 bytes), anything else an IP.  No length limit, so tests can exceed
    MAX_V2_LENGTH.  Raises ValueError if bad (OverflowError past 65535 bytes)."""
    cmd = _COMMANDS.index(command)
    if command == "LOCAL" or src is None or dst is None:
        family, block = 0x00, b""
    elif src[0][:1] in ("/", "\0"):
        paths = [address.encode("utf-8", "surrogateescape") for address, _ in (src, dst)]
        if max(map(len, paths)) > UNIX_PATH:
            raise ValueError(f"unix path longer than {UNIX_PATH} bytes")
        family, block = 0x31, b"".join(path.ljust(UNIX_PATH, b"\0") for path in paths)
    else:
        s, d = _ip_endpoints(src, dst)
        family = 0x11 if s.version == 4 else 0x21
        block = s.packed + d.packed + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big")
    payload = block + b"".join(bytes([t]) + len(v).to_bytes(2, "big") + v for t, v in tlvs)
    return V2_SIGNATURE + bytes([0x20 | cmd, family]) + len(payload).to_bytes(2, "big") + payload


def _ip_endpoints(src: Address, dst: Address) -> tuple[_IP, _IP]:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version or any(getattr(ip, "scope_id", None) for ip in (s, d)):
        raise ValueError(f"want two IPv4 or two zone-less IPv6: {src[0]!r}, {dst[0]!r}")
    if not (0 <= src[1] <= 0xFFFF and 0 <= dst[1] <= 0xFFFF):
        raise ValueError(f"port out of range: {src[1]}, {dst[1]}")
    return s, d
