"""The express lane of an HTTP session: a common exchange in two straight runs.

The general exchange (``reverse.HttpSession``) parses every head with the
strict parser, rebuilds both heads field by field, and drives a state
machine through a dozen steps; that is most of its CPU time for a small
request. Most requests are simpler than what it is built for: a body-less
``GET`` on a kept-alive connection, answered in one read by a response with
a ``Content-Length``. For those, the express lane does the same thing in two
runs of straight-line code:

1. *request*: a client read that is exactly one quick GET head
   (``http.quick.quick_get``), routed to a server that has an idle
   connection (the one attached to this session, or one from the pool), is
   sent upstream at once with the proxy's fields appended;
2. *response*: an upstream read that is exactly one whole quick response
   (``http.quick.quick_answer``) is sent to the client, the connection is
   attached again, and the session waits for the next request.

Whatever does not fit, at any point, is *demoted*: ``_demote`` builds the
general path's state as it would stand at the same point (the request parsed
by the strict parser and sent, the response not yet read) and the general
path carries on from there, so every rule (errors, retries, timeouts,
streaming, splice) has one implementation. The quick parsers accept only a
subset of what the strict parser accepts and produce the same bytes
(``tests/http/test_quick.py``); balancing, counters, per-server stats
and the access log are kept exactly as the general path keeps them.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from fastproxy.http import EndOfMessage, Request, ResponseParser
from fastproxy.http.quick import forwarded_suffix, quick_answer, quick_fields
from fastproxy.modes.httpcommon import READ_SIZE, Phase
from fastproxy.modes.upstreamlink import UpstreamLink
from fastproxy.reactor import EVENT_READ
from fastproxy.stats.shm import C, H

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastproxy.modes.reverse import HttpMode
    from fastproxy.worker import UpstreamRuntime

_RESPONSE_CLASS = {2: C.responses_2xx, 3: C.responses_3xx, 4: C.responses_4xx,
                   5: C.responses_5xx}


class ExpressLane(UpstreamLink):
    """The express lane of ``reverse.HttpSession`` (a mixin over the upstream
    bookkeeping it reuses); see the module docstring."""

    # Defined by the session, beyond what ``UpstreamLink`` declares.
    mode: HttpMode
    client: socket.socket
    addr: tuple[str, int]
    cout: bytearray
    served: int
    exchange_started: float
    last_client: float
    head_started: float
    upstream_time: float | None
    prechosen: tuple[UpstreamRuntime, list[int]] | None
    express: tuple[bytes, bytes, list[int], bool] | None
    _xsuffix: tuple[bytes, bytes]
    _update_interest: Callable[[], None]
    _log: Callable[[int, int], None]
    _run: Callable[..., None]

    def _express_request(self, data: bytes) -> bool:
        """Send ``data`` upstream on the express lane; False (nothing done)
        when it does not qualify. May leave the request to the general path
        with its server already chosen (``prechosen``), so that a request
        consults the balancer once."""
        plan = self._express_plan(data)
        if plan is None:
            return False
        upstream, candidates, head, keep_alive = plan
        server = candidates[0]
        ctx = self.ctx
        parked = self.parked
        if parked is not None and parked[0] is upstream and parked[1] == server:
            self.parked = None
            sock = parked[2]
            fd = sock.fileno()  # watched for reading while parked (``_park``)
        else:
            self._unpark_to_pool()
            pooled = ctx.idle.take((upstream.config.name, server))
            if pooled is None:
                self.prechosen = (upstream, candidates)
                return False
            sock = pooled
            fd = sock.fileno()
            self.masks[fd] = EVENT_READ
            ctx.reactor.modify(fd, EVENT_READ, self._on_upstream)
        self._express_admitted()
        c = ctx.c
        c[C.requests] += 1
        c[C.bytes_in] += len(data)
        now = ctx.reactor.now
        self.last_client = self.exchange_started = self.upstream_started = self.last_upstream = now
        upstream.record_success(server)
        self.upstream = upstream
        self.server = server
        self.up = sock
        self.ufd = fd
        self.active_counted = True
        self.phase = Phase.EXPRESS
        self.express = (data, head, candidates, keep_alive)
        try:
            sent = sock.send(head)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._demote()
            self._run(self._upstream_io_error, exc)
            return True
        c[C.upstream_bytes_out] += sent
        self.up_sent = sent
        if sent < len(head):
            self._demote()
            self._run(_nothing)
        return True

    def _express_plan(self, data: bytes
                      ) -> tuple[UpstreamRuntime, list[int], bytes, bool] | None:
        """``(upstream, candidates, head to send, client keep-alive)`` for a
        quick request of this mode (the reverse proxy's here), else None."""
        mode = self.mode
        found = mode.quick_requests(data)
        if found is None:
            return None
        target, host, keep_alive, kept = found
        upstream = mode.route_to(host, target)
        candidates = upstream.candidates(self.addr[0])
        if not candidates:
            self.prechosen = (upstream, candidates)
            return None
        suffix_host, suffix = self._xsuffix
        if suffix_host != host:
            suffix = forwarded_suffix(self.addr[0].encode(), host)
            self._xsuffix = (host, suffix)
        return upstream, candidates, kept + suffix, keep_alive

    def _express_admitted(self) -> None:
        """The express request goes ahead: count what the mode's admission counts."""

    def _express_response(self) -> None:
        """The upstream is readable while an express request waits for its answer."""
        sock = self.up
        assert sock is not None and self.upstream is not None
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._demote()
            self._run(self._upstream_io_error, exc)
            return
        assert self.express is not None
        keep_alive = self.express[3]
        quick = quick_answer(data, self.mode.quick_responses[keep_alive]) if data else None
        if quick is None:
            self._demote()
            self._run(self._upstream_bytes, data)
            return
        out, status, reusable = quick
        ctx = self.ctx
        c = ctx.c
        now = ctx.reactor.now
        c[C.upstream_bytes_in] += len(data)
        c[C.requests_express] += 1
        c[_RESPONSE_CLASS[status // 100]] += 1
        ctx.slot.observe(H.request_seconds, now - self.exchange_started)
        self.resp_bytes = len(data)
        if ctx.access.enabled:
            self.upstream_time = now - self.upstream_started
            self._log_express(status)
        if reusable and keep_alive:
            self._park()
        else:
            self._drop_upstream(reusable)
        self.upstream = None
        self.server = -1
        self.up_sent = self.resp_bytes = 0
        self.express = None
        self.served += 1
        if keep_alive:
            self.phase = Phase.HEAD
            self.head_started = self.last_client = now
        else:
            self.phase = Phase.CLOSING
        try:
            sent = self.client.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(reset=True)
            return
        c[C.bytes_out] += sent
        if sent < len(out):
            self.cout += out[sent:]
            self._update_interest()
        elif not keep_alive:
            self.close()

    def _demote(self) -> None:
        """Hand the express exchange to the general path, in the state that
        path has after sending the same request on a reused connection
        (``_begin`` then ``_next_server``) and before reading the response."""
        assert self.express is not None
        data, head, candidates, _ = self.express
        self.express = None
        parser = self.parser
        parser.receive_data(data)
        request = parser.next_event()
        assert isinstance(request, Request) and isinstance(parser.next_event(), EndOfMessage)
        self.request = request
        self.candidates = candidates
        self.attempts = 1
        self.reused = True
        self.head = head
        self.uout = bytearray(head[self.up_sent:])
        self.req_done = True
        self.resp = ResponseParser()
        self.resp.expect(request.method, upgrade=False)
        self.phase = Phase.FORWARD

    def _log_express(self, status: int) -> None:
        assert self.express is not None
        data = self.express[0]
        target = data[4:data.index(b" ", 4)]
        fields = quick_fields(data)
        host = next(value for name, value in fields if name.lower() == b"host")
        self.request = Request(b"GET", target, fields, b"1.1", "origin", host, b"", target)
        self._log(status, self.resp_bytes)
        self.request = None


def _nothing() -> None:
    """A step for ``_run`` when only the drive and the interest update are wanted."""
