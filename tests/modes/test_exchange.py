"""The exchange's transition table, walked without sockets: events in, actions out."""

from __future__ import annotations

import pytest

from fastproxy.http import BodyKind, Request
from fastproxy.modes.exchange import (
    TERMINAL,
    TRANSITIONS,
    Action,
    Answer,
    Event,
    Exchange,
    IllegalTransition,
    State,
)

E, S, A = Event, State, Action


def exchange() -> Exchange:
    return Exchange(Request(b"GET", b"/", ((b"Host", b"h"),)), BodyKind.NONE, None, 0.0)


def walk(events: list[Event]) -> tuple[list[Action], State]:
    ex = exchange()
    actions = [ex.step(event) for event in events]
    return actions, ex.state


def test_a_proxied_exchange() -> None:
    actions, state = walk([E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED,
                           E.REQUEST_SENT, E.RESPONSE_HEAD, E.RESPONSE_DONE])
    assert actions == [A.FILTER_REQUEST, A.CHOOSE_PEER, A.CONNECT, A.SEND_REQUEST, A.NONE,
                       A.SEND_RESPONSE_HEAD, A.FINISH]
    assert state is S.DONE


def test_waiting_filters_and_peer_choice_stay_put() -> None:
    actions, state = walk([E.HEAD_PARSED, E.PENDING, E.PENDING, E.ADMITTED, E.PENDING])
    assert actions[1:3] == [A.NONE, A.NONE] and actions[-1] is A.NONE
    assert state is S.CHOOSING


def test_a_response_before_the_request_body_ended() -> None:
    _, state = walk([E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED, E.RESPONSE_HEAD])
    assert state is S.RELAYING


def test_a_lost_connection_is_retried_from_connecting() -> None:
    actions, state = walk([E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED,
                           E.REQUEST_SENT, E.UPSTREAM_LOST, E.CONNECTED])
    assert actions[5] is A.RETRY and state is S.SENDING


@pytest.mark.parametrize("events", [
    [E.HEAD_PARSED],
    [E.HEAD_PARSED, E.ADMITTED],
    [E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN],
    [E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED],
    [E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED, E.REQUEST_SENT],
])
def test_the_proxy_may_answer_until_a_response_began(events: list[Event]) -> None:
    ex = exchange()
    for event in events:
        ex.step(event)
    ex.answer = Answer(502, b"x")
    assert ex.step(E.ANSWER) is A.SEND_ANSWER
    assert ex.state is S.ANSWERED and ex.finished and ex.status == 502


def test_no_answer_once_the_response_head_went_out() -> None:
    ex = exchange()
    for event in (E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED, E.RESPONSE_HEAD):
        ex.step(event)
    with pytest.raises(IllegalTransition):
        ex.step(E.ANSWER)
    assert ex.step(E.ABORT) is A.RELEASE and ex.state is S.FAILED


def test_tunnels() -> None:
    _, state = walk([E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.TUNNEL])
    assert state is S.TUNNELLED
    _, state = walk([E.HEAD_PARSED, E.ADMITTED, E.PEER_CHOSEN, E.CONNECTED, E.REQUEST_SENT,
                     E.RESPONSE_HEAD, E.TUNNEL])
    assert state is S.TUNNELLED


@pytest.mark.parametrize("state", sorted(TERMINAL, key=lambda s: s.value))
def test_terminal_states_take_no_event(state: State) -> None:
    assert not [event for (s, event) in TRANSITIONS if s is state]


def test_every_state_is_reachable_and_every_action_used() -> None:
    reachable = {S.READING} | {target for target, _ in TRANSITIONS.values()}
    assert reachable == set(State)
    assert {action for _, action in TRANSITIONS.values()} == set(Action)


def test_an_event_out_of_order_is_refused() -> None:
    ex = exchange()
    with pytest.raises(IllegalTransition):
        ex.step(E.RESPONSE_DONE)
    assert ex.state is S.READING
