"""fastproxy.stats.export: Prometheus text, JSON and the human table."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from fastproxy.stats.export import split_server_name, to_json, to_prometheus, to_table
from fastproxy.stats.shm import HIST_BOUNDS, N_SERVER_COUNTERS, C, H, Health, S, Segment

PROCS = {101: {"rss": 48 * 2**20, "cpu_seconds": 12.5, "open_fds": 37}}


@pytest.fixture
def snap() -> dict[str, Any]:
    buf = bytearray(Segment.size_for(4, 4))
    seg = Segment.create(buf, 4, 4, master_pid=100, now=1_700_000_000.0)
    seg.set_generation(2)
    seg.set_reload_result(True, "")
    up = seg.server_index("app/127.0.0.1:9000")
    down = seg.server_index('we"ird\\name/10.0.0.1:80\nx')
    seg.server_index("app/127.0.0.1:9002")                    # never checked: unknown
    seg.set_server_health(up, Health.UP, now=1.0)
    seg.set_server_health(down, Health.DOWN, now=1.0)
    old = seg.claim_slot(pid=99, generation=1, listener_slot=0, now=0.0)
    v = seg.slot_view(old)
    v.c[C.requests] += 1000
    v.c[C.responses_2xx] += 990
    v.observe(H.request_seconds, 0.2)
    seg.retire_slot(old)
    w = seg.slot_view(seg.claim_slot(pid=101, generation=2, listener_slot=0, now=5.0))
    w.set_state(2)
    for name, n in (("conn_accepted", 4321), ("conn_active", 17), ("conn_closed", 4304),
                    ("requests", 234), ("responses_2xx", 200), ("responses_5xx", 34),
                    ("bytes_in", 5 * 2**20), ("bytes_out", 3 * 2**30),
                    ("bytes_spliced", 900), ("bytes_copied", 100),
                    ("bytes_copied_no_pipe", 60), ("bytes_copied_small", 40),
                    ("upstream_connect_errors", 6)):
        w.c[getattr(C, name)] += n
    for seconds in (0.0001, 0.003, 0.003, 0.7, 99.0):
        w.observe(H.request_seconds, seconds)
    w.servers[up * N_SERVER_COUNTERS + S.sessions] += 55
    w.servers[up * N_SERVER_COUNTERS + S.active] += 2
    w.servers[down * N_SERVER_COUNTERS + S.failures] += 9
    return seg.snapshot()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """A tiny parser for the text format: families {name: (type, help)} and samples."""
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps, f"HELP twice for {name}"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name not in families, f"TYPE twice for {name}"
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helps, f"TYPE before HELP for {name}"
            families[name] = (kind, helps[name])
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line: {line!r}"
            labels: dict[str, str] = {}
            body = m.group(3) or ""
            pos = 0
            while pos < len(body):
                lm = LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            value = float(m.group(4).replace("+Inf", "inf"))
            samples.append((m.group(1), labels, value))
    for name, _, _ in samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        family = family if family in families else name
        assert family in families, f"sample {name} without HELP/TYPE"
        if family != name:
            assert families[family][0] == "histogram"
    return families, samples


def series(samples: list[tuple[str, dict[str, str], float]], name: str,
           **labels: str) -> list[float]:
    return [v for n, lab, v in samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())]


def test_prometheus_parses_and_has_help_type_once(snap: dict[str, Any]) -> None:
    families, _ = parse(to_prometheus(snap, PROCS))
    assert families["fastproxy_requests_total"][0] == "counter"
    assert families["fastproxy_conn_active"][0] == "gauge"
    assert families["fastproxy_request_seconds"][0] == "histogram"
    for name, (kind, _) in families.items():
        assert name.endswith("_total") == (kind == "counter"), name


def test_prometheus_values(snap: dict[str, Any]) -> None:
    _, samples = parse(to_prometheus(snap, PROCS))
    assert series(samples, "fastproxy_requests_total") == [1234]
    assert series(samples, "fastproxy_conn_active") == [17]
    assert series(samples, "fastproxy_responses_total", **{"class": "2xx"}) == [1190]
    assert series(samples, "fastproxy_responses_total", **{"class": "5xx"}) == [34]
    copied = {lab.get("reason", ""): v for n, lab, v in samples
              if n == "fastproxy_bytes_copied_total"}
    assert copied == {"": 100, "no_pipe": 60, "unsupported": 0, "small": 40}
    assert series(samples, "fastproxy_generation") == [2]
    assert series(samples, "fastproxy_reloads_total") == [1]
    assert series(samples, "fastproxy_last_reload_success") == [1]
    assert series(samples, "fastproxy_master_start_time_seconds") == [1_700_000_000.0]
    assert series(samples, "fastproxy_workers", state="running") == [1]


def test_prometheus_histograms_cumulative(snap: dict[str, Any]) -> None:
    _, samples = parse(to_prometheus(snap, PROCS))
    for family in ("fastproxy_request_seconds", "fastproxy_session_seconds",
                   "fastproxy_upstream_connect_seconds"):
        buckets = [(lab["le"], v) for n, lab, v in samples if n == family + "_bucket"]
        assert [le for le, _ in buckets] == [repr(b) for b in HIST_BOUNDS] + ["+Inf"]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == series(samples, family + "_count")[0]
    req = {lab["le"]: v for n, lab, v in samples if n == "fastproxy_request_seconds_bucket"}
    assert (req["0.0005"], req["0.005"], req["0.25"], req["1.0"], req["60.0"], req["+Inf"]) == (
        1, 3, 4, 5, 5, 6)
    assert series(samples, "fastproxy_request_seconds_sum")[0] == pytest.approx(
        0.2 + 0.0001 + 0.006 + 0.7 + 99.0)


def test_prometheus_workers_and_procs(snap: dict[str, Any]) -> None:
    _, samples = parse(to_prometheus(snap, PROCS))
    labels = {"worker": "0", "pid": "101", "generation": "2"}
    assert series(samples, "fastproxy_worker_conn_active", **labels) == [17]
    assert series(samples, "fastproxy_worker_requests_total", **labels) == [234]
    assert series(samples, "fastproxy_worker_bytes_out_total", **labels) == [3 * 2**30]
    assert series(samples, "fastproxy_worker_rss_bytes", **labels) == [48 * 2**20]
    assert series(samples, "fastproxy_worker_cpu_seconds_total", **labels) == [12.5]
    assert series(samples, "fastproxy_worker_open_fds", **labels) == [37]
    _, bare = parse(to_prometheus(snap))
    assert series(bare, "fastproxy_worker_rss_bytes") == []


def test_prometheus_servers_and_escaping(snap: dict[str, Any]) -> None:
    text = to_prometheus(snap)
    assert 'upstream="we\\"ird\\\\name",server="10.0.0.1:80\\nx"' in text
    _, samples = parse(text)
    app = {"upstream": "app", "server": "127.0.0.1:9000"}
    assert series(samples, "fastproxy_upstream_server_up", **app) == [1]
    assert series(samples, "fastproxy_upstream_server_up", server="10.0.0.1:80\\nx") == [0]
    assert series(samples, "fastproxy_upstream_server_up", server="127.0.0.1:9002") == []
    assert series(samples, "fastproxy_upstream_server_health", server="127.0.0.1:9002",
                  state="unknown") == [1]
    assert series(samples, "fastproxy_upstream_server_sessions_total", **app) == [55]
    assert series(samples, "fastproxy_upstream_server_active", **app) == [2]
    assert series(samples, "fastproxy_upstream_server_failures_total",
                  server="10.0.0.1:80\\nx") == [9]


def test_split_server_name() -> None:
    assert split_server_name("app/127.0.0.1:9000") == ("app", "127.0.0.1:9000")
    assert split_server_name("lonely") == ("", "lonely")


def test_json_roundtrip(snap: dict[str, Any]) -> None:
    out = to_json(snap, PROCS)
    assert json.loads(json.dumps(out)) == out
    worker = out["workers"][0]
    assert (worker["rss"], worker["cpu_seconds"], worker["open_fds"]) == (48 * 2**20, 12.5, 37)
    assert set(out["generations"]) == {"1", "2"}
    assert 1 in snap["generations"] and "rss" not in snap["workers"][0]   # input untouched
    assert to_json(snap)["workers"][0]["rss"] is None


def test_table_contains_key_figures(snap: dict[str, Any]) -> None:
    table = to_table(snap, PROCS)
    for figure in ("master 100", "generation 2", "accepted 4321", "active 17", "closed 4304",
                   "requests     1234", "2xx 1190", "5xx 34", "in 5.0 MiB", "out 3.0 GiB",
                   "spliced 900 B (90.0%)", "copied 100 B", "no_pipe 60 B",
                   "connect errors 6", "48.0", "12.5", "37", "running",
                   "app/127.0.0.1:9000", "down", "unknown", "p99 <= +Inf"):
        assert figure in table, figure
    worker_row = next(line for line in table.splitlines() if line.startswith("0 "))
    assert worker_row.split()[:6] == ["0", "101", "2", "running", "17", "4321"]
    bare_row = next(line for line in to_table(snap).splitlines() if line.startswith("0 "))
    assert bare_row.split()[-3:] == ["-", "-", "-"]     # no procs: dashes
