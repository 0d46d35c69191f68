"""Locust end to end: bench/locustfile.py through a real fastproxy master in http mode.

bench/locust_backend.py (subprocess) <- fastproxy (subprocess, mode = "http")
<- ``python -m locust --headless`` (subprocess). Passes when Locust exits 0
and its CSV stats show requests and no failure (every response is checked by
the locustfile: status, body bytes, echo length and sha256).

Skipped when Locust is not installed (the ``bench`` extra); how Locust and the
processes are run and stopped: ``locust_helpers``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import HOST, free_port
from tests.integration import locust_helpers as lh

pytestmark = pytest.mark.slow


def _fastproxy_config(tmp_path: Path, port: int, admin_port: int, backend_port: int) -> Path:
    return lh.write_config(tmp_path, "fastproxy.toml", admin_port, f"""\
        [[listener]]
        name = "web"
        listen = "{HOST}:{port}"
        mode = "http"
        upstream = "b"

        [upstream.b]
        servers = ["{HOST}:{backend_port}"]
        keepalive = 16
        """)


@pytest.mark.skipif(not lh.locust_available(),
                    reason="locust not installed (pip install locust)")
def test_locustfile_through_fastproxy_http_mode(tmp_path: Path) -> None:
    backend_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        lh.start_backend(tmp_path, backend_port, procs)

        config = _fastproxy_config(tmp_path, proxy_port, admin_port, backend_port)
        proxy, proxy_log = lh.start_fastproxy(tmp_path, config, procs)
        lh.wait_serving(proxy, proxy_port, "fastproxy", proxy_log)

        prefix, output = lh.run_locust(tmp_path, "locustfile.py", f"http://{HOST}:{proxy_port}",
                                       procs)
        lh.check_stats(prefix, output)
        assert proxy.poll() is None, "fastproxy exited during the locust run"
    finally:
        for proc in reversed(procs):
            lh.stop(proc)
