"""Tests for fastproxy.upstream.balance: pure, seeded, no sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fastproxy.upstream.balance import KINDS, Balancer, make_balancer

ALL3 = [True, True, True]


def servers(*weights: int) -> list[tuple[str, int]]:
    return [(f"10.0.0.{i + 1}:80", w) for i, w in enumerate(weights)]


def firsts(balancer: Balancer, usable: list[bool], picks: int) -> list[int]:
    return [balancer.candidates(None, usable)[0] for _ in range(picks)]


# -- common contract -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_returns_each_usable_server_once(kind: str) -> None:
    rng = random.Random(7)
    active = [rng.randrange(10) for _ in range(5)]
    b = make_balancer(kind, servers(1, 2, 3, 1, 2), active=active, rng=random.Random(1))
    for n in range(200):
        usable = [rng.random() < 0.6 for _ in range(5)]
        got = b.candidates(f"192.0.2.{n}", usable)
        assert sorted(got) == [i for i, ok in enumerate(usable) if ok]


@pytest.mark.parametrize("kind", KINDS)
def test_empty_when_none_usable(kind: str) -> None:
    b = make_balancer(kind, servers(1, 1), active=[0, 0])
    assert b.candidates("192.0.2.1", [False, False]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_single_server(kind: str) -> None:
    b = make_balancer(kind, servers(4), active=[3])
    assert b.candidates(b"\xc0\x00\x02\x01", [True]) == [0]


@pytest.mark.parametrize("kind", KINDS)
def test_usable_of_wrong_length_raises(kind: str) -> None:
    b = make_balancer(kind, servers(1, 1), active=[0, 0])
    with pytest.raises(ValueError):
        b.candidates(None, [True])


@pytest.mark.parametrize(
    ("kind", "srv", "active"),
    [
        ("nope", servers(1), None),
        ("round_robin", [], None),
        ("weighted", servers(1, 0), None),
        ("ip_hash", [("a:1", 1), ("a:1", 1)], None),
        ("least_conn", servers(1, 1), None),
        ("random_two", servers(1, 1), [0]),
    ],
)
def test_make_balancer_rejects(kind: str, srv: list[tuple[str, int]],
                               active: list[int] | None) -> None:
    with pytest.raises(ValueError):
        make_balancer(kind, srv, active=active)


# -- round_robin ------------------------------------------------------------


def test_round_robin_rotates_start_and_retry_order() -> None:
    b = make_balancer("round_robin", servers(5, 1, 1))  # weights ignored
    assert [b.candidates(None, ALL3) for _ in range(4)] == [
        [0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2],
    ]


def test_round_robin_skips_unusable_without_double_turns() -> None:
    b = make_balancer("round_robin", servers(1, 1, 1))
    assert [b.candidates(None, [True, False, True]) for _ in range(3)] == [
        [0, 2], [2, 0], [0, 2],
    ]
    assert Counter(firsts(b, [True, False, True], 100)) == {0: 50, 2: 50}


# -- weighted -----------------------------------------------------------------


def test_weighted_nginx_interleaving() -> None:
    b = make_balancer("weighted", servers(5, 1, 1))
    assert firsts(b, ALL3, 14) == [0, 0, 1, 0, 2, 0, 0] * 2  # a a b a c a a


@pytest.mark.parametrize("weights", [(3, 2, 1), (1, 1, 1, 1), (7, 3, 9, 1), (100, 1)])
def test_weighted_exact_counts_each_cycle(weights: tuple[int, ...]) -> None:
    b = make_balancer("weighted", servers(*weights))
    usable = [True] * len(weights)
    for _ in range(3):
        assert Counter(firsts(b, usable, sum(weights))) == dict(enumerate(weights))


def test_weighted_skips_unusable_and_keeps_ratio() -> None:
    b = make_balancer("weighted", servers(3, 5, 1))
    assert Counter(firsts(b, [True, False, True], 40)) == {0: 30, 2: 10}


def test_weighted_retry_order_follows_the_choice() -> None:
    b = make_balancer("weighted", servers(1, 5, 1))
    assert b.candidates(None, ALL3) == [1, 2, 0]


# -- least_conn ---------------------------------------------------------------


def test_least_conn_picks_least_loaded_reading_active_at_pick_time() -> None:
    active = [3, 1, 2]
    b = make_balancer("least_conn", servers(1, 1, 1), active=active)
    assert b.candidates(None, ALL3)[0] == 1
    active[1] = 9
    assert b.candidates(None, ALL3)[0] == 2
    assert b.candidates(None, [True, True, False])[0] == 0


def test_least_conn_respects_weights() -> None:
    active = [1, 2]
    b = make_balancer("least_conn", servers(1, 3), active=active)
    assert b.candidates(None, [True, True])[0] == 1  # 2/3 < 1/1
    active[1] = 4
    assert b.candidates(None, [True, True])[0] == 0  # 1/1 < 4/3


def test_least_conn_ties_rotate() -> None:
    b = make_balancer("least_conn", servers(1, 1, 1), active=[0, 0, 0])
    assert firsts(b, ALL3, 6) == [0, 1, 2, 0, 1, 2]
    b = make_balancer("least_conn", servers(1, 1, 1), active=[1, 0, 0])
    assert firsts(b, ALL3, 4) == [1, 2, 1, 2]


# -- random_two -----------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1, 1, 1, 1), (1, 2, 3, 1, 2)])
def test_random_two_never_prefers_the_more_loaded(weights: tuple[int, ...]) -> None:
    active = [0, 3, 6, 9, 12]
    b = make_balancer("random_two", servers(*weights), active=active, rng=random.Random(42))
    usable = [True] * 5
    for _ in range(500):
        first, second, *_ = b.candidates(None, usable)
        assert first != second
        assert active[first] * weights[second] < active[second] * weights[first]


def test_random_two_spreads_and_favours_the_idle() -> None:
    active = [0, 1, 2, 3]
    b = make_balancer("random_two", servers(1, 1, 1, 1), active=active, rng=random.Random(3))
    counts = Counter(firsts(b, [True] * 4, 2000))
    assert 3 not in counts  # the most loaded always loses its draw
    assert counts[0] > counts[1] > counts[2] > 0
    active[:] = [0, 0, 0, 0]
    counts = Counter(firsts(b, [True] * 4, 2000))
    assert all(300 < counts[i] < 700 for i in range(4))


def test_random_two_tie_goes_to_first_drawn_and_is_reproducible() -> None:
    def run() -> list[list[int]]:
        b = make_balancer("random_two", servers(1, 1, 1), active=[5, 5, 5],
                          rng=random.Random(9))
        return [b.candidates(None, ALL3) for _ in range(20)]

    assert run() == run()
    drawn = random.Random(9)
    assert [c[:2] for c in run()] == [drawn.sample([0, 1, 2], 2) for _ in range(20)]


# -- ip_hash --------------------------------------------------------------------

KEYS = [f"198.51.{i // 256}.{i % 256}" for i in range(10_000)]


def owners(b: Balancer, usable: list[bool]) -> list[int]:
    return [b.candidates(k, usable)[0] for k in KEYS]


def test_ip_hash_same_key_same_server() -> None:
    b = make_balancer("ip_hash", servers(1, 1, 1))
    again = make_balancer("ip_hash", servers(1, 1, 1))
    for key in KEYS[:200]:
        assert b.candidates(key, ALL3) == b.candidates(key, ALL3) == again.candidates(key, ALL3)
    assert b.candidates("203.0.113.9", ALL3) == b.candidates(b"203.0.113.9", ALL3)


def test_ip_hash_distribution_roughly_even() -> None:
    counts = Counter(owners(make_balancer("ip_hash", servers(1, 1, 1)), ALL3))
    assert all(1500 <= counts[i] <= 5500 for i in range(3)), counts


def test_ip_hash_weight_enlarges_share() -> None:
    counts = Counter(owners(make_balancer("ip_hash", servers(1, 3)), [True, True]))
    assert counts[1] > 2 * counts[0], counts


def test_ip_hash_removing_a_server_moves_only_its_keys() -> None:
    four = servers(1, 1, 1, 1)
    three = four[:2] + four[3:]  # drop index 2: later indices shift, ids do not
    ids_before = [four[i][0] for i in owners(make_balancer("ip_hash", four), [True] * 4)]
    ids_after = [three[i][0] for i in owners(make_balancer("ip_hash", three), [True] * 3)]
    removed = four[2][0]
    moved = 0
    for old, new in zip(ids_before, ids_after, strict=True):
        if old == removed:
            moved += 1
        else:
            assert old == new
    assert 1000 < moved < 4000


def test_ip_hash_unusable_server_falls_over_to_a_stable_other() -> None:
    srv = servers(1, 1, 1, 1)
    b = make_balancer("ip_hash", srv)
    without = make_balancer("ip_hash", srv[:1] + srv[2:])
    down = [True, False, True, True]
    for key in KEYS[:500]:
        full = b.candidates(key, [True] * 4)
        got = b.candidates(key, down)
        assert got == b.candidates(key, down)
        assert got == [i for i in full if i != 1]  # the ring walk, minus the down one
        if full[0] != 1:
            assert got[0] == full[0]
        # same answer as if server 1 had been removed from the config
        assert srv[got[0]][0] == (srv[:1] + srv[2:])[without.candidates(key, [True] * 3)[0]][0]


def test_ip_hash_none_key_is_stable() -> None:
    b = make_balancer("ip_hash", servers(1, 1, 1))
    assert b.candidates(None, ALL3) == b.candidates(b"", ALL3)
