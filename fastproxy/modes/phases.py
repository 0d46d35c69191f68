"""The phases of an HTTP exchange, and the steps that modes and features plug into them.

After Pingora's ``ProxyHttp``: the engine (``client.ClientConnection``) calls,
for every exchange and in this order,

1. ``request_filter(conn, ex)`` of every step: admission, ACLs, credentials,
   local answers (``Max-Forwards: 0``). A step returns None to go on, an
   ``Answer`` to answer the client itself, or ``PENDING`` when it waits for
   something (a password check in a thread); the step then calls
   ``conn.resume(ex)`` when it is done, and the engine runs that same step
   again (so it must find its answer cached then).
2. ``upstream_peer(conn, ex)``: the first step that returns a peer decides
   where the request goes (routing, balancing, DNS, parent proxies); it may
   also answer or return ``PENDING`` (resolution) and later call
   ``conn.peer_chosen(ex, peer)`` or ``conn.answer(ex, answer)``.
3. ``connected(conn, ex)``: a step may take the connection over once the
   upstream is connected (a CONNECT tunnel answers ``200`` and relays).
4. ``upstream_request_filter(conn, ex, edit)``: forwarding fields, anonymity,
   credentials for a parent: steps add lines to ``edit.append``, fields to
   ``edit.drop``, or set the target.
5. ``response_filter(conn, ex, edit)``: lines the response gets (a sticky
   cookie, cache status).
6. ``logging(conn, ex)``: once the exchange ends, whatever the outcome.

A mode is a list of steps. Each feature still to come (route auth, rate
limits, sticky sessions, cache, compression) is one more step, and the
exchange's transition table does not change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from fastproxy.modes.exchange import Answer, Exchange

if TYPE_CHECKING:
    from fastproxy.modes.client import ClientConnection


class Pending:
    """The type of ``PENDING``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = Pending()
"""A step's answer: not decided yet; the step resumes the exchange later."""


class HeadEdit:
    """How a head is rewritten on its way (``http.rewrite.edit_head``).

    One object per mode, reset before every use (the engine builds one head
    at a time): ``start`` is the start line with its CRLF, ``drop`` the
    lowercase names removed besides the hop-by-hop ones, ``drop_prefix`` a
    name prefix removed (``b"proxy-"``), ``append`` the complete field lines
    added, ``whole`` a complete head that replaces the edit when set.
    """

    __slots__ = ("start", "drop", "drop_prefix", "keep_upgrade", "prepend", "append", "whole")

    def __init__(self) -> None:
        self.start = b""
        self.drop: frozenset[bytes] = frozenset()
        self.drop_prefix = b""
        self.keep_upgrade = False
        self.prepend: list[bytes] = []
        self.append: list[bytes] = []
        self.whole: bytes | None = None

    def reset(self, start: bytes, drop: frozenset[bytes], drop_prefix: bytes,
              keep_upgrade: bool) -> None:
        self.start = start
        self.drop = drop
        self.drop_prefix = drop_prefix
        self.keep_upgrade = keep_upgrade
        self.prepend.clear()
        self.append.clear()
        self.whole = None


class Step:
    """A phase step; every hook's default does nothing (see the module docstring).

    ``upstream_drop`` / ``response_drop``: field names (lowercase) this step
    removes from every forwarded request / response; ``upstream_drop_prefix``
    likewise for a name prefix. They are collected once per mode.

    ``methods``: the request methods whose exchanges the step's hooks see
    (None: every method); a GET then pays nothing for a step about CONNECT.
    """

    methods: frozenset[bytes] | None = None
    upstream_drop: frozenset[bytes] = frozenset()
    upstream_drop_prefix: bytes = b""
    response_drop: frozenset[bytes] = frozenset()

    def request_filter(self, conn: ClientConnection, ex: Exchange) -> Answer | Pending | None:
        return None

    def upstream_peer(self, conn: ClientConnection, ex: Exchange) -> Any:
        """A peer (``dialer.Peer``), an ``Answer``, ``PENDING``, or None (not mine)."""
        return None

    def connected(self, conn: ClientConnection, ex: Exchange) -> bytes | None:
        """Bytes for the client to start a tunnel with, or None to forward the request."""
        return None

    def upstream_request_filter(self, conn: ClientConnection, ex: Exchange,
                                edit: HeadEdit) -> None:
        return None

    def response_filter(self, conn: ClientConnection, ex: Exchange, edit: HeadEdit) -> None:
        return None

    def logging(self, conn: ClientConnection, ex: Exchange) -> None:
        return None


HOOKS = ("request_filter", "upstream_peer", "connected", "upstream_request_filter",
         "response_filter", "logging")


class MethodHooks:
    """The bound hook methods an exchange of one request method runs, one
    list per hook, in step order (only steps that define the hook)."""

    __slots__ = HOOKS

    def __init__(self, steps: list[Step], method: bytes | None) -> None:
        for hook in HOOKS:
            default = getattr(Step, hook)
            setattr(self, hook, [getattr(step, hook) for step in steps
                                 if getattr(type(step), hook) is not default
                                 and (step.methods is None or method in step.methods)])


class Phases:
    """A mode's steps sorted once per request method: ``for_method(m)`` is
    the ``MethodHooks`` of ``m`` (methods no step names share one)."""

    __slots__ = ("_by_method", "_others")

    def __init__(self, steps: list[Step]) -> None:
        self._others = MethodHooks(steps, None)
        named = frozenset[bytes]().union(*(s.methods for s in steps if s.methods is not None))
        self._by_method = {method: MethodHooks(steps, method) for method in named}

    def for_method(self, method: bytes) -> MethodHooks:
        return self._by_method.get(method, self._others)
