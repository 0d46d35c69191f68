"""Loopback fixtures: free ports, backend servers and a real fastproxy master.

Everything binds 127.0.0.1. Every process started here is stopped by pid in
a ``finally``; every socket has a timeout, every wait a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, settings

from fastproxy.reactor import Reactor

HOST = "127.0.0.1"
TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent

# Property tests: the same examples on every run (derandomize: seeded from each
# test's own source), no example database carried between runs, and nothing that
# depends on how fast this machine is (no deadline, no too_slow health check):
# a run fails for the code under test, never for the draw or the load. The
# ``settings(...)`` of the test modules inherit this profile; set
# FASTPROXY_HYPOTHESIS_PROFILE=explore to draw new examples (a fuzzing session).
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FASTPROXY_HYPOTHESIS_PROFILE", "deterministic"))


# -- ports -----------------------------------------------------------------------
# The sockets holding the ports free_port() handed out, one list per scope that
# is still running (the session's, the module's, the test's), innermost last.
_held: list[list[socket.socket]] = [[]]


def free_port(host: str = HOST) -> int:
    """A port on ``host`` that nothing listens on and that no other process can
    take until the end of the test (or of the module, for a module-scoped fixture).

    Binding port 0 and closing the socket would leave a window in which another
    process, or the ephemeral source port of any outgoing connection, takes the
    port before the master or backend meant to bind it does. So the port stays
    bound, by a socket with SO_REUSEADDR and SO_REUSEPORT that never listens: on
    Linux that keeps it out of every other bind(0) and out of connect()'s choice
    of a source port, while a listener with SO_REUSEADDR (fastproxy's, the tests'
    backends) can still bind and listen on it, and a connect before that (or to
    a port used as a "dead" address) is refused. A listener without SO_REUSEADDR
    cannot bind it: such a listener binds port 0 instead.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))
    except BaseException:
        holder.close()
        raise
    _held[-1].append(holder)
    return int(holder.getsockname()[1])


def _holding_ports() -> Iterator[None]:
    """Release, at the end of the scope, the ports free_port() reserved in it."""
    held: list[socket.socket] = []
    _held.append(held)
    try:
        yield
    finally:
        for i in range(len(_held) - 1, 0, -1):     # by identity: scopes nest
            if _held[i] is held:
                del _held[i]
                break
        for holder in held:
            holder.close()


@pytest.fixture(autouse=True, scope="module")
def _module_ports() -> Iterator[None]:
    """Ports reserved by module-scoped fixtures stay reserved for the module."""
    yield from _holding_ports()


@pytest.fixture(autouse=True)
def _test_ports() -> Iterator[None]:
    """Ports reserved by a test and its fixtures stay reserved until its
    teardown (set up first, so torn down after its masters and backends)."""
    yield from _holding_ports()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


# -- backends --------------------------------------------------------------------
class Backend:
    """A threaded TCP server on 127.0.0.1; ``handler(conn)`` runs per connection."""

    def __init__(self, handler: Callable[[socket.socket, "Backend"], None], port: int = 0) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.address = f"{HOST}:{self.port}"
        self.accepted = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(TIMEOUT * 3)
            with self.lock:
                self.accepted += 1
                self._conns.add(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            with self.lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        with self.lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(TIMEOUT)
        for t in self._threads:
            t.join(TIMEOUT)


def _received(conn: socket.socket) -> Iterator[memoryview]:
    """What ``conn`` receives until EOF, a chunk at a time (each a view into one
    1 MiB buffer: valid until the next chunk is received)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(view)
        if not n:
            return
        yield view[:n]


def echo_handler(conn: socket.socket, backend: Backend) -> None:
    """Echo until EOF, then half-close back."""
    for chunk in _received(conn):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def hash_handler(conn: socket.socket, backend: Backend) -> None:
    """Read until EOF, then answer the byte count and sha256 of what came."""
    digest = hashlib.sha256()
    total = 0
    for chunk in _received(conn):
        digest.update(chunk)
        total += len(chunk)
    conn.sendall(f"{total} {digest.hexdigest()}\n".encode())


def name_handler(name: str) -> Callable[[socket.socket, Backend], None]:
    """Send ``name`` and close: tells which backend answered."""
    def handler(conn: socket.socket, backend: Backend) -> None:
        conn.sendall(name.encode())
    return handler


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    """A fresh event loop, closed after the test."""
    r = Reactor()
    yield r
    r.close()


@pytest.fixture
def backend_factory() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(handler: Callable[[socket.socket, Backend], None] = echo_handler, port: int = 0) -> Backend:
        b = Backend(handler, port)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def echo_backend(backend_factory: Callable[..., Backend]) -> Backend:
    return backend_factory(echo_handler)


# -- fastproxy -------------------------------------------------------------------
@dataclass
class Proxy:
    """A running fastproxy master started by ``run_proxy``."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    config_path: Path
    pidfile: Path
    admin_port: int
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        try:
            return sorted(c.pid for c in psutil.Process(self.pid).children()
                          if c.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return []

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.admin_port}/stats", timeout=TIMEOUT) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.admin_port}/metrics", timeout=TIMEOUT) as r:
            return r.read().decode()

    def totals(self) -> dict:
        return self.stats()["totals"]["counters"]

    def cli(self, *args: str, timeout: float = 60.0, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "fastproxy", *args], cwd=self.workdir,
                              capture_output=True, timeout=timeout, input=input)

    def write_config(self, text: str) -> None:
        self.config_path.write_text(textwrap.dedent(text))

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_workers(self, count: int, timeout: float = TIMEOUT) -> list[int]:
        """Wait for ``count`` ready workers (per /stats, state running)."""
        def ready() -> bool:
            try:
                workers = self.stats()["workers"]
            except OSError:
                return False
            running = [w for w in workers if w["state"] == "running"]
            return len(running) == count and len(self.worker_pids()) == count
        wait_until(ready, timeout, f"{count} running workers")
        return self.worker_pids()


def config_text(*, port: int, admin_port: int, pidfile: Path, upstreams: list[str],
                workers: int = 1, extra_listener: str = "", extra: str = "",
                retries: int = 1, balance: str = "round_robin", timeouts: str = "",
                graceful_timeout: float = 10.0, access: str = "off") -> str:
    servers = ", ".join(f'"{u}"' for u in upstreams)
    return textwrap.dedent(f"""\
        [server]
        workers = {workers}
        pidfile = "{pidfile}"
        graceful_timeout = {graceful_timeout}

        [log]
        access = "{access}"
        level = "info"

        [admin]
        listen = "{HOST}:{admin_port}"

        [[listener]]
        name = "main"
        listen = "{HOST}:{port}"
        mode = "tcp"
        upstream = "app"
        {timeouts}
        {extra_listener}

        [upstream.app]
        servers = [{servers}]
        balance = "{balance}"
        retries = {retries}
        {extra}
        """)


def _stop(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> None:
    """Stop a master and every process it started, by pid: SIGTERM it, SIGKILL it
    if it is still running after ``timeout``, then SIGKILL any child it left."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=timeout)


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def start(upstreams: list[str], wait: bool = True, **kwargs: object) -> Proxy:
        port = int(kwargs.pop("port", 0)) or free_port()
        admin_port = free_port()
        pidfile = tmp_path / f"fastproxy-{len(started)}.pid"
        config_path = tmp_path / f"fastproxy-{len(started)}.toml"
        config_path.write_text(config_text(port=port, admin_port=admin_port, pidfile=pidfile,
                                           upstreams=upstreams, **kwargs))  # type: ignore[arg-type]
        log = open(tmp_path / f"fastproxy-{len(started)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "run", "-c", str(config_path)],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        proxy = Proxy(proc, tmp_path, config_path, pidfile, admin_port, {"main": port})
        started.append(proxy)
        if wait:
            workers = int(kwargs.get("workers", 1))  # type: ignore[arg-type]
            proxy.wait_workers(workers)
        return proxy

    yield start
    for proxy in started:
        _stop(proxy.proc)


def read_log(proxy: Proxy, index: int = 0) -> str:
    return (proxy.workdir / f"fastproxy-{index}.log").read_text(errors="replace")
