"""fastproxy.config: the SPEC example, defaults, every kind of validation problem, overrides."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

from fastproxy import config
from fastproxy.config import Address, Config, default, load, loads, parse_address
from fastproxy.errors import ConfigError
from fastproxy.overrides import apply_overrides

# SPEC.md "Configuration", verbatim, plus the [upstream.api] its route refers to.
SPEC_EXAMPLE = '''
[server]
workers = "auto"            # or an integer
pidfile = "fastproxy.pid"
graceful_timeout = 30.0     # seconds old workers may drain on reload/quit
max_connections = 10000     # per worker; beyond it, accept pauses
user = ""                   # drop privileges after binding (optional)

[log]
access = "-"                # path, "-" = stdout, "off"
format = "combined"         # or "json"
level = "info"              # error log goes to stderr

[admin]
listen = "127.0.0.1:9901"   # GET /metrics (Prometheus text), /stats (JSON), /healthz

[[listener]]
name = "web"
listen = "0.0.0.0:8080"     # IPv4, "[::]:8080" for IPv6
mode = "http"               # "tcp" (L4), "http" (reverse proxy), "forward"
upstream = "app"            # default upstream (tcp and http modes)
proxy_protocol = false      # accept PROXY protocol v1/v2 from a load balancer in front
timeouts = { client_header = 10.0, idle = 60.0, connect = 5.0, upstream_read = 60.0 }
limits = { max_header_bytes = 65536, max_body_bytes = 0 }   # 0 = unlimited

  [[listener.route]]        # http mode: first match wins, else the default upstream
  host = "api.example.com"  # optional, exact or "*.example.com"
  path_prefix = "/v1/"      # optional
  upstream = "api"

[upstream.app]
servers = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 3 }]
balance = "round_robin"     # round_robin | least_conn | random_two | ip_hash | weighted
keepalive = 32              # idle upstream connections kept per worker (http mode)
retries = 1                 # try another server on connect failure
health = { interval = 2.0, timeout = 1.0, rise = 2, fall = 3, path = "/healthz" }  # path absent = TCP connect check

[forward]                   # applies to listeners with mode = "forward"
allow_clients = ["127.0.0.0/8", "::1/128"]
connect_ports = [443]                       # CONNECT allowed only to these ports
deny_destinations = ["private", "loopback", "link-local", "reserved", "multicast"]  # SSRF guard on the resolved IP; CIDRs too
http_ports = [80, 21, 443, 70, 210, 280, 488, 591, 777, "1025-65535"]   # plain-HTTP destinations (Squid's Safe_ports)
allow_destinations = []     # optional allow-list: CIDRs, "example.com", "*.example.com"; overrides the deny list when it matches
dns_cache_ttl = 30.0        # resolution never blocks a worker's event loop
source_addresses = []       # rotate the egress (source) IP of outgoing connections, e.g. ["192.0.2.10", "192.0.2.11"]
users = {}                  # { name = "pbkdf2_sha256$<iterations>$<salt>$<hash>" } (made by `fastproxy passwd NAME`);
                            # non-empty -> Proxy-Authorization: Basic required (407 otherwise)
anonymity = "elite"         # elite: strip Via, X-Forwarded-For, Forwarded, X-Real-IP, Proxy-* and add nothing;
                            # anonymous: strip those, add Via only; transparent: add Via and X-Forwarded-For
upstream_proxies = []       # ["http://user:pass@192.0.2.1:3128", ...] -> chain through parent proxies
rotation = "round_robin"    # round_robin | random | sticky (per client IP)

[upstream.api]
servers = ["api.internal:9100"]
'''

MINIMAL = '''
[[listener]]
listen = "127.0.0.1:8000"
mode = "tcp"
upstream = "app"

[upstream.app]
servers = ["127.0.0.1:9000"]
'''

AUTO_WORKERS = max(1, min(len(os.sched_getaffinity(0)), 1024))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- the SPEC example and defaults -----------------------------------------------------------

def test_spec_example_parses() -> None:
    cfg = loads(SPEC_EXAMPLE, "fastproxy.toml")
    assert cfg.source == "fastproxy.toml"
    assert cfg.server.workers == AUTO_WORKERS
    assert cfg.server.graceful_timeout == 30.0 and cfg.server.max_connections == 10000
    assert cfg.log.format == "combined" and cfg.log.access == "-"
    assert cfg.admin.listen == Address("127.0.0.1", 9901)
    (web,) = cfg.listeners
    assert (web.name, str(web.listen), web.mode, web.upstream) == ("web", "0.0.0.0:8080",
                                                                     "http", "app")
    assert web.proxy_protocol is False
    assert web.timeouts == config.Timeouts(10.0, 60.0, 5.0, 60.0)
    assert web.limits == config.Limits(65536, 0)
    assert web.routes == (config.Route(host="api.example.com", path_prefix="/v1/",
                                       upstream="api"),)
    app = cfg.upstream("app")
    assert app.name == "app"
    assert app.servers == (config.ServerEntry(Address("127.0.0.1", 9000), 1),
                           config.ServerEntry(Address("127.0.0.1", 9001), 3))
    assert app.health == config.Health(2.0, 1.0, 2, 3, "/healthz")
    assert cfg.upstreams["api"].servers[0].address == Address("api.internal", 9100)
    assert cfg.forward == config.Forward()


def test_defaults_of_a_minimal_config() -> None:
    cfg = loads(MINIMAL)
    assert cfg.source == "<string>"
    assert cfg.server == config.ServerSection(AUTO_WORKERS, "fastproxy.pid", 30.0, 10000, "", 0, "")
    assert cfg.log == config.LogSection("-", "combined", "info")
    assert cfg.admin.listen == Address("127.0.0.1", 9901)
    (lst,) = cfg.listeners
    assert lst.name == "listener0"
    assert lst.proxy_protocol is False and lst.routes == ()
    assert lst.timeouts == config.Timeouts(client_header=10.0, idle=60.0, connect=5.0,
                                           upstream_read=60.0)
    assert lst.limits.max_header_bytes == 65536 and lst.limits.max_body_bytes == 0
    app = cfg.upstream("app")
    assert (app.balance, app.keepalive, app.retries, app.health) == ("round_robin", 32, 1, None)
    fwd = cfg.forward
    assert fwd.allow_clients == ("127.0.0.0/8", "::1/128")
    assert fwd.connect_ports == (443,)
    assert fwd.deny_destinations == ("private", "loopback", "link-local", "reserved",
                                     "multicast")   # SPEC "Forward-proxy policy"
    assert fwd.http_ports == ((80, 80), (21, 21), (443, 443), (70, 70), (210, 210), (280, 280),
                              (488, 488), (591, 591), (777, 777), (1025, 65535))
    assert fwd.allow_destinations == () and fwd.source_addresses == ()
    assert fwd.upstream_proxies == () and dict(fwd.users) == {}
    assert (fwd.dns_cache_ttl, fwd.anonymity, fwd.rotation) == (30.0, "elite", "round_robin")


def test_default_is_the_embedded_forward_proxy() -> None:
    cfg = default()
    assert cfg.source == "<embedded default>"
    (lst,) = cfg.listeners
    assert (lst.name, str(lst.listen), lst.mode, lst.upstream) == ("forward", "127.0.0.1:8080",
                                                                   "forward", None)
    assert str(cfg.admin.listen) == "127.0.0.1:9901"
    assert cfg.server.workers == AUTO_WORKERS
    assert dict(cfg.upstreams) == {}
    assert cfg.forward == config.Forward()


def test_conversions() -> None:
    cfg = loads(MINIMAL + '''
[server]
workers = 3
graceful_timeout = 5
[admin]
listen = "off"
[upstream.app.health]
interval = 1
[forward]
allow_clients = ["10.1.2.3/8", "::1"]
deny_destinations = ["multicast", "192.168.0.0/16"]
allow_destinations = ["*.Example.COM", "Example.org", "10.0.0.0/8", "2001:db8::/32"]
source_addresses = ["192.0.2.10", "2001:DB8::1"]
users = { alice = "pbkdf2_sha256$600000$c2FsdA$aGFzaA" }
upstream_proxies = ["http://u:p@192.0.2.1:3128", "http://parent.example:8080/"]
''')
    assert cfg.server.workers == 3
    assert cfg.server.graceful_timeout == 5.0 and isinstance(cfg.server.graceful_timeout, float)
    assert cfg.admin.listen is None
    assert cfg.upstream("app").health == config.Health(interval=1.0)
    assert cfg.forward.allow_clients == ("10.0.0.0/8", "::1/128")
    assert cfg.forward.deny_destinations == ("multicast", "192.168.0.0/16")
    assert cfg.forward.allow_destinations == ("*.example.com", "example.org", "10.0.0.0/8",
                                              "2001:db8::/32")
    assert cfg.forward.source_addresses == ("192.0.2.10", "2001:db8::1")
    assert cfg.forward.users["alice"].startswith("pbkdf2_sha256$600000$")
    assert len(cfg.forward.upstream_proxies) == 2
    assert loads(MINIMAL + '[admin]\nlisten = ""\n').admin.listen is None


def test_route_host_is_lowercased() -> None:
    cfg = loads(MINIMAL.replace('"tcp"', '"http"') + '''
[[listener.route]]
host = "*.API.Example.com"
upstream = "app"
''')
    assert cfg.listeners[0].routes[0].host == "*.api.example.com"
    assert cfg.listeners[0].routes[0].path_prefix is None


# --- addresses -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, host, port, text_out", [
    ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
    ("[::1]:8080", "::1", 8080, "[::1]:8080"),
    ("0.0.0.0:80", "0.0.0.0", 80, "0.0.0.0:80"),
    ("[::]:80", "::", 80, "[::]:80"),
    ("[0:0::1]:1", "::1", 1, "[::1]:1"),
    ("LocalHost:9000", "localhost", 9000, "localhost:9000"),
    ("backend_1.internal:65535", "backend_1.internal", 65535, "backend_1.internal:65535"),
])
def test_parse_address(text: str, host: str, port: int, text_out: str) -> None:
    addr = parse_address(text, "k")
    assert (addr.host, addr.port, str(addr)) == (host, port, text_out)
    assert addr.is_ipv6 == (":" in host)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":80",
                                  "::1:80", "[::1]", "[1.2.3.4]:80", "1.2.3.4:8o", "a b:80",
                                  "999.1.1.1:80", "[::1]:-1", ""])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text, "some.key")
    (line,) = info.value.problems
    assert line.startswith("config error: some.key: ")


def test_parse_address_require_ip() -> None:
    assert parse_address("10.0.0.1:1", "k", require_ip=True) == Address("10.0.0.1", 1)
    with pytest.raises(ConfigError, match="config error: k: expected an IP address"):
        parse_address("localhost:1", "k", require_ip=True)


# --- validation: one line per problem, naming the key ----------------------------------------

@pytest.mark.parametrize("extra, expected", [
    # unknown keys, top level and nested
    ("[serverr]\n", "config error: serverr: unknown key (did you mean 'server'?)"),
    ("[server]\nworker = 2\n", ("config error: server.worker: unknown key (did you mean "
     "'workers'?)")),
    ("[upstream.app.health]\nrate = 1\n", "config error: upstream.app.health.rate: unknown key"),
    ("[forward]\nxyzzy = 1\n", "config error: forward.xyzzy: unknown key"),
    # wrong types
    ('[server]\nmax_connections = "10"\n',
     "config error: server.max_connections: expected an integer, got string"),
    ("[server]\nmax_connections = 1.5\n",
     "config error: server.max_connections: expected an integer, got float"),
    ('[server]\nworkers = "many"\n', ('config error: server.workers: expected "auto" or an '
     "integer, got 'many'")),
    ("[log]\nlevel = 3\n", "config error: log.level: expected a string, got integer"),
    ("[forward]\nconnect_ports = 443\n",
     "config error: forward.connect_ports: expected an array, got integer"),
    ("[server]\nuser = 2000-01-01\n", ("config error: server.user: expected a string, got "
     "date/time")),
    ("[upstream.app]\nhealth = 5\n", ("config error: upstream.app.health: expected a table, got "
     "integer")),
    ("[forward]\nusers = []\n", ("config error: forward.users: expected a table of name = hash, "
     "got array")),
    # bool is not an int
    ("[server]\nworkers = true\n", ("config error: server.workers: expected an integer, got "
     "boolean")),
    ("[forward]\nconnect_ports = [true]\n",
     "config error: forward.connect_ports[0]: expected an integer, got boolean"),
    ("[forward]\ndns_cache_ttl = false\n",
     "config error: forward.dns_cache_ttl: expected a number, got boolean"),
    # out of range
    ("[server]\nworkers = 0\n", "config error: server.workers: must be between 1 and 1024, got 0"),
    ("[server]\nworkers = 1025\n", ("config error: server.workers: must be between 1 and 1024, "
     "got 1025")),
    ("[server]\ngraceful_timeout = -0.5\n",
     "config error: server.graceful_timeout: must be >= 0, got -0.5"),
    ("[server]\ngraceful_timeout = inf\n",
     "config error: server.graceful_timeout: must be a finite number, got inf"),
    ("[upstream.app]\nretries = -1\n", "config error: upstream.app.retries: must be >= 0, got -1"),
    ("[upstream.app.health]\nfall = 0\n", ("config error: upstream.app.health.fall: must be >= 1, "
     "got 0")),
    ("[forward]\nconnect_ports = [443, 70000]\n",
     "config error: forward.connect_ports[1]: must be between 1 and 65535, got 70000"),
    # bad choices
    ('[upstream.app]\nbalance = "fastest"\n', ("config error: upstream.app.balance: expected one "
     "of round_robin, least_conn, random_two, ip_hash, weighted")),
    ('[log]\nformat = "xml"\n', "config error: log.format: expected one of combined, json"),
    ('[forward]\nanonymity = "ghost"\n',
     "config error: forward.anonymity: expected one of elite, anonymous, transparent"),
    ('[forward]\nrotation = "lru"\n',
     "config error: forward.rotation: expected one of round_robin, random, sticky"),
    # bad addresses, CIDRs and other string shapes
    ('[admin]\nlisten = "127.0.0.1"\n',
     "config error: admin.listen: expected \"HOST:PORT\", got '127.0.0.1'"),
    ('[upstream.app]\nservers = ["10.0.0.1:99999"]\n',
     "config error: upstream.app.servers[0]: port must be an integer 1..65535, got '99999'"),
    ('[upstream.app]\nservers = []\n', "config error: upstream.app.servers: must not be empty"),
    ('[upstream.app]\nservers = [{ address = "h:1", weight = 1001 }]\n',
     "config error: upstream.app.servers[0].weight: must be between 1 and 1000, got 1001"),
    ('[upstream.app]\nservers = [{ weight = 2 }]\n',
     "config error: upstream.app.servers[0].address: required key is missing"),
    ('[forward]\nallow_clients = ["10.0.0.0/33"]\n',
     "config error: forward.allow_clients[0]: invalid CIDR '10.0.0.0/33'"),
    ('[forward]\ndeny_destinations = ["privat"]\n', ("config error: forward.deny_destinations[0]:"
     " expected a CIDR or one of private, loopback, link-local, multicast, reserved, "
     "unspecified, got 'privat'")),
    ('[forward]\nallow_destinations = ["*.*.com"]\n', ("config error: forward.allow_destinations"
     "[0]: expected a CIDR, a hostname or \"*.example.com\", got '*.*.com'")),
    ('[forward]\nsource_addresses = ["host.example"]\n',
     "config error: forward.source_addresses[0]: expected an IP address, got 'host.example'"),
    ('[forward]\nusers = { bob = "secret" }\n', ('config error: forward.users.bob: expected '
     '"pbkdf2_sha256$<iterations>$<salt>$<hash>" (made by `fastproxy passwd NAME`)')),
    ('[forward]\nusers = { "a:b" = "pbkdf2_sha256$1$s$h" }\n',
     "config error: forward.users.a:b: a user name must be non-empty and contain no ':'"),
    ('[forward]\nupstream_proxies = ["socks5://192.0.2.1:1080"]\n',
     ("config error: forward.upstream_proxies[0]: expected \"http://[user:pass@]host:port\", "
     "got 'socks5://192.0.2.1:1080'")),
    ('[forward]\nupstream_proxies = ["http://user@192.0.2.1:3128"]\n',
     ("config error: forward.upstream_proxies[0]: expected \"http://[user:pass@]host:port\", "
     "got 'http://user@192.0.2.1:3128'")),
    ('[log]\naccess = ""\n', "config error: log.access: must not be empty"),
    ('[upstream.app.health]\npath = "healthz"\n',
     "config error: upstream.app.health.path: must start with \"/\", got 'healthz'"),
    ('[upstream."my app"]\nservers = ["h:1"]\n', ("config error: upstream.my app: a name may use "
     "only letters, digits, '_' and '-', got 'my app'")),
])
def test_one_problem_names_the_key(extra: str, expected: str) -> None:
    text = MINIMAL + extra
    if extra.startswith("[upstream.app]\n"):   # MINIMAL ends inside [upstream.app]: amend it
        body = extra.removeprefix("[upstream.app]\n")
        if body.startswith("servers ="):
            text = MINIMAL.replace('servers = ["127.0.0.1:9000"]\n', body)
        else:
            text = MINIMAL + body
    assert one_problem(text) == expected


@pytest.mark.parametrize("extra, expected", [
    ("bogus = 1", "config error: listener[0].bogus: unknown key"),
    ('listen = "localhost:8000"', ("config error: listener[0].listen: expected an IP address, "
     "not a hostname, got 'localhost:8000' (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")")),
    ('listen = "::1:8000"', ("config error: listener[0].listen: an IPv6 address needs brackets, "
     "as in \"[::1]:8080\"; got '::1:8000'")),
    ('mode = "udp"', "config error: listener[0].mode: expected one of tcp, http, forward"),
    ("proxy_protocol = 1", ("config error: listener[0].proxy_protocol: expected true or false, "
     "got integer")),
    ("proxy_protocol = true", ("config error: listener[0].proxy_protocol_from: required with "
     "proxy_protocol = true: the CIDRs of the load balancers in front (anyone else could claim "
     "any client address)")),
    ('proxy_protocol_from = ["10.0.0.300/8"]',
     "config error: listener[0].proxy_protocol_from[0]: invalid CIDR '10.0.0.300/8'"),
    ("timeouts = { idle = 0 }", "config error: listener[0].timeouts.idle: must be > 0, got 0"),
    ('timeouts = { connect = "5" }',
     "config error: listener[0].timeouts.connect: expected a number, got string"),
    ("timeouts = { read = 5 }", "config error: listener[0].timeouts.read: unknown key"),
    ("limits = { max_header_bytes = 100 }",
     "config error: listener[0].limits.max_header_bytes: must be >= 1024, got 100"),
    ("limits = { max_body_bytes = -1 }",
     "config error: listener[0].limits.max_body_bytes: must be >= 0, got -1"),
    ('name = "my web"', ("config error: listener[0].name: a name may use only letters, digits, "
     "'_' and '-', got 'my web'")),
])
def test_listener_problems_name_the_key(extra: str, expected: str) -> None:
    key = extra.split(" ", 1)[0]
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(key + " ")]
    text = "\n".join(lines).replace('upstream = "app"', f'upstream = "app"\n{extra}', 1)
    assert one_problem(text) == expected


def test_proxy_protocol_from_is_normalised() -> None:
    text = MINIMAL.replace('upstream = "app"', 'upstream = "app"\nproxy_protocol = true\n'
                           'proxy_protocol_from = ["10.1.2.3/8", "::1"]', 1)
    assert config.loads(text).listeners[0].proxy_protocol_from == ("10.0.0.0/8", "::1/128")


def test_missing_required_listener_keys() -> None:
    found = problems('[[listener]]\nupstream = "x"\n[upstream.x]\nservers = ["h:1"]\n')
    assert found == ["config error: listener[0].listen: required key is missing",
                     "config error: listener[0].mode: required key is missing"]


def test_no_listener_is_an_error() -> None:
    assert one_problem('[server]\nworkers = 1\n') == (
        "config error: listener: at least one [[listener]] is required")
    assert one_problem("listener = []\n") == (
        "config error: listener: at least one [[listener]] is required")


def test_listener_must_be_an_array_of_tables() -> None:
    assert one_problem('[listener]\nlisten = "127.0.0.1:1"\n') == (
        "config error: listener: expected an array, got table")


def test_missing_upstream_references() -> None:
    text = MINIMAL.replace('"tcp"', '"http"').replace('upstream = "app"', 'upstream = "nope"') + '''
[[listener.route]]
path_prefix = "/v1/"
upstream = "also_nope"
'''
    assert problems(text) == [
        "config error: listener[0].upstream: unknown upstream 'nope' (defined: app)",
        ("config error: listener[0].route[0].upstream: unknown upstream 'also_nope' "
        "(defined: app)"),
    ]


def test_tcp_and_http_need_an_upstream() -> None:
    for mode in ("tcp", "http"):
        text = f'[[listener]]\nlisten = "127.0.0.1:1"\nmode = "{mode}"\n'
        assert problems(text) == [f"config error: listener[0].upstream: required in {mode} mode"]


def test_forward_listener_must_not_set_upstream() -> None:
    text = MINIMAL.replace('"tcp"', '"forward"')
    assert one_problem(text) == ("config error: listener[0].upstream: not allowed in forward "
                                 "mode (see [forward])")


def test_route_in_tcp_mode() -> None:
    text = MINIMAL + '[[listener.route]]\nhost = "a.example"\nupstream = "app"\n'
    assert one_problem(text) == ("config error: listener[0].route: routes are only allowed in "
                                 "http mode, not tcp")


def test_route_needs_host_or_path_prefix() -> None:
    text = MINIMAL.replace('"tcp"', '"http"') + '[[listener.route]]\nupstream = "app"\n'
    assert one_problem(text) == (
        "config error: listener[0].route[0]: needs host, path_prefix or both")


def test_route_problems() -> None:
    text = MINIMAL.replace('"tcp"', '"http"') + (
        '[[listener.route]]\nhost = "bad host"\npath_prefix = "v1"\n')
    assert problems(text) == [
        ("config error: listener[0].route[0].host: expected a hostname or \"*.example.com\", "
        "got 'bad host'"),
        "config error: listener[0].route[0].path_prefix: must start with \"/\", got 'v1'",
        "config error: listener[0].route[0].upstream: required key is missing",
    ]


def test_duplicate_listener_names_and_addresses() -> None:
    text = MINIMAL + '''
[[listener]]
name = "listener0"
listen = "127.0.0.1:8000"
mode = "forward"
'''
    assert problems(text) == [
        "config error: listener[1].name: duplicate name 'listener0' (also listener[0].name)",
        ("config error: listener[1].listen: duplicate listen '127.0.0.1:8000' (also "
        "listener[0].listen)"),
    ]


def test_default_listener_names_follow_the_index() -> None:
    cfg = loads(MINIMAL + '[[listener]]\nlisten = "[::1]:8000"\nmode = "forward"\n')
    assert [lst.name for lst in cfg.listeners] == ["listener0", "listener1"]
    assert str(cfg.listeners[1].listen) == "[::1]:8000"


def test_admin_must_not_share_a_listener_address() -> None:
    assert one_problem(MINIMAL + '[admin]\nlisten = "127.0.0.1:8000"\n') == (
        "config error: admin.listen: same address as listener[0].listen")


def test_all_problems_are_reported_together() -> None:
    text = '''
[server]
workers = true
bogus = 1
[[listener]]
listen = "localhost:80"
mode = "tcp"
upstream = "missing"
[upstream.app]
servers = ["127.0.0.1:9000"]
balance = "fastest"
[forward]
allow_clients = ["nonsense"]
'''
    assert problems(text) == [
        "config error: server.bogus: unknown key",
        "config error: server.workers: expected an integer, got boolean",
        ("config error: listener[0].listen: expected an IP address, not a hostname, got "
        "'localhost:80' (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"),
        ("config error: upstream.app.balance: expected one of round_robin, least_conn, "
        "random_two, ip_hash, weighted"),
        "config error: forward.allow_clients[0]: invalid CIDR 'nonsense'",
        "config error: listener[0].upstream: unknown upstream 'missing' (defined: app)",
    ]
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert str(info.value) == "\n".join(info.value.problems)


def test_toml_syntax_error_is_one_line_naming_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        loads("[server\nworkers = 1\n", "bad.toml")
    (line,) = info.value.problems
    assert line.startswith("config error: bad.toml: ") and "line 1" in line


# --- load() ----------------------------------------------------------------------------------

def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "fastproxy.toml"
    path.write_text(SPEC_EXAMPLE)
    cfg = load(str(path))
    assert cfg.source == str(path) and cfg.listeners[0].name == "web"


def test_load_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"config error: {path}: cannot read: No such file or directory"]


def test_load_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"config error: {tmp_path}: cannot read"):
        load(str(tmp_path))
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nuser = "\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path))
    (line,) = info.value.problems
    assert line.startswith(f"config error: {path}: not UTF-8")


def test_load_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("workers = = 1\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    (line,) = info.value.problems
    assert line.startswith(f"config error: {path}: ")


# --- apply_overrides -------------------------------------------------------------------------

def overrides_problems(cfg: Config, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, **kw)  # type: ignore[arg-type]
    return info.value.problems


def test_no_overrides_is_identity() -> None:
    cfg = default()
    assert apply_overrides(cfg) == cfg


def test_override_listen() -> None:
    cfg = apply_overrides(default(), listen="[::]:3128")
    assert cfg.listeners[0].listen == Address("::", 3128)
    assert cfg.listeners[0].mode == "forward"
    assert overrides_problems(default(), listen="localhost:1") == [
        ("config error: --listen: expected an IP address, not a hostname, got 'localhost:1' "
        "(e.g. \"0.0.0.0:8080\" or \"[::]:8080\")")]


def test_override_mode_and_upstreams_on_the_default() -> None:
    cfg = apply_overrides(default(), mode="tcp", upstreams=["10.0.0.1:80", "backend:81"])
    (lst,) = cfg.listeners
    assert (lst.mode, lst.upstream) == ("tcp", "default")
    assert cfg.upstream("default").servers == (config.ServerEntry(Address("10.0.0.1", 80)),
                                               config.ServerEntry(Address("backend", 81)))
    assert cfg.upstream("default").balance == "round_robin"


def test_override_upstreams_replace_an_existing_default_keeping_its_settings() -> None:
    base = loads(MINIMAL.replace("app", "default") + 'balance = "least_conn"\n')
    cfg = apply_overrides(base, upstreams=["10.9.9.9:1"])
    assert cfg.upstream("default").servers == (config.ServerEntry(Address("10.9.9.9", 1)),)
    assert cfg.upstream("default").balance == "least_conn"


def test_override_upstreams_repoint_the_listener() -> None:
    cfg = apply_overrides(loads(MINIMAL), upstreams=["10.0.0.2:80"])
    assert cfg.listeners[0].upstream == "default"
    assert set(cfg.upstreams) == {"app", "default"}


def test_override_bad_upstream_address() -> None:
    assert overrides_problems(default(), mode="http", upstreams=["nohost"]) == [
        "config error: --upstream: expected \"HOST:PORT\", got 'nohost'"]


def test_override_mode_tcp_without_upstream() -> None:
    assert overrides_problems(default(), mode="tcp") == [
        "config error: --upstream: mode tcp needs an upstream: add --upstream HOST:PORT"]


def test_override_upstream_on_a_forward_listener() -> None:
    expected = [("config error: --upstream: not used by a forward listener; add --mode tcp or "
                "--mode http")]
    assert overrides_problems(default(), upstreams=["10.0.0.1:80"]) == expected
    assert overrides_problems(loads(MINIMAL), mode="forward", upstreams=["10.0.0.1:80"]) == expected


def test_override_mode_forward_drops_upstream_and_routes() -> None:
    base = loads(MINIMAL.replace('"tcp"', '"http"') + '[[listener.route]]\nhost = "a.example"\n'
                 'upstream = "app"\n')
    (lst,) = apply_overrides(base, mode="forward").listeners
    assert (lst.mode, lst.upstream, lst.routes) == ("forward", None, ())


def test_override_mode_http_keeps_the_upstream() -> None:
    (lst,) = apply_overrides(loads(MINIMAL), mode="http").listeners
    assert (lst.mode, lst.upstream) == ("http", "app")


def test_override_mode_tcp_with_routes_and_bad_mode() -> None:
    base = loads(MINIMAL.replace('"tcp"', '"http"') + '[[listener.route]]\nhost = "a.example"\n'
                 'upstream = "app"\n')
    assert overrides_problems(base, mode="tcp")[0] == (
        "config error: --mode: listener 'listener0' has [[listener.route]] tables, which need "
        "mode http")
    assert overrides_problems(base, mode="udp") == [
        "config error: --mode: expected one of tcp, http, forward"]


def test_listener_overrides_need_a_single_listener() -> None:
    base = loads(MINIMAL + '[[listener]]\nlisten = "127.0.0.1:8001"\nmode = "forward"\n',
                 "two.toml")
    assert overrides_problems(base, listen="127.0.0.1:1", upstreams=["h:1"]) == [
        "config error: --listen: applies only to a config with one listener; two.toml has 2",
        "config error: --upstream: applies only to a config with one listener; two.toml has 2",
    ]
    assert apply_overrides(base, workers=2).server.workers == 2


def test_override_workers_admin_pidfile() -> None:
    cfg = apply_overrides(default(), workers=4, admin="0.0.0.0:9000", pidfile="/run/fp.pid")
    assert cfg.server.workers == 4
    assert cfg.admin.listen == Address("0.0.0.0", 9000)
    assert cfg.server.pidfile == "/run/fp.pid"
    assert apply_overrides(default(), admin="off").admin.listen is None
    assert apply_overrides(default(), workers="auto").server.workers == AUTO_WORKERS
    assert overrides_problems(default(), workers=0, admin="nope", pidfile="") == [
        "config error: --workers: must be between 1 and 1024, got 0",
        "config error: --pidfile: must not be empty",
        "config error: --admin: expected \"HOST:PORT\", got 'nope'",
    ]
    assert overrides_problems(default(), workers=True) == [
        "config error: --workers: expected an integer, got boolean"]


def test_override_admin_colliding_with_listener() -> None:
    assert overrides_problems(default(), admin="127.0.0.1:8080") == [
        "config error: admin.listen: same address as listener[0].listen"]


def test_overrides_leave_the_original_untouched() -> None:
    cfg = default()
    apply_overrides(cfg, listen="127.0.0.1:1", workers=7)
    assert str(cfg.listeners[0].listen) == "127.0.0.1:8080" and cfg.server.workers == AUTO_WORKERS


# --- the data is frozen ----------------------------------------------------------------------

def test_config_is_frozen() -> None:
    cfg = loads(SPEC_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.workers = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listeners[0].mode = "tcp"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.source = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.upstreams["x"] = cfg.upstreams["app"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.forward.users["eve"] = "x"  # type: ignore[index]


def test_every_field_has_a_doc() -> None:
    classes = [config.ServerSection, config.LogSection, config.AdminSection, config.Timeouts,
               config.Limits, config.Route, config.Listener, config.ServerEntry, config.Health,
               config.Upstream, config.Forward, config.Config]
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name}"


def test_config_imports_no_io_modules() -> None:
    tree = ast.parse(Path(config.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"socket", "selectors", "signal"}
    assert imported <= {"__future__", "dataclasses", "difflib", "ipaddress", "math", "os", "re",
                        "tomllib", "collections", "types", "typing", "fastproxy", "base64",
                        "urllib", "pwd"}


def test_duplicate_servers_in_one_upstream_are_an_error() -> None:
    text = """
[[listener]]
listen = "127.0.0.1:8000"
mode = "tcp"
upstream = "app"
[upstream.app]
servers = ["127.0.0.1:9000", "127.0.0.1:9001", {address = "127.0.0.1:9000", weight = 2}]
"""
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert info.value.problems == [
        "config error: upstream.app.servers[2]: duplicate server '127.0.0.1:9000' "
        "(also servers[0]; use weight to give it a bigger share)"]


def test_server_name_is_a_via_pseudonym() -> None:
    assert loads('[server]\nname = "edge-1.example"\n' + MINIMAL).server.name == "edge-1.example"
    with pytest.raises(config.ConfigError, match=r"server.name: letters, digits"):
        loads('[server]\nname = "edge 1, evil"\n' + MINIMAL)
