"""The ``fastproxy`` command: the only module that prints to the user.

Exit codes: 0 success, 1 bad configuration or usage (one line per problem,
naming the key), 2 cannot bind/start (or, for the signal commands, no
running master).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import json
import mmap
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence

from fastproxy import __version__
from fastproxy import config as configuration
from fastproxy.config import Config
from fastproxy.errors import ConfigError, format_problem
from fastproxy.modes import require_available
from fastproxy.overrides import apply_overrides

EXIT_OK, EXIT_USAGE, EXIT_START = 0, 1, 2
PBKDF2_ITERATIONS = 600_000
_SIGNAL_COMMANDS = {"reload": signal.SIGHUP, "stop": signal.SIGTERM,
                    "quit": signal.SIGQUIT, "reopen": signal.SIGUSR1}


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastproxy", description="Multiprocess zero-copy proxy.")
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the master in the foreground")
    run.add_argument("-c", "--config", help="TOML configuration file (default: embedded)")
    run.add_argument("--listen", help="ADDR:PORT of the (single) listener")
    run.add_argument("--mode", choices=("tcp", "http", "forward"))
    run.add_argument("--upstream", action="append", default=[], metavar="HOST:PORT",
                     help="upstream server (repeatable)")
    run.add_argument("--workers", type=int)
    run.add_argument("--admin", metavar="ADDR:PORT", help='admin endpoint, or "off"')
    run.add_argument("--pidfile")

    check = sub.add_parser("check", help="validate a configuration (like nginx -t)")
    check.add_argument("-c", "--config", required=True)

    for name in _SIGNAL_COMMANDS:
        cmd = sub.add_parser(name, help=f"send {_SIGNAL_COMMANDS[name].name[3:]} to the master")
        _add_target(cmd)
        cmd.add_argument("--timeout", type=float, default=None,
                         help="seconds to wait for the outcome")

    upgrade = sub.add_parser("upgrade", help="binary upgrade: USR2, wait until the new master "
                             "serves, then QUIT the old one")
    _add_target(upgrade)
    upgrade.add_argument("--timeout", type=float, default=None,
                         help="seconds to wait for each step (default 120)")

    stats = sub.add_parser("stats", help="show shared-memory stats")
    _add_target(stats)
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--watch", type=float, metavar="SECONDS")

    passwd = sub.add_parser("passwd", help="print a [forward.users] line for NAME")
    passwd.add_argument("name")
    return parser


def _add_target(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("-c", "--config")
    group.add_argument("--pidfile")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # what a USR2 successor runs
    handler: Callable[[argparse.Namespace], int] = {
        "run": cmd_run, "check": cmd_check, "stats": cmd_stats, "passwd": cmd_passwd,
        "upgrade": cmd_upgrade,
    }.get(args.command, cmd_signal)
    try:
        return handler(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _NotRunning as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return EXIT_START
    except KeyboardInterrupt:
        return EXIT_OK


# -- run / check ------------------------------------------------------------------
def _load(args: argparse.Namespace) -> Config:
    cfg = configuration.load(args.config) if args.config else configuration.default()
    if args.command == "run":
        cfg = apply_overrides(
            cfg, listen=args.listen, mode=args.mode, upstreams=args.upstream,
            workers=args.workers, admin=args.admin, pidfile=args.pidfile)
    require_available(cfg)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from fastproxy.master import Master
    from fastproxy.service import Launch

    launch = Launch.from_environ(args.argv, os.environ)   # before anything else reads them
    try:
        cfg = _load(args)
        if cfg.server.user and os.geteuid() != 0:
            raise ConfigError([format_problem("server.user", "running workers as another user "
                                              "needs the master to start as root")])
    except ConfigError as exc:
        launch.predecessor.failed("; ".join(exc.problems))
        raise
    return Master(cfg, lambda: _load(args), launch).run()


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"configuration {cfg.source} is ok: {len(cfg.listeners)} listener(s), "
          f"{len(cfg.upstreams)} upstream(s), {cfg.server.workers} worker(s)")
    return EXIT_OK


# -- signals -----------------------------------------------------------------------
def _pidfile(args: argparse.Namespace) -> str:
    if args.pidfile:
        return str(args.pidfile)
    return (configuration.load(args.config) if args.config else configuration.default()).server.pidfile


def _master_pid(args: argparse.Namespace) -> int:
    path = _pidfile(args)
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError) as exc:
        raise _NotRunning(f"no running master (pidfile {path}: {exc})") from exc
    return pid


class _NotRunning(Exception):
    pass


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited master its parent has not reaped)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def cmd_signal(args: argparse.Namespace) -> int:
    pid = _master_pid(args)
    if args.command == "reload":
        return _reload(pid, args.timeout if args.timeout is not None else 120.0)
    os.kill(pid, _SIGNAL_COMMANDS[args.command])
    if args.command in ("stop", "quit"):
        deadline = time.monotonic() + (args.timeout if args.timeout is not None else 60.0)
        while time.monotonic() < deadline:
            if not _running(pid):
                return EXIT_OK
            time.sleep(0.05)
        print(f"fastproxy: master {pid} still running", file=sys.stderr)
        return EXIT_START
    return EXIT_OK


def _reload(pid: int, timeout: float) -> int:
    outcome = _signal_for_outcome(pid, signal.SIGHUP, timeout)
    if outcome is None:
        print("fastproxy: no reload outcome before the timeout", file=sys.stderr)
        return EXIT_USAGE
    ok, message = outcome
    print(f"reloaded: {message}" if ok else message, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_USAGE


def _signal_for_outcome(pid: int, signum: int, timeout: float) -> tuple[bool, str] | None:
    """Send ``signum`` and wait for the outcome the master posts in its
    stats header (a reload's or an upgrade's); None if none came in time."""
    with _attach(pid) as segment:
        before = segment.reload_seq()
        os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if segment.reload_seq() != before:
                return segment.reload_status() == 1, segment.reload_message()
            time.sleep(0.05)
    return None


def cmd_upgrade(args: argparse.Namespace) -> int:
    """USR2; once the new master serves, QUIT the old one and wait for it to go."""
    from fastproxy.files import read_pid

    pid = _master_pid(args)
    timeout = args.timeout if args.timeout is not None else 120.0
    outcome = _signal_for_outcome(pid, signal.SIGUSR2, timeout)
    if outcome is None:
        print(f"fastproxy: no upgrade outcome within {timeout:.0f}s; master {pid} was sent "
              "USR2 and may still be starting its successor", file=sys.stderr)
        return EXIT_USAGE
    ok, message = outcome
    if not ok:
        print(message, file=sys.stderr)
        return EXIT_USAGE
    successor = read_pid(_pidfile(args))
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() >= deadline:
            print(f"fastproxy: master {successor} serves; the old master {pid} is still "
                  "draining", file=sys.stderr)
            return EXIT_USAGE
        time.sleep(0.05)
    print(successor)
    return EXIT_OK


class _attach:
    """Map a master's stats segment read-only."""

    def __init__(self, pid: int) -> None:
        from fastproxy.stats.shm import segment_path

        self.path = segment_path(pid)

    def __enter__(self):  # type: ignore[no-untyped-def]
        from fastproxy.stats.shm import Segment

        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.map = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self.segment = Segment.attach(self.map)
        return self.segment

    def __exit__(self, *exc: object) -> None:
        self.segment.release()
        self.map.close()


# -- stats ---------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    from fastproxy.stats.export import to_json, to_table
    from fastproxy.stats.procinfo import process_info

    pid = _master_pid(args)
    with _attach(pid) as segment:
        while True:
            snap = segment.snapshot()
            procs = process_info([w["pid"] for w in snap["workers"]] + [pid])
            if args.json:
                out = json.dumps(to_json(snap, procs), indent=None if args.watch else 2)
            else:
                out = to_table(snap, procs)
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")
            print(out, flush=True)
            if not args.watch:
                return EXIT_OK
            time.sleep(args.watch)


# -- passwd -----------------------------------------------------------------------------
def cmd_passwd(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise UsageError("passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("empty password")
    print(f'{_toml_key(args.name)} = "{hash_password(password)}"')
    return EXIT_OK


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _toml_key(name: str) -> str:
    if name and all(ch.isalnum() or ch in "-_" for ch in name):
        return name
    return json.dumps(name)
