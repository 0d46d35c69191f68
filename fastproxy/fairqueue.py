"""Work shared fairly among clients, for costly work any client can ask for
(pure: no I/O, no clock).

Used for credential checks (``modes.forward``): each new token costs a
PBKDF2 of hundreds of thousands of rounds, so a flood of bogus tokens must
neither run unbounded nor keep a client that has not failed waiting behind
it.

- a client holds at most ``per_client`` items (queued or running), the
  queue ``total``; ``add`` returns False beyond either (the caller refuses);
- an item is *first* when its client holds nothing else and is in good
  standing (``clean``: no recent failure). First items are taken before
  any other, the newest first: however many addresses a burst comes from,
  a newcomer waits for the work already running, not for the burst;
- the other items are taken round-robin over their clients, each client's
  own in order: a client that sends many waits for its own.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Methods: ``add(client, item, clean) -> bool``, ``take() -> (client, item) | None``,
    ``done(client)`` when a taken item is finished; ``len()`` counts queued items."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._first: list[tuple[str, T]] = []                         # a stack
        self._rest: collections.OrderedDict[str, collections.deque[T]] = collections.OrderedDict()
        self._held: collections.Counter[str] = collections.Counter()  # queued or running
        self._holding = 0
        self._queued = 0

    def add(self, client: str, item: T, clean: bool) -> bool:
        held = self._held[client]
        if held >= self.per_client or self._holding >= self.total:
            return False
        if clean and not held:
            self._first.append((client, item))
        else:
            self._rest.setdefault(client, collections.deque()).append(item)
        self._held[client] = held + 1
        self._holding += 1
        self._queued += 1
        return True

    def take(self) -> tuple[str, T] | None:
        if self._first:
            self._queued -= 1
            return self._first.pop()
        if not self._rest:
            return None
        client, items = next(iter(self._rest.items()))
        item = items.popleft()
        del self._rest[client]
        if items:
            self._rest[client] = items   # to the back: round robin
        self._queued -= 1
        return client, item

    def done(self, client: str) -> None:
        """An item of ``client`` that was taken is finished (or dropped)."""
        held = self._held[client] - 1
        if held > 0:
            self._held[client] = held
        else:
            del self._held[client]
        self._holding -= 1

    def __len__(self) -> int:
        return self._queued
