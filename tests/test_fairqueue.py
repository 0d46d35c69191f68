"""``FairQueue``: bounds, first items first (newest first), round-robin for the rest."""

from __future__ import annotations

from fastproxy.fairqueue import FairQueue


def drain(q: FairQueue[str]) -> list[tuple[str, str]]:
    out = []
    while (taken := q.take()) is not None:
        out.append(taken)
    return out


def test_bounds_per_client_and_in_all() -> None:
    q: FairQueue[str] = FairQueue(per_client=2, total=3)
    assert q.add("a", "a1", clean=False) and q.add("a", "a2", clean=False)
    assert not q.add("a", "a3", clean=False)            # a holds two
    assert q.add("b", "b1", clean=False)
    assert not q.add("c", "c1", clean=True)             # three in all
    client, _ = q.take()
    q.done(client)                                       # finished: room again
    assert q.add("c", "c1", clean=True)
    assert len(q) == 3


def test_a_client_in_good_standing_goes_first_newest_first() -> None:
    q: FairQueue[str] = FairQueue(per_client=4, total=64)
    for flooder in ("f1", "f2", "f3"):
        for i in range(3):
            assert q.add(flooder, f"{flooder}-{i}", clean=flooder != "f3")
    assert q.add("newcomer", "n", clean=True)
    order = drain(q)
    # first items: the clean clients' first ones, newest first; then round robin
    assert order[:3] == [("newcomer", "n"), ("f2", "f2-0"), ("f1", "f1-0")]
    assert [item for _, item in order[3:]] == ["f1-1", "f2-1", "f3-0", "f1-2", "f2-2",
                                               "f3-1", "f3-2"]


def test_a_second_item_of_a_client_is_not_first() -> None:
    q: FairQueue[str] = FairQueue(per_client=4, total=64)
    q.add("a", "a1", clean=True)
    q.add("a", "a2", clean=True)        # a holds one already: round robin
    q.add("b", "b1", clean=True)
    assert drain(q) == [("b", "b1"), ("a", "a1"), ("a", "a2")]
