"""The memo of parsed heads: the same events as parsing, bounded, no secrets kept."""

from __future__ import annotations

from fastproxy.http import RequestParser, ResponseParser
from fastproxy.http.memo import ENTRIES, HeadMemo

GET = b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"


def parse(data: bytes, memo: HeadMemo | None) -> object:
    parser = RequestParser(memo=memo)
    parser.receive_data(data)
    return parser.next_event()


def test_a_remembered_head_gives_the_same_event() -> None:
    memo = HeadMemo()
    first = parse(GET, memo)
    again = parse(GET, memo)
    assert again is first                      # not parsed again
    assert again == parse(GET, None)           # and the same as a fresh parse


def test_heads_with_credentials_or_cookies_are_not_kept() -> None:
    memo = HeadMemo()
    for field in (b"Authorization: Basic eDp5", b"Proxy-Authorization: Basic eDp5",
                  b"Cookie: session=1"):
        data = GET.replace(b"\r\n\r\n", b"\r\n" + field + b"\r\n\r\n")
        assert parse(data, memo) is not parse(data, memo)


def test_responses_are_keyed_by_the_request_method() -> None:
    memo = HeadMemo()
    events = []
    for method in (b"GET", b"HEAD"):
        parser = ResponseParser(memo=memo)
        parser.expect(method)
        parser.receive_data(RESPONSE)
        events.append((parser.next_event(), parser.body_kind))
    assert events[0][1].value == "length" and events[1][1].value == "none"


def test_the_memo_is_bounded() -> None:
    memo = HeadMemo()
    for i in range(ENTRIES * 2 + 3):
        parse(GET.replace(b"/a", b"/%d" % i), memo)
    assert len(memo._entries) <= ENTRIES
