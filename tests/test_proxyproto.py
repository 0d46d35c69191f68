"""fastproxy.proxyproto: valid v1/v2 headers, byte-at-a-time feeding, `.rest`,
every malformed case (and how early it fails), fuzzing and encode/decode roundtrips."""

from __future__ import annotations

import ast
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy import proxyproto
from fastproxy.errors import ProtocolError, Side
from fastproxy.proxyproto import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyDecoder,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
)

SIG = V2_SIGNATURE
BODY = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(ver_cmd: int, family: int, payload: bytes, length: int | None = None) -> bytes:
    """A hand-built v2 header; ``length`` overrides the length field."""
    size = len(payload) if length is None else length
    return SIG + bytes([ver_cmd, family]) + size.to_bytes(2, "big") + payload


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def decode_whole(data: bytes) -> tuple[ProxyHeader | None, bytes]:
    decoder = ProxyDecoder()
    header = decoder.feed(data)
    return header, decoder.rest


def decode_bytewise(data: bytes) -> tuple[ProxyHeader | None, bytes]:
    """Feed one byte at a time; once a header comes out, the unfed bytes join `.rest`."""
    decoder = ProxyDecoder()
    for i in range(len(data)):
        header = decoder.feed(data[i:i + 1])
        if header is not None:
            return header, decoder.rest + data[i + 1:]
    return None, b""


def error_offset(data: bytes) -> int:
    """The index of the byte whose arrival raised ProxyProtocolError."""
    decoder = ProxyDecoder()
    for i in range(len(data)):
        try:
            decoder.feed(data[i:i + 1])
        except ProxyProtocolError:
            return i
    raise AssertionError(f"no error for {data!r}")


TCP4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + (56324).to_bytes(2, "big") + b"\x01\xbb"
TCP6_BLOCK = (ipaddress.IPv6Address("2001:db8::1").packed + ipaddress.IPv6Address("::1").packed
              + (1).to_bytes(2, "big") + (65535).to_bytes(2, "big"))
UNIX_BLOCK = b"/run/lb.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0")

VALID: dict[str, tuple[bytes, ProxyHeader]] = {
    "v1-tcp4": (b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
                ProxyHeader(1, "PROXY", "tcp4", ("192.0.2.1", 56324), ("198.51.100.7", 443))),
    "v1-tcp4-port0": (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
                      ProxyHeader(1, "PROXY", "tcp4", ("0.0.0.0", 0), ("255.255.255.255", 65535))),
    "v1-tcp6": (b"PROXY TCP6 2001:DB8:0:0::1 ::1 1 65535\r\n",
                ProxyHeader(1, "PROXY", "tcp6", ("2001:db8::1", 1), ("::1", 65535))),
    "v1-tcp6-mapped": (b"PROXY TCP6 ::ffff:192.0.2.1 :: 80 81\r\n",
                       ProxyHeader(1, "PROXY", "tcp6",
                                   (str(ipaddress.IPv6Address("::ffff:192.0.2.1")), 80),
                                   ("::", 81))),
    "v1-tcp6-longest": (b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7
                        + b"ffff 65535 65535\r\n",
                        ProxyHeader(1, "PROXY", "tcp6", (":".join(["ffff"] * 8), 65535),
                                    (":".join(["ffff"] * 8), 65535))),
    "v1-unknown": (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "LOCAL", "unknown", None, None)),
    "v1-unknown-with-addresses": (b"PROXY UNKNOWN ffff:f::1 ffff::2 1 2\r\n",
                                  ProxyHeader(1, "LOCAL", "unknown", None, None)),
    "v1-unknown-107-bytes": (b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
                             ProxyHeader(1, "LOCAL", "unknown", None, None)),
    "v2-proxy-tcp4": (v2(0x21, 0x11, TCP4_BLOCK),
                      ProxyHeader(2, "PROXY", "tcp4", ("192.0.2.1", 56324),
                                  ("198.51.100.7", 443))),
    "v2-proxy-tcp4-tlvs": (v2(0x21, 0x11, TCP4_BLOCK + tlv(0x02, b"example.com") + tlv(0x04, b"")
                              + tlv(0xE0, b"\x00" * 300)),
                           ProxyHeader(2, "PROXY", "tcp4", ("192.0.2.1", 56324),
                                       ("198.51.100.7", 443),
                                       ((0x02, b"example.com"), (0x04, b""),
                                        (0xE0, b"\x00" * 300)))),
    "v2-proxy-tcp6": (v2(0x21, 0x21, TCP6_BLOCK + tlv(0x05, b"id-1")),
                      ProxyHeader(2, "PROXY", "tcp6", ("2001:db8::1", 1), ("::1", 65535),
                                  ((0x05, b"id-1"),))),
    "v2-proxy-unix": (v2(0x21, 0x31, UNIX_BLOCK),
                      ProxyHeader(2, "PROXY", "unix", ("/run/lb.sock", 0), ("\0abstract", 0))),
    "v2-proxy-unspec": (v2(0x21, 0x00, tlv(0x01, b"h2")),
                        ProxyHeader(2, "PROXY", "unknown", None, None, ((0x01, b"h2"),))),
    "v2-local": (v2(0x20, 0x00, b""), ProxyHeader(2, "LOCAL", "unknown", None, None)),
    "v2-local-tlvs": (v2(0x20, 0x00, tlv(0x03, b"\x12\x34\x56\x78") + tlv(0x20, b"\x01")),
                      ProxyHeader(2, "LOCAL", "unknown", None, None,
                                  ((0x03, b"\x12\x34\x56\x78"), (0x20, b"\x01")))),
    "v2-local-tcp4-block-ignored": (v2(0x20, 0x11, TCP4_BLOCK + tlv(0x04, b"pad")),
                                    ProxyHeader(2, "LOCAL", "unknown", None, None,
                                                ((0x04, b"pad"),))),
    "v2-local-udp-ignored": (v2(0x20, 0x12, TCP4_BLOCK),
                             ProxyHeader(2, "LOCAL", "unknown", None, None)),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_header_decodes(name: str) -> None:
    data, expected = VALID[name]
    assert decode_whole(data) == (expected, b"")


@pytest.mark.parametrize("name", sorted(VALID))
def test_rest_holds_the_following_bytes(name: str) -> None:
    data, expected = VALID[name]
    assert decode_whole(data + BODY) == (expected, BODY)


@pytest.mark.parametrize("name", sorted(VALID))
def test_byte_at_a_time_gives_the_same_result(name: str) -> None:
    data, expected = VALID[name]
    assert decode_bytewise(data + BODY) == (expected, BODY)
    decoder = ProxyDecoder()
    assert [decoder.feed(data[i:i + 1]) for i in range(len(data) - 1)] == [None] * (len(data) - 1)
    assert decoder.feed(data[-1:] + BODY) == expected and decoder.rest == BODY


def test_empty_feeds_and_split_points() -> None:
    data, expected = VALID["v2-proxy-tcp6"]
    for cut in range(len(data) + 1):
        decoder = ProxyDecoder()
        assert decoder.feed(b"") is None
        first = decoder.feed(data[:cut])
        header = first if cut == len(data) else decoder.feed(data[cut:] + b"x")
        assert header == expected and decoder.header == expected
        assert decoder.rest == (b"" if cut == len(data) else b"x")


def test_feed_after_header_is_a_caller_error() -> None:
    decoder = ProxyDecoder()
    assert decoder.feed(b"PROXY UNKNOWN\r\nabc") is not None
    with pytest.raises(RuntimeError):
        decoder.feed(b"more")
    assert decoder.rest == b"abc"


def test_error_is_sticky_and_carries_attributes() -> None:
    decoder = ProxyDecoder()
    with pytest.raises(ProxyProtocolError) as first:
        decoder.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyProtocolError) as again:
        decoder.feed(VALID["v1-unknown"][0])
    assert again.value is first.value
    error = first.value
    assert isinstance(error, ValueError) and isinstance(error, ProtocolError)
    assert error.reason and error.reason in str(error)
    assert error.side is Side.CLIENT and error.retryable is False


LONG_LINE = b"PROXY UNKNOWN " + b"x" * 200
MALFORMED: dict[str, bytes] = {
    "http-request": b"GET / HTTP/1.1\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    "v1-lowercase-signature": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-no-space-after-PROXY": b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v2-signature-broken-late": SIG[:11] + b"\r" + b"\x21\x11\x00\x0c" + TCP4_BLOCK,
    "v1-too-long-without-crlf": LONG_LINE,
    "v1-108-bytes-with-crlf": b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",
    "v1-bare-lf": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1-unknown-bare-lf": b"PROXY UNKNOWN\n",
    "v1-cr-without-lf": b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
    "v1-crcr-lf": b"PROXY UNKNOWN\r\r\n",
    "v1-empty": b"PROXY \r\n",
    "v1-double-space-after-PROXY": b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-double-space-in-middle": b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    "v1-trailing-space": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    "v1-tab": b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
    "v1-too-few-fields": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1-too-many-fields": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1-unknown-protocol": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-lowercase-protocol": b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-udp": b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-unknownx": b"PROXY UNKNOWNX\r\n",
    "v1-ipv4-octet-256": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "v1-ipv4-leading-zero": b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "v1-ipv4-three-octets": b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    "v1-ipv4-five-octets": b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
    "v1-ipv6-in-tcp4": b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
    "v1-ipv4-in-tcp6": b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    "v1-ipv6-zone": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "v1-ipv6-bad-hex": b"PROXY TCP6 ::g ::1 1 2\r\n",
    "v1-ipv6-two-gaps": b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    "v1-hostname": b"PROXY TCP4 example.com 5.6.7.8 1 2\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1-port-00": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
    "v1-port-65536": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1-port-99999": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
    "v1-port-six-digits": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n",
    "v1-port-negative": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "v1-port-plus": b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    "v1-port-underscore": b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n",
    "v1-port-unicode-digit": "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(),
    "v2-version-1": v2(0x11, 0x11, TCP4_BLOCK),
    "v2-version-3": v2(0x31, 0x11, TCP4_BLOCK),
    "v2-version-0": v2(0x01, 0x11, TCP4_BLOCK),
    "v2-command-2": v2(0x22, 0x11, TCP4_BLOCK),
    "v2-command-15": v2(0x2F, 0x11, TCP4_BLOCK),
    "v2-udp4": v2(0x21, 0x12, TCP4_BLOCK),
    "v2-udp6": v2(0x21, 0x22, TCP6_BLOCK),
    "v2-unix-dgram": v2(0x21, 0x32, UNIX_BLOCK),
    "v2-family-4": v2(0x21, 0x41, TCP4_BLOCK),
    "v2-transport-3": v2(0x21, 0x13, TCP4_BLOCK),
    "v2-family-0x01": v2(0x21, 0x01, b""),
    "v2-family-0x10": v2(0x21, 0x10, TCP4_BLOCK),
    "v2-length-too-big": v2(0x21, 0x11, TCP4_BLOCK, length=MAX_V2_LENGTH + 1),
    "v2-length-max": v2(0x21, 0x11, TCP4_BLOCK, length=0xFFFF),
    "v2-tcp4-block-short": v2(0x21, 0x11, TCP4_BLOCK[:11]),
    "v2-tcp6-block-short": v2(0x21, 0x21, TCP6_BLOCK[:35]),
    "v2-unix-block-short": v2(0x21, 0x31, UNIX_BLOCK[:215]),
    "v2-local-block-short": v2(0x20, 0x11, TCP4_BLOCK[:4]),
    "v2-tlv-overrun": v2(0x21, 0x11, TCP4_BLOCK + tlv(0x02, b"abcde")[:6]),
    "v2-tlv-overrun-last": v2(0x21, 0x11, TCP4_BLOCK + tlv(0x04, b"") + b"\x02\x00\x02x"),
    "v2-tlv-header-truncated-1": v2(0x21, 0x11, TCP4_BLOCK + b"\x02"),
    "v2-tlv-header-truncated-2": v2(0x21, 0x11, TCP4_BLOCK + b"\x02\x00"),
    "v2-local-tlv-overrun": v2(0x20, 0x00, b"\x03\x00\x04\x00"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_header_errors(name: str) -> None:
    data = MALFORMED[name] + BODY
    with pytest.raises(ProxyProtocolError):
        decode_whole(data)
    with pytest.raises(ProxyProtocolError):
        decode_bytewise(data)


@pytest.mark.parametrize(("data", "offset"), [
    (b"GET / HTTP/1.1\r\n", 0),                   # neither "P" nor CR
    (b"\x00PROXY", 0),
    (b"PROXZ TCP4", 4),
    (b"PROXY\r\n", 5),                            # the signature's space is missing
    (SIG[:5] + b"\n", 5),
    (SIG[:11] + b"\r", 11),
    (SIG + b"\x11", 12),                          # version byte: before the rest arrives
    (SIG + b"\x23", 12),
    (SIG + b"\x21\x12", 13),                      # UDP: at the family byte
    (SIG + b"\x21\x99", 13),
    (SIG + b"\x21\x11\x10\x01", 15),              # length 4097: before the payload
    (SIG + b"\x21\x11\x00\x0b", 15),              # 11 < 12-byte address block
    (b"PROXY TCP4 1.2.3.4\n", 18),                # bare LF: at once
    (b"PROXY TCP4 1.2.3.4\rx", 19),               # CR without LF: at the next byte
    (LONG_LINE, 106),                             # the 107th byte without a LF
])
def test_errors_are_raised_as_early_as_possible(data: bytes, offset: int) -> None:
    assert error_offset(data) == offset


def test_error_reasons_name_the_rule() -> None:
    cases = {
        MALFORMED["v2-udp4"]: "unsupported",
        MALFORMED["v2-version-1"]: "version",
        MALFORMED["v2-length-too-big"]: "length",
        MALFORMED["v2-tlv-overrun"]: "TLV",
        MALFORMED["v2-tcp4-block-short"]: "address block",
        MALFORMED["v1-port-65536"]: "port",
        MALFORMED["v1-ipv4-leading-zero"]: "address",
        MALFORMED["v1-bare-lf"]: "LF",
        LONG_LINE: "107",
    }
    for data, word in cases.items():
        with pytest.raises(ProxyProtocolError) as info:
            decode_whole(data)
        assert word in info.value.reason, (data, info.value.reason)


# --- encoders -----------------------------------------------------------------

def test_encoders_match_the_spec_examples() -> None:
    assert encode_v1(("192.0.2.1", 56324), ("198.51.100.7", 443)) == VALID["v1-tcp4"][0]
    assert encode_v1(None, ("::1", 1)) == b"PROXY UNKNOWN\r\n"
    assert encode_v2(("192.0.2.1", 56324), ("198.51.100.7", 443)) == VALID["v2-proxy-tcp4"][0]
    assert encode_v2(("/run/lb.sock", 0), ("\0abstract", 0)) == VALID["v2-proxy-unix"][0]
    assert encode_v2(None, None, "LOCAL") == VALID["v2-local"][0]
    assert encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), "LOCAL") == VALID["v2-local"][0]


@pytest.mark.parametrize("call", [
    lambda: encode_v1(("1.2.3.4", 1), ("::1", 2)),
    lambda: encode_v1(("1.2.3.4", 65536), ("5.6.7.8", 2)),
    lambda: encode_v1(("1.2.3.4", 1), ("5.6.7.8", -1)),
    lambda: encode_v1(("fe80::1%eth0", 1), ("::1", 2)),
    lambda: encode_v1(("example.com", 1), ("5.6.7.8", 2)),
    lambda: encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), "UNKNOWN"),
    lambda: encode_v2(("/" + "x" * 108, 0), ("/y", 0)),
    lambda: encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(256, b"")]),
])
def test_encoders_reject_bad_input(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        call()


def test_encoded_v2_over_the_limit_is_rejected_by_the_decoder() -> None:
    data = encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0x04, b"\0" * MAX_V2_LENGTH)])
    with pytest.raises(ProxyProtocolError):
        decode_whole(data)


# --- properties -----------------------------------------------------------------

PREFIXES = [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIG,
            SIG + b"\x21", SIG + b"\x20", SIG + b"\x21\x11", SIG + b"\x21\x21", SIG + b"\x21\x31",
            SIG + b"\x20\x00\x00", SIG + b"\x21\x11\x00\x0c"]
fuzz_input = st.builds(lambda prefix, tail: prefix + tail,
                       st.sampled_from(PREFIXES), st.binary(max_size=300))


@given(fuzz_input, st.lists(st.integers(min_value=1, max_value=40), max_size=40))
def test_random_bytes_only_raise_proxy_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = ProxyDecoder()
    pos = 0
    try:
        for size in [*cuts, len(data)]:
            if decoder.feed(data[pos:pos + size]) is not None:
                break
            pos += size
    except ProxyProtocolError:
        pass


@given(fuzz_input)
def test_whole_and_bytewise_feeding_agree(data: bytes) -> None:
    outcomes: list[tuple[object, bytes]] = []
    for decode in (decode_whole, decode_bytewise):
        try:
            header, rest = decode(data)
            outcomes.append((header, rest if header is not None else b""))
        except ProxyProtocolError:
            outcomes.append(("error", b""))
    assert outcomes[0] == outcomes[1]


ports = st.integers(min_value=0, max_value=65535)
ip_pairs = st.one_of(*(st.tuples(st.ip_addresses(v=v), st.ip_addresses(v=v)) for v in (4, 6)))
tlv_lists = st.lists(st.tuples(st.integers(min_value=0, max_value=255), st.binary(max_size=40)),
                     max_size=5)
unix_paths = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=60).map(
    lambda name: "/" + name).filter(lambda path: len(path.encode()) <= 108)


@given(ip_pairs, ports, ports, st.binary(max_size=64))
def test_v1_roundtrip(ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
                      sport: int, dport: int, tail: bytes) -> None:
    src, dst = (str(ips[0]), sport), (str(ips[1]), dport)
    data = encode_v1(src, dst)
    assert len(data) <= proxyproto.V1_MAX_LINE
    expected = ProxyHeader(1, "PROXY", f"tcp{ips[0].version}", src, dst)
    assert decode_whole(data + tail) == (expected, tail)
    assert decode_bytewise(data + tail) == (expected, tail)


@given(ip_pairs, ports, ports, tlv_lists, st.binary(max_size=64))
def test_v2_roundtrip(ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...],
                      sport: int, dport: int, tlvs: list[tuple[int, bytes]], tail: bytes) -> None:
    src, dst = (str(ips[0]), sport), (str(ips[1]), dport)
    expected = ProxyHeader(2, "PROXY", f"tcp{ips[0].version}", src, dst, tuple(tlvs))
    data = encode_v2(src, dst, tlvs=tlvs)
    assert decode_whole(data + tail) == (expected, tail)
    assert decode_bytewise(data + tail) == (expected, tail)
    local = ProxyHeader(2, "LOCAL", "unknown", None, None, tuple(tlvs))
    assert decode_whole(encode_v2(src, dst, "LOCAL", tlvs) + tail) == (local, tail)


@given(unix_paths, unix_paths, tlv_lists)
def test_v2_unix_roundtrip(src: str, dst: str, tlvs: list[tuple[int, bytes]]) -> None:
    expected = ProxyHeader(2, "PROXY", "unix", (src, 0), (dst, 0), tuple(tlvs))
    assert decode_whole(encode_v2((src, 0), (dst, 0), tlvs=tlvs)) == (expected, b"")


# --- layering (STYLE principle 12: the pure modules stay pure) -------------------

def test_module_is_pure() -> None:
    tree = ast.parse(Path(proxyproto.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"socket", "selectors", "signal", "select", "os", "subprocess"}
    assert {name for name in imported if name.startswith("fastproxy")} <= {"fastproxy.errors"}
