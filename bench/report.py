"""Result rows and the Markdown report of bench/bench.py (tables, ratios, latency,
checks, errors), the raw JSON and the RESULTS.md section."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import MB, NOISE_PCT, log
from loadgen import RunResult
from scenarios import Scenario
from targets import TargetSpec

FAIL_SHARE = 0.01  # more than 1 % non-2xx/3xx answers: the target failed the scenario
REFERENCES = ("direct", "direct-cpu1")  # not proxies: no ratio column
FP_ERRORS = (
    "responses_4xx", "responses_5xx", "upstream_connect_errors", "upstream_connect_timeouts",
    "upstream_retries", "client_errors", "internal_errors", "idle_timeouts", "accept_errors",
    "denied",
)  # fmt: skip


# ======================================================================== rows


def failed_row(spec: TargetSpec, scenario: Scenario, why: str, check: str = "") -> dict[str, Any]:
    return {
        "mode": spec.mode, "scenario": scenario.name, "label": scenario.label,
        "target": spec.name, "unit": scenario.unit, "check": check, "failed": why,
        "per_cpu": None, "rate": None, "notes": [], "errors": {}, "latency_ms": {},
    }  # fmt: skip


def make_row(
    spec: TargetSpec,
    scenario: Scenario,
    result: RunResult,
    window: dict[str, Any],
    check: str,
    notes: list[str],
) -> dict[str, Any]:
    """One result row: rates, per-CPU-second figures, latency, errors and notes."""
    row = failed_row(spec, scenario, "", check)
    scale = MB if scenario.unit == "MB" else 1.0
    shown = result.units / scale
    details = dict(result.details)
    errors = details.pop("errors", {})
    row.update(units=result.units, seconds=result.seconds, errors=errors,
               latency_ms=details.pop("latency_ms", {}), notes=list(notes))  # fmt: skip
    status_errors = errors.get("status", 0)
    if result.error:
        row["failed"] = result.error
    elif result.units <= 0 or result.seconds <= 0:
        row["failed"] = "no request completed"
    elif status_errors > FAIL_SHARE * result.units:
        row["failed"] = f"{status_errors:,} of {int(result.units):,} answers non-2xx/3xx"
    else:
        row["failed"] = None
        row["rate"] = shown / result.seconds
    proxy = window.get("proxy_cpu")
    if row["failed"] is None and proxy and proxy["cpu"] > 0:
        cpu = proxy["cpu"]
        ticks = proxy["user"] + proxy["system"]
        user_share = proxy["user"] / ticks if ticks > 0 else 0.0
        row.update(
            proxy_cpu_s=cpu,
            proxy_cpu_pct=100 * cpu / result.seconds,
            per_cpu=shown / cpu,
            us_user=1e6 * cpu * user_share / shown,
            us_sys=1e6 * cpu * (1 - user_share) / shown,
        )
        if proxy["source"] != "schedstat":
            row["notes"].append(f"proxy CPU from {proxy['source']}")
    if window:
        seconds = result.seconds or window["window_seconds"]
        row["foreign_pct"] = 100 * window["foreign_cpu_seconds"] / seconds
        row["cpu0_pct"] = 100 * window["cpu0_busy_seconds"] / seconds
        row["cpu1_pct"] = 100 * window["cpu1_busy_seconds"] / seconds
        if row["foreign_pct"] > NOISE_PCT:
            row["notes"].append(f"⚠ noisy: {row['foreign_pct']:.0f}% of a CPU to other work")
        row["notes"] += fastproxy_notes(window.get("stats_before"), window.get("stats_after"),
                                        scenario)  # fmt: skip
    seen = details.get("backend_requests")
    if seen is not None and result.units and seen < 0.99 * result.units:
        row["notes"].append(f"⚠ the backend saw only {seen:,} requests")
    if details.get("head_bytes_avg"):
        row["notes"].append(f"heads avg {details['head_bytes_avg']:.0f} B")
    if details.get("connections", 1) > 1:
        row["notes"].append(f"server closed: {details['connections']} connections used")
    row["details"] = details
    row["window"] = {k: v for k, v in window.items() if not k.startswith("stats_")}
    return row


def fastproxy_notes(before: Any, after: Any, scenario: Scenario) -> list[str]:
    """The deltas of fastproxy's /stats counters that say something about the row."""
    try:
        b, a = before["totals"]["counters"], after["totals"]["counters"]
    except (KeyError, TypeError):
        return []
    d = {k: a[k] - b.get(k, 0) for k in a if isinstance(a[k], int | float)}
    notes = [f"fastproxy {k} +{int(d[k]):,}" for k in FP_ERRORS if d.get(k)]
    moved = d.get("bytes_spliced", 0) + d.get("bytes_copied", 0)
    if scenario.unit == "MB" and moved > 0:
        notes.append(f"spliced {100 * d.get('bytes_spliced', 0) / moved:.0f}%")
    if scenario.name.startswith("fwd-") and "forward_requests" in d:
        notes.append(f"forward_requests +{int(d['forward_requests']):,}")
    try:
        hb, ha = before["totals"]["hists"], after["totals"]["hists"]
        connects = ha["upstream_connect_seconds"]["count"] - hb["upstream_connect_seconds"]["count"]
        if scenario.unit != "MB":
            notes.append(f"{int(connects):,} upstream connects")
    except (KeyError, TypeError):
        pass
    return notes


# ====================================================================== tables


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def rate_unit(row: dict[str, Any]) -> str:
    return {"MB": "MB/s", "conn": "conn/s"}.get(row["unit"], "req/s")


def fp_ratio(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> str:
    if row["target"] in REFERENCES or row["target"] == "fastproxy":
        return ""
    fp = find(rows, row["mode"], row["scenario"], "fastproxy")
    if fp is None:
        return ""
    if fp["failed"] or not fp.get("per_cpu"):
        return "fastproxy failed" if fp["failed"] else "n/a"
    return f"{fp['per_cpu'] / row['per_cpu']:.2f}×" if row.get("per_cpu") else "n/a"


def find(rows: Sequence[dict[str, Any]], mode: str, scenario: str, target: str) -> Any:
    return next((r for r in rows if (r["mode"], r["scenario"], r["target"]) ==
                 (mode, scenario, target)), None)  # fmt: skip


def errors_cell(row: dict[str, Any]) -> str:
    errs = row.get("errors") or {}
    return ", ".join(f"{k} {v:,}" for k, v in errs.items()) if errs else "0"


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        (
            "| scenario | target | rate | per proxy CPU-s | CPU µs/unit usr | CPU µs/unit sys "
            "| proxy CPU % | p50 ms | p99 ms | errors | fastproxy ÷ this | notes |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|",
    ]
    for r in rows:
        lat = r.get("latency_ms") or {}
        if r["failed"]:
            rate, per_cpu = f"**FAILED**: {r['failed'][:90]}", "—"
        else:
            rate = f"{fmt(r['rate'])} {rate_unit(r)}"
            per_cpu = f"{fmt(r['per_cpu'])} {r['unit']}" if r.get("per_cpu") else "—"
        digits = 0 if r["unit"] == "MB" else 1
        lines.append(
            f"| {r['scenario']} | {r['target']} | {rate} | {per_cpu} "
            f"| {fmt(r.get('us_user'), digits)} | {fmt(r.get('us_sys'), digits)} "
            f"| {fmt(r.get('proxy_cpu_pct'))} | {fmt(lat.get('p50'), 2)} "
            f"| {fmt(lat.get('p99'), 2)} | {errors_cell(r) if 'units' in r else '—'} "
            f"| {fp_ratio(rows, r)} | {'; '.join(r['notes'])} |"
        )
    return "\n".join(lines)


def ratio_table(rows: Sequence[dict[str, Any]], mode: str, scenarios: Sequence[Scenario]) -> str:
    """fastproxy ÷ every other proxy of the mode, per proxy CPU-second."""
    others = []
    for r in rows:
        if r["mode"] == mode and r["target"] not in (*REFERENCES, "fastproxy", *others):
            others.append(r["target"])
    if not others or not any(r["target"] == "fastproxy" and r["mode"] == mode for r in rows):
        return ""
    lines = [
        "| per proxy CPU-second | " + " | ".join(f"fastproxy ÷ {o}" for o in others) + " |",
        "|---|" + "--:|" * len(others),
    ]
    for s in scenarios:
        if s.mode != mode:
            continue
        cells = []
        for other in others:
            o = find(rows, mode, s.name, other)
            cells.append(fp_ratio(rows, o) if o else "")
        lines.append(f"| {s.name} ({s.unit}) | " + " | ".join(c or "—" for c in cells) + " |")
    return "\n".join(lines)


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """The reverse ``latency`` scenario: one connection, p50/p90/p99, added over direct."""
    lat = [r for r in rows if r["scenario"] == "latency" and not r["failed"]]
    if not lat:
        return ""
    base = {r["target"]: r["latency_ms"] for r in lat if r["target"] in REFERENCES}

    def added(ms: dict[str, float], ref: str, key: str) -> str:
        """ms minus the reference; a reference row gets it only over direct itself."""
        refs = base.values() if ref == "direct-cpu1" else [base.get("direct")]
        if ref not in base or any(ms is v for v in refs):
            return "—"
        return f"{1000 * (ms[key] - base[ref][key]):+,.0f} µs"

    lines = [
        (
            "| latency, 1 connection | p50 ms | p90 ms | p99 ms | added p50 over direct "
            "| added p99 over direct | added p99 over direct-cpu1 |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in lat:
        ms = r["latency_ms"]
        lines.append(
            f"| {r['target']} | {ms['p50']:.3f} | {ms['p90']:.3f} | {ms['p99']:.3f} "
            f"| {added(ms, 'direct', 'p50')} | {added(ms, 'direct', 'p99')} "
            f"| {added(ms, 'direct-cpu1', 'p99')} |"
        )
    return "\n".join(lines)


def checks_section(rows: Sequence[dict[str, Any]]) -> str:
    """Which correctness checks passed, and the evidence of the passed ones once."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        for scenario in dict.fromkeys(r["scenario"] for r in mine):
            cells = [r for r in mine if r["scenario"] == scenario]
            passed = [r["target"] for r in cells if r["check"].startswith("✓")]
            evidence = next((r["check"][2:] for r in cells if r["check"].startswith("✓")), "")
            failed = [f"{r['target']} ✗ {r['check'][2:]}" for r in cells
                      if r["check"].startswith("✗")]  # fmt: skip
            text = f"✓ {', '.join(passed)} ({evidence})" if passed else ""
            lines.append(f"* {mode}/{scenario}: " + "; ".join(filter(None, [text, *failed])))
    return "\n".join(lines)


def problems(rows: Sequence[dict[str, Any]]) -> str:
    """Every failure and every non-zero error count, verbatim; a target that failed all
    its scenarios the same way is one line."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if r["failed"] or r.get("errors"):
            what = r["failed"] or f"errors {errors_cell(r)}"
            seen.setdefault((r["mode"], r["target"], what), []).append(r["scenario"])
    lines = []
    for (mode, target, what), scens in seen.items():
        total = sum(1 for r in rows if (r["mode"], r["target"]) == (mode, target))
        which = f"all {total} scenarios" if len(scens) == total > 1 else ", ".join(scens)
        lines.append(f"* {mode}/{target} ({which}): {what}")
    return "\n".join(lines) if lines else "No failures, no error counts."


def markdown(
    rows: Sequence[dict[str, Any]],
    scenarios: Sequence[Scenario],
    facts: dict[str, Any],
    settings: dict[str, Any],
) -> str:
    parts = [
        (
            f"## bench.py, {facts['date']} — repo HEAD {facts['repo_head']} "
            f"(fastproxy/: {facts['fastproxy_worktree']})"
        ),
        f"{facts['cpu_model']}, {facts['nproc']} CPUs, kernel {facts['kernel']}; "
        f"load generator + backends on CPU 0, proxy on CPU 1; {settings['duration']} s per "
        f"wrk run; download {settings['big_mib']} MiB ×{settings['downloads']}; bulk "
        f"{settings['bulk_mib']} MiB per direction; idle check before start (busy %): "
        + ", ".join(f"{k} {v:.0f}" for k, v in facts["idle_busy_pct"].items()),
    ]
    for mode in dict.fromkeys(s.mode for s in scenarios):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        parts += [f"### {mode}", results_table(mine), ratio_table(rows, mode, scenarios)]
        if mode == "reverse":
            parts.append(latency_table(mine))
    parts += [
        "Correctness checks before measuring:\n\n" + checks_section(rows),
        "Failures and error counts:\n\n" + problems(rows),
    ]
    return "\n\n".join(p for p in parts if p)


# ======================================================================= files


def write_json(path: Path, facts: dict[str, Any], settings: dict[str, Any],
               rows: Sequence[dict[str, Any]], text: str) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": facts, "settings": settings, "results": rows, "markdown": text}
    path.write_text(json.dumps(data, indent=2, default=str))
    log(f"raw results: {path}")


def append_results_md(path: Path, facts: dict[str, Any], command: str, text: str) -> None:
    """Append the report with the date and the machine facts to RESULTS.md."""
    keys = ("date", "cpu_model", "nproc", "memory", "kernel", "python", "nginx", "haproxy",
            "wrk", "tinyproxy", "squid", "proxypy", "repo_head", "fastproxy_worktree")  # fmt: skip
    table = "\n".join(["| fact | value |", "|---|---|"] + [f"| {k} | {facts[k]} |" for k in keys])
    section = (
        f"\n\n# Combined run (bench.py) — {facts['date']}\n\n{table}\n\n"
        f"```sh\n{command}\n```\n\n{text}\n"
    )
    with open(path, "a") as fh:
        fh.write(section)
    log(f"appended to {path}")
