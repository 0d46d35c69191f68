"""The ``fastproxy run`` flags over a configuration (``apply_overrides``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType

from fastproxy.config import (
    INVALID,
    AdminSection,
    Config,
    Listener,
    ServerEntry,
    ServerSection,
    Upstream,
    check_field,
    cross_check,
)
from fastproxy.errors import ConfigError, format_problem


def apply_overrides(cfg: Config, *, listen: str | None = None, mode: str | None = None,
                    upstreams: Sequence[str] | None = (), workers: int | str | None = None,
                    admin: str | None = None, pidfile: str | None = None) -> Config:
    """A copy of ``cfg`` with the ``fastproxy run`` flags applied, validated again.

    ``listen``, ``mode`` and ``upstreams`` act on the config's single listener; with more
    than one listener they are an error. ``upstreams`` (repeated ``--upstream HOST:PORT``)
    defines the upstream "default" with those servers (weight 1; an existing "default" keeps
    its other settings) and points the listener at it; a forward listener takes no upstream.
    ``mode`` changes the listener's mode: forward drops its upstream and routes; tcp or http
    without an upstream is an error naming --upstream; tcp with routes is an error.
    ``listen`` replaces the listener's address; ``workers`` server.workers (1..1024 or
    "auto"); ``admin`` admin.listen ("off" disables); ``pidfile`` server.pidfile.
    Raises ConfigError, one line per problem, keyed by flag (``config error: --listen: ...``);
    the cross-checks of loads() run once every flag is valid, with dotted keys.
    """
    problems: list[str] = []
    server = replace(cfg.server, **{name: check_field(ServerSection, name, value, flag, problems)
                                    for name, value, flag in (("workers", workers, "--workers"),
                                                              ("pidfile", pidfile, "--pidfile"))
                                    if value is not None})
    admin_section = cfg.admin if admin is None else replace(
        cfg.admin, listen=check_field(AdminSection, "listen", admin, "--admin", problems))
    listeners, pools = cfg.listeners, dict(cfg.upstreams)
    flags = [flag for flag, given in (("--listen", listen), ("--mode", mode),
                                      ("--upstream", upstreams)) if given]
    if flags and len(listeners) != 1:
        problems += [format_problem(flag, f"applies only to a config with one listener; "
                                    f"{cfg.source} has {len(listeners)}") for flag in flags]
    elif flags:
        listeners = (_override_listener(listeners[0], listen, mode, upstreams, pools,
                                        problems),)
    new = replace(cfg, server=server, admin=admin_section, listeners=listeners,
                  upstreams=MappingProxyType(pools))
    problems = problems or cross_check(new)   # a flag's problem is not reported twice
    if problems:
        raise ConfigError(problems)
    return new


def _override_listener(lst: Listener, listen: str | None, mode: str | None,
                       servers: Sequence[str] | None, pools: dict[str, Upstream],
                       problems: list[str]) -> Listener:
    """Apply --listen, --mode and --upstream to ``lst``; may add pools["default"]."""
    if listen is not None:
        lst = replace(lst, listen=check_field(Listener, "listen", listen, "--listen", problems))
    if mode is not None:
        new_mode = check_field(Listener, "mode", mode, "--mode", problems)
        if new_mode == "forward":
            lst = replace(lst, mode=new_mode, upstream=None, routes=())
        elif new_mode is not INVALID:
            if new_mode == "tcp" and lst.routes:
                problems.append(format_problem("--mode", f"listener {lst.name!r} has "
                                               "[[listener.route]] tables, which need mode http"))
            lst = replace(lst, mode=new_mode)
    if servers:
        entries = tuple(ServerEntry(check_field(ServerEntry, "address", s, "--upstream",
                                                 problems)) for s in servers)
        base = pools.get("default")
        pools["default"] = (replace(base, servers=entries) if base is not None
                            else Upstream("default", entries))
        if lst.mode == "forward":
            problems.append(format_problem("--upstream", "not used by a forward listener; "
                                           "add --mode tcp or --mode http"))
        else:
            lst = replace(lst, upstream="default")
    if lst.mode in ("tcp", "http") and lst.upstream is None:
        problems.append(format_problem("--upstream", f"mode {lst.mode} needs an upstream: "
                                       "add --upstream HOST:PORT"))
    return lst
