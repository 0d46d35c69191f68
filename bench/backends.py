"""The backends every target forwards to, all pinned to the load CPU (CPU 0).

* nginx HTTP backend on 18001 (configs.backend_nginx: /, /1k, /text, /big,
  /post, /post-check, /fpbench-status);
* bulkio.py sink/source on 18000 (TCP bulk and CONNECT tunnel scenarios).

The docroot is made once per run in the temporary directory: /1k (1024 B),
/text (16 KiB of seeded English-like words, gzip'd to a chunked answer), /big
(``--big-mib`` MiB, read once so every target gets it from the page cache).
"""

from __future__ import annotations

import random
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import configs
from harness import HOST, LOAD_CPU, ManagedProcess, pinned, start_server

HTTP_PORT = 18001
BULK_PORT = 18000
CPU1_PORT = 18002  # direct-cpu1: a second nginx backend on the proxy CPU
SMALL_BYTES = 1024
TEXT_BYTES = 16384
STATUS_PATH = "/fpbench-status"
WORDS = (
    "proxy", "connection", "request", "response", "header", "body", "chunk", "stream", "socket",
    "buffer", "kernel", "splice", "worker", "event", "loop", "upstream", "backend", "client",
    "server", "latency", "throughput", "the", "a", "of", "and", "to", "in", "is", "that", "for",
    "with", "as", "on", "by", "this", "be", "are", "from", "or", "at", "which", "an", "it", "not",
)


def make_docroot(workdir: Path, big_mib: int) -> Path:
    root = workdir / "www"
    root.mkdir(exist_ok=True)
    pattern = (b"fastproxy-http-bench-0123456789\n" * 32768)[: 1024 * 1024]  # 1 MiB
    (root / "1k").write_bytes(pattern[:SMALL_BYTES])
    rng = random.Random(1)
    text = " ".join(rng.choice(WORDS) for _ in range(TEXT_BYTES // 3))
    (root / "text").write_text(text[: TEXT_BYTES - 1] + "\n")
    with open(root / "big", "wb") as fh:
        left = big_mib * 1024 * 1024
        while left:
            left -= fh.write(pattern[: min(len(pattern), left)])
    with open(root / "big", "rb") as fh:  # into the page cache
        while fh.read(1 << 22):
            pass
    return root


def raw_exchange(port: int, request: bytes, timeout: float = 2.0) -> bytes:
    """Send ``request`` (which asks for Connection: close); everything until EOF."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return bytes(data)


@dataclass
class Backends:
    workdir: Path
    big_mib: int
    root: Path = Path()
    etag: str = ""
    procs: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def small(self) -> bytes:
        return (self.root / "1k").read_bytes()

    @property
    def text(self) -> bytes:
        return (self.root / "text").read_bytes()

    @property
    def big_bytes(self) -> int:
        return self.big_mib * 1024 * 1024

    def start(self) -> None:
        self.workdir.chmod(0o755)  # nginx workers (www-data) must reach the docroot
        self.root = make_docroot(self.workdir, self.big_mib)
        self._start("http-backend", HTTP_PORT, LOAD_CPU)
        bulk = ManagedProcess(
            "bulk-backend",
            pinned(LOAD_CPU, configs.bulk_backend(BULK_PORT)),
            self.workdir / "bulk-backend.log",
        )
        start_server(bulk, BULK_PORT)
        self.procs["bulk-backend"] = bulk
        head = raw_exchange(HTTP_PORT, b"HEAD /1k HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        match = re.search(rb"\r\netag: *(\S+)", head, re.IGNORECASE)
        if not match or self.requests() is None:
            raise RuntimeError(f"backend nginx answers oddly: {head[:300]!r}")
        self.etag = match.group(1).decode()

    def _start(self, name: str, port: int, cpu: int) -> ManagedProcess:
        argv = configs.backend_nginx(self.workdir, name, port, self.root)
        proc = ManagedProcess(name, pinned(cpu, argv), self.workdir / f"{name}.log")
        start_server(proc, port)
        self.procs[name] = proc
        return proc

    def start_cpu1_copy(self) -> ManagedProcess:
        """The direct-cpu1 reference: the same backend on the proxy CPU, port 18002."""
        return self._start("http-backend-cpu1", CPU1_PORT, 1)

    def stop_cpu1_copy(self) -> None:
        proc = self.procs.pop("http-backend-cpu1", None)
        if proc:
            proc.stop()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.pid]

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()

    def requests(self) -> int | None:
        """nginx's own request counter (stub_status), this request included."""
        request = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode()
        try:
            data = raw_exchange(HTTP_PORT, request)
        except OSError:
            return None
        # "Active connections: 1 \nserver accepts handled requests\n 5 5 7 \n..."
        match = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", data)
        return int(match.group(3)) if data.startswith(b"HTTP/1.1 200") and match else None

    def post_check_bodies(self) -> list[str]:
        """Lines of the /post-check log: '<X-Fpbench-Check> <request body>'."""
        try:
            return (self.workdir / "http-backend.post-check.log").read_text().splitlines()
        except OSError:
            return []
