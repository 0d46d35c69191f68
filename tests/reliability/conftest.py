"""Helpers for the reliability tests: one master with several listeners, a fast
keep-alive backend, and a thread-safe tally of what the clients saw.

- ``runner`` (fixture): a ``ReliabilityRunner``; ``start(...)`` writes a config
  with an http listener ``"web"`` (a ``ListenerSpec``, see ``http_helpers``)
  and, when ``forward`` is given, a forward listener ``"fwd"`` with that
  ``[forward]`` table (over ``forward_helpers.BASE_FORWARD``), then starts a
  real master (``python -m fastproxy run -c CONFIG``) through
  ``http_helpers.MasterRunner``, which stops it and its workers by pid.
- ``fast_app``: a raw-socket HTTP/1.1 backend handler for
  ``tests.conftest.Backend`` (keep-alive, pipelining), several times faster
  than ``http_backends.HttpBackend``: ``GET /bytes/N`` answers
  ``http_backends.payload(N)``, ``POST /hash`` the length and sha256 of the
  body, anything else ``ok``.
- ``Tally``: requests done and failures by kind, resets counted apart;
  ``LoadThread``: a client thread running numbered steps into a ``Tally``.

Everything binds and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import HOST, TIMEOUT, Backend, free_port
from tests.integration.forward_helpers import BASE_FORWARD, toml_value
from tests.integration.http_backends import head_field, payload, read_head, sha256
from tests.integration.http_helpers import (
    HttpProxy,
    ListenerSpec,
    MasterRunner,
    Response,
    http_config_text,
)

FORWARD_TIMEOUTS = {"client_header": 5.0, "idle": 10.0, "connect": 2.0, "upstream_read": 10.0}


# -- configuration and masters -------------------------------------------------------------
def forward_listener_toml(port: int, timeouts: dict[str, float] | None = None) -> str:
    """A ``[[listener]]`` table named ``fwd`` in forward mode."""
    times = {**FORWARD_TIMEOUTS, **(timeouts or {})}
    return (f'[[listener]]\nname = "fwd"\nlisten = "{HOST}:{port}"\nmode = "forward"\n'
            f"timeouts = {toml_value(times)}\n")


def mixed_config_text(*, admin_port: int, pidfile: Path, web: ListenerSpec,
                      upstreams: dict[str, Any], forward: dict[str, Any] | None,
                      fwd_port: int, workers: int, graceful_timeout: float,
                      server: dict[str, Any] | None) -> str:
    """``http_config_text`` with ``graceful_timeout`` set, plus a forward listener
    and its ``[forward]`` table when ``forward`` is not None."""
    text = http_config_text(admin_port=admin_port, pidfile=pidfile, listeners=[web],
                            upstreams=upstreams, workers=workers, server=server)
    # http_config_text writes graceful_timeout = 5 and takes no other value for it.
    fixed = "graceful_timeout = 5\n"
    assert text.count(fixed) == 1, "http_config_text changed: update mixed_config_text"
    text = text.replace(fixed, f"graceful_timeout = {graceful_timeout!r}\n")
    if forward is not None:
        table = {**BASE_FORWARD, **forward}
        text += ("\n" + forward_listener_toml(fwd_port) + "\n[forward]\n"
                 + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items()))
    return text


class ReliabilityRunner(MasterRunner[HttpProxy]):
    """Starts masters in ``workdir``; ``stop_all()`` stops them (and their workers) by pid."""

    def start(self, upstreams: dict[str, Any], *, web: ListenerSpec,
              forward: dict[str, Any] | None = None, workers: int = 1,
              graceful_timeout: float = 5.0, server: dict[str, Any] | None = None,
              admin_port: int = 0, fwd_port: int = 0) -> HttpProxy:
        """A master with ``web`` (its port 0: a free one) and, with ``forward``, a
        forward listener ``fwd``; ``ports`` of the result has both."""
        n = len(self.started)
        admin_port = admin_port or free_port()
        web.port = web.port or free_port()
        ports = {web.name: web.port}
        if forward is not None:
            ports["fwd"] = fwd_port or free_port()
        pidfile = self.workdir / f"rel-{n}.pid"
        config_path = self.workdir / f"rel-{n}.toml"
        config_path.write_text(mixed_config_text(
            admin_port=admin_port, pidfile=pidfile, web=web, upstreams=upstreams,
            forward=forward, fwd_port=ports.get("fwd", 0), workers=workers,
            graceful_timeout=graceful_timeout, server=server))
        return self.launch(HttpProxy, config_path, pidfile, admin_port, ports,
                           access_log=None, error_log=self.workdir / f"rel-{n}.log",
                           workers=workers)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ReliabilityRunner]:
    r = ReliabilityRunner(tmp_path)
    try:
        yield r
    finally:
        r.stop_all()


@pytest.fixture
def fast_backend() -> Iterator[Backend]:
    backend = Backend(fast_app)
    try:
        yield backend
    finally:
        backend.close()


# -- a fast backend --------------------------------------------------------------------------
def fast_app(conn: socket.socket, backend: Backend) -> None:
    """Serve requests on ``conn`` until the peer closes (see the module docstring)."""
    buf = bytearray()
    while True:
        try:
            head, buf = read_head(conn, buf)
        except ConnectionResetError:   # EOF between requests (or a reset): done
            return
        if (head_field(head, b"transfer-encoding") or b"").lower() == b"chunked":
            body = read_chunked(conn, buf)
        else:
            body = read_exact(conn, buf, int(head_field(head, b"content-length") or b"0"))
        if body is None:
            return
        target = head.split(b" ", 2)[1]
        if target.startswith(b"/bytes/"):
            out = payload(int(target[len(b"/bytes/"):]))
        elif target == b"/hash":
            out = hash_answer(body)
        else:
            out = b"ok"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)


def read_exact(conn: socket.socket, buf: bytearray, n: int) -> bytes | None:
    """``n`` bytes taken from ``buf``, filled from ``conn``; None at EOF."""
    while len(buf) < n:
        data = conn.recv(1 << 16)
        if not data:
            return None
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def read_line(conn: socket.socket, buf: bytearray) -> bytes | None:
    """One CRLF-terminated line (without it) from ``buf``/``conn``; None at EOF."""
    while b"\r\n" not in buf:
        data = conn.recv(1 << 16)
        if not data:
            return None
        buf += data
    line, _, _ = bytes(buf).partition(b"\r\n")
    del buf[:len(line) + 2]
    return line


def read_chunked(conn: socket.socket, buf: bytearray) -> bytes | None:
    """A chunked body (extensions and trailers dropped); None at EOF."""
    parts = []
    while True:
        line = read_line(conn, buf)
        if line is None:
            return None
        size = int(line.split(b";", 1)[0], 16)
        data = read_exact(conn, buf, size + 2) if size else b""
        if data is None:
            return None
        if not size:
            break
        parts.append(data[:-2])
    while (line := read_line(conn, buf)):   # trailers, up to the empty line
        pass
    return None if line is None else b"".join(parts)


def hash_answer(body: bytes) -> bytes:
    """What ``fast_app`` and ``HttpBackend`` answer to ``POST /hash`` with ``body``."""
    return f"{len(body)} {sha256(body)}".encode()


# -- what the clients saw --------------------------------------------------------------------
class Mismatch(Exception):
    """A response that is not the expected one."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Mismatch(what)


def expect_body(resp: Response, body: bytes) -> None:
    expect(resp.status == 200 and resp.body == body,
           f"status {resp.status}, {len(resp.body)} bytes, want 200 and {len(body)} bytes")


class Tally:
    """Requests completed and failures, by kind (thread-safe). A failure that
    is a reset (ECONNRESET, EPIPE) is also counted in ``resets``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.resets = 0

    def ok(self, kind: str, count: int = 1) -> None:
        with self.lock:
            self.done[kind] += count

    def fail(self, kind: str, what: str, exc: BaseException | None = None) -> None:
        with self.lock:
            self.failed[kind] += 1
            self.failures.append(f"{kind}: {what}" + (f" ({exc!r})" if exc else ""))
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                self.resets += 1

    def count(self, kind: str) -> int:
        with self.lock:
            return self.done[kind]

    def attempts(self, kind: str) -> int:
        """Requests of ``kind`` done or failed."""
        with self.lock:
            return self.done[kind] + self.failed[kind]

    def total(self) -> int:
        with self.lock:
            return sum(self.done.values())


class LoadThread:
    """Runs ``step(i)`` for i = 0, 1, ... in a thread, ``max_steps`` times at most,
    for ``max_seconds`` at most, until ``stop()``. A step that returns n
    completed n requests of ``kind`` (None: one); one that raises (Mismatch,
    OSError, EOFError, anything) is a failure of ``kind`` in ``tally``."""

    def __init__(self, kind: str, step: Callable[[int], int | None], tally: Tally,
                 max_steps: int = 100_000, max_seconds: float = 120.0) -> None:
        self.kind = kind
        self.step = step
        self.tally = tally
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=kind, daemon=True)

    def start(self) -> LoadThread:
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.max_steps):
            if self.stopping.is_set() or time.monotonic() > deadline:
                return
            try:
                done = self.step(i)
            except Mismatch as exc:
                self.tally.fail(self.kind, f"#{i} {exc}")
            except (OSError, EOFError) as exc:
                self.tally.fail(self.kind, f"#{i}", exc)
            except Exception as exc:   # noqa: BLE001 - a client's surprise is a failure too
                self.tally.fail(self.kind, f"#{i} unexpected", exc)
            else:
                self.tally.ok(self.kind, 1 if done is None else done)

    def join(self, timeout: float) -> None:
        """Wait for the last step (``timeout`` seconds at most)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.kind} load did not finish"

    def stop(self) -> None:
        self.stopping.set()
        self.join(TIMEOUT * 3)


# -- processes -------------------------------------------------------------------------------
def fds_of(pid: int) -> int:
    return int(psutil.Process(pid).num_fds())


def rss_of(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)
