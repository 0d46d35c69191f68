"""The service-manager protocols without a service manager: what the master
reads from its environment and what it sends."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fastproxy.service import (
    STATUS_FAILED,
    STATUS_READY,
    Handover,
    Notifier,
    Predecessor,
    tell_status,
    upgrade_environment,
)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_systemd_sockets_are_for_this_process_only() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    handover = Handover.from_environ(env)
    assert handover.by_name == {} and env == {}      # read (and removed) but not taken


def test_upgrade_sockets_are_found_by_address() -> None:
    a, b, c = listening(), listening(), socket.socket()   # c is not listening
    try:
        text = upgrade_environment({"127.0.0.1:80": [a, b], "127.0.0.1:81": [c]})
        assert text == f"127.0.0.1:80={a.fileno()},{b.fileno()};127.0.0.1:81={c.fileno()}"
        env = {"FASTPROXY_SOCKETS": text}
        handover = Handover.from_environ(env)
        assert "FASTPROXY_SOCKETS" not in env
        got = handover.claim("web", "127.0.0.1:80")
        assert [s.fileno() for s in got] == [a.fileno(), b.fileno()]
        assert not handover.from_manager(got[0])
        assert handover.claim("other", "127.0.0.1:81") == []   # refused: not a listener
        for s in got:
            s.detach()
    finally:
        for s in (a, b, c):
            s.close()


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        notifier.ready()
        assert receiver.recv(1024) == b"READY=1\nSTATUS=serving"
        notifier.muted = True
        notifier.stopping()
        notifier.muted = False
        notifier.main_pid(42)
        assert receiver.recv(1024).startswith(b"MAINPID=42\nREADY=1")
    finally:
        notifier.close()
        receiver.close()
    silent = Notifier({})
    assert not silent.active
    silent.ready()   # a no-op


def test_status_pipe_messages() -> None:
    r, w = os.pipe()
    try:
        tell_status(w)
        assert os.read(r, 100) == STATUS_READY
        tell_status(w, OSError("no\nsuch  file"))
        assert os.read(r, 100) == STATUS_FAILED + b"no such file"
        pred = Predecessor({"FASTPROXY_UPGRADE_STATUS": str(os.dup(w))})
        assert pred.present
        pred.failed("config error: server.wrokers: unknown key")
        assert not pred.present
        assert os.read(r, 100) == STATUS_FAILED + b"config error: server.wrokers: unknown key"
    finally:
        os.close(r)
        os.close(w)
