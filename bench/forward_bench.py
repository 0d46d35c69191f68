#!/usr/bin/env python3
"""Forward-proxy benchmark: fastproxy (mode = "forward") vs tinyproxy vs squid vs proxy.py.

    python bench/forward_bench.py                                  # all targets, 10 s wrk, 1 GiB tunnels
    python bench/forward_bench.py --targets fastproxy,squid --duration 5 --bulk-mib 256

Same method as tcp_bench.py / http_bench.py, whose process handling, CPU
accounting (HttpMeter: proxy tree CPU from schedstat, foreign-CPU check),
measurement and report helpers this imports (see bench/README.md): load
generator and backends on CPU 0, the proxy's whole process tree on CPU 1,
work per CPU-second of the proxy as the headline figure.

Scenarios:
  (a) fwd_get       wrk -t1 -c50 through the proxy: the request line is
                    absolute-form (``GET http://127.0.0.1:18501/1k HTTP/1.1``,
                    set by a generated Lua script), keep-alive; the backend is
                    nginx serving a 1 KiB file. Every run is cross-checked with
                    the backend's own request counter (nginx stub_status).
  (b) tunnel_down   ``CONNECT 127.0.0.1:18502``, then download N MiB from the
                    bulkio source through the tunnel (tunnel-client below)
      tunnel_up     the same, uploading N MiB to the bulkio sink
The optional ``nginx-stream`` target is an L4 reference for (b) only (plain
TCP relay to the bulk backend, no CONNECT): the cost floor of moving bytes.

The tunnel client is this file: ``forward_bench.py tunnel-client --proxy-port P
--connect 127.0.0.1:18502 --direction down --bytes N --handshake``. It sends
the CONNECT, reads the proxy's 200 head, then speaks bulkio's protocol
(sendfile from a memfd up, splice to /dev/null down) and prints one JSON line.

Traffic only ever goes to 127.0.0.1; every run is bounded by a duration or a
byte count and a hard timeout; every process is started and stopped here, by
process group, in try/finally (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bulkio  # bench/ is sys.path[0] when run as `python bench/forward_bench.py`

HOST = "127.0.0.1"
HTTP_BACKEND_PORT = 18501  # nginx: /1k (+ /fpbench-status, stub_status)
BULK_BACKEND_PORT = 18502  # bulkio.py server (sink/source)
FASTPROXY_PORT = 18590
FASTPROXY_ADMIN_PORT = 18591
TINYPROXY_PORT = 18592
SQUID_PORT = 18593
PROXYPY_PORT = 18594
NGINX_STREAM_PORT = 18595
CONNECT_PORTS = (443, HTTP_BACKEND_PORT, BULK_BACKEND_PORT)  # allowed CONNECT ports, every proxy

SMALL_PATH, SMALL_BYTES = "/1k", 1024
STATUS_PATH = "/fpbench-status"
FORWARD_URL = f"http://{HOST}:{HTTP_BACKEND_PORT}{SMALL_PATH}"
PORT_FREE_WAIT = 180.0  # another harness may hold a port for a while: wait, then give up

ALL_TARGETS = ("fastproxy", "tinyproxy", "squid", "proxypy")
EXTRA_TARGETS = ("nginx-stream",)
COMPARED = ("tinyproxy", "squid", "proxypy", "nginx-stream")  # fastproxy/<x> columns
FP_FORWARD_COUNTERS = (
    "forward_requests",
    "tunnels",
    "denied",
    "auth_failures",
    "bytes_spliced",
    "bytes_copied",
)


def log(msg: str) -> None:
    print(f"[forward_bench] {msg}", file=sys.stderr, flush=True)


# ========================================================== tunnel client
# Kept above the harness imports' use so that the client subprocess does not
# need psutil or the other harness modules: main() dispatches to it first.


def read_head(sock: socket.socket, limit: int = 16384) -> bytes:
    """Read a response head up to CRLFCRLF; refuse any byte after it (none may come yet)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed before a full response head: {data[:200]!r}")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("response head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    if rest:
        raise ConnectionError(f"{len(rest)} unexpected bytes after the CONNECT response head")
    return head


def open_tunnel(proxy_port: int, dest: str | None, timeout: float = 10.0) -> socket.socket:
    """Connect to the proxy; with ``dest`` send CONNECT and require a 200.

    Returns a *blocking* socket (no timeout), as os.splice/os.sendfile need."""
    sock = socket.create_connection((HOST, proxy_port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if dest is not None:
            sock.sendall(f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n".encode())
            head = read_head(sock)
            status = head.split(b"\r\n", 1)[0]
            parts = status.split(b" ", 2)
            if len(parts) < 2 or parts[1] != b"200":
                raise ConnectionError(f"CONNECT {dest} refused: {status.decode(errors='replace')}")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def tunnel_client(args: argparse.Namespace) -> int:
    mode = bulkio.UPLOAD if args.direction == "up" else bulkio.DOWNLOAD
    source_fd = bulkio.make_source() if mode == bulkio.UPLOAD else -1
    drain = bulkio.Drain() if mode == bulkio.DOWNLOAD else None
    with open_tunnel(args.proxy_port, args.connect) as sock:
        if args.handshake:
            bulkio.wait_for_go()
        start = time.perf_counter()
        sock.sendall(bulkio.HEADER.pack(mode, args.bytes))
        if mode == bulkio.UPLOAD:
            bulkio.send_from(sock, source_fd, args.bytes)
            acked = bulkio.ACK.unpack(bulkio.recv_exact(sock, bulkio.ACK.size))[0]
            if acked != args.bytes:
                raise ConnectionError(f"backend acknowledged {acked} of {args.bytes} bytes")
        else:
            assert drain is not None
            drain.drain(sock, args.bytes)
        seconds = time.perf_counter() - start
    if drain is not None:
        drain.close()
    print(json.dumps({"direction": args.direction, "bytes": args.bytes, "seconds": seconds}))
    return 0


def tunnel_client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="forward_bench.py tunnel-client")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--connect", default=None, help="HOST:PORT to CONNECT to (absent: plain TCP)")
    parser.add_argument("--direction", choices=("up", "down"), required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--handshake", action="store_true")
    args = parser.parse_args(argv)
    if args.connect is not None and not args.connect.startswith("127."):
        parser.error("the tunnel client only CONNECTs to loopback addresses")
    return tunnel_client(args)


if __name__ == "__main__" and sys.argv[1:2] == ["tunnel-client"]:
    sys.exit(tunnel_client_main(sys.argv[2:]))


# ================================================================ harness

import harness
import http_bench as hb
import tcp_bench as tb
from harness import (
    BENCH_DIR,
    LOAD_CPU,
    PROXY_CPU,
    REPO_DIR,
    START_TIMEOUT,
    ManagedProcess,
    Meter,
    RunResult,
    Scenario,
    fmt,
    pinned,
)
from tcp_bench import ProxyTarget

harness.set_log_name("forward_bench")  # the shared helpers log with this prefix
port_open = harness.port_open


def wait_port_free(port: int, max_wait: float = PORT_FREE_WAIT) -> None:
    """Another benchmark may be using the port: wait (bounded) for it to go away."""
    deadline = time.monotonic() + max_wait
    warned = False
    while port_open(port):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"port {HOST}:{port} still in use after {max_wait:.0f}s")
        if not warned:
            log(f"port {HOST}:{port} is busy; waiting up to {max_wait:.0f}s")
            warned = True
        time.sleep(2)


def start_server(proc: ManagedProcess, port: int, timeout: float = START_TIMEOUT) -> None:
    wait_port_free(port)
    harness.start_and_wait(proc, port, timeout)


# ================================================================= probes


def http_exchange(port: int, request: bytes, timeout: float = 2.0) -> tuple[int, bytes]:
    """Send one request (which must ask for Connection: close); (status, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(data) < 64 * 1024:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def forward_get(proxy_port: int) -> tuple[int, bytes]:
    request = (
        f"GET {FORWARD_URL} HTTP/1.1\r\nHost: {HOST}:{HTTP_BACKEND_PORT}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return http_exchange(proxy_port, request)


def forwards_small(proxy_port: int) -> bool:
    try:
        status, body = forward_get(proxy_port)
    except (OSError, ValueError, IndexError):
        return False
    return status == 200 and len(body) == SMALL_BYTES


def tunnels_bulk(proxy_port: int, connect: bool) -> bool:
    """One 1-byte download from the bulk backend through a CONNECT tunnel (or plain L4)."""
    try:
        with open_tunnel(proxy_port, f"{HOST}:{BULK_BACKEND_PORT}" if connect else None, 2.0) as s:
            s.settimeout(2.0)
            s.sendall(bulkio.HEADER.pack(bulkio.DOWNLOAD, 1))
            return len(s.recv(1)) == 1
    except (OSError, ConnectionError):
        return False


def backend_requests() -> int | None:
    """nginx's own request counter (stub_status), this request included."""
    request = (
        f"GET {STATUS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        status, body = http_exchange(HTTP_BACKEND_PORT, request)
    except (OSError, ValueError, IndexError):
        return None
    # "Active connections: 1 \nserver accepts handled requests\n 5 5 7 \n..."
    match = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", body)
    return int(match.group(3)) if status == 200 and match else None


def verify_with_curl(proxy_port: int) -> dict[str, Any]:
    """``curl -x`` one GET through the proxy; the backend's counter must move by one."""
    before = backend_requests()
    argv = [
        "curl", "-sS", "--max-time", "5", "-x", f"http://{HOST}:{proxy_port}",
        "-o", "/dev/null", "-w", "%{http_code} %{size_download}", FORWARD_URL,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        out = done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = f"curl failed: {exc}"
    after = backend_requests()
    reached = after - before - 1 if before is not None and after is not None else None
    ok = out == f"200 {SMALL_BYTES}" and reached == 1
    return {"curl": out, "backend_requests_delta": reached, "ok": ok}


# ================================================================ targets


class ForwardTarget(ProxyTarget):
    """A forward proxy pinned to PROXY_CPU; ready when a forward GET and a CONNECT work."""

    speaks_connect = True
    forwards_http = True

    def __init__(self) -> None:
        super().__init__()
        self.verification: dict[str, Any] | None = None

    def env(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        ok = tunnels_bulk(self.listen_port, self.speaks_connect)
        return ok and (not self.forwards_http or forwards_small(self.listen_port))

    def start(self, upstream_port: int, workdir: Path) -> None:
        config = self.write_config(upstream_port, workdir)
        argv = harness.with_env(self.command(config), self.env())
        log_path = workdir / f"{self.name}.log"
        self.proc = ManagedProcess(self.name, pinned(PROXY_CPU, argv), log_path, cwd=self.cwd())
        deadline = time.monotonic() + self.start_timeout
        start_server(self.proc, self.listen_port, self.start_timeout)
        if harness.poll_ready(self.proc, self.ready, deadline):
            if self.forwards_http:
                self.verification = verify_with_curl(self.listen_port)
                log(f"{self.name}: curl -x check {self.verification}")
                if not self.verification["ok"]:
                    tail = self.proc.log_tail()
                    self.stop()
                    raise RuntimeError(
                        f"{self.name}: curl -x did not reach the backend exactly once: "
                        f"{self.verification}; log {log_path}:\n{tail}"
                    )
            return
        why = "exited" if not self.proc.alive() else "does not forward GET / CONNECT"
        tail = self.proc.log_tail()
        self.stop()
        raise RuntimeError(
            f"{self.name} listens on {HOST}:{self.listen_port} but {why} within "
            f"{self.start_timeout:.0f}s of start; log {log_path}:\n{tail}"
        )


class FastproxyForwardTarget(ForwardTarget, tb.FastproxyTarget):
    """fastproxy ``mode = "forward"``; start, stats and cwd as in ``tcp_bench``."""

    name = "fastproxy"
    listen_port = FASTPROXY_PORT

    def __init__(self, cmd: Sequence[str]) -> None:
        tb.FastproxyTarget.__init__(self, cmd)  # ForwardTarget.__init__ would not pass cmd on
        self.verification = None

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "fastproxy-forward.toml"
        ports = ", ".join(str(p) for p in CONNECT_PORTS)
        path.write_text(
            f"""[server]
workers = 1
pidfile = "{workdir}/fastproxy-forward.pid"

[log]
access = "off"

[admin]
listen = "{HOST}:{FASTPROXY_ADMIN_PORT}"

[[listener]]
name = "fwd"
listen = "{HOST}:{self.listen_port}"
mode = "forward"

[forward]
allow_destinations = ["127.0.0.0/8"]   # loopback is denied by default
connect_ports = [{ports}]
"""
        )
        return path


class TinyproxyTarget(ForwardTarget):
    """tinyproxy 1.11: one process, one thread per client connection."""

    name = "tinyproxy"
    listen_port = TINYPROXY_PORT
    thread_per_connection = True  # ForwardMeter: take its CPU from utime+stime

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        path = workdir / "tinyproxy.conf"
        connect = "".join(f"ConnectPort {p}\n" for p in CONNECT_PORTS)
        # 1.11 has no StartServers/MinSpareServers (threads, not pre-forked
        # processes): MaxClients bounds the threads. No Syslog, a file log at
        # Critical level (i.e. nothing per request).
        path.write_text(
            f"""Port {self.listen_port}
Listen {HOST}
Timeout 60
MaxClients 1024
LogFile "{workdir}/tinyproxy.file.log"
LogLevel Critical
PidFile "{workdir}/tinyproxy.pid"
Allow 127.0.0.1
{connect}"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["tinyproxy", "-d", "-c", str(config)]


class SquidTarget(ForwardTarget):
    """squid, no daemon (-N: one process, no SMP kids), no cache, no logs."""

    name = "squid"
    listen_port = SQUID_PORT

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        sq = workdir / "squid"
        sq.mkdir(exist_ok=True)
        sq.chmod(0o777)  # squid switches to cache_effective_user (proxy) after start
        path = sq / "squid.conf"
        ports = " ".join(str(p) for p in CONNECT_PORTS)
        path.write_text(
            f"""http_port {HOST}:{self.listen_port}
visible_hostname fpbench
workers 1
acl localnet src 127.0.0.1
acl SSL_ports port {ports}
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow localnet
http_access deny all
cache deny all
cache_mem 0 MB
memory_cache_shared off
access_log none
cache_store_log none
cache_log {sq}/cache.log
pid_filename {sq}/squid.pid
coredump_dir {sq}
netdb_filename none
icp_port 0
htcp_port 0
pinger_enable off
shutdown_lifetime 1 seconds
"""
        )
        return path

    def command(self, config: Path) -> list[str]:
        return ["squid", "-N", "-f", str(config)]


class ProxypyForwardTarget(ForwardTarget):
    """proxy.py (PyPI `proxy.py`, own venv) in its default mode: an HTTP(S) forward proxy."""

    name = "proxypy"
    listen_port = PROXYPY_PORT
    start_timeout = 20.0  # imports a lot on start

    def __init__(self, venv: Path = hb.PROXYPY_VENV) -> None:
        super().__init__()
        self.python = venv / "bin" / "python"

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        if not self.python.exists():
            raise RuntimeError(
                f"{self.python} missing: python -m venv {hb.PROXYPY_VENV} && "
                f"{hb.PROXYPY_VENV}/bin/pip install proxy.py"
            )
        data_dir = workdir / "proxypy-fwd-data"
        data_dir.mkdir(exist_ok=True)
        return data_dir  # proxy.py takes flags, not a file; this is its data dir

    def command(self, config: Path) -> list[str]:
        return [
            str(self.python), "-m", "proxy",
            "--hostname", HOST, "--port", str(self.listen_port),
            "--num-workers", "1", "--num-acceptors", "1",
            "--backlog", "4096", "--timeout", "60",
            "--log-level", "WARNING",
            "--data-dir", str(config), "--pid-file", str(config / "proxy.pid"),
        ]


class NginxStreamRefTarget(ForwardTarget):
    """nginx `stream` relaying plain TCP to the bulk backend: L4 reference for (b) only."""

    name = "nginx-stream"
    listen_port = NGINX_STREAM_PORT
    speaks_connect = False
    forwards_http = False

    def write_config(self, upstream_port: int, workdir: Path) -> Path:
        return harness.nginx_stream_config(
            workdir / "nginx-stream-ref.conf", workdir, self.listen_port, BULK_BACKEND_PORT
        )

    def command(self, config: Path) -> list[str]:
        return harness.nginx_command(config)


def make_targets(names: Sequence[str], fastproxy_cmd: Sequence[str]) -> list[ForwardTarget]:
    factories: dict[str, Any] = {
        "fastproxy": lambda: FastproxyForwardTarget(fastproxy_cmd),
        "tinyproxy": TinyproxyTarget,
        "squid": SquidTarget,
        "proxypy": ProxypyForwardTarget,
        "nginx-stream": NginxStreamRefTarget,
    }
    return harness.build_targets(names, factories)


# ================================================================ backends


class Backends:
    """nginx (/1k, stub_status) and the bulkio sink/source, both on LOAD_CPU."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nginx: ManagedProcess | None = None
        self.bulk: ManagedProcess | None = None

    def pid_for(self, port: int) -> int | None:
        proc = self.nginx if port == HTTP_BACKEND_PORT else self.bulk
        return proc.pid if proc else None

    def start(self) -> None:
        root = self.workdir / "www"
        root.mkdir(exist_ok=True)
        pattern = (b"fastproxy-forward-bench-0123456\n" * 64)[:SMALL_BYTES]
        (root / SMALL_PATH.lstrip("/")).write_bytes(pattern)
        conf = self.workdir / "nginx-backend.conf"
        conf.write_text(
            f"""worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {self.workdir}/nginx-backend.pid;
error_log {self.workdir}/nginx-backend.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {self.workdir}/nginx-backend-body;
    server {{
        listen {HOST}:{HTTP_BACKEND_PORT} backlog=4096;
        root {root};
        location = {STATUS_PATH} {{ stub_status; }}
    }}
}}
"""
        )
        self.nginx = ManagedProcess(
            "http-backend",
            pinned(LOAD_CPU, ["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", "stderr"]),
            self.workdir / "nginx-backend.log",
        )
        start_server(self.nginx, HTTP_BACKEND_PORT)
        if backend_requests() is None:
            raise RuntimeError(f"backend stub_status does not answer: {self.nginx.log_tail()}")
        self.bulk = ManagedProcess(
            "bulk-backend",
            pinned(
                LOAD_CPU,
                [sys.executable, str(BENCH_DIR / "bulkio.py"), "server", "--port",
                 str(BULK_BACKEND_PORT)],
            ),
            self.workdir / "bulk-backend.log",
        )
        start_server(self.bulk, BULK_BACKEND_PORT)

    def stop(self) -> None:
        for proc in (self.bulk, self.nginx):
            if proc is not None:
                proc.stop()
        self.nginx = self.bulk = None


# ============================================================== scenarios


class ForwardWrkScenario(tb.WrkScenario):
    """(a) wrk -t1 -c50 GET 1 KiB through the proxy, absolute-form request line."""

    upstream_port = HTTP_BACKEND_PORT

    def __init__(self, duration: int, script: Path, connections: int = 50) -> None:
        super().__init__(duration, new_connections=False, connections=connections)
        self.name = "fwd_get"
        self.label = f"(a) forward GET 1 KiB, keep-alive, c{connections}"
        self.unit, self.per_cpu_unit = "req/s", "req"
        self.script = script
        script.write_text(
            "-- absolute-form request line: wrk connects to the proxy given on its\n"
            "-- command line and asks it for the backend URL\n"
            f'wrk.path = "{FORWARD_URL}"\n'
            f'wrk.headers["Host"] = "{HOST}:{HTTP_BACKEND_PORT}"\n'
        )

    def argv(self, port: int, duration: int) -> list[str]:
        return harness.wrk_argv(port, self.connections, duration, "/", ["-s", str(self.script)])

    def run(self, port: int, meter: Meter) -> RunResult:
        before = backend_requests()  # outside the CPU window (meter.begin is in wrk())
        result = self.wrk(port, self.duration, meter)
        after = backend_requests()
        if before is not None and after is not None:
            result.details["backend_requests"] = after - before - 1
        return result


class TunnelScenario(tb.BulkScenario):
    """(b) one CONNECT tunnel moving N bytes down (source→client) or up (client→sink)."""

    upstream_port = BULK_BACKEND_PORT

    def __init__(self, direction: str, nbytes: int) -> None:
        super().__init__(direction, nbytes)
        mib = nbytes // (1024 * 1024)
        self.name = f"tunnel_{direction}"
        self.label = (
            f"(b) CONNECT tunnel, download {mib} MiB"
            if direction == "down"
            else f"(b) CONNECT tunnel, upload {mib} MiB"
        )
        self.connect = True  # set per target (nginx-stream: plain TCP)

    def argv(self, port: int, nbytes: int) -> list[str]:
        argv = [
            sys.executable, str(Path(__file__).resolve()), "tunnel-client",
            "--proxy-port", str(port), "--direction", self.direction,
            "--bytes", str(nbytes), "--handshake",
        ]
        if self.connect:
            argv += ["--connect", f"{HOST}:{BULK_BACKEND_PORT}"]
        return pinned(LOAD_CPU, argv)


def make_scenarios(duration: int, bulk_mib: int, workdir: Path) -> list[Scenario]:
    nbytes = bulk_mib * 1024 * 1024
    return [
        ForwardWrkScenario(duration, workdir / "forward.lua"),
        TunnelScenario("down", nbytes),
        TunnelScenario("up", nbytes),
    ]


def applies(target: ForwardTarget, scenario: Scenario) -> bool:
    return target.forwards_http or isinstance(scenario, TunnelScenario)


# ================================================================= runner


def counter_delta(before: Any, after: Any) -> dict[str, float]:
    try:
        b, a = before["totals"]["counters"], after["totals"]["counters"]
    except (KeyError, TypeError):
        return {}
    return {k: float(a[k] - b[k]) for k in FP_FORWARD_COUNTERS if k in a and k in b}


def run_target(
    target: ForwardTarget, scenarios: Sequence[Scenario], workdir: Path, backends: Backends
) -> list[dict[str, Any]]:
    """Start the target once, run every scenario that applies through it, stop it."""
    mine = [s for s in scenarios if applies(target, s)]
    try:
        target.start(0, workdir)
    except (RuntimeError, OSError) as exc:
        log(f"SKIP {target.name}: {exc}")
        reason = str(exc).splitlines()[0]
        return [harness.skipped_row(target.name, s, reason) for s in mine]
    rows: list[dict[str, Any]] = []
    try:
        for scenario in mine:
            if isinstance(scenario, TunnelScenario):
                scenario.connect = target.speaks_connect
            log(f"{target.name}: {scenario.label}")
            try:
                row = hb.measure(target, scenario, backends.pid_for(scenario.upstream_port))
            except RuntimeError as exc:  # e.g. a proxy process left CPU 1
                row = harness.skipped_row(target.name, scenario, f"not measured: {exc}")
            if not (target.proc and target.proc.alive()):
                row["proxy_notes"] = ["proxy process died"]
                log(f"{target.name} died; log tail:\n{target.proc.log_tail() if target.proc else ''}")
            rows.append(row)
            log(harness.progress_line(row))
            if row.get("proxy_notes"):
                rest = mine[len(rows) :]
                rows += [harness.skipped_row(target.name, s, "proxy process died") for s in rest]
                break
            time.sleep(0.5)
    finally:
        target.stop()
    time.sleep(0.5)
    return rows


class ForwardMeter(hb.HttpMeter):
    """HttpMeter plus two things:

    * the delta of fastproxy's forward counters over the run;
    * thread churn: the schedstat sum (the precise proxy CPU figure) only sees
      threads alive at the sample, so a thread that exits during the run takes
      its CPU time with it — tinyproxy runs one thread per client connection
      and the CPU of the tunnel thread would vanish, even turn the delta
      negative. When the target says it does that, or when a thread of the
      tree disappeared between the samples, the proxy CPU is taken from
      utime+stime of the processes instead (/proc/PID/stat counts exited
      threads of a live process; 10 ms resolution).
    """

    def begin(self) -> None:
        self.tids_before = harness.tree_tids(self.root)
        super().begin()

    def end(self) -> None:
        super().end()
        gone = len(self.tids_before - harness.tree_tids(self.root))
        churn = bool(getattr(self.target, "thread_per_connection", False))
        self.cpu_source = "schedstat"
        if (churn or gone) and self.proxy_cpu_ticks is not None:
            self.proxy_cpu = self.proxy_cpu_ticks
            self.cpu_source = f"utime+stime ({gone} threads exited during the run)"

    def row(self) -> dict[str, Any]:
        row = super().row()
        if self.began and self.ended:
            row["forward_counters"] = counter_delta(self.stats_before, self.stats_after)
            row["proxy_cpu_source"] = self.cpu_source
        return row


# hb.measure builds its meter by this module-level name; only this process sees it
hb.HttpMeter = ForwardMeter  # type: ignore[misc]


# ================================================================= report


def notes(row: dict[str, Any]) -> str:
    if row["scenario"].startswith("tunnel") and row.get("fastproxy_counters"):
        # the tunnel's upstream connect happens before the window (CONNECT, then
        # "ready"): hb.notes' "0 upstream connects" would only confuse
        counters = {k: v for k, v in row["fastproxy_counters"].items() if k != "upstream_connects"}
        row = {**row, "fastproxy_counters": counters}
    parts = [hb.notes(row)] if hb.notes(row) else []
    details = row.get("details", {})
    seen = details.get("backend_requests")
    if seen is not None:
        done = int(row.get("units") or 0)
        parts.append(f"backend saw {seen:,} req" + (" ⚠ fewer than wrk counted" if seen < done else ""))
    fwd = row.get("forward_counters") or {}
    if row["scenario"] == "fwd_get" and "forward_requests" in fwd:
        parts.append(f"fastproxy forward_requests +{int(fwd['forward_requests']):,}")
    source = row.get("proxy_cpu_source")
    if source and source != "schedstat":
        parts.append(f"proxy CPU from {source}")
    if fwd.get("denied"):
        parts.append(f"fastproxy denied +{int(fwd['denied'])}")
    return "; ".join(parts)


def ratio_table(
    rows: Sequence[dict[str, Any]], scenarios: Sequence[Scenario], key: str, title: str
) -> str:
    others = [o for o in COMPARED if any(r["target"] == o for r in rows)]
    return harness.ratio_table(rows, scenarios, others, key, title)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| (a) latency, c50 keep-alive | p50 ms | p99 ms |", "|---|--:|--:|"]
    for row in rows:
        if row["scenario"] == "fwd_get":
            d = row.get("details", {})
            lines.append(
                f"| {row['target']} | {fmt(d.get('latency_p50_ms'), 3)} "
                f"| {fmt(d.get('latency_p99_ms'), 3)} |"
            )
    return "\n".join(lines)


def verification_lines(targets: Sequence[ForwardTarget]) -> str:
    lines = []
    for t in targets:
        if t.forwards_http and t.verification is not None:
            v = t.verification
            lines.append(
                f"* {t.name}: `curl -x` → `{v['curl']}`, backend request counter "
                f"+{v['backend_requests_delta']} ({'ok' if v['ok'] else 'FAILED'})"
            )
    return "\n".join(lines) if lines else "(no target verified)"


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        return harness.first_line(argv, timeout=20)

    try:  # read-only, and without the index refresh a plain `git status` may write
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO_DIR), "diff", "--name-only", "HEAD",
             "--", "fastproxy"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        dirty = done.stdout.split() if done.returncode == 0 else ["n/a"]
    except (OSError, subprocess.TimeoutExpired):
        dirty = ["n/a"]
    return {
        "fastproxy_worktree": "modified: " + ", ".join(dirty) if dirty else "clean",
        "tinyproxy": first_line(["tinyproxy", "-v"]),
        "squid": first_line(["squid", "-v"]),
        "proxypy": hb.proxypy_version(),
    }


# =================================================================== main


def check_prerequisites(targets: Sequence[str]) -> None:
    tools = ["taskset", "wrk", "nginx", "curl"]
    tools += [t for t in ("tinyproxy", "squid") if t in targets]
    harness.missing_tools_exit(tools, "wrk nginx libnginx-mod-stream curl tinyproxy squid")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="forward-proxy benchmark (bench/README.md)")
    harness.add_targets_arg(parser, ALL_TARGETS, EXTRA_TARGETS)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--bulk-mib", type=int, default=1024, help="MiB per tunnel direction (default 1024)"
    )
    harness.add_fastproxy_cmd_arg(parser)
    harness.add_wait_idle_and_output_args(parser)
    limits = [("bulk_mib", 1, 65536, "--bulk-mib must be 1..65536")]
    return harness.parse_checked(parser, argv, limits)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = harness.prepare(args, check_prerequisites)
    targets = make_targets(names, shlex.split(args.fastproxy_cmd))
    facts = harness.machine_facts()
    facts.update(versions())
    facts["idle_check_busy_pct"] = harness.wait_idle(args.wait_idle)
    rows: list[dict[str, Any]] = []

    workdir = Path(tempfile.mkdtemp(prefix="fpbench-fwd-"))
    workdir.chmod(0o755)  # nginx workers (www-data) and squid (proxy) must reach below it
    scenarios = make_scenarios(args.duration, args.bulk_mib, workdir)
    backends = Backends(workdir)
    try:
        backends.start()
        for target in targets:
            rows += run_target(target, scenarios, workdir, backends)
    finally:
        for target in targets:
            target.stop()
        backends.stop()
        if args.keep_workdir:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    settings = harness.run_settings(
        names,
        args,
        {"bulk_mib": args.bulk_mib},
        {"wrk_connections": 50, "connect_ports": list(CONNECT_PORTS)},
    )
    report = "\n\n".join(
        [
            harness.report_title("forward_bench", facts),
            (
                f"duration {args.duration} s per wrk run, {args.bulk_mib} MiB per tunnel "
                f"direction, load+backends on CPU {LOAD_CPU}, proxy on CPU {PROXY_CPU}; "
                "idle check before start (busy %): "
                f"{harness.fmt_idle(facts['idle_check_busy_pct'])}; "
                f"repo HEAD {facts['repo_head']} (fastproxy/ {facts['fastproxy_worktree']}); "
                f"{facts['tinyproxy']}; "
                f"{facts['squid']}; proxy.py {facts['proxypy']}; {facts['wrk']}"
            ),
            "Forwarding check before load (`curl -x`, backend nginx stub_status):\n\n"
            + verification_lines(targets),
            harness.results_table(rows, notes),
            ratio_table(rows, scenarios, "per_cpu_second", "per proxy CPU-second"),
            ratio_table(rows, scenarios, "rate", "wall throughput"),
            latency_table(rows),
            "wrk errors and failures:\n\n" + harness.wrk_problems(rows),
        ]
    )
    print(report)
    out = args.json_out or harness.default_json_out("forward_bench")
    harness.write_json(out, facts, settings, rows, report, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
