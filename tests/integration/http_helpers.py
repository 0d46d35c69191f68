"""Fixtures and a raw HTTP/1.1 client for the http (reverse proxy) mode tests.

``run_http_proxy(upstreams=..., ...)`` writes a config with a ``mode = "http"``
listener (``"web"``) and starts a real master the way ``tests.conftest``'s
``run_proxy`` does; every process it starts is stopped by pid at teardown.
``HttpClient`` speaks HTTP/1.1 over one raw socket (keep-alive, pipelining,
interim responses) so that tests see exactly what the proxy sends.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from tests.conftest import HOST, TIMEOUT, Proxy, free_port
from tests.conftest import _stop as stop_master  # one way to stop a master, by pid

# -- configuration -----------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


@dataclass
class ListenerSpec:
    name: str
    upstream: str
    port: int = 0
    timeouts: dict[str, float] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    routes: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)   # other listener keys

    def toml(self) -> str:
        timeouts = {"client_header": 2.0, "idle": 5.0, "connect": 1.0, "upstream_read": 2.0,
                    **self.timeouts}
        limits = {"max_header_bytes": 65536, "max_body_bytes": 0, **self.limits}
        lines = ["[[listener]]", f"name = {_toml_value(self.name)}",
                 f'listen = "{HOST}:{self.port}"', 'mode = "http"',
                 f"upstream = {_toml_value(self.upstream)}",
                 f"timeouts = {_toml_value(timeouts)}", f"limits = {_toml_value(limits)}"]
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in self.options.items())
        for route in self.routes:
            lines.append("  [[listener.route]]")
            lines.extend(f"  {k} = {_toml_value(v)}" for k, v in route.items())
        return "\n".join(lines) + "\n"


def upstream_toml(name: str, spec: list[str] | dict[str, object]) -> str:
    options: dict[str, object] = {"balance": "round_robin", "keepalive": 32, "retries": 1}
    if isinstance(spec, dict):
        options.update(spec)
    else:
        options["servers"] = list(spec)
    servers = options.pop("servers")
    lines = [f"[upstream.{name}]", f"servers = {_toml_value(servers)}"]
    lines.extend(f"{k} = {_toml_value(v)}" for k, v in options.items())
    return "\n".join(lines) + "\n"


def http_config_text(*, admin_port: int, pidfile: Path, listeners: list[ListenerSpec],
                     upstreams: dict[str, list[str] | dict[str, object]], access: str = "off",
                     fmt: str = "combined", workers: int = 1,
                     server: dict[str, object] | None = None,
                     admin: dict[str, object] | None = None) -> str:
    extra = "".join(f"{key} = {_toml_value(value)}\n" for key, value in (server or {}).items())
    admin_extra = "".join(f"{key} = {_toml_value(value)}\n"
                          for key, value in (admin or {}).items())
    head = textwrap.dedent(f"""\
        [server]
        workers = {workers}
        pidfile = "{pidfile}"
        graceful_timeout = 5
        """) + extra + textwrap.dedent(f"""\

        [log]
        access = "{access}"
        format = "{fmt}"
        level = "info"

        [admin]
        listen = "{HOST}:{admin_port}"
        """) + admin_extra + "\n"
    return (head + "\n".join(l.toml() for l in listeners) + "\n"
            + "\n".join(upstream_toml(n, s) for n, s in upstreams.items()))


# -- running a master ----------------------------------------------------------------------
@dataclass
class HttpProxy(Proxy):
    access_log: Path | None = None
    error_log: Path | None = None

    @property
    def port(self) -> int:
        return self.ports["web"]

    def log_text(self) -> str:
        assert self.error_log is not None
        return self.error_log.read_text(errors="replace")

    def assert_healthy(self, workers: list[int] | None = None) -> None:
        """No internal error counted; the master runs; same workers if given."""
        assert self.proc.poll() is None, "master exited:\n" + self.log_text()
        assert self.totals()["internal_errors"] == 0, self.log_text()
        if workers is not None:
            assert self.worker_pids() == workers, self.log_text()


P = TypeVar("P", bound=HttpProxy)


class MasterRunner(Generic[P]):
    """Starts masters in ``workdir``; ``stop_all()`` stops them by pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[P] = []
        self.python_args = ["-m", "fastproxy"]   # what runs ``run -c CONFIG``

    def launch(self, proxy_type: type[P], config_path: Path, pidfile: Path, admin_port: int,
               ports: dict[str, int], *, access_log: Path | None, error_log: Path,
               workers: int) -> P:
        """Run a master on ``config_path`` (output to ``error_log``) and wait for
        its ``workers``; the proxy is stopped by ``stop_all()``."""
        with open(error_log, "wb") as log:
            proc = subprocess.Popen([sys.executable, *self.python_args, "run", "-c", str(config_path)],
                                    cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        proxy = proxy_type(proc, self.workdir, config_path, pidfile, admin_port, ports,
                           access_log=access_log, error_log=error_log)
        self.started.append(proxy)
        try:
            proxy.wait_workers(workers)
        except AssertionError:
            raise AssertionError("proxy did not start:\n" + error_log.read_text(errors="replace")
                                 + "\n" + config_path.read_text()) from None
        return proxy

    def stop_all(self) -> None:
        for proxy in self.started:
            stop_master(proxy.proc)


class HttpProxyRunner(MasterRunner[HttpProxy]):
    """Starts http-mode masters in ``workdir``; ``stop_all()`` stops them by pid."""

    def start(self, upstreams: dict[str, list[str] | dict[str, object]], *,
              routes: list[dict[str, str]] | None = None, timeouts: dict[str, float] | None = None,
              limits: dict[str, int] | None = None, extra_listeners: list[ListenerSpec] = (),  # type: ignore[assignment]
              access: bool = False, fmt: str = "combined", workers: int = 1,
              upstream: str | None = None,
              listener: dict[str, object] | None = None,
              server: dict[str, object] | None = None,
              admin: dict[str, object] | None = None) -> HttpProxy:
        n = len(self.started)
        admin_port = free_port()
        pidfile = self.workdir / f"http-{n}.pid"
        config_path = self.workdir / f"http-{n}.toml"
        access_path = self.workdir / f"access-{n}.log" if access else None
        main = ListenerSpec("web", upstream or next(iter(upstreams)), free_port(),
                            timeouts or {}, limits or {}, routes or [], listener or {})
        listeners = [main, *extra_listeners]
        for spec in listeners:
            spec.port = spec.port or free_port()
        config_path.write_text(http_config_text(
            admin_port=admin_port, pidfile=pidfile, listeners=listeners, upstreams=upstreams,
            access=str(access_path) if access_path else "off", fmt=fmt, workers=workers,
            server=server, admin=admin))
        return self.launch(HttpProxy, config_path, pidfile, admin_port,
                           {spec.name: spec.port for spec in listeners},
                           access_log=access_path, error_log=self.workdir / f"http-{n}.log",
                           workers=workers)


@pytest.fixture
def run_http_proxy(tmp_path: Path) -> Iterator[Callable[..., HttpProxy]]:
    runner = HttpProxyRunner(tmp_path)
    try:
        yield runner.start
    finally:
        runner.stop_all()


# -- a raw HTTP/1.1 client --------------------------------------------------------------
@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    raw_body: bytes = b""          # the body as framed on the wire (chunked: with chunk lines)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    framing: str = "none"          # length | chunked | close | none

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def has(self, name: str) -> bool:
        return any(n.lower() == name.lower() for n, _ in self.headers)


class HttpClient:
    """One client connection to the proxy, driven by hand."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = bytearray()

    def __enter__(self) -> HttpClient:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/", *, host: str = "test.local",
                headers: list[tuple[str, str]] = (), body: bytes | None = None,  # type: ignore[assignment]
                version: str = "HTTP/1.1") -> Response:
        self.send(build_request(method, target, host=host, headers=headers, body=body,
                                version=version))
        return self.read_response(method)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)[:-2]
            if not self._fill():
                raise EOFError(f"EOF inside a line: {bytes(self.buf[:200])!r}")

    def read_head(self) -> Response:
        """The next head (final or interim), its body not read."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"EOF before a complete head: {bytes(self.buf[:200])!r}")
        end = self.buf.find(b"\r\n\r\n")
        raw = self._take(end + 4)
        lines = raw[:-4].split(b"\r\n")
        version, status, reason = (lines[0].decode("latin-1").split(" ", 2) + [""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip(" \t")))
        return Response(int(status), reason, version, headers, raw_head=raw)

    def read_response(self, method: str = "GET", *, skip_interim: bool = True) -> Response:
        """The next response, body included (1xx skipped unless ``skip_interim``
        is False, then the 1xx is returned by itself)."""
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                if skip_interim:
                    continue
                return resp
            break
        self._read_body(resp, method)
        return resp

    def _read_body(self, resp: Response, method: str) -> None:
        if method == "HEAD" or resp.status in (101, 204, 304) or resp.status < 200:
            return
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if te is not None:
            assert te.lower() == "chunked", te
            resp.framing = "chunked"
            self._read_chunked(resp)
        elif cl is not None:
            resp.framing = "length"
            n = int(cl)
            parts = [self._take(min(n, len(self.buf)))]
            got = len(parts[0])
            while got < n:
                data = self.sock.recv(min(1 << 20, n - got))
                if not data:
                    raise EOFError(f"EOF after {got} of {n} body bytes")
                parts.append(data)
                got += len(data)
            resp.body = resp.raw_body = b"".join(parts)
        else:
            resp.framing = "close"
            parts = [self._take(len(self.buf))]
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                parts.append(data)
            resp.body = resp.raw_body = b"".join(parts)

    def _read_chunked(self, resp: Response) -> None:
        body, raw = [], []
        while True:
            line = self._line()
            raw.append(line + b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                break
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise EOFError("EOF inside a chunk")
            data = self._take(size)
            assert self._take(2) == b"\r\n", "chunk not followed by CRLF"
            body.append(data)
            raw.append(data + b"\r\n")
        while True:
            line = self._line()
            raw.append(line + b"\r\n")
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            resp.trailers.append((name, value.strip()))
        resp.body = b"".join(body)
        resp.raw_body = b"".join(raw)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the proxy closed the connection (FIN or RST) with nothing
        more to say; False if it stays open ``timeout`` seconds or sends more."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def build_request(method: str = "GET", target: str = "/", *, host: str | None = "test.local",
                  headers: list[tuple[str, str]] = (), body: bytes | None = None,  # type: ignore[assignment]
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(f"{n}: {v}" for n, v in headers)
    if body is not None and not any(n.lower() in ("content-length", "transfer-encoding")
                                    for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def exchange(port: int, method: str = "GET", target: str = "/", **kwargs: object) -> Response:
    """One request on a fresh connection."""
    with HttpClient(port) as client:
        return client.request(method, target, **kwargs)  # type: ignore[arg-type]


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[Response | None, bool]:
    """Send ``data`` on a fresh connection; the first response (None if the
    proxy closed without one) and whether the connection was then closed."""
    with HttpClient(port, timeout) as client:
        client.send(data)
        try:
            resp = client.read_response()
        except EOFError:
            return None, True
        except ConnectionResetError:
            return None, True
        return resp, client.at_eof(timeout)
