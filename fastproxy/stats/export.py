"""Render a stats snapshot (``Segment.snapshot()``) for people and machines.

Pure functions: a snapshot dict (and optionally ``procs``, per-pid process
figures ``{"rss": bytes, "cpu_seconds": float, "open_fds": int}`` gathered by
the caller with psutil) in, text or plain data out. No I/O, no clock.

Prometheus naming (text exposition format 0.0.4,
https://prometheus.io/docs/instrumenting/exposition_formats/):

- a monotonic counter ``x`` is ``fastproxy_x_total``; a gauge is ``fastproxy_x``;
- ``responses_1xx`` .. ``responses_5xx`` are ``fastproxy_responses_total{class="2xx"}``;
- ``bytes_copied_<reason>`` are ``fastproxy_bytes_copied_total{reason="no_pipe"}``
  (``unsupported``, ``small``) and the overall ``bytes_copied`` is the series of
  the same family *without* a reason label: select ``{reason=""}`` for the
  overall, ``{reason!=""}`` for the breakdown, never sum across both;
- histograms have cumulative ``_bucket{le=...}`` series ending in ``le="+Inf"``;
  ``_count`` is the +Inf bucket (not the separately stored count), so the two
  always agree even when a worker was caught between its two stores;
- per-worker series carry ``{worker="<slot>",pid="..",generation=".."}`` and
  live in their own ``fastproxy_worker_*`` families, so ``sum()`` over the
  global families never double-counts;
- server health: ``fastproxy_upstream_server_up`` is 1 (up) or 0 (down) and is
  *omitted* while the state is unknown (no check has concluded yet, or checks
  are disabled), so alerts on ``== 0`` never fire on a fresh start; the full
  state is the state-set ``fastproxy_upstream_server_health{state=...}``
  (exactly one of unknown/up/down is 1).
"""

from __future__ import annotations

import copy
import datetime
import math
from typing import Any

from fastproxy.stats.shm import COUNTERS, GAUGES, HIST_BOUNDS, HISTS, SERVER_COUNTERS

Procs = dict[int, dict[str, Any]]

_HELP = {
    "conn_accepted": "Client connections accepted.",
    "conn_active": "Client connections currently open.",
    "conn_closed": "Client connections closed.",
    "requests": "HTTP requests received from clients.",
    "responses": "HTTP responses sent to clients, by status class.",
    "bytes_in": "Bytes received from clients.",
    "bytes_out": "Bytes sent to clients.",
    "upstream_bytes_in": "Bytes received from upstream servers.",
    "upstream_bytes_out": "Bytes sent to upstream servers.",
    "bytes_spliced": "Payload bytes moved with splice(2) (zero-copy).",
    "bytes_copied": "Payload bytes copied through user space; the series without a reason "
                    "label is the overall, the others break it down by why splice was not used.",
    "upstream_connect_errors": "Failed connections to upstream servers.",
    "upstream_connect_timeouts": "Connections to upstream servers that timed out.",
    "upstream_no_server": "Requests or sessions with no usable upstream server.",
    "upstream_retries": "Connection attempts retried on another server.",
    "accept_errors": "Errors from accept(2).",
    "accept_paused": "Times accepting was paused at max_connections.",
    "idle_timeouts": "Connections closed for idleness.",
    "client_errors": "Connections or requests rejected for bad client input.",
    "internal_errors": "Unexpected internal errors.",
    "pipes_created": "Pipe pairs created for splicing.",
    "pipes_pooled": "Pipe pairs currently kept for reuse.",
    "proxy_protocol_errors": "Malformed PROXY protocol headers, and peers not allowed to send one.",
    "forward_requests": "Forward-proxy (absolute-form) requests.",
    "tunnels": "CONNECT tunnels established.",
    "denied": "Requests denied by access control.",
    "auth_failures": "Failed or missing proxy authentications.",
    "auth_checks": "Proxy credentials hashed (off the event loop; cached ones are not).",
    "dns_lookups": "DNS resolutions started.",
    "dns_cache_hits": "DNS resolutions answered from the cache.",
    "dns_failures": "DNS resolutions that failed.",
    "request_seconds": "Time from request head received to response complete.",
    "session_seconds": "Lifetime of client connections.",
    "upstream_connect_seconds": "Time to connect to an upstream server.",
}
_SERVER_HELP = {
    "sessions": "Sessions (connections or requests) sent to the server.",
    "active": "Sessions currently open to the server.",
    "failures": "Failed attempts to use the server.",
    "bytes_sent": "Bytes sent to the server.",
    "bytes_received": "Bytes received from the server.",
}
_WORKER_COUNTERS = ("conn_active", "conn_accepted", "requests", "bytes_in", "bytes_out")
_HEALTH_STATES = ("unknown", "up", "down")
_COPY_PREFIX = "bytes_copied_"
_DENIED_PREFIX = "denied_"


class _Exposition:
    """Metric families in insertion order, each with its HELP/TYPE once."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, family: str, kind: str, help_text: str, value: float,
            labels: dict[str, str] | None = None, suffix: str = "") -> None:
        if family not in self._families:
            self._families[family] = (kind, help_text, [])
        self._families[family][2].append(
            f"{family}{suffix}{_labels(labels or {})} {_number(value)}")

    def render(self) -> str:
        out = []
        for family, (kind, help_text, samples) in self._families.items():
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
            out += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}", *samples]
        return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):   # bool too
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def split_server_name(name: str) -> tuple[str, str]:
    """``"app/127.0.0.1:9000"`` -> ``("app", "127.0.0.1:9000")``."""
    upstream, sep, server = name.partition("/")
    return (upstream, server) if sep else ("", name)


def to_prometheus(snap: dict[str, Any], procs: Procs | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of a snapshot."""
    exp = _Exposition()
    _global_metrics(exp, snap)
    _counter_metrics(exp, snap["totals"]["counters"])
    for name in HISTS:
        _histogram(exp, f"fastproxy_{name}", _HELP[name], snap["totals"]["hists"][name])
    _worker_metrics(exp, snap["workers"], procs or {})
    _server_metrics(exp, snap["servers"])
    return exp.render()


def _global_metrics(exp: _Exposition, snap: dict[str, Any]) -> None:
    exp.add("fastproxy_generation", "gauge", "Current configuration generation.",
            snap["generation"])
    exp.add("fastproxy_reloads_total", "counter", "Reload attempts finished (ok or failed).",
            snap["reload_seq"])
    if snap["reload_status"] in ("ok", "failed"):
        exp.add("fastproxy_last_reload_success", "gauge",
                "1 if the last reload succeeded, 0 if it failed.",
                int(snap["reload_status"] == "ok"))
    exp.add("fastproxy_master_start_time_seconds", "gauge",
            "Start time of the master process, seconds since the epoch.",
            snap["master_start_time"])
    states: dict[str, int] = {"starting": 0, "running": 0, "draining": 0}
    for worker in snap["workers"]:
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    for state, n in states.items():
        exp.add("fastproxy_workers", "gauge", "Worker processes by state.", n, {"state": state})


def _counter_metrics(exp: _Exposition, counters: dict[str, int]) -> None:
    for name in COUNTERS:
        value = counters[name]
        if name.startswith("responses_"):
            exp.add("fastproxy_responses_total", "counter", _HELP["responses"], value,
                    {"class": name.removeprefix("responses_")})
        elif name.startswith(_COPY_PREFIX):
            exp.add("fastproxy_bytes_copied_total", "counter", _HELP["bytes_copied"], value,
                    {"reason": name.removeprefix(_COPY_PREFIX)})
        elif name.startswith(_DENIED_PREFIX):
            exp.add("fastproxy_denied_total", "counter", _HELP["denied"], value,
                    {"reason": name.removeprefix(_DENIED_PREFIX)})
        elif name in GAUGES:
            exp.add(f"fastproxy_{name}", "gauge", _HELP[name], value)
        else:
            exp.add(f"fastproxy_{name}_total", "counter", _HELP[name], value)


def _histogram(exp: _Exposition, family: str, help_text: str, hist: dict[str, Any],
               labels: dict[str, str] | None = None) -> None:
    running = 0
    for bound, n in zip((*HIST_BOUNDS, math.inf), hist["buckets"]):
        running += n
        le = "+Inf" if math.isinf(bound) else repr(bound)
        exp.add(family, "histogram", help_text, running, {**(labels or {}), "le": le}, "_bucket")
    exp.add(family, "histogram", help_text, hist["sum"], labels, "_sum")
    exp.add(family, "histogram", help_text, running, labels, "_count")


def _worker_metrics(exp: _Exposition, workers: list[dict[str, Any]], procs: Procs) -> None:
    for w in workers:
        labels = {"worker": str(w["index"]), "pid": str(w["pid"]),
                  "generation": str(w["generation"])}
        for name in _WORKER_COUNTERS:
            kind, family = (("gauge", f"fastproxy_worker_{name}") if name in GAUGES
                            else ("counter", f"fastproxy_worker_{name}_total"))
            exp.add(family, kind, f"{_HELP[name][:-1]}, per worker.",
                    w["counters"][name], labels)
        exp.add("fastproxy_worker_start_time_seconds", "gauge",
                "Worker start time, seconds since the epoch.", w["start_time"], labels)
        exp.add("fastproxy_worker_heartbeat_timestamp_seconds", "gauge",
                "Last time the worker touched its stats slot.", w["heartbeat"], labels)
        proc = procs.get(w["pid"], {})
        for key, family, kind, help_text in (
                ("rss", "fastproxy_worker_rss_bytes", "gauge", "Resident memory of the worker."),
                ("cpu_seconds", "fastproxy_worker_cpu_seconds_total", "counter",
                 "User and system CPU time of the worker."),
                ("open_fds", "fastproxy_worker_open_fds", "gauge",
                 "Open file descriptors of the worker.")):
            if proc.get(key) is not None:
                exp.add(family, kind, help_text, proc[key], labels)


def _server_metrics(exp: _Exposition, servers: list[dict[str, Any]]) -> None:
    for s in servers:
        upstream, server = split_server_name(s["name"])
        labels = {"upstream": upstream, "server": server}
        if s["health"] in ("up", "down"):
            exp.add("fastproxy_upstream_server_up", "gauge",
                    "1 if the server passes health checks, 0 if not; absent while unknown.",
                    int(s["health"] == "up"), labels)
        for state in _HEALTH_STATES:
            exp.add("fastproxy_upstream_server_health", "gauge",
                    "Health state of the server (1 for the current state).",
                    int(s["health"] == state), {**labels, "state": state})
        exp.add("fastproxy_upstream_server_in_use", "gauge",
                "1 if the server is in the current configuration.", int(s["in_use"]), labels)
        for name in SERVER_COUNTERS:
            kind, family = (("gauge", f"fastproxy_upstream_server_{name}") if name == "active"
                            else ("counter", f"fastproxy_upstream_server_{name}_total"))
            exp.add(family, kind, _SERVER_HELP[name], s[name], labels)


def to_json(snap: dict[str, Any], procs: Procs | None = None) -> dict[str, Any]:
    """The snapshot with ``procs`` merged into each worker (``rss``, ``cpu_seconds``,
    ``open_fds``, None when unknown) and generation keys as strings, so that
    ``json.loads(json.dumps(x)) == x``."""
    out = copy.deepcopy(snap)
    out["generations"] = {str(g): block for g, block in out["generations"].items()}
    for w in out["workers"]:
        proc = (procs or {}).get(w["pid"], {})
        w.update({key: proc.get(key) for key in ("rss", "cpu_seconds", "open_fds")})
    return out


def to_table(snap: dict[str, Any], procs: Procs | None = None) -> str:
    """A compact human view for ``fastproxy stats``."""
    c = snap["totals"]["counters"]
    copied, spliced = c["bytes_copied"], c["bytes_spliced"]
    moved = copied + spliced
    started = datetime.datetime.fromtimestamp(snap["master_start_time"], datetime.UTC)
    reload = f"{snap['reload_seq']} reloads, last {snap['reload_status']}"
    lines = [
        f"fastproxy master {snap['master_pid']}  generation {snap['generation']}  "
        f"started {started:%Y-%m-%d %H:%M:%S} UTC  {reload}"
        + ("" if snap.get("consistent", True) else "  (inconsistent read)"),
        (f"connections  accepted {c['conn_accepted']}  active {c['conn_active']}  "
         f"closed {c['conn_closed']}"),
        f"requests     {c['requests']}  "
        + "  ".join(f"{k}xx {c[f'responses_{k}xx']}" for k in range(1, 6)),
        (f"bytes        in {_size(c['bytes_in'])}  out {_size(c['bytes_out'])}  "
         f"upstream in {_size(c['upstream_bytes_in'])}  out {_size(c['upstream_bytes_out'])}"),
        f"relay        spliced {_size(spliced)} ({_percent(spliced, moved)})  "
        f"copied {_size(copied)} ("
        + ", ".join(f"{n.removeprefix(_COPY_PREFIX)} {_size(c[n])}"
                    for n in COUNTERS if n.startswith(_COPY_PREFIX)) + ")",
        (f"upstream     connect errors {c['upstream_connect_errors']}  "
         f"timeouts {c['upstream_connect_timeouts']}  no server {c['upstream_no_server']}  "
         f"retries {c['upstream_retries']}"),
        f"latency      {_latency(snap['totals']['hists']['request_seconds'])}",
        "",
    ]
    lines += _grid(("WORKER", "PID", "GEN", "STATE", "ACTIVE", "ACCEPTED", "BYTES",
                    "RSS MiB", "CPU s", "FDS"), _worker_rows(snap["workers"], procs or {}))
    if snap["servers"]:
        lines.append("")
        lines += _grid(("SERVER", "HEALTH", "IN USE", "SESSIONS", "FAILURES", "ACTIVE"),
                       [[s["name"], s["health"], "yes" if s["in_use"] else "no",
                         str(s["sessions"]), str(s["failures"]), str(s["active"])]
                        for s in snap["servers"]])
    return "\n".join(lines) + "\n"


def _worker_rows(workers: list[dict[str, Any]], procs: Procs) -> list[list[str]]:
    rows = []
    for w in workers:
        wc, proc = w["counters"], procs.get(w["pid"], {})
        rss, cpu, fds = proc.get("rss"), proc.get("cpu_seconds"), proc.get("open_fds")
        rows.append([str(w["index"]), str(w["pid"]), str(w["generation"]), w["state"],
                     str(wc["conn_active"]), str(wc["conn_accepted"]),
                     _size(wc["bytes_in"] + wc["bytes_out"]),
                     "-" if rss is None else f"{rss / 2**20:.1f}",
                     "-" if cpu is None else f"{cpu:.1f}",
                     "-" if fds is None else str(fds)])
    return rows


def _grid(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in [list(headers), *rows]]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _latency(hist: dict[str, Any]) -> str:
    count = sum(hist["buckets"])
    if not count:
        return "no requests yet"
    mean = hist["sum"] / count
    return (f"mean {mean * 1000:.1f} ms  p50 <= {_bound(hist, 0.5)}  "
            f"p99 <= {_bound(hist, 0.99)}  ({count} requests)")


def _bound(hist: dict[str, Any], q: float) -> str:
    """Upper bound of the bucket holding quantile ``q`` (histograms give no better)."""
    target, running = q * sum(hist["buckets"]), 0
    for bound, n in zip((*HIST_BOUNDS, math.inf), hist["buckets"]):
        running += n
        if running >= target:
            return "+Inf" if math.isinf(bound) else f"{bound * 1000:g} ms"
    return "+Inf"
