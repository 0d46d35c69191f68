"""Correctness checks, run once per target and scenario before anything is measured,
and the readiness probes that say a freshly started target relays end to end.

Each check sends the scenario's own request (loadgen.Request.raw) through the
target, reads the answer with a small HTTP/1.1 reader (Content-Length, chunked,
bodiless HEAD/304, close-delimited) and verifies what the scenario is about;
where it can, it also reads the backend's own request counter (nginx
stub_status) to prove the request reached the backend exactly once. A failed
check makes the row show the failure instead of a number.
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bulkio
from backends import BULK_PORT, HTTP_PORT, SMALL_BYTES, Backends
from harness import HOST
from loadgen import Request
from scenarios import ABS, POST_BODY, Scenario, concrete


class CheckFailed(Exception):
    pass


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # de-chunked
    chunked: bool
    extra: bytes  # bytes after the answer (there must be none)
    closed: bool  # the server closed the connection after the answer


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise CheckFailed(f"connection closed mid-answer after {self.buf[:120]!r}")
        self.buf += chunk

    def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if len(self.buf) > 1 << 20:
                raise CheckFailed("no end of line/head within 1 MiB")
            self.fill()
        out, _, self.buf = self.buf.partition(sep)
        return out

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def exchange(port: int, raw: bytes, bodiless: bool = False, linger: float = 0.3) -> Answer:
    """Send ``raw``, read one answer, then wait ``linger`` s for more bytes or EOF."""
    with socket.create_connection((HOST, port), timeout=3.0) as sock:
        sock.sendall(raw)
        r = Reader(sock)
        lines = r.until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise CheckFailed(f"bad status line {lines[0][:100]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        body, closed = b"", False
        if bodiless or status in (204, 304):
            pass
        elif chunked:
            while size := int(r.until(b"\r\n").split(b";")[0], 16):
                body += r.take(size)
                r.take(2)
            while r.until(b"\r\n"):  # trailers, then the empty line
                pass
        elif "content-length" in headers:
            body = r.take(int(headers["content-length"]))
        else:
            while True:
                try:
                    r.fill()
                except CheckFailed:
                    break
            body, r.buf, closed = r.buf, b"", True
        if not closed and linger > 0:
            sock.settimeout(linger)
            try:
                more = sock.recv(65536)
                closed = not more
                r.buf += more
            except TimeoutError:
                pass
        return Answer(status, headers, body, chunked, r.buf, closed)


def counted(backends: Backends, count: bool, go: Callable[[], object]) -> tuple[object, int | None]:
    """Run ``go()``; how many requests the backend saw meanwhile (None: not counted)."""
    before = backends.requests() if count else None
    out = go()
    after = backends.requests() if before is not None else None
    return out, (after - before - 1 if before is not None and after is not None else None)


def once(seen: int | None, expected: int = 1) -> str:
    if seen is None:
        return ""
    if seen != expected:
        raise CheckFailed(f"the backend saw {seen} requests, expected {expected}")
    return f", backend +{seen}"


def curl(port: int, url: str, proxy: bool, extra: list[str]) -> tuple[str, bytes]:
    """curl (raw, not decompressed) through the target; (response head, body)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "body"
        argv = ["curl", "-sS", "--max-time", "5", "-D", "-", "-o", str(out), *extra]
        argv += ["-x", f"http://{HOST}:{port}", url] if proxy else [url]
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        body = out.read_bytes() if out.exists() else b""
    if done.returncode != 0:
        raise CheckFailed(f"curl: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode("latin-1"), body


# ====================================================================== checks


def check(
    scenario: Scenario, port: int, backends: Backends, count: bool, tunnel: bool
) -> tuple[bool, str]:
    """Run the scenario's check; (ok, what was verified or why it failed)."""
    try:
        return True, CHECKS[scenario.check](scenario, port, backends, count, tunnel)
    except CheckFailed as exc:
        return False, str(exc)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _req(s: Scenario, backends: Backends) -> Request:
    assert s.request is not None
    return concrete(s.request, backends)


def check_small(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    answer, seen = counted(b, count, lambda: exchange(port, _req(s, b).raw()))
    assert isinstance(answer, Answer)
    if answer.status != 200 or answer.body != b.small:
        raise CheckFailed(f"status {answer.status}, {len(answer.body)} B (want 200, the 1 KiB)")
    return f"200, 1 KiB body{once(seen)}"


def check_fwd_small(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    done = check_small(s, port, b, count, tunnel)
    head, body = curl(port, f"{ABS}/1k", True, [])
    if not head.startswith("HTTP/1.1 200") or body != b.small:
        raise CheckFailed(f"curl -x: {head.splitlines()[:1]}, {len(body)} B")
    return done + "; curl -x 200, 1 KiB"


def check_varied(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    heads = [_req(s, b).raw(f"{HOST}:{port}", n) for n in (1, 2, 3)]

    def go() -> list[Answer]:
        return [exchange(port, raw) for raw in heads]

    answers, seen = counted(b, count, go)
    assert isinstance(answers, list)
    bad = [a.status for a in answers if a.status != 200 or a.body != b.small]
    if bad or len(set(heads)) != 3:
        raise CheckFailed(f"statuses {[a.status for a in answers]}")
    sizes = "/".join(str(len(h)) for h in heads)
    return f"3 distinct heads ({sizes} B) → 200, 1 KiB{once(seen, 3)}"


def check_post(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    req = _req(s, b)
    token = uuid.uuid4().hex
    probe = Request(req.method, req.path.replace("/post", "/post-check"), req.headers,
                    req.body, req.host)  # fmt: skip
    answer = exchange(port, probe.raw(extra=(("X-Fpbench-Check", token),)))
    if answer.status != 200:
        raise CheckFailed(f"POST /post-check: status {answer.status}")
    deadline = time.monotonic() + 2
    logged = None
    while logged is None and time.monotonic() < deadline:
        logged = next((ln for ln in b.post_check_bodies() if ln.startswith(token)), None)
        time.sleep(0.05)
    if logged is None:
        raise CheckFailed("the POST never reached the backend")
    if logged != f"{token} {POST_BODY.decode()}":
        raise CheckFailed(f"the backend got another body: {logged[33:120]!r}…")
    answer, seen = counted(b, count, lambda: exchange(port, req.raw()))
    assert isinstance(answer, Answer)
    if answer.status != 200:
        raise CheckFailed(f"POST /post: status {answer.status}")
    return f"body reached the backend intact ({len(POST_BODY)} B), 200{once(seen)}"


def check_chunked(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    forward = s.mode == "forward"
    url = f"{ABS}/text" if forward else f"http://{HOST}:{port}/text"
    head, body = curl(port, url, forward, ["-H", "Accept-Encoding: gzip"])
    if not head.startswith("HTTP/1.1 200"):
        raise CheckFailed(f"curl: {head.splitlines()[:1]}")
    te = [ln for ln in head.lower().splitlines() if ln.startswith("transfer-encoding:")]
    if not any("chunked" in ln for ln in te):
        framing = [ln for ln in head.splitlines() if ln.lower().startswith(("content-length",))]
        raise CheckFailed(f"answer not chunked ({'; '.join(te + framing) or 'no framing'})")
    if gzip.decompress(body) != b.text:
        raise CheckFailed("the gunzipped body differs from the file")
    return f"curl: Transfer-Encoding: chunked, {len(body)} B gzip → the 16 KiB text"


def check_head(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    answer, seen = counted(b, count, lambda: exchange(port, _req(s, b).raw(), bodiless=True))
    assert isinstance(answer, Answer)
    if answer.status != 200 or answer.headers.get("content-length") != str(SMALL_BYTES):
        raise CheckFailed(f"status {answer.status}, {answer.headers.get('content-length')}")
    if answer.extra:
        raise CheckFailed(f"{len(answer.extra)} body bytes after a HEAD answer")
    return f"200, Content-Length 1024, no body{once(seen)}"


def check_304(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    answer, seen = counted(b, count, lambda: exchange(port, _req(s, b).raw()))
    assert isinstance(answer, Answer)
    if answer.status != 304 or answer.extra:
        raise CheckFailed(f"status {answer.status} (want 304), {len(answer.extra)} extra B")
    return f"304 for ETag {b.etag}{once(seen)}"


def check_close(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    answer, seen = counted(b, count, lambda: exchange(port, _req(s, b).raw(), linger=1.0))
    assert isinstance(answer, Answer)
    if answer.status != 200 or answer.body != b.small or not answer.closed:
        raise CheckFailed(f"status {answer.status}, closed {answer.closed}")
    return f"200, 1 KiB, connection closed after it{once(seen)}"


def check_download(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    return "verified by the warm-up download (200, Content-Length, every byte)"


def check_tunnel(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    if not relays_bulk(port, tunnel):
        raise CheckFailed("no byte came back through the " + ("tunnel" if tunnel else "relay"))
    return "CONNECT 200, 1 byte back through the tunnel" if tunnel else "1 byte back (plain L4)"


def check_l4_http(s: Scenario, port: int, b: Backends, count: bool, tunnel: bool) -> str:
    answer, seen = counted(b, count, lambda: exchange(port, _req(s, b).raw()))
    assert isinstance(answer, Answer)
    if answer.status != 200 or len(answer.body) != 100:
        raise CheckFailed(f"status {answer.status}, {len(answer.body)} B")
    return f"200, 100 B{once(seen)}"


CHECKS: dict[str, Callable[[Scenario, int, Backends, bool, bool], str]] = {
    "small": check_small,
    "fwd-small": check_fwd_small,
    "varied": check_varied,
    "post": check_post,
    "chunked": check_chunked,
    "head": check_head,
    "304": check_304,
    "close": check_close,
    "download": check_download,
    "tunnel": check_tunnel,
    "l4-bulk": check_tunnel,
    "l4-http": check_l4_http,
}


# ===================================================================== readiness


def relays_bulk(port: int, tunnel: bool) -> bool:
    """One 1-byte download from the bulk backend through ``port`` (CONNECT if ``tunnel``)."""
    try:
        dest = f"{HOST}:{BULK_PORT}" if tunnel else None
        with bulkio.open_tunnel(HOST, port, dest, 2.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(bulkio.HEADER.pack(bulkio.DOWNLOAD, 1))
            return len(sock.recv(1)) == 1
    except (OSError, ConnectionError):
        return False


def serves(port: int, request: Request, status: int = 200) -> bool:
    try:
        return exchange(port, request.raw(), linger=0).status == status
    except (OSError, CheckFailed, ValueError):
        return False


def ready_probe(mode: str, upstream: str, tunnel: bool) -> Callable[[int], bool]:
    """What "relays end to end" means for a target of ``mode`` relaying to ``upstream``."""
    if mode == "forward" and tunnel:
        get = Request(path=f"{ABS}/1k", host=f"{HOST}:{HTTP_PORT}")
        return lambda port: serves(port, get) and relays_bulk(port, True)
    if upstream == "bulk" or mode == "forward":  # nginx-stream relays to the bulk backend
        return lambda port: relays_bulk(port, False)
    path = "/" if mode == "tcp" else "/1k"
    return lambda port: serves(port, Request(path=path))
