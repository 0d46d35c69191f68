"""One proxied request and its response: the exchange and its transition table.

Theory of operation
-------------------
An ``Exchange`` is everything one request needs between its head being parsed
and its response leaving: the parsed head, the peer it goes to, the server
chosen, the response's framing, timings and what the access log needs. Its
progress is ``state``, and ``step(event)`` is the only way to change it:
``TRANSITIONS`` maps ``(state, event)`` to ``(next state, action)``, and the
connection that drives the exchange (``client.ClientConnection``) carries out
the action. An event missing from the table is a bug and raises
``IllegalTransition`` (as h11's ``_state.py`` does), so no flag beside the
state can claim a different story.

    READING -HEAD_PARSED-> ADMITTING -ADMITTED-> CHOOSING -PEER_CHOSEN-> CONNECTING
    CONNECTING -CONNECTED-> SENDING -REQUEST_SENT-> AWAITING -RESPONSE_HEAD-> RELAYING
    RELAYING -RESPONSE_DONE-> DONE          (SENDING -RESPONSE_HEAD-> RELAYING too)
    ADMITTING | CHOOSING -PENDING-> itself  (a step waits: a thread, DNS)
    SENDING | AWAITING -UPSTREAM_LOST-> CONNECTING (retry)
    ADMITTING .. AWAITING -ANSWER-> ANSWERED
    CONNECTING | RELAYING -TUNNEL-> TUNNELLED
    any state not terminal -ABORT-> FAILED

Facts that are not states are derived, never stored as flags: "the request
body is complete" is the request parser's state, "the response has begun"
is ``response is not None``. Terminal states are DONE, ANSWERED, TUNNELLED
and FAILED; ABORT leads from any other state to FAILED.

Nothing here touches a socket: a unit test walks the table with events in
and actions out.
"""

from __future__ import annotations

import enum
from typing import Any

from fastproxy.http import BodyKind, Request, Response


class State(enum.Enum):
    __hash__ = object.__hash__  # identity hash: cheaper table look-ups (see http.state)

    READING = "reading"          # the head is being parsed (before an exchange exists)
    ADMITTING = "admitting"      # request filters (ACLs, auth, local answers) running or waiting
    CHOOSING = "choosing"        # the upstream peer is being chosen (routing, DNS)
    CONNECTING = "connecting"    # taking an idle connection or connecting to a candidate
    SENDING = "sending"          # the request (head, then body) is going upstream
    AWAITING = "awaiting"        # the request is sent; no response head yet
    RELAYING = "relaying"        # the response head went to the client; its body follows
    DONE = "done"                # the response is complete
    ANSWERED = "answered"        # the proxy answered itself (error, 403/407, Max-Forwards)
    TUNNELLED = "tunnelled"      # both connections belong to a byte relay now
    FAILED = "failed"            # aborted: both sides released without an answer


class Event(enum.Enum):
    __hash__ = object.__hash__

    HEAD_PARSED = "head-parsed"
    PENDING = "pending"              # a filter or the peer choice waits (a thread, DNS)
    ADMITTED = "admitted"
    ANSWER = "answer"                # the proxy answers (``Exchange.answer`` holds it)
    PEER_CHOSEN = "peer-chosen"
    CONNECTED = "connected"
    UPSTREAM_LOST = "upstream-lost"  # a connection failed before any response byte: retry
    REQUEST_SENT = "request-sent"
    RESPONSE_HEAD = "response-head"
    RESPONSE_DONE = "response-done"
    TUNNEL = "tunnel"
    ABORT = "abort"


class Action(enum.Enum):
    __hash__ = object.__hash__

    NONE = "none"
    FILTER_REQUEST = "filter-request"    # run the request filters
    CHOOSE_PEER = "choose-peer"          # run upstream_peer
    CONNECT = "connect"                  # walk the candidates (``dialer.Dialer``)
    RETRY = "retry"                      # the same request again on a fresh connection
    SEND_REQUEST = "send-request"        # the rewritten head and the body at hand, upstream
    SEND_RESPONSE_HEAD = "send-response-head"  # response filters, head to the client
    FINISH = "finish"                    # log, keep or drop the upstream, next request
    SEND_ANSWER = "send-answer"          # the proxy's own answer to the client
    START_TUNNEL = "start-tunnel"        # hand both sockets to a relay
    RELEASE = "release"                  # close both sides


class IllegalTransition(RuntimeError):
    """An event the table does not allow in the current state (a bug)."""


S, E, A = State, Event, Action
_ANSWERABLE = (S.ADMITTING, S.CHOOSING, S.CONNECTING, S.SENDING, S.AWAITING)
TRANSITIONS: dict[tuple[State, Event], tuple[State, Action]] = {
    (S.READING, E.HEAD_PARSED): (S.ADMITTING, A.FILTER_REQUEST),
    (S.ADMITTING, E.PENDING): (S.ADMITTING, A.NONE),
    (S.ADMITTING, E.ADMITTED): (S.CHOOSING, A.CHOOSE_PEER),
    (S.CHOOSING, E.PENDING): (S.CHOOSING, A.NONE),
    (S.CHOOSING, E.PEER_CHOSEN): (S.CONNECTING, A.CONNECT),
    (S.CONNECTING, E.CONNECTED): (S.SENDING, A.SEND_REQUEST),
    (S.CONNECTING, E.TUNNEL): (S.TUNNELLED, A.START_TUNNEL),  # CONNECT to the destination
    (S.SENDING, E.REQUEST_SENT): (S.AWAITING, A.NONE),
    # an answer before the request body ended
    (S.SENDING, E.RESPONSE_HEAD): (S.RELAYING, A.SEND_RESPONSE_HEAD),
    (S.AWAITING, E.RESPONSE_HEAD): (S.RELAYING, A.SEND_RESPONSE_HEAD),
    (S.SENDING, E.UPSTREAM_LOST): (S.CONNECTING, A.RETRY),
    (S.AWAITING, E.UPSTREAM_LOST): (S.CONNECTING, A.RETRY),
    (S.RELAYING, E.RESPONSE_DONE): (S.DONE, A.FINISH),
    (S.RELAYING, E.TUNNEL): (S.TUNNELLED, A.START_TUNNEL),  # 101; a parent's 2xx to CONNECT
    **{(state, E.ANSWER): (S.ANSWERED, A.SEND_ANSWER) for state in _ANSWERABLE},
    **{(state, E.ABORT): (S.FAILED, A.RELEASE)
       for state in State if state not in (S.DONE, S.ANSWERED, S.TUNNELLED, S.FAILED)},
}
TERMINAL = frozenset((S.DONE, S.ANSWERED, S.TUNNELLED, S.FAILED))


class Answer:
    """A response the proxy makes itself: ``status`` and the complete bytes
    (``data``); ``close`` when the connection must close after it."""

    __slots__ = ("status", "data", "close")

    def __init__(self, status: int, data: bytes, close: bool = True) -> None:
        self.status = status
        self.data = data
        self.close = close


class Exchange:
    """One request and its response; see the module docstring.

    ``hooks`` are the phase steps' hooks for the request's method
    (``phases.MethodHooks``). Fields the phases fill in: ``peer`` (where it goes, chosen by
    ``upstream_peer``), ``answer`` (a local answer), ``note`` (one free slot
    for a mode's own per-exchange datum, e.g. the forward proxy's destination).
    """

    __slots__ = ("state", "request", "hooks", "body_kind", "content_length", "upgrade", "peer",
                 "candidates", "server",
                 "response", "chunked_out", "keep_alive", "answer", "started",
                 "upstream_started", "upstream_time", "sent", "cursor", "note")

    def __init__(self, request: Request, body_kind: BodyKind, content_length: int | None,
                 now: float, upgrade: bool = False, hooks: Any = None) -> None:
        self.state = State.READING
        self.request = request
        self.hooks = hooks
        self.body_kind = body_kind
        self.content_length = content_length
        self.upgrade = upgrade       # the client asked to switch protocols (WebSocket)
        self.peer: Any = None
        self.candidates: list[int] = []  # the peer's servers in the order to try
        self.server = -1             # index of the server in ``peer``
        self.response: Response | None = None
        self.chunked_out = False     # the response body goes to the client chunked
        self.keep_alive = request.keep_alive  # the client connection after this exchange
        self.answer: Answer | None = None
        self.started = now
        self.upstream_started = 0.0
        self.upstream_time: float | None = None
        self.sent = 0                # response bytes sent to the client (for the log)
        self.cursor = 0              # the next request filter to run (after PENDING)
        self.note: Any = None

    def step(self, event: Event) -> Action:
        """Move to the next state; the action the driver must carry out."""
        try:
            self.state, action = TRANSITIONS[self.state, event]
        except KeyError:
            raise IllegalTransition(f"{event.value} in state {self.state.value}") from None
        return action

    @property
    def finished(self) -> bool:
        """(The engine reads ``state in TERMINAL`` itself: no call on its hot path.)"""
        return self.state in TERMINAL

    @property
    def status(self) -> int:
        """The status the client got (200 for an established CONNECT tunnel)."""
        if self.answer is not None:
            return self.answer.status
        return self.response.status if self.response is not None else 200
