"""Locust scenario for fastproxy's forward-proxy mode (``mode = "forward"``).

Every request goes THROUGH the proxy to the backend: ``--host`` is the
backend's base URL (``bench/locust_backend.py``), the proxy comes from the
environment variable ``FASTPROXY_PROXY`` and is set as the session's proxy, so
``requests`` sends absolute-form request lines (``GET http://127.0.0.1:9000/1k
HTTP/1.1``) to the proxy over one keep-alive connection per user. See
bench/README.md::

    python bench/locust_backend.py --port 9000 &
    python -m fastproxy run -c fwd.toml &   # mode = "forward", allow_destinations = ["127.0.0.0/8"]
    FASTPROXY_PROXY=http://127.0.0.1:8080 \\
        locust -f bench/locustfile_forward.py --headless -u 20 -r 10 -t 30s \\
        --host http://127.0.0.1:9000

The tasks and their checks are those of the reverse scenario
(``bench/locustfile.py``): 10 ``GET /1k`` : 2 ``GET /1m`` (sha256 checked) : 3
``POST /echo`` with 64 KiB (echoed length and sha256 checked). A proxy that
corrupts, truncates or mixes up responses shows up as Locust failures; a 403
from the proxy (destination or port not allowed) as failures with that status.

Both the proxy and ``--host`` must be loopback (``FPBENCH_ALLOW_REMOTE=1``
lifts that, as in the reverse scenario). Environment proxies (``http_proxy``,
``no_proxy``) are ignored: ``trust_env`` is off, so a ``no_proxy=127.0.0.1``
cannot silently route the traffic around the proxy.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from locust import events

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # Locust normally adds the locustfile's directory itself
    sys.path.insert(0, _HERE)

# As a module, not `from locustfile import ReverseProxyUser`: Locust runs every
# User class it finds in this module's namespace, and the reverse user must not
# be one of them (it would send origin-form requests straight to the backend).
reverse = importlib.import_module("locustfile")

PROXY_ENV = "FASTPROXY_PROXY"


def proxy_url() -> str:
    url = os.environ.get(PROXY_ENV, "")
    if not url:
        raise SystemExit(f"locustfile_forward: set {PROXY_ENV}=http://127.0.0.1:PORT (the proxy)")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.port:
        raise SystemExit(f"locustfile_forward: {PROXY_ENV}={url!r} is not http://HOST:PORT")
    if parts.hostname not in reverse.LOOPBACK and not os.environ.get("FPBENCH_ALLOW_REMOTE"):
        raise SystemExit(f"locustfile_forward: proxy {url} is not a loopback address")
    return url


@events.init.add_listener
def _check_proxy(environment, **_kwargs):  # type: ignore[no-untyped-def]
    proxy_url()  # fail at start-up, not in every user


class ForwardProxyUser(reverse.ReverseProxyUser):
    """One user = one keep-alive connection to the proxy; absolute-form requests."""

    def on_start(self) -> None:
        url = proxy_url()
        self.client.trust_env = False  # no http_proxy/no_proxy from the environment
        self.client.proxies = {"http": url, "https": url}
