"""fastproxy.files: files in shared directories are never redirected by a planted link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fastproxy.files import create_new, write_replacing


def plant(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A victim file and a symbolic link to it at ``name``."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / name
    link.symlink_to(victim)
    return victim, link


def test_create_new_replaces_a_planted_link(tmp_path: Path) -> None:
    victim, link = plant(tmp_path, "segment")
    fd = create_new(str(link), 0o600)
    try:
        os.write(fd, b"counters")
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"precious"
    info = os.lstat(link)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert link.read_bytes() == b"counters"


def test_create_new_starts_from_nothing(tmp_path: Path) -> None:
    stale = tmp_path / "segment"
    stale.write_bytes(b"old counters")
    os.close(create_new(str(stale), 0o600))
    assert stale.read_bytes() == b""


def test_write_replacing_ignores_a_planted_temporary_link(tmp_path: Path) -> None:
    pidfile = tmp_path / "fastproxy.pid"
    victim, _ = plant(tmp_path, f"fastproxy.pid.{os.getpid()}.tmp")
    write_replacing(str(pidfile), b"1234\n")
    assert victim.read_bytes() == b"precious"
    assert pidfile.read_bytes() == b"1234\n" and not pidfile.is_symlink()
    assert not (tmp_path / f"fastproxy.pid.{os.getpid()}.tmp").exists()


def test_write_replacing_replaces_a_link_at_the_path(tmp_path: Path) -> None:
    victim, link = plant(tmp_path, "fastproxy.pid")
    write_replacing(str(link), b"1234\n")
    assert victim.read_bytes() == b"precious"
    assert not link.is_symlink() and link.read_bytes() == b"1234\n"
