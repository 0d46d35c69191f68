"""proxy.py reverse-proxy route for bench/bench.py (loaded by proxy.py, not by us).

proxy.py's bundled ``proxy.plugin.ReverseProxyPlugin`` is an *example* whose
routes are hard-coded to ``httpbingo.org``; flags cannot point it elsewhere.
Reverse routes are configured by a ``ReverseProxyBasePlugin`` subclass whose
``routes()`` returns them, so this module is that: one dynamic route (``/.*``)
that forwards every request, path kept, to the benchmark backend.

Why ``handle_route`` returns a connection, not a ``Url``: with a ``Url`` (the
documented, stock way; ``FPBENCH_PROXYPY_ROUTE=url`` selects it) proxy.py
2.4.10 opens a new upstream connection for *every request* and assigns it over
the previous one without unregistering it from the event loop. On the second
request of a keep-alive client connection the old socket is closed while still
registered, ``Threadless._update_work_events`` gets ``FileNotFoundError`` from
``epoll.modify``, and the worker's event loop task dies: from then on the proxy
accepts connections but answers nothing. Returning a ``TcpServerConnection``
(the third documented return type of ``handle_route``) that the plugin keeps
per client connection avoids that path: the plugin connects once, queues each
request on the same upstream connection, and proxy.py relays the bytes back.
So proxy.py here keeps one upstream connection per client connection (no pool).

The backend URL comes from ``FPBENCH_UPSTREAM`` (default
``http://127.0.0.1:18001``); only loopback addresses are accepted. Used as::

    PYTHONPATH=bench FPBENCH_UPSTREAM=http://127.0.0.1:18001 \\
        /tmp/proxypy-venv/bin/python -m proxy --enable-reverse-proxy \\
        --disable-http-proxy --plugins proxypy_plugin.BenchReverseProxy ...
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from proxy.core.connection import TcpServerConnection
from proxy.http import Url
from proxy.http.server import ReverseProxyBasePlugin

UPSTREAM = os.environ.get("FPBENCH_UPSTREAM", "http://127.0.0.1:18001").rstrip("/")
ROUTE_MODE = os.environ.get("FPBENCH_PROXYPY_ROUTE", "connection")
_parts = urlsplit(UPSTREAM)
if _parts.hostname not in ("127.0.0.1", "localhost", "::1") or _parts.scheme != "http":
    raise SystemExit(f"proxypy_plugin: FPBENCH_UPSTREAM must be an http loopback URL: {UPSTREAM}")
UPSTREAM_HOST = _parts.hostname
UPSTREAM_PORT = _parts.port or 80


class BenchReverseProxy(ReverseProxyBasePlugin):  # type: ignore[misc]
    """Every path -> the same path on FPBENCH_UPSTREAM (one instance per client connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: TcpServerConnection | None = None

    def routes(self) -> list[Any]:
        return [r"/.*"]

    def handle_route(self, request: Any, pattern: re.Pattern[str]) -> Any:
        if ROUTE_MODE == "url":  # stock behaviour; see the module docstring
            return Url.from_bytes(UPSTREAM.encode() + (request.path or b"/"))
        if self.conn is None or self.conn.closed:
            self.conn = TcpServerConnection(UPSTREAM_HOST, UPSTREAM_PORT)
            self.conn.connect()
        self.conn.queue(memoryview(request.build()))
        return self.conn
