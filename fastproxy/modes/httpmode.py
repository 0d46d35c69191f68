"""An HTTP listener's mode: its phase steps over the one engine.

``HttpMode`` is what the worker's acceptor hands connections to. It holds the
listener's limits and timeouts and the mode's steps (``phases.Step``), sorted
once into hook lists per request method (``phases.Phases``), and builds the
two heads every exchange forwards (``request_head``, ``response_head``) by
one ``edit_head`` each:
hop-by-hop fields out, the steps' fields in, framing rebuilt (RFC 9110 §7.6.1,
RFC 9112 §6). The reverse and forward modes differ only in their steps
(``reverse.py``, ``forward.py``); the access log is the last step of every
mode.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from fastproxy.config import Listener
from fastproxy.http import BodyKind, RequestParser, Response
from fastproxy.http.memo import HeadMemo
from fastproxy.http.rewrite import edit_head, framing_field
from fastproxy.log import AccessLog
from fastproxy.modes.client import ClientConnection
from fastproxy.modes.exchange import Answer, Event, Exchange
from fastproxy.modes.httpcommon import access_line, error_response, parser_limits
from fastproxy.modes.lifecycle import Lifecycle
from fastproxy.modes.phases import PENDING, HeadEdit, Phases, Step
from fastproxy.stats.shm import C

if TYPE_CHECKING:
    from fastproxy.context import WorkerContext

REWRITTEN_HEADS = 512
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


class AccessLogStep(Step):
    """The access log line of every exchange (``log.format``: combined or json)."""

    def __init__(self, access: AccessLog) -> None:
        self.access = access

    def logging(self, conn: ClientConnection, ex: Exchange) -> None:
        access = self.access
        if not access.enabled:
            return
        request = ex.request
        peer = ex.peer
        upstream = peer.names[ex.server] if peer is not None and ex.server >= 0 else ""
        record, line = access_line(
            access.format, client=conn.client_ip, method=request.method,
            target=request.target, version=request.version, status=ex.status, sent=ex.sent,
            referer=request.get(b"referer"), agent=request.get(b"user-agent"),
            upstream=upstream, request_time=conn.reactor.now - ex.started,
            upstream_time=ex.upstream_time)
        access.line(record, line)


class HttpMode:
    """Per-listener handler of an HTTP mode; ``steps`` in the order they run."""

    def __init__(self, ctx: WorkerContext, listener: Listener, steps: list[Step]) -> None:
        self.ctx = ctx
        self.listener = listener
        self.limits = parser_limits(listener.limits)
        self.timeouts = listener.timeouts
        self.lifecycle = Lifecycle(listener.timeouts)
        self.request_memo = HeadMemo()    # parsed heads, by their bytes (``http.memo``)
        self.response_memo = HeadMemo()
        # response -> its head as rewritten for the client (see response_head)
        self._response_heads: dict[tuple[int, bool, bytes], tuple[Response, bytes]] = {}
        if ctx.access.enabled:
            steps = [*steps, AccessLogStep(ctx.access)]
        self.phases = Phases(steps)
        drop = frozenset((b"content-length",)).union(*(s.upstream_drop for s in steps))
        self.upstream_drop = drop
        self.upstream_drop_absolute = drop | {b"host"}  # the target's authority wins
        prefixes = {s.upstream_drop_prefix for s in steps if s.upstream_drop_prefix}
        assert len(prefixes) <= 1, "one name prefix per mode"
        self.drop_prefix = prefixes.pop() if prefixes else b""
        response_drop = frozenset[bytes]().union(*(s.response_drop for s in steps))
        self.response_drop = response_drop
        self.response_drop_framed = response_drop | {b"content-length"}
        self.edit = HeadEdit()

    def accepted(self, sock: socket.socket, addr: tuple[str, int], initial: bytes = b"") -> None:
        ClientConnection(self, sock, addr).start(initial)

    def new_parser(self) -> RequestParser:
        return RequestParser(self.limits, self.request_memo)

    # -- the phases before the upstream ----------------------------------------------------
    def filter_request(self, conn: ClientConnection, ex: Exchange) -> None:
        """Run the request filters from ``ex.cursor`` (again, after one was PENDING)."""
        filters = ex.hooks.request_filter
        while ex.cursor < len(filters):
            verdict = filters[ex.cursor](conn, ex)
            if verdict is None:
                ex.cursor += 1
            elif verdict is PENDING:
                ex.step(Event.PENDING)
                return
            else:
                conn.answer(ex, verdict)
                return
        conn.act(ex, Event.ADMITTED)

    def choose_peer(self, conn: ClientConnection, ex: Exchange) -> None:
        """The first upstream_peer step that answers decides."""
        for choose in ex.hooks.upstream_peer:
            found = choose(conn, ex)
            if found is PENDING:
                ex.step(Event.PENDING)
                return
            if found is not None:
                self.peer_found(conn, ex, found)
                return
        conn.answer(ex, self.error(502, "no upstream for this request"))

    def peer_found(self, conn: ClientConnection, ex: Exchange, found: Any) -> None:
        if isinstance(found, Answer):
            conn.answer(ex, found)
            return
        ex.peer = found
        ex.candidates = found.candidates(conn.client_ip)
        if not ex.candidates:
            conn.c[C.upstream_no_server] += 1
            conn.answer(ex, self.error(503, "no healthy server"))
            return
        conn.act(ex, Event.PEER_CHOSEN)

    # -- heads ---------------------------------------------------------------------------
    def request_head(self, conn: ClientConnection, ex: Exchange) -> bytes:
        """The request head as it goes upstream (we speak HTTP/1.1, RFC 9110 §6.2)."""
        request = ex.request
        edit = self.edit
        if request.form == "absolute":
            edit.reset(request.method + b" " + request.path + b" HTTP/1.1\r\n",
                       self.upstream_drop_absolute, self.drop_prefix, ex.upgrade)
            edit.prepend.append(b"Host: " + request.authority + b"\r\n")
        else:
            edit.reset(request.method + b" " + request.path + b" HTTP/1.1\r\n",
                       self.upstream_drop, self.drop_prefix, ex.upgrade)
        for add in ex.hooks.upstream_request_filter:
            add(conn, ex, edit)
        if edit.whole is not None:
            return edit.whole
        edit.append.append(framing_field(ex.body_kind, ex.content_length or 0))
        return edit_head(edit.start, request, drop=edit.drop, drop_prefix=edit.drop_prefix,
                         keep_upgrade=edit.keep_upgrade, prepend=b"".join(edit.prepend),
                         append=b"".join(edit.append))

    def response_head(self, conn: ClientConnection, ex: Exchange, kind: BodyKind,
                      length: int | None) -> bytes:
        """The response head for the client; decides the client-side framing
        (``ex.chunked_out``) and persistence (``ex.keep_alive``)."""
        request, response = ex.request, ex.response
        assert response is not None
        if kind is BodyKind.CHUNKED and request.version == b"1.0":
            kind = BodyKind.CLOSE  # no chunked towards HTTP/1.0 (RFC 9112 §6.1): until close
        keep = request.keep_alive and kind is not BodyKind.CLOSE and not conn.ctx.draining
        ex.keep_alive = keep
        ex.chunked_out = kind is BodyKind.CHUNKED
        if ex.hooks.response_filter:  # steps may add per-exchange lines: build it every time
            return self._response_head(conn, ex, kind, length, keep)
        # Without response steps the head depends only on the response and on
        # two facts of the request; a remembered response (``http.memo``) is
        # the same object every time, so its rewritten head is kept with it.
        key = (id(response), keep, request.version)
        found = self._response_heads.get(key)
        if found is not None and found[0] is response:
            return found[1]
        head = self._response_head(conn, ex, kind, length, keep)
        if len(self._response_heads) >= REWRITTEN_HEADS:
            self._response_heads.clear()
        self._response_heads[key] = (response, head)
        return head

    def _response_head(self, conn: ClientConnection, ex: Exchange, kind: BodyKind,
                       length: int | None, keep: bool) -> bytes:
        request, response = ex.request, ex.response
        assert response is not None
        edit = self.edit
        edit.reset(b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason),
                   self.response_drop if kind is BodyKind.NONE else self.response_drop_framed,
                   b"", False)
        for add in ex.hooks.response_filter:
            add(conn, ex, edit)
        append = edit.append
        if kind is not BodyKind.NONE:
            append.append(framing_field(kind, length or 0))
        if not keep:
            append.append(_CLOSE)
        elif request.version == b"1.0":
            append.append(_KEEP_ALIVE)
        return edit_head(edit.start, response, drop=edit.drop, append=b"".join(append))

    def tunnel_head(self, conn: ClientConnection, ex: Exchange) -> bytes:
        """The head of a 101 (or a parent's 2xx to CONNECT), Upgrade kept."""
        response = ex.response
        assert response is not None
        return edit_head(b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason), response,
                         keep_upgrade=True)

    # -- answers and the end of an exchange ------------------------------------------------
    def error(self, status: int, detail: str, extra: bytes = b"") -> Answer:
        """A ``Connection: close`` error answer (details only for client errors)."""
        return Answer(status, error_response(status, detail if status < 500 else "",
                                             extra=extra))

    def ended(self, conn: ClientConnection, ex: Exchange) -> None:
        for logging in ex.hooks.logging:
            logging(conn, ex)
