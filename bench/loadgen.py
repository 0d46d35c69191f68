"""Load generators: wrk (with generated Lua scripts) and the handshake clients.

* ``Request`` describes what a scenario sends; ``lua_script`` turns it into a
  wrk script whose ``done()`` prints one ``FPBENCH {json}`` line (requests,
  duration, p50/p90/p99/max latency from wrk's histogram, and every error
  count: connect, read, write, timeout and ``status`` = non-2xx/3xx answers);
  ``Request.raw`` gives the same request as bytes for the correctness checks.
* ``varied`` requests (get-varied) are built per request by a Lua
  ``request()``: a counter in the target and in the session cookie, and a
  browser-like head rotating over 20 real User-Agent strings, Accept and
  Accept-Language values and Referers; about 600 bytes, never the same head
  twice in a run, and each wrk run (warm-up included) numbers from its own
  start, so no run repeats another's heads. ``varied_request(n)`` is the Python
  twin used by the checks.
* ``handshake_client`` runs a Python client (bulkio.py, http_download.py,
  headload.py) that connects, prints ``ready``, waits for ``go`` and prints
  JSON: the CPU window opens right before ``go``.

All load generators run pinned to the load CPU and only talk to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import HOST, LOAD_CPU, START_TIMEOUT, STOP_TIMEOUT, Meter, pinned

WRK_TIMEOUT_S = 5  # wrk --timeout: a request slower than this counts as a timeout error


@dataclass
class RunResult:
    """What a scenario measured (units = requests, connections or bytes)."""

    units: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ===================================================================== requests

USER_AGENTS = (
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/119.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36"
    ),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.2; rv:121.0) Gecko/20100101 Firefox/121.0",
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.2 Safari/605.1.15"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/16.6 Safari/605.1.15"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.2 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.144 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.144 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0"
    ),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like "
        "Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36"
    ),
)
ACCEPTS = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    (
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
    ),
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "application/json, text/plain, */*",
)
LANGUAGES = (
    "en-US,en;q=0.9",
    "en-GB,en;q=0.9,en-US;q=0.8",
    "de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7",
    "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",
    "es-ES,es;q=0.9,en;q=0.8",
    "ja,en-US;q=0.9,en;q=0.8",
)
THEMES = ("light", "dark", "auto")

# One format for both languages: Lua's string.format and Python's % operator.
VARIED_FORMAT = (
    "GET /1k?id=%d&v=%04x HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: %s\r\n"
    "Accept-Language: %s\r\nAccept-Encoding: identity\r\n"
    "Referer: http://%s/catalog/%d/item-%d.html\r\n"
    "Cookie: sid=%08x%06x; theme=%s; _ga=GA1.2.%d.%d; cart=%d\r\n"
    "Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
    "Upgrade-Insecure-Requests: 1\r\nConnection: keep-alive\r\n\r\n"
)


def varied_request(n: int, host: str) -> bytes:
    """Request number ``n`` (from 1) of get-varied, as the Lua request() builds it."""
    return (
        VARIED_FORMAT
        % (
            n, (n * 7919) % 65536, host, USER_AGENTS[n % 20], ACCEPTS[n % 4],
            LANGUAGES[n % 6], host, n % 97, n % 1009, n, (n * 40503) % 16777216,
            THEMES[n % 3], (n * 31) % 1000000000, 1700000000 + n % 86400, n % 17,
        )
    ).encode()  # fmt: skip


def lua_str(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r")
    return '"' + out.replace("\n", "\\n") + '"'


def lua_list(items: tuple[str, ...]) -> str:
    return "{" + ", ".join(lua_str(i) for i in items) + "}"


VARIED_LUA = f"""
local uas = {lua_list(USER_AGENTS)}
local accepts = {lua_list(ACCEPTS)}
local langs = {lua_list(LANGUAGES)}
local themes = {lua_list(THEMES)}
local fmt = {lua_str(VARIED_FORMAT)}
local n, host = FIRST - 1, nil
fp_head_bytes, fp_generated = 0, 0
request = function()
  n = n + 1
  host = host or wrk.headers["Host"]
  local req = string.format(fmt, n, (n * 7919) % 65536, host, uas[n % 20 + 1],
    accepts[n % 4 + 1], langs[n % 6 + 1], host, n % 97, n % 1009, n,
    (n * 40503) % 16777216, themes[n % 3 + 1], (n * 31) % 1000000000,
    1700000000 + n % 86400, n % 17)
  fp_head_bytes = fp_head_bytes + #req
  fp_generated = fp_generated + 1
  return req
end
"""

DONE_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(s, lat, req)
  local heads, generated = 0, 0
  for _, t in ipairs(threads) do
    heads = heads + (t:get("fp_head_bytes") or 0)
    generated = generated + (t:get("fp_generated") or 0)
  end
  local e = s.errors
  io.write(string.format('FPBENCH {"requests": %d, "duration_us": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "head_bytes": %d, "generated": %d}\\n',
    s.requests, s.duration, lat:percentile(50), lat:percentile(90), lat:percentile(99),
    lat.max, e.connect, e.read, e.write, e.status, e.timeout, heads, generated))
end
"""


@dataclass(frozen=True)
class Request:
    """One scenario's request. ``path`` is absolute-form (http://host:port/...) for a
    forward proxy; ``host`` then overrides the Host header wrk would set."""

    method: str = "GET"
    path: str = "/1k"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    host: str | None = None
    varied: bool = False

    def raw(
        self, host: str = "bench", n: int = 1, extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        """The request as bytes (the checks send it); ``extra`` headers go last."""
        if self.varied:
            return varied_request(n, self.host or host)
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host or host}"]
        lines += [f"{k}: {v}" for k, v in (*self.headers, *extra)]
        if self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    def lua(self, first: int = 1) -> str:
        """The wrk script; a varied request numbers its heads from ``first``."""
        lines = [f"wrk.method = {lua_str(self.method)}", f"wrk.path = {lua_str(self.path)}"]
        if self.host:
            lines.append(f'wrk.headers["Host"] = {lua_str(self.host)}')
        lines += [f"wrk.headers[{lua_str(k)}] = {lua_str(v)}" for k, v in self.headers]
        if self.body:
            lines.append(f"wrk.body = {lua_str(self.body)}")
        varied = VARIED_LUA.replace("FIRST", str(first)) if self.varied else ""
        return "\n".join(lines) + "\n" + varied + DONE_LUA


# ========================================================================= wrk


def parse_summary(out: str) -> dict[str, Any] | None:
    """The FPBENCH json line of a wrk script's done() (or of headload.py)."""
    match = re.search(r"^FPBENCH (\{.*\})$", out, re.MULTILINE)
    if not match:
        return None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def summary_result(data: dict[str, Any]) -> RunResult:
    details = {
        "latency_ms": {p: data[f"{p}_us"] / 1000 for p in ("p50", "p90", "p99", "max")},
        "errors": {k: v for k, v in data["errors"].items() if v},
    }
    if data.get("generated"):
        details["head_bytes_avg"] = data["head_bytes"] / data["generated"]
    return RunResult(float(data["requests"]), data["duration_us"] / 1e6, details)


def run_wrk(
    script: Path, port: int, connections: int, duration: int, meter: Meter | None
) -> RunResult:
    """wrk -t1 -cN -dDs --timeout 5s -s SCRIPT, pinned to the load CPU, inside the meter
    window (if any); bounded by duration + 30 s."""
    argv = pinned(LOAD_CPU, [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", f"{WRK_TIMEOUT_S}s",
        "-s", str(script), f"http://{HOST}:{port}/",
    ])  # fmt: skip
    if meter:
        meter.begin()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired:
        return RunResult(0, duration, error="wrk timed out")
    if meter:
        meter.end()
    data = parse_summary(done.stdout)
    if done.returncode != 0 or data is None:
        why = (done.stderr.strip() or done.stdout.strip())[-300:]
        return RunResult(0, duration, error=f"wrk rc={done.returncode}: {why}")
    result = summary_result(data)
    result.details["wrk_output"] = done.stdout
    return result


# ========================================================== handshake clients


def handshake_client(
    argv: list[str], meter: Meter | None, timeout: float
) -> dict[str, Any] | RunResult:
    """Run a client that prints "ready", waits for "go" on stdin, then prints JSON.

    The meter window opens right before "go" and closes when the client exits.
    Returns the client's JSON, or a RunResult carrying the error."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        if not ready or proc.stdout.readline().strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=STOP_TIMEOUT)
            last = (err.strip().splitlines() or ["client not ready"])[-1]
            return RunResult(0, 0, error=f"client failed: {last}")
        if meter:
            meter.begin()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return RunResult(0, timeout, error=f"timed out after {timeout:.0f}s")
        if meter:
            meter.end()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"rc={proc.returncode}"])[-1]
            return RunResult(0, 0, error=f"client failed: {last}")
        data = parse_summary(out)
        return data if data is not None else json.loads(out)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
