"""Upstreams derived from the configuration rather than written in it: the
forward proxy's parent proxies (``forward.upstream_proxies``) as one upstream,
so that balancing, passive health, active health checks and stats treat
parents exactly like servers.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote

from fastproxy.config import Address, Config, Forward, Health, ServerEntry, Upstream, parse_address

PARENTS = "forward.parents"
"""Name of the upstream made of ``forward.upstream_proxies`` (a dot: no user
upstream can take it)."""
_ROTATION_BALANCE = {"round_robin": "round_robin", "random": "random", "sticky": "ip_hash"}


@dataclass(frozen=True, slots=True)
class ParentProxy:
    """One ``forward.upstream_proxies`` entry."""

    address: Address
    authorization: bytes | None  # the Proxy-Authorization value for it, or None


def parent_proxies(forward: Forward) -> tuple[ParentProxy, ...]:
    """The parsed ``upstream_proxies`` (already validated at load)."""
    parents = []
    for url in forward.upstream_proxies:
        userinfo, at, host_port = url[7:].removesuffix("/").rpartition("@")
        auth = None
        if at:
            user, _, password = userinfo.partition(":")
            token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode())
            auth = b"Basic " + token
        parents.append(ParentProxy(parse_address(host_port, "forward.upstream_proxies"), auth))
    return tuple(parents)


def parent_upstream(forward: Forward) -> Upstream | None:
    """The parent proxies as an upstream: balanced by ``rotation``, every
    parent tried before giving up, and TCP health checks run by the master
    so that a dead parent shows as down in stats and is skipped."""
    parents = parent_proxies(forward)
    if not parents:
        return None
    return Upstream(name=PARENTS,
                    servers=tuple(ServerEntry(p.address) for p in parents),
                    balance=_ROTATION_BALANCE[forward.rotation], keepalive=8,
                    retries=len(parents) - 1,
                    health=Health(interval=2.0, timeout=1.0, rise=1, fall=2))


def all_upstreams(config: Config) -> dict[str, Upstream]:
    """The configured upstreams plus the parent proxies' one, if any."""
    upstreams = dict(config.upstreams)
    parents = parent_upstream(config.forward)
    if parents is not None:
        upstreams[PARENTS] = parents
    return upstreams
