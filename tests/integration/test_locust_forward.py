"""Locust end to end: bench/locustfile_forward.py through a real fastproxy forward proxy.

bench/locust_backend.py (subprocess) <- fastproxy (subprocess, mode = "forward",
allow_destinations = 127.0.0.0/8) <- ``python -m locust --headless``
(subprocess) whose users send absolute-form requests to the proxy
(``FASTPROXY_PROXY``) for ``--host`` = the backend. Passes when Locust exits 0,
its CSV stats show requests and no failure (every response is checked by the
locustfile: status, body bytes, echo length and sha256), and fastproxy's own
``forward_requests`` counter (admin ``/stats``) moved, so the traffic really
went through the proxy and not straight to the backend.

Skipped when Locust is not installed (the ``bench`` extra); how Locust and the
processes are run and stopped: ``locust_helpers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOST, free_port
from tests.integration import locust_helpers as lh

pytestmark = pytest.mark.slow


def _fastproxy_config(tmp_path: Path, port: int, admin_port: int) -> Path:
    return lh.write_config(tmp_path, "fastproxy-forward.toml", admin_port, f"""\
        [[listener]]
        name = "fwd"
        listen = "{HOST}:{port}"
        mode = "forward"

        [forward]
        allow_clients = ["127.0.0.0/8"]
        allow_destinations = ["127.0.0.0/8"]   # loopback is denied by default
        connect_ports = [443]
        """)


def _counters(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/stats", timeout=5) as resp:
        return dict(json.loads(resp.read())["totals"]["counters"])


@pytest.mark.skipif(not lh.locust_available(),
                    reason="locust not installed (pip install locust)")
def test_locustfile_forward_through_fastproxy(tmp_path: Path) -> None:
    backend_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    backend_url = f"http://{HOST}:{backend_port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        lh.start_backend(tmp_path, backend_port, procs)

        config = _fastproxy_config(tmp_path, proxy_port, admin_port)
        proxy, proxy_log = lh.start_fastproxy(tmp_path, config, procs)
        lh.wait_serving(proxy, proxy_port, "fastproxy forward", proxy_log,
                        target=f"{backend_url}/1k")
        before = int(_counters(admin_port)["forward_requests"])

        env = {**os.environ, "FASTPROXY_PROXY": f"http://{HOST}:{proxy_port}"}
        prefix, output = lh.run_locust(tmp_path, "locustfile_forward.py", backend_url, procs,
                                       env=env)
        requests = lh.check_stats(prefix, output)
        assert "ForwardProxyUser" in output, output[-3000:]
        assert "ReverseProxyUser" not in output, "the reverse user ran too"

        assert proxy.poll() is None, "fastproxy exited during the locust run"
        counters = _counters(admin_port)
        forwarded = int(counters["forward_requests"]) - before
        assert forwarded > 0, f"fastproxy forwarded nothing: {counters}"
        # every request Locust completed went through the proxy (a few more may have
        # been cut off by the stop, none may have bypassed it)
        assert forwarded >= requests, (forwarded, requests)
        assert int(counters.get("denied", 0)) == 0, counters
    finally:
        for proc in reversed(procs):
            lh.stop(proc)
