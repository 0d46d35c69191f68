"""The scenario table of bench/bench.py and how each kind of scenario is run.

A scenario is one load pattern in one mode (reverse, forward, tcp). Its kind
says which load generator runs it:

* ``wrk``      wrk -t1 -cN -dDs with a generated Lua script (loadgen.py);
* ``head``     headload.py (wrk cannot do HEAD), same output;
* ``download`` http_download.py: GET /big ``--downloads`` times on one connection;
* ``bulk``     bulkio.py client: one connection moving ``--bulk-mib`` MiB one way,
               directly (TCP mode) or through a CONNECT tunnel (forward mode).

Every run is bounded by its duration or byte count and a hard timeout.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from backends import BULK_PORT, HTTP_PORT, Backends
from harness import BENCH_DIR, HOST, LOAD_CPU, MB, Meter, pinned
from loadgen import Request, RunResult, handshake_client, run_wrk, summary_result

BACKEND = f"{HOST}:{HTTP_PORT}"  # what a forward proxy is asked for
ABS = f"http://{BACKEND}"
POST_BODY = (b"fastproxy-post-body-0123456789abcdefghijklmnopqrstuvwxyz-" * 20)[:1024]
OCTETS = (("Content-Type", "application/octet-stream"),)
GZIP = (("Accept-Encoding", "gzip"),)
WARMUP_SECONDS = 1
WARMUP_BYTES = 64 * 1024 * 1024
VARIED_STARTS = itertools.count(10_000_000, 10_000_000)  # each wrk run its own heads


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # reverse | forward | tcp
    label: str
    kind: str  # wrk | head | download | bulk
    check: str  # the correctness check run once per target before measuring (checks.py)
    request: Request | None = None
    connections: int = 50
    unit: str = "req"  # what the rate counts: req, conn or MB
    upstream: str = "http"  # the backend the target relays to: http | bulk
    direction: str = ""  # bulk: up (client -> backend) | down
    connect: bool = False  # bulk through a CONNECT tunnel


def _wrk(name: str, mode: str, label: str, check: str, request: Request, **kw: object) -> Scenario:
    return Scenario(name, mode, label, "wrk", check, request, **kw)  # type: ignore[arg-type]


SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------- reverse
    _wrk("get", "reverse", "GET 1 KiB, same head", "small", Request(path="/1k")),
    _wrk("get-varied", "reverse", "GET 1 KiB, varied ~600 B heads", "varied",
         Request(varied=True)),
    _wrk("post", "reverse", "POST 1 KiB body", "post",
         Request("POST", "/post", OCTETS, POST_BODY)),
    _wrk("chunked", "reverse", "GET chunked (gzip'd 16 KiB text)", "chunked",
         Request(path="/text", headers=GZIP)),
    Scenario("head", "reverse", "HEAD 1 KiB", "head", "head", Request("HEAD", "/1k")),
    _wrk("304", "reverse", "GET If-None-Match → 304", "304",
         Request(path="/1k", headers=(("If-None-Match", "{etag}"),))),
    _wrk("new-conn", "reverse", "GET 1 KiB, new connection each", "close",
         Request(path="/1k", headers=(("Connection", "close"),)), unit="conn"),
    Scenario("download", "reverse", "download /big, 1 conn", "download", "download", unit="MB"),
    _wrk("latency", "reverse", "GET 1 KiB, 1 connection", "small", Request(path="/1k"),
         connections=1),
    # ------------------------------------------------------------- forward
    _wrk("fwd-get", "forward", "forward GET 1 KiB", "fwd-small",
         Request(path=f"{ABS}/1k", host=BACKEND)),
    _wrk("fwd-post", "forward", "forward POST 1 KiB body", "post",
         Request("POST", f"{ABS}/post", OCTETS, POST_BODY, host=BACKEND)),
    _wrk("fwd-chunked", "forward", "forward GET chunked", "chunked",
         Request(path=f"{ABS}/text", headers=GZIP, host=BACKEND)),
    Scenario("connect-bulk-down", "forward", "CONNECT tunnel, download", "bulk", "tunnel",
             unit="MB", upstream="bulk", direction="down", connect=True),
    Scenario("connect-bulk-up", "forward", "CONNECT tunnel, upload", "bulk", "tunnel",
             unit="MB", upstream="bulk", direction="up", connect=True),
    # ----------------------------------------------------------------- tcp
    Scenario("tcp-bulk-up", "tcp", "bulk client→backend", "bulk", "l4-bulk", unit="MB",
             upstream="bulk", direction="up"),
    Scenario("tcp-bulk-down", "tcp", "bulk backend→client", "bulk", "l4-bulk", unit="MB",
             upstream="bulk", direction="down"),
    _wrk("tcp-keepalive", "tcp", "keep-alive GET, 100 B answers", "l4-http", Request(path="/")),
    _wrk("tcp-new-conn", "tcp", "new connection per request", "l4-http",
         Request(path="/", headers=(("Connection", "close"),)), unit="conn"),
)  # fmt: skip

ALIASES = {
    "connect-bulk": ("connect-bulk-down", "connect-bulk-up"),
    "tcp-bulk": ("tcp-bulk-up", "tcp-bulk-down"),
}


def select(names: list[str] | None, modes: list[str]) -> list[Scenario]:
    """The scenarios of ``modes``, in table order, restricted to ``names`` (or aliases)."""
    wanted: set[str] | None = None
    if names:
        wanted = set()
        known = {s.name for s in SCENARIOS}
        for name in names:
            expanded = ALIASES.get(name, (name,))
            unknown = [n for n in expanded if n not in known]
            if unknown:
                raise SystemExit(f"unknown scenario {name!r}; see --list")
            wanted.update(expanded)
    return [s for s in SCENARIOS if s.mode in modes and (wanted is None or s.name in wanted)]


# ==================================================================== runners


@dataclass
class RunContext:
    workdir: Path
    backends: Backends
    duration: int
    downloads: int
    bulk_mib: int


def concrete(request: Request, backends: Backends) -> Request:
    """Fill in what is known only at run time (the backend's ETag of /1k)."""
    headers = tuple((k, v.replace("{etag}", backends.etag)) for k, v in request.headers)
    return replace(request, headers=headers)


def run(
    scenario: Scenario,
    port: int,
    ctx: RunContext,
    meter: Meter | None,
    warm_up: bool = False,
    tunnel: bool = True,
    count: bool = True,
) -> RunResult:
    """One run of ``scenario`` against ``port``: a short warm-up (no meter), or the
    measured run with the CPU window around the load only. ``tunnel`` False: the
    target is a plain L4 relay (nginx-stream), so the bulk client sends no CONNECT;
    ``count`` False: the target does not relay to the main backend (direct-cpu1), so
    the backend's request counter says nothing about it."""
    if scenario.kind == "wrk":
        assert scenario.request is not None
        script = ctx.workdir / f"{scenario.mode}-{scenario.name}.lua"
        script.write_text(concrete(scenario.request, ctx.backends).lua(next(VARIED_STARTS)))
        seconds = WARMUP_SECONDS if warm_up else ctx.duration
        return counted(ctx, scenario, count, lambda: run_wrk(
            script, port, scenario.connections, seconds, meter))
    if scenario.kind == "head":
        return counted(ctx, scenario, count, lambda: run_head(scenario, port, ctx, meter, warm_up))
    if scenario.kind == "download":
        return run_download(port, ctx, 1 if warm_up else ctx.downloads, meter)
    nbytes = WARMUP_BYTES if warm_up else ctx.bulk_mib * 1024 * 1024
    return run_bulk(scenario, port, nbytes, meter, scenario.connect and tunnel)


def counted(
    ctx: RunContext, scenario: Scenario, count: bool, go: Callable[[], RunResult]
) -> RunResult:
    """Run ``go()`` and add how many requests the backend itself saw (stub_status)."""
    before = ctx.backends.requests() if count and scenario.upstream == "http" else None
    result = go()
    after = ctx.backends.requests() if before is not None else None
    if before is not None and after is not None:
        result.details["backend_requests"] = after - before - 1  # minus the counter's own
    return result


def run_head(
    scenario: Scenario, port: int, ctx: RunContext, meter: Meter | None, warm_up: bool
) -> RunResult:
    assert scenario.request is not None
    request_file = ctx.workdir / f"{scenario.mode}-{scenario.name}.req"
    request_file.write_bytes(scenario.request.raw(f"{HOST}:{port}"))
    seconds = WARMUP_SECONDS if warm_up else ctx.duration
    argv = pinned(LOAD_CPU, [
        sys.executable, str(BENCH_DIR / "headload.py"), "--port", str(port),
        "--request-file", str(request_file), "--connections", str(scenario.connections),
        "--duration", str(seconds), "--handshake",
    ])  # fmt: skip
    data = handshake_client(argv, meter, seconds + 30)
    return data if isinstance(data, RunResult) else summary_result(data)


def run_download(port: int, ctx: RunContext, count: int, meter: Meter | None) -> RunResult:
    """GET /big ``count`` times over one keep-alive connection (http_download.py)."""
    big = ctx.backends.big_bytes
    argv = pinned(LOAD_CPU, [
        sys.executable, str(BENCH_DIR / "http_download.py"), "--port", str(port),
        "--path", "/big", "--count", str(count), "--handshake",
    ])  # fmt: skip
    # bounded: a floor of 60 s, or as if the proxy only managed 20 MB/s
    data = handshake_client(argv, meter, max(60.0, big * count / (20 * MB)))
    if isinstance(data, RunResult):
        return data
    bad = [s for s in data["statuses"] if s != 200]
    if bad or data["bytes"] != big * len(data["statuses"]):
        return RunResult(0, 0, error=f"statuses {data['statuses']}, {data['bytes']} bytes")
    details = {"connections": data["connections"], "requests": data["requests"]}
    return RunResult(float(data["bytes"]), float(data["seconds"]), details)


def run_bulk(
    scenario: Scenario, port: int, nbytes: int, meter: Meter | None, tunnel: bool
) -> RunResult:
    """bulkio.py client: ``nbytes`` one way, through a CONNECT tunnel if ``tunnel``."""
    argv = [
        sys.executable, str(BENCH_DIR / "bulkio.py"), "client", "--port", str(port),
        "--direction", scenario.direction, "--bytes", str(nbytes), "--handshake",
    ]  # fmt: skip
    if tunnel:
        argv += ["--connect", f"{HOST}:{BULK_PORT}"]
    data = handshake_client(pinned(LOAD_CPU, argv), meter, max(60.0, nbytes / (20 * MB)))
    if isinstance(data, RunResult):
        return data
    return RunResult(float(data["bytes"]), float(data["seconds"]))
