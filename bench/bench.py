#!/usr/bin/env python3
"""One benchmark driver for fastproxy and the servers it is compared with.

    python bench/bench.py                                   # every mode, target, scenario
    python bench/bench.py --modes reverse --targets direct,nginx,fastproxy --duration 5
    python bench/bench.py --list                            # the target and scenario tables

One run measures every selected target (targets.py) through every scenario of
its mode that applies to it (scenarios.py), one worker each, with the same
pinning: load generator and backends on CPU 0, the proxy's whole process tree
on CPU 1. Before measuring, each scenario is checked once per target
(checks.py); then a short warm-up, then the measured run with the proxy's CPU
sampled around the load only (harness.Meter). The report (report.py) goes to
stdout as Markdown, raw numbers to bench/out/*.json; --results-md appends the
report with the machine facts to bench/RESULTS.md.

Traffic only ever goes to 127.0.0.1; every run is bounded by a duration or a
byte count and a hard timeout; every server is started here and stopped by
process group in try/finally (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import checks
import report
import scenarios
import targets
from backends import BULK_PORT, HTTP_PORT, Backends
from configs import PROXYPY_PYTHON
from harness import LOAD_CPU, OUT_DIR, Meter, log, machine_facts, wait_idle
from scenarios import RunContext, Scenario
from targets import Running, TargetSpec

MODES = ("reverse", "forward", "tcp")
NEEDED = ("taskset", "wrk", "nginx", "curl")
INSTALL = "apt-get install -y wrk nginx libnginx-mod-stream haproxy tinyproxy squid curl"


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="proxy benchmark (see bench/README.md)")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of reverse,forward,tcp")
    p.add_argument("--targets", help="comma list (default: every default target of the modes)")
    p.add_argument("--scenarios", help="comma list (default: all of the modes); see --list")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--big-mib", type=int, default=256, help="size of /big (download), MiB")
    p.add_argument("--downloads", type=int, default=4, help="GET /big per download run")
    p.add_argument("--bulk-mib", type=int, default=1024, help="MiB per bulk/tunnel direction")
    p.add_argument("--fastproxy-cmd", default=f"{shlex.quote(sys.executable)} -m fastproxy",
                   help="how to start fastproxy (`run -c FILE` is appended; cwd = repo root)")
    p.add_argument("--wait-idle", type=float, default=30.0,
                   help="wait up to this long for a 3 s stretch with both CPUs idle")
    p.add_argument("--json-out", type=Path, help="raw results (default bench/out/bench-TIME.json)")
    p.add_argument("--results-md", action="store_true", help="append the report to RESULTS.md")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    p.add_argument("--list", action="store_true", help="print targets and scenarios, then exit")
    args = p.parse_args(argv)  # fmt: skip
    for attr, low, high in (("duration", 1, 600), ("big_mib", 1, 4096), ("downloads", 1, 64),
                            ("bulk_mib", 1, 65536)):  # fmt: skip
        if not low <= getattr(args, attr) <= high:
            p.error(f"--{attr.replace('_', '-')} must be {low}..{high}")
    args.mode_list = names(args.modes)
    if not args.mode_list or any(m not in MODES for m in args.mode_list):
        p.error(f"--modes: choose from {','.join(MODES)}")
    return args


def print_tables() -> None:
    print("| mode | target | default | about |\n|---|---|---|---|")
    for t in targets.TARGETS:
        only = f" (only {', '.join(t.only)})" if t.only else ""
        print(f"| {t.mode} | {t.name} | {'yes' if t.default else 'extra'} | {t.about}{only} |")
    print("\n| mode | scenario | load | what |\n|---|---|---|---|")
    for s in scenarios.SCENARIOS:
        load = f"{s.kind} c{s.connections}" if s.kind in ("wrk", "head") else s.kind
        print(f"| {s.mode} | {s.name} | {load} | {s.label} |")
    print("\naliases: " + ", ".join(f"{k} = {'+'.join(v)}" for k, v in scenarios.ALIASES.items()))


# ======================================================================= run


def applies(spec: TargetSpec, scenario: Scenario) -> bool:
    return scenario.mode == spec.mode and (not spec.only or scenario.name in spec.only)


def measure(run: Running, scenario: Scenario, ctx: RunContext) -> dict[str, Any]:
    """Check, warm up, measure: one row."""
    spec = run.spec
    count = spec.name != "direct-cpu1"  # its own backend copy: the counter is not its
    ok, detail = checks.check(scenario, run.port, ctx.backends, count=count,
                              tunnel=spec.tunnel and scenario.connect)  # fmt: skip
    if not ok:
        return report.failed_row(spec, scenario, f"check failed: {detail}", "✗ " + detail)
    warm = scenarios.run(scenario, run.port, ctx, None, warm_up=True, tunnel=spec.tunnel)
    if warm.error:
        return report.failed_row(spec, scenario, f"warm-up failed: {warm.error}", "✓ " + detail)
    time.sleep(0.3)
    meter = Meter(run.proxy_pid, run.known_pids(), run.stats, spec.thread_churn)
    try:
        result = scenarios.run(scenario, run.port, ctx, meter, tunnel=spec.tunnel, count=count)
    except RuntimeError as exc:  # a proxy process left CPU 1
        return report.failed_row(spec, scenario, f"not measured: {exc}", "✓ " + detail)
    return report.make_row(spec, scenario, result, meter.window(), "✓ " + detail,
                           run.log_notes())  # fmt: skip


def run_target(
    spec: TargetSpec, mine: list[Scenario], ctx: RunContext, fastproxy_cmd: list[str]
) -> list[dict[str, Any]]:
    """Start the target (once per backend in TCP mode), run its scenarios, stop it."""
    groups: dict[str, list[Scenario]] = {}
    for s in mine:
        groups.setdefault(s.upstream if spec.mode == "tcp" else "any", []).append(s)
    rows: list[dict[str, Any]] = []
    for group in groups.values():
        upstream = BULK_PORT if group[0].upstream == "bulk" else HTTP_PORT
        run = Running(spec, ctx.workdir, ctx.backends, fastproxy_cmd)
        try:
            if spec.tool and not shutil.which(spec.tool):
                raise RuntimeError(f"{spec.tool} is not installed ({INSTALL})")
            run.start(upstream, checks.ready_probe(spec.mode, group[0].upstream, spec.tunnel))
        except (RuntimeError, OSError) as exc:
            log(f"{spec.mode}/{spec.name} did not start: {exc}")
            why = f"did not start: {str(exc).splitlines()[0]}"
            failed = [report.failed_row(spec, s, why) for s in group]
            for row in failed:
                row["details"] = {"start_error": str(exc)}  # with the server's log tail
            rows += failed
            continue
        try:
            for i, scenario in enumerate(group):
                log(f"{spec.mode}/{spec.name}: {scenario.name}")
                row = measure(run, scenario, ctx)
                log("  -> " + (f"FAILED {row['failed']}" if row["failed"] else
                               f"{report.fmt(row['rate'])} {report.rate_unit(row)}, "
                               f"{report.fmt(row.get('per_cpu'))} {row['unit']}/CPU-s"))
                rows.append(row)
                if run.died():
                    log(f"{spec.name} died; log tail:\n{run.log_tail()}")
                    row["notes"].append("proxy process died")
                    rows += [report.failed_row(spec, s, "proxy process died")
                             for s in group[i + 1 :]]  # fmt: skip
                    break
                time.sleep(0.3)
        finally:
            run.stop()
        time.sleep(0.3)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print_tables()
        return 0
    specs = targets.select(names(args.targets), args.mode_list)
    chosen = scenarios.select(names(args.scenarios), args.mode_list)
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools {missing}; as root: apt-get update; {INSTALL}")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs at least 2 CPUs (load on CPU 0, proxy on CPU 1)")
    # SIGTERM (e.g. `timeout`) must still run the finally blocks that stop servers;
    # the driver itself stays off the proxy CPU
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {LOAD_CPU})

    facts = machine_facts(PROXYPY_PYTHON)
    facts["idle_busy_pct"] = wait_idle(args.wait_idle)
    settings = {k: getattr(args, k) for k in ("duration", "big_mib", "downloads", "bulk_mib",
                                              "fastproxy_cmd")}  # fmt: skip
    settings.update(modes=args.mode_list, targets=[f"{t.mode}/{t.name}" for t in specs],
                    scenarios=[s.name for s in chosen])  # fmt: skip
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="fpbench-"))
    backends = Backends(workdir, args.big_mib)
    started = time.monotonic()
    try:
        backends.start()
        ctx = RunContext(workdir, backends, args.duration, args.downloads, args.bulk_mib)
        for spec in specs:
            mine = [s for s in chosen if applies(spec, s)]
            if mine:
                rows += run_target(spec, mine, ctx, shlex.split(args.fastproxy_cmd))
    finally:
        backends.stop()
        if args.keep_workdir:
            (workdir / "www" / "big").unlink(missing_ok=True)
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    settings["run_seconds"] = round(time.monotonic() - started)
    text = report.markdown(rows, chosen, facts, settings)
    print(text)
    out = args.json_out or OUT_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_json(out, facts, settings, rows, text)
    if args.results_md:
        command = shlex.join(["python", "bench/bench.py", *(argv or sys.argv[1:])])
        report.append_results_md(Path(__file__).parent / "RESULTS.md", facts, command, text)
    log(f"done in {settings['run_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
