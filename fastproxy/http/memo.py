"""Recently parsed heads, by their bytes: a head seen again is not parsed again.

Identical heads recur: clients repeat requests, and upstream responses above
all (a static file's response head changes only with its Date, once a
second). A parser (``state``) given a ``HeadMemo`` looks a complete head up
before parsing it and keeps what it parsed. The entries are the parser's own
results (immutable events and their framing), so there is still one parser;
the memo only remembers. A head must parse the same way to be shared: one
memo per listener (its limits) and per direction (responses are keyed by
the request method too, since HEAD changes the framing).

Bounded: ``ENTRIES`` heads of at most ``MAX_HEAD`` bytes, emptied when full.
A head carrying credentials or cookies (Authorization, Proxy-*, Cookie) is
never kept, so no secret outlives its request in the proxy's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

ENTRIES = 512
MAX_HEAD = 4096
_SECRET = frozenset((b"authorization", b"cookie"))


class HeadMemo:
    """``get(key)`` -> the remembered parse or None; ``put(key, parsed, special)``."""

    __slots__ = ("_entries", "get")

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}
        self.get: Callable[[Hashable], Any] = self._entries.get  # a C call, once per head

    def put(self, key: Hashable, head: bytes, parsed: Any,
            special: tuple[tuple[bytes, bytes, int, int], ...]) -> None:
        if len(head) > MAX_HEAD:
            return
        for name, _, _, _ in special:
            if name in _SECRET or name.startswith(b"proxy-"):
                return
        entries = self._entries
        if len(entries) >= ENTRIES:
            entries.clear()
        entries[key] = parsed
