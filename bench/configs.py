"""Config writers for every server bench/bench.py starts.

Each function writes its config into the run's temporary directory and
returns the command line (not yet pinned: targets.py and backends.py add
``taskset``). Every server runs in the foreground, listens on 127.0.0.1 only,
with one worker / thread / process where the server has such a knob, access
logging off, and otherwise its defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import HOST

PROXYPY_VENV = Path("/tmp/proxypy-venv")
PROXYPY_PYTHON = PROXYPY_VENV / "bin" / "python"
BENCH_DIR = Path(__file__).resolve().parent
TCP_BODY = "x" * 99 + "\\n"  # the 100-byte answer of GET / (TCP keep-alive scenarios)


def _nginx(config: Path) -> list[str]:
    return ["nginx", "-p", str(config.parent), "-c", str(config), "-e", "stderr"]


_NGINX_MAIN = """worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {w}/{name}.pid;
error_log {w}/{name}.error.log warn;
events {{ worker_connections 8192; }}
"""


# ================================================================= backends


def backend_nginx(workdir: Path, name: str, port: int, root: Path) -> list[str]:
    """The HTTP backend: static files with sendfile, POST sink, gzip'd (chunked) text.

    /            return 200, 100-byte body (TCP keep-alive scenarios)
    /1k /big     static files (ETag, If-None-Match -> 304, HEAD)
    /text        text/plain, gzip on: chunked when the client sends Accept-Encoding: gzip
    /post        return 200 "ok": nginx reads and discards the request body
    /post-check  proxy_pass to /post with the body buffered, logged as $request_body
                 (the check that a proxy forwards POST bodies intact)
    /fpbench-status  stub_status: the backend's own request counter
    """
    w = workdir
    config = w / f"{name}.conf"
    config.write_text(
        _NGINX_MAIN.format(w=w, name=name)
        + f"""http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {w}/{name}-body;
    proxy_temp_path {w}/{name}-proxy;
    client_max_body_size 1m;
    client_body_buffer_size 64k;
    gzip_types text/plain;
    gzip_proxied any;
    gzip_comp_level 1;
    gzip_min_length 0;
    log_format fpbench_body escape=json '$http_x_fpbench_check $request_body';
    server {{
        listen {HOST}:{port} backlog=4096;
        root {root};
        location = / {{ default_type text/plain; return 200 "{TCP_BODY}"; }}
        location = /text {{ default_type text/plain; gzip on; }}
        location = /post {{ return 200 "ok\\n"; }}
        location = /post-check {{
            proxy_pass http://{HOST}:{port}/post;
            access_log {w}/{name}.post-check.log fpbench_body;
        }}
        location = /fpbench-status {{ stub_status; }}
    }}
}}
"""
    )
    return _nginx(config)


def bulk_backend(port: int) -> list[str]:
    return [sys.executable, str(BENCH_DIR / "bulkio.py"), "server", "--port", str(port)]


# ============================================================ reverse (HTTP)


def nginx_reverse(workdir: Path, port: int, upstream: int) -> list[str]:
    w, name = workdir, "nginx-reverse"
    config = w / f"{name}.conf"
    config.write_text(
        _NGINX_MAIN.format(w=w, name=name)
        + f"""http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {w}/{name}-temp/client;
    proxy_temp_path {w}/{name}-temp/proxy;
    client_max_body_size 1m;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    upstream backend {{
        server {HOST}:{upstream};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    (w / f"{name}-temp").mkdir(exist_ok=True)
    return _nginx(config)


_HAPROXY = """global
    nbthread 1
    maxconn 4096
    pidfile {w}/{name}.pid

defaults
    mode {mode}
{extra}    timeout connect 5s
    timeout client 60s
    timeout server 60s

listen bench
    bind {HOST}:{port}
    server b {HOST}:{upstream}
"""


def _haproxy(
    workdir: Path, name: str, mode: str, extra: str, port: int, upstream: int
) -> list[str]:
    config = workdir / f"{name}.cfg"
    config.write_text(
        _HAPROXY.format(
            w=workdir, name=name, mode=mode, extra=extra, HOST=HOST, port=port, upstream=upstream
        )
    )
    return ["haproxy", "-db", "-f", str(config)]


def haproxy_reverse(workdir: Path, port: int, upstream: int) -> list[str]:
    extra = "    option http-keep-alive\n    timeout http-keep-alive 60s\n"
    return _haproxy(workdir, "haproxy-reverse", "http", extra, port, upstream)


def proxypy_reverse(workdir: Path, port: int, upstream: int) -> list[str]:
    """proxy.py as a reverse proxy through bench/proxypy_plugin.py (see its docstring)."""
    env = {"PYTHONPATH": str(BENCH_DIR), "FPBENCH_UPSTREAM": f"http://{HOST}:{upstream}"}
    return [
        "env", *(f"{k}={v}" for k, v in env.items()),
        *_proxypy(workdir / "proxypy-reverse", port),
        "--enable-reverse-proxy", "--disable-http-proxy",
        "--plugins", "proxypy_plugin.BenchReverseProxy",
    ]  # fmt: skip


def python_floor(workdir: Path, port: int, upstream: int) -> list[str]:
    """bench/python_floor.py: a Python byte relay that parses nothing (the floor)."""
    return [sys.executable, str(BENCH_DIR / "python_floor.py"), str(port), str(upstream)]


def _proxypy(data_dir: Path, port: int) -> list[str]:
    if not PROXYPY_PYTHON.exists():
        raise RuntimeError(
            f"{PROXYPY_PYTHON} missing: python -m venv {PROXYPY_VENV} && "
            f"{PROXYPY_VENV}/bin/pip install proxy.py"
        )
    data_dir.mkdir(exist_ok=True)
    return [
        str(PROXYPY_PYTHON), "-m", "proxy",
        "--hostname", HOST, "--port", str(port),
        "--num-workers", "1", "--num-acceptors", "1",
        "--backlog", "4096", "--timeout", "60", "--log-level", "WARNING",
        "--data-dir", str(data_dir), "--pid-file", str(data_dir / "proxy.pid"),
    ]  # fmt: skip


# ========================================================== forward (proxies)


def proxypy_forward(workdir: Path, port: int, connect_ports: tuple[int, ...]) -> list[str]:
    """proxy.py in its default role: an HTTP forward proxy (CONNECT to any port)."""
    return _proxypy(workdir / "proxypy-forward", port)


def tinyproxy(workdir: Path, port: int, connect_ports: tuple[int, ...]) -> list[str]:
    """tinyproxy 1.11: one process, one thread per client connection."""
    config = workdir / "tinyproxy.conf"
    connect = "".join(f"ConnectPort {p}\n" for p in connect_ports)
    config.write_text(
        f"""Port {port}
Listen {HOST}
Timeout 60
MaxClients 1024
LogFile "{workdir}/tinyproxy.file.log"
LogLevel Critical
PidFile "{workdir}/tinyproxy.pid"
Allow 127.0.0.1
{connect}"""
    )
    return ["tinyproxy", "-d", "-c", str(config)]


def squid(workdir: Path, port: int, connect_ports: tuple[int, ...]) -> list[str]:
    """squid -N (foreground, no SMP kids), no cache, no access log."""
    sq = workdir / "squid"
    sq.mkdir(exist_ok=True)
    sq.chmod(0o777)  # squid switches to cache_effective_user (proxy) after start
    config = sq / "squid.conf"
    config.write_text(
        f"""http_port {HOST}:{port}
visible_hostname fpbench
workers 1
acl localnet src 127.0.0.1
acl SSL_ports port {" ".join(str(p) for p in connect_ports)}
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
    return ["squid", "-N", "-f", str(config)]


# ==================================================================== TCP (L4)


def nginx_stream(workdir: Path, port: int, upstream: int) -> list[str]:
    name = f"nginx-stream-{port}"
    config = workdir / f"{name}.conf"
    config.write_text(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
        + _NGINX_MAIN.format(w=workdir, name=name)
        + f"""stream {{
    server {{
        listen {HOST}:{port} backlog=4096;
        proxy_pass {HOST}:{upstream};
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }}
}}
"""
    )
    return _nginx(config)


def haproxy_tcp(workdir: Path, port: int, upstream: int, splice: bool = False) -> list[str]:
    extra = "    option splice-request\n    option splice-response\n" if splice else ""
    name = "haproxy-tcp-splice" if splice else "haproxy-tcp"
    return _haproxy(workdir, name, "tcp", extra, port, upstream)


# ================================================================== fastproxy


def fastproxy(
    cmd: list[str],
    workdir: Path,
    mode: str,
    port: int,
    admin: int,
    upstream: int | None = None,
    connect_ports: tuple[int, ...] = (),
) -> list[str]:
    """``<cmd> run -c FILE``: workers = 1, access log off, admin /stats on ``admin``.

    mode "http" (reverse) and "tcp" get an upstream pool with the one backend;
    "forward" allows loopback destinations (denied by default) and the
    benchmark's CONNECT ports."""
    listener = f'[[listener]]\nname = "bench"\nlisten = "{HOST}:{port}"\nmode = "{mode}"\n'
    if mode == "forward":
        ports = ", ".join(str(p) for p in connect_ports)
        tail = (
            f'\n[forward]\nallow_destinations = ["127.0.0.0/8"]\nconnect_ports = [{ports}]\n'
        )
    else:
        keepalive = "keepalive = 64\n" if mode == "http" else ""
        tail = f'upstream = "b"\n\n[upstream.b]\nservers = ["{HOST}:{upstream}"]\n{keepalive}'
    config = workdir / f"fastproxy-{mode}.toml"
    config.write_text(
        f"""[server]
workers = 1
pidfile = "{workdir}/fastproxy-{mode}.pid"

[log]
access = "off"

[admin]
listen = "{HOST}:{admin}"

{listener}{tail}"""
    )
    return [*cmd, "run", "-c", str(config)]
