"""Configuration: the TOML schema of SPEC.md "Configuration" as frozen data, and its validation.

Rules
1. The schema is declared once: one frozen, slotted dataclass per TOML table, one field per
   key, whose metadata holds its ``doc`` and its ``check``. Nothing registers itself at import;
   ``tools/gen_config_reference.py`` renders the docs from the same metadata.
2. Loading never stops at the first problem. Each problem is one line
   ``config error: <dotted.key>: <message>`` and any problem raises ConfigError with all of
   them. Arrays are named by index (``listener[0].route[1].upstream``), tables by name.
3. Types are TOML's, strictly: a boolean is not an integer; an integer is accepted (and
   converted) where a float is expected. Unknown keys are errors.
4. Nothing here opens a socket or resolves a name: addresses are parsed, never looked up.
   Layer L0: stdlib only, never ``socket``, ``selectors`` or ``signal``.

Theory of operation
``_build(cls, table, key)`` walks ``dataclasses.fields(cls)``: unknown keys are reported,
absent ones take the default or are reported missing, present ones go through the field's
checker, which converts ("auto" -> CPU count, "host:port" -> Address, array -> tuple) or
raises ``_Invalid``. A failed value becomes the ``_BAD`` placeholder, so the object is still
built and ``_cross_check`` (unique names, references, mode rules) still runs over the rest;
such a partial Config never escapes, since any problem raises. ``apply_overrides`` (the
``fastproxy run`` flags) edits a valid Config with ``dataclasses.replace`` and runs the same
checkers and cross-checks, naming the flag instead of the key.

Size: about 650 lines, over the 500 of STYLE.md, because the schema (13 tables, 50 keys) and
its checkers belong in one declaration (principle 7); splitting would separate them.
"""

# _f() returns dataclasses.field(...), which RUF009 cannot see through.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import pwd
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from fastproxy.errors import ConfigError, format_problem

MODES = ("tcp", "http", "forward")
BALANCES = ("round_robin", "least_conn", "random_two", "ip_hash", "weighted")
DESTINATION_CLASSES = ("private", "loopback", "link-local", "multicast", "reserved",
                       "unspecified")   # ipaddress.IPv4Address.is_<class> properties
DEFAULT_SOURCE = "<embedded default>"
_DEFAULT_TOML = 'listener = [{ name = "forward", listen = "127.0.0.1:8080", mode = "forward" }]'

T = TypeVar("T")
Check = Callable[[Any, str, list[str]], Any]   # (value, dotted key, problems) -> converted


class _Invalid(Exception):
    """A checker's one-line complaint about the value at the key being checked."""


_BAD: Any = object()   # stands in for a value that failed its check; never escapes


# --- checkers: (value, dotted key, problems) -> converted value, or raise _Invalid ------------

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}   # TOML's names for what tomllib returns; else a date/time


def _tname(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), "date/time")


def _run(check: Check, value: Any, key: str, problems: list[str]) -> Any:
    try:
        return check(value, key, problems)
    except _Invalid as exc:
        problems.append(format_problem(key, str(exc)))
        return _BAD


def _num(lo: int, hi: int | None = None, *, real: bool = False, above: bool = False) -> Check:
    """An integer (never a bool) in lo..hi; ``real`` also takes a float and returns a float;
    ``above`` excludes lo itself."""
    def check(value: Any, key: str, problems: list[str]) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float) if real else int):
            raise _Invalid(f"expected {'a number' if real else 'an integer'}, got "
                           f"{_tname(value)}")
        try:
            finite = math.isfinite(value)   # a huge TOML integer cannot become a float
        except OverflowError:
            finite = False
        if not finite:
            raise _Invalid(f"must be a finite number, got {value}")
        if above and value <= lo:
            raise _Invalid(f"must be > {lo}, got {value}")
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"must be between {lo} and {hi}, got {value}" if hi is not None
                           else f"must be >= {lo}, got {value}")
        return float(value) if real else value
    return check


def _port_range(value: Any, key: str, problems: list[str]) -> tuple[int, int]:
    """A port (integer) or an inclusive range "LOW-HIGH" of ports, as (low, high)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise _Invalid(f"must be between 1 and 65535, got {value}")
        return value, value
    if isinstance(value, str):
        low, dash, high = value.partition("-")
        if dash and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535:
            return int(low), int(high)
        raise _Invalid(f'expected a port range "LOW-HIGH" within 1-65535, got {value!r}')
    raise _Invalid(f'expected a port or a "LOW-HIGH" range, got {_tname(value)}')


def _bool(value: Any, key: str, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_tname(value)}")
    return value


def _str(valid: Callable[[str], Any] | None = None) -> Check:
    """A string, then ``valid`` (which converts it or raises _Invalid)."""
    def check(value: Any, key: str, problems: list[str]) -> Any:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_tname(value)}")
        return value if valid is None else valid(value)
    return check


def _conv(convert: Callable[[str], Any], message: str) -> Callable[[str], Any]:
    """A string validator: ``convert``'s result, or _Invalid(message) if it returns None or
    raises ValueError. ``{!r}`` in ``message`` shows the text."""
    def valid(text: str) -> Any:
        try:
            result = convert(text)
        except ValueError:
            result = None
        if result is None:
            raise _Invalid(message.format(text))
        return result
    return valid


def _one_of(*choices: str) -> Callable[[str], Any]:
    return _conv(lambda s: s if s in choices else None, "expected one of " + ", ".join(choices))


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"   # RFC 1123 §2.1, plus "_" (container names)
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NAME = re.compile(r"[A-Za-z0-9_-]+")   # listener and upstream names; they become stats labels
_PBKDF2 = re.compile(r"pbkdf2_sha256\$[1-9][0-9]*\$[^$]+\$[^$]+")   # made by `fastproxy passwd`


def _hostname(text: str) -> str | None:
    """``text`` lowercased if it is a hostname (top label not all digits, RFC 3696 §2)."""
    name = text.lower()
    ok = len(name) <= 253 and _HOSTNAME.fullmatch(name) and not name.rpartition(".")[2].isdigit()
    return name if ok else None


def _pattern(text: str) -> str | None:
    """An exact hostname or a "*.example.com" wildcard, lowercased."""
    name = _hostname(text.removeprefix("*."))
    return None if name is None else text[:2] + name if text.startswith("*.") else name


def _cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


_PSEUDONYM = re.compile(r"[A-Za-z0-9._-]*")
_nonempty = _conv(lambda s: s or None, "must not be empty")
_name = _conv(lambda s: s if _NAME.fullmatch(s) else None,
              "a name may use only letters, digits, '_' and '-', got {!r}")
_path = _conv(lambda s: s if s.startswith("/") else None, 'must start with "/", got {!r}')
_host_pattern = _conv(_pattern, 'expected a hostname or "*.example.com", got {!r}')
_ip = _conv(lambda s: str(ipaddress.ip_address(s)), "expected an IP address, got {!r}")
_cidr_check = _conv(_cidr, "invalid CIDR {!r}")
_deny_destination = _conv(lambda s: s if s in DESTINATION_CLASSES else _cidr(s),
                          f"expected a CIDR or one of {', '.join(DESTINATION_CLASSES)}, got {{!r}}")
_allow_destination = _conv(lambda s: _pattern(s) or _cidr(s),   # an IP is never a hostname
                           'expected a CIDR, a hostname or "*.example.com", got {!r}')


def _address(text: str, *, ip_only: bool) -> Address:
    """Parse "1.2.3.4:80", "[::1]:80" or (unless ``ip_only``) "name:80"."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or ":" not in host:
            raise _Invalid(f'expected "[IPv6]:PORT", got {text!r}')
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise _Invalid(f'expected "HOST:PORT", got {text!r}')
        if ":" in host:
            raise _Invalid(f'an IPv6 address needs brackets, as in "[::1]:8080"; got {text!r}')
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise _Invalid(f"port must be an integer 1..65535, got {port!r}")
    try:
        return Address(str(ipaddress.ip_address(host)), int(port))
    except ValueError:
        name = _hostname(host)
    if name is None:
        raise _Invalid(f"invalid host {host!r} in {text!r}")
    if ip_only:
        raise _Invalid(f"expected an IP address, not a hostname, got {text!r} "
                       '(e.g. "0.0.0.0:8080" or "[::]:8080")')
    return Address(name, int(port))


def _system_user(name: str) -> str:
    """An existing account name, or "" for none."""
    if name:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise _Invalid(f"no such user {name!r}") from None
    return name


def _proxy_url(text: str) -> str:
    """ "http://[user:pass@]host:port", optionally with a trailing "/"."""
    userinfo, at, host_port = text[7:].removesuffix("/").rpartition("@")
    try:
        if not text.lower().startswith("http://") or (at and ":" not in userinfo):
            raise _Invalid("")
        _address(host_port, ip_only=False)
    except _Invalid as exc:
        raise _Invalid(f'expected "http://[user:pass@]host:port", got {text!r}'
                       + (f" ({exc})" if str(exc) else "")) from None
    return text


def _users(value: Any, key: str, problems: list[str]) -> Mapping[str, str]:
    """name -> hash; a Basic-auth user-id has no ':' (RFC 7617 §2)."""
    if not isinstance(value, dict):
        raise _Invalid(f"expected a table of name = hash, got {_tname(value)}")
    for name, digest in value.items():
        if not name or ":" in name:
            problems.append(format_problem(f"{key}.{name}", "a user name must be non-empty and "
                                           "contain no ':'"))
        if not isinstance(digest, str) or not _PBKDF2.fullmatch(digest):
            problems.append(format_problem(f"{key}.{name}", 'expected "pbkdf2_sha256$<iterations>'
                                           '$<salt>$<hash>" (made by `fastproxy passwd NAME`)'))
    return MappingProxyType(dict(value))


def _workers(value: Any, key: str, problems: list[str]) -> int:
    if value == "auto":
        return _auto_workers()
    if isinstance(value, str):
        raise _Invalid(f'expected "auto" or an integer, got {value!r}')
    return _num(1, 1024)(value, key, problems)  # type: ignore[no-any-return]


def _auto_workers() -> int:
    """One worker per CPU this process may run on (sched_getaffinity(2)), at most 1024."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, min(count, 1024))


def _list(item: Check, *, nonempty: bool = False) -> Check:
    def check(value: Any, key: str, problems: list[str]) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array, got {_tname(value)}")
        if nonempty and not value:
            raise _Invalid("must not be empty")
        return tuple(_run(item, v, f"{key}[{i}]", problems) for i, v in enumerate(value))
    return check


def _table(cls: type[Any], extra: dict[str, Any] | None = None) -> Check:
    """A table built as ``cls``; ``extra`` gives values not read from it, or its defaults."""
    return lambda value, key, problems: _build(cls, value, key, problems, extra)


def _listener(value: Any, key: str, problems: list[str]) -> Listener:
    """One [[listener]]; ``name`` defaults to "listener<index>", the index taken from ``key``."""
    index = key[key.rindex("[") + 1:-1]
    return _build(Listener, value, key, problems, {"name": f"listener{index}"})


def _server(value: Any, key: str, problems: list[str]) -> ServerEntry:
    if isinstance(value, str):
        return ServerEntry(_address(value, ip_only=False))
    if isinstance(value, dict):
        return _build(ServerEntry, value, key, problems)
    raise _Invalid('expected "host:port" or { address = "host:port", weight = N }, '
                   f"got {_tname(value)}")


def _upstreams(value: Any, key: str, problems: list[str]) -> Mapping[str, Upstream]:
    """[upstream.NAME] tables; the table name becomes Upstream.name."""
    if not isinstance(value, dict):
        raise _Invalid(f"expected [upstream.NAME] tables, got {_tname(value)}")
    out = {}
    for name, table in value.items():
        _run(_str(_name), name, f"{key}.{name}", problems)
        out[name] = _run(_table(Upstream, {"name": name}), table, f"{key}.{name}", problems)
    return MappingProxyType(out)


def _f(check: Check, doc: str, default: Any = MISSING, *, factory: Any = MISSING,
       toml: str | None = None) -> Any:
    """A schema field: its checker, its doc and, when it differs from the name, its TOML key."""
    meta = {"check": check, "doc": doc} | ({"toml": toml} if toml else {})
    return field(default=default, default_factory=factory, metadata=meta)


def _build(cls: type[T], table: Any, key: str, problems: list[str],
           extra: dict[str, Any] | None = None) -> T:
    """``cls`` from a TOML table (``extra``: values not read from it, or defaults for it).
    Problems are appended; values that failed become _BAD."""
    if not isinstance(table, dict):
        raise _Invalid(f"expected a table, got {_tname(table)}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    spec = {k: f for f in fields if (k := f.metadata.get("toml", f.name))}

    def join(name: str) -> str:
        return f"{key}.{name}" if key else name

    for name in (name for name in table if name not in spec):
        hint = difflib.get_close_matches(name, list(spec), n=1)
        problems.append(format_problem(join(name), "unknown key" + (
            f" (did you mean {hint[0]!r}?)" if hint else "")))
    kwargs = dict(extra or {})
    for name, f in spec.items():
        if name in table:
            kwargs[f.name] = _run(f.metadata["check"], table[name], join(name), problems)
        elif f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            problems.append(format_problem(join(name), "required key is missing"))
            kwargs[f.name] = _BAD
    return cls(**kwargs)


# --- the schema: one dataclass per TOML table, one field per key -----------------------------

@dataclass(frozen=True, slots=True)
class Address:
    """``host:port``. ``host`` is an IP literal (IPv6 without brackets, normalised) or a
    lowercased hostname; ``port`` is 1..65535. ``str()`` gives "1.2.3.4:80" or "[::1]:80"."""
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


def parse_address(text: str, key: str, *, require_ip: bool = False) -> Address:
    """Parse "127.0.0.1:8080", "[::1]:8080" or, unless ``require_ip``, "localhost:9000".
    Raises ConfigError, one line naming ``key``."""
    try:
        if not isinstance(text, str):
            raise _Invalid(f"expected a string, got {_tname(text)}")
        return _address(text, ip_only=require_ip)
    except _Invalid as exc:
        raise ConfigError.one(key, str(exc)) from None


_IP_PORT = _str(lambda s: _address(s, ip_only=True))
_HOST_PORT = _str(lambda s: _address(s, ip_only=False))
_SECONDS = _num(0, real=True, above=True)


@dataclass(frozen=True, slots=True)
class ServerSection:
    """[server]: the master process and its workers."""
    workers: int = _f(_workers, '"auto" (resolved at load: one per usable CPU) or 1..1024',
                      factory=_auto_workers)
    pidfile: str = _f(_str(_nonempty), "master pid file (reload/stop/stats find it)",
                      "fastproxy.pid")
    graceful_timeout: float = _f(_num(0, real=True), "seconds old workers may drain", 30.0)
    max_connections: int = _f(_num(1), "per worker; beyond it, accept pauses", 10000)
    user: str = _f(_str(_system_user),
                   "workers run as this user (the master binds and stays); empty = no change", "")
    rlimit_nofile: int = _f(_num(0), "workers' descriptor limit; 0 = raise the soft limit as "
                            "far as max_connections needs (up to the hard limit)", 0)
    name: str = _f(_str(_conv(lambda s: s if _PSEUDONYM.fullmatch(s) else None,
                              "letters, digits, '.', '_' and '-' only, got {!r}")),
                   'pseudonym in the Via the proxy adds and in loop detection; "" = host name',
                   "")


@dataclass(frozen=True, slots=True)
class LogSection:
    """[log]: the access log; the error log always goes to stderr."""
    access: str = _f(_str(_nonempty), 'access log: a path, "-" = stdout, "off"', "-")
    format: str = _f(_str(_one_of("combined", "json")), "access log line format", "combined")
    level: str = _f(_str(_one_of("debug", "info", "warning", "error")), "error log level",
                    "info")


@dataclass(frozen=True, slots=True)
class AdminSection:
    """[admin]: GET /metrics (Prometheus text), /stats (JSON), /healthz."""
    listen: Address | None = _f(_str(lambda s: None if s in ("", "off") else _address(
        s, ip_only=False)), 'host:port; "off" or "" = none', Address("127.0.0.1", 9901))
    allow: tuple[str, ...] = _f(_list(_str(_cidr_check)), "peers that may use it (others: "
                                "connection closed)", ("127.0.0.0/8", "::1/128"))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """listener.timeouts: seconds, each > 0."""
    client_header: float = _f(_SECONDS, "to receive a whole request head", 10.0)
    idle: float = _f(_SECONDS, "a connection may stay silent", 60.0)
    connect: float = _f(_SECONDS, "to connect to an upstream server", 5.0)
    upstream_read: float = _f(_SECONDS, "to wait for upstream bytes", 60.0)


@dataclass(frozen=True, slots=True)
class Limits:
    """listener.limits (SPEC "HTTP parsing policy")."""
    max_header_bytes: int = _f(_num(1024), "largest request head, else 431", 65536)
    max_body_bytes: int = _f(_num(0), "largest request body, else 413; 0 = unlimited", 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """[[listener.route]] (http mode): first match wins, else the listener's upstream.
    At least one of host and path_prefix is set."""
    host: str | None = _f(_str(_host_pattern), 'exact or "*.example.com", lowercased', None)
    path_prefix: str | None = _f(_str(_path), 'starts with "/"', None)
    upstream: str = _f(_str(), "upstream for matching requests")


@dataclass(frozen=True, slots=True)
class Listener:
    """[[listener]]: one listening address and how its connections are handled."""
    name: str = _f(_str(_name), 'unique; default "listener<index>"')
    listen: Address = _f(_IP_PORT, 'IP:PORT to bind, "[::]:PORT" for IPv6')
    mode: str = _f(_str(_one_of(*MODES)), "tcp (L4), http (reverse proxy) or forward")
    upstream: str | None = _f(_str(), "default upstream: tcp and http modes only", None)
    proxy_protocol: bool = _f(_bool, "expect a PROXY protocol v1/v2 header first", False)
    proxy_protocol_from: tuple[str, ...] = _f(
        _list(_str(_cidr_check)), "CIDRs allowed to send a PROXY header (required with "
        "proxy_protocol); connections from elsewhere are closed", ())
    timeouts: Timeouts = _f(_table(Timeouts), "inline table", factory=Timeouts)
    limits: Limits = _f(_table(Limits), "inline table", factory=Limits)
    routes: tuple[Route, ...] = _f(_list(_table(Route)), "[[listener.route]], http mode", (),
                                   toml="route")


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """One backend: "host:port" or { address = "host:port", weight = N }."""
    address: Address = _f(_HOST_PORT, "host:port; hostnames allowed")
    weight: int = _f(_num(1, 1000), "relative share (weighted balancing)", 1)


@dataclass(frozen=True, slots=True)
class Health:
    """upstream.NAME.health: active checks, run by the master."""
    interval: float = _f(_SECONDS, "seconds between checks", 2.0)
    timeout: float = _f(_SECONDS, "seconds one check may take", 1.0)
    rise: int = _f(_num(1), "consecutive successes before a server is up", 2)
    fall: int = _f(_num(1), "consecutive failures before it is down", 3)
    path: str | None = _f(_str(_path), "HTTP GET path; absent = TCP connect check", None)


@dataclass(frozen=True, slots=True)
class Upstream:
    """[upstream.NAME]: a pool of backend servers."""
    name: str = field(metadata={"doc": "the NAME of [upstream.NAME]", "toml": None})
    servers: tuple[ServerEntry, ...] = _f(_list(_server, nonempty=True), "backends, non-empty")
    balance: str = _f(_str(_one_of(*BALANCES)), " | ".join(BALANCES), "round_robin")
    keepalive: int = _f(_num(0), "idle upstream connections kept per worker (http)", 32)
    retries: int = _f(_num(0), "other servers tried after a connect failure", 1)
    health: Health | None = _f(_table(Health), "active health checks; absent = none", None)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Forward:
    """[forward]: policy for listeners with mode = "forward"."""
    allow_clients: tuple[str, ...] = _f(_list(_str(_cidr_check)), "client CIDRs let in",
                                        ("127.0.0.0/8", "::1/128"))
    connect_ports: tuple[int, ...] = _f(_list(_num(1, 65535)), "ports CONNECT may reach", (443,))
    deny_destinations: tuple[str, ...] = _f(
        _list(_str(_deny_destination)), "SSRF guard on the resolved IP: CIDRs or "
        + ", ".join(DESTINATION_CLASSES),
        ("private", "loopback", "link-local", "reserved", "multicast"))
    allow_destinations: tuple[str, ...] = _f(_list(_str(_allow_destination)), 'CIDRs, '
                                             '"example.com", "*.example.com"; beats deny', ())
    http_ports: tuple[tuple[int, int], ...] = _f(
        _list(_port_range), 'plain-HTTP destination ports: integers and "LOW-HIGH" ranges '
        "(Squid's Safe_ports)", ((80, 80), (21, 21), (443, 443), (70, 70), (210, 210),
                                 (280, 280), (488, 488), (591, 591), (777, 777), (1025, 65535)))
    dns_cache_ttl: float = _f(_num(0, real=True), "seconds a resolution is cached", 30.0)
    source_addresses: tuple[str, ...] = _f(_list(_str(_ip)), "egress IPs to rotate", ())
    users: Mapping[str, str] = _f(_users, 'name -> "pbkdf2_sha256$<iterations>$<salt>$<hash>";'
                                  " non-empty = Basic auth required", factory=lambda: _EMPTY)
    anonymity: str = _f(_str(_one_of("elite", "anonymous", "transparent")),
                        "identifying headers stripped or added", "elite")
    upstream_proxies: tuple[str, ...] = _f(_list(_str(_proxy_url)),
                                           '"http://[user:pass@]host:port" parents', ())
    rotation: str = _f(_str(_one_of("round_robin", "random", "sticky")),
                       "parent proxy choice; sticky = per client IP", "round_robin")


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid configuration. Build it with load(), loads() or default().
    ``upstreams`` is a read-only mapping name -> Upstream; ``upstream(name)`` looks one up."""
    server: ServerSection = _f(_table(ServerSection), "[server]", factory=ServerSection)
    log: LogSection = _f(_table(LogSection), "[log]", factory=LogSection)
    admin: AdminSection = _f(_table(AdminSection), "[admin]", factory=AdminSection)
    listeners: tuple[Listener, ...] = _f(_list(_listener), "[[listener]], at least one", (),
                                         toml="listener")
    upstreams: Mapping[str, Upstream] = _f(_upstreams, "[upstream.NAME] tables",
                                           factory=lambda: _EMPTY, toml="upstream")
    forward: Forward = _f(_table(Forward), "[forward]", factory=Forward)
    source: str = field(default="<string>", metadata={"doc": 'file path or "<embedded '
                        'default>"', "toml": None})   # not a TOML key

    def upstream(self, name: str) -> Upstream:
        """The upstream called ``name``. Raises KeyError."""
        return self.upstreams[name]


# --- cross-checks ------------------------------------------------------------------------------

def _cross_check(cfg: Config) -> list[str]:
    """Rules that span keys: names and addresses unique, references exist, mode rules."""
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(format_problem(key, message))

    if cfg.listeners == ():
        bad("listener", "at least one [[listener]] is required")
    known = None if cfg.upstreams is _BAD else set(cfg.upstreams)
    seen: dict[tuple[str, Any], str] = {}
    for i, lst in enumerate(() if cfg.listeners is _BAD else cfg.listeners):
        if lst is _BAD:
            continue
        key = f"listener[{i}]"
        for attr in ("name", "listen"):
            value = getattr(lst, attr)
            if value is not _BAD and (attr, value) in seen:
                bad(f"{key}.{attr}", f"duplicate {attr} {str(value)!r} (also "
                    f"{seen[attr, value]})")
            seen.setdefault((attr, value), f"{key}.{attr}")
        _check_listener(lst, key, known, bad)
    admin = None if cfg.admin is _BAD else cfg.admin.listen
    if ("listen", admin) in seen:
        bad("admin.listen", f"same address as {seen['listen', admin]}")
    for name, up in ({} if cfg.upstreams is _BAD else cfg.upstreams).items():
        servers = () if up is _BAD or up.servers is _BAD else up.servers
        first: dict[str, int] = {}
        for j, entry in enumerate(servers):
            if entry is _BAD or entry.address is _BAD:
                continue
            address = str(entry.address)
            if address in first:
                bad(f"upstream.{name}.servers[{j}]",
                    f"duplicate server {address!r} (also servers[{first[address]}]; "
                    "use weight to give it a bigger share)")
            first.setdefault(address, j)
    return problems


def _check_listener(lst: Listener, key: str, known: set[str] | None,
                    bad: Callable[[str, str], None]) -> None:
    routes = () if lst.routes is _BAD else lst.routes
    if lst.mode == "forward" and lst.upstream not in (None, _BAD):
        bad(f"{key}.upstream", "not allowed in forward mode (see [forward])")
    if lst.mode in ("tcp", "http"):
        if lst.upstream is None:
            bad(f"{key}.upstream", f"required in {lst.mode} mode")
        _check_reference(lst.upstream, f"{key}.upstream", known, bad)
    if lst.proxy_protocol is True and lst.proxy_protocol_from == ():
        bad(f"{key}.proxy_protocol_from", "required with proxy_protocol = true: the CIDRs "
            "of the load balancers in front (anyone else could claim any client address)")
    if routes and lst.mode in ("tcp", "forward"):
        bad(f"{key}.route", f"routes are only allowed in http mode, not {lst.mode}")
    for j, route in enumerate(routes):
        if route is not _BAD:
            if route.host is None and route.path_prefix is None:
                bad(f"{key}.route[{j}]", "needs host, path_prefix or both")
            _check_reference(route.upstream, f"{key}.route[{j}].upstream", known, bad)


def _check_reference(name: Any, key: str, known: set[str] | None,
                     bad: Callable[[str, str], None]) -> None:
    if known is not None and isinstance(name, str) and name not in known:
        bad(key, f"unknown upstream {name!r} (defined: {', '.join(sorted(known)) or 'none'})")


# --- public API --------------------------------------------------------------------------------

def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML ``text``; ``source`` names it in messages and in Config.source.
    Raises ConfigError with one line per problem (a TOML syntax error is one line)."""
    try:
        data = tomllib.loads(text)
    except ValueError as exc:   # TOMLDecodeError, or an integer over int()'s digit limit
        raise ConfigError.one(source, str(exc)) from None
    problems: list[str] = []
    cfg = _build(Config, data, "", problems, {"source": source})
    problems += _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load(path: str) -> Config:
    """Read and validate the file at ``path``. Raises ConfigError; a missing or unreadable
    file is one line naming it."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError.one(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError.one(path, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return loads(text, path)


def default() -> Config:
    """The embedded default (SPEC "Command line"): a forward proxy on 127.0.0.1:8080 with the
    safe [forward] defaults, admin on 127.0.0.1:9901, workers = "auto"."""
    return loads(_DEFAULT_TOML, DEFAULT_SOURCE)


def check_field(cls: type[Any], name: str, value: Any, key: str, problems: list[str]) -> Any:
    """Run the checker of field ``cls.name`` on ``value`` (a command-line flag's, named
    ``key``): the converted value, or ``INVALID`` with the problem appended."""
    check = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["check"]
    return _run(check, value, key, problems)


INVALID: Any = _BAD
cross_check = _cross_check
