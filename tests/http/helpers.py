"""Drive a parser over a byte string and collect what it says, for the HTTP tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastproxy.errors import ProtocolError
from fastproxy.http import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Limits,
    Request,
    RequestParser,
    Response,
    ResponseParser,
)


@dataclass
class Outcome:
    """Completed messages, the raw event list, and the error status (None: no error)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    status: int | None = None
    closed: bool = False


def pieces(raw: bytes, step: int | None) -> Iterable[bytes]:
    if step is None:
        yield raw
        return
    for i in range(0, len(raw), step):
        yield raw[i:i + step]


def run(raw: bytes, limits: Limits | None = None, step: int | None = None, eof: bool = False,
        parser: RequestParser | ResponseParser | None = None) -> Outcome:
    """Feed ``raw`` (whole, or ``step`` bytes at a time), draining events after
    every piece and calling ``start_next()`` at each PAUSED."""
    p = parser if parser is not None else RequestParser(limits or Limits())
    out = Outcome()
    chunks = list(pieces(raw, step)) + ([b""] if eof else [])
    try:
        for chunk in chunks:
            p.receive_data(chunk)
            if _drain(p, out):
                break
    except ProtocolError as exc:
        out.status = exc.status
    return out


def _drain(p: RequestParser | ResponseParser, out: Outcome) -> bool:
    """Consume events until NEED_DATA; True once the connection is over."""
    current: dict[str, Any] | None = out.messages[-1] if out.messages and \
        not out.messages[-1].get("_complete") else None
    while True:
        event = p.next_event()
        if event is NEED_DATA:
            return False
        if event is PAUSED:
            if p.state.value == "tunnel":
                return True
            p.start_next()
            continue
        out.events.append(event)
        if isinstance(event, ConnectionClosed):
            out.closed = True
            return True
        current = _apply(event, current, out)


def _apply(event: Any, current: dict[str, Any] | None, out: Outcome) -> dict[str, Any] | None:
    if isinstance(event, (Request, Response)):
        current = head_dict(event)
        out.messages.append(current)
    elif isinstance(event, InformationalResponse):
        return current
    elif isinstance(event, Data):
        assert current is not None and event.data
        current["body"] += event.data.decode("latin-1")
    elif isinstance(event, EndOfMessage):
        assert current is not None
        current["trailers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in event.trailers]
        current["_complete"] = True
    return current


def head_dict(event: Request | Response) -> dict[str, Any]:
    d: dict[str, Any] = {"headers": [[n.decode("latin-1"), v.decode("latin-1")]
                                     for n, v in event.headers],
                         "version": event.version.decode(), "body": "", "trailers": []}
    if isinstance(event, Request):
        d.update(method=event.method.decode("latin-1"), target=event.target.decode("latin-1"),
                 form=event.form, authority=event.authority.decode("latin-1"),
                 path=event.path.decode("latin-1"), scheme=event.scheme.decode("latin-1"),
                 keep_alive=event.keep_alive)
    else:
        d.update(status=event.status, reason=event.reason.decode("latin-1"),
                 keep_alive=event.keep_alive)
    return d


def completed(outcome: Outcome) -> list[dict[str, Any]]:
    return [m for m in outcome.messages if m.get("_complete")]


def matches(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Every key of ``expected`` has the same value in ``actual``."""
    return all(actual.get(key) == value for key, value in expected.items())
