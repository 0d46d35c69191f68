"""Files the master creates in shared directories, created so that nobody can redirect them.

The stats segment lives in /dev/shm and the pidfile often in /run or /tmp:
directories where another local user may have planted a symbolic link or a
file under the name we are about to use. ``create_new`` therefore never
follows a link and never opens what is already there: an existing entry
(a stale file of ours, or a planted link) is removed and the file made anew
with ``O_EXCL``; one that we may not remove (another user's, in a sticky
directory) makes the call fail instead.

Also the small process helpers that go with a pidfile: ``read_pid``,
``alive``, ``signal_process``.
"""

from __future__ import annotations

import errno
import mmap
import os

_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: str, mode: int) -> int:
    """A descriptor of a new, empty regular file at ``path`` with ``mode``."""
    try:
        return os.open(path, _NEW, mode)
    except FileExistsError:
        os.unlink(path)  # removes a link itself, never its target
        return os.open(path, _NEW, mode)


def write_replacing(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a new file beside ``path``, then rename it over ``path``
    (readers see the old content or the new, never part of it)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = create_new(tmp, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def map_new_file(path: str, size: int) -> mmap.mmap:
    """A new file at ``path`` (``create_new``, mode 0600: its owner only) of
    ``size`` bytes, mapped shared."""
    fd = create_new(path, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED)
    finally:
        os.close(fd)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_pidfile(path: str) -> None:
    """Raise OSError(EEXIST) when ``path`` names another running process."""
    pid = read_pid(path)
    if pid > 0 and pid != os.getpid() and alive(pid):
        raise OSError(errno.EEXIST, f"already running with pid {pid} (pidfile {path})")


def write_pid(path: str) -> None:
    write_replacing(path, f"{os.getpid()}\n".encode())


def read_pid(path: str) -> int:
    """The pid in ``path``; 0 when there is none or it is not a pid."""
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def remove_pidfile(path: str, pid: int) -> None:
    """Remove ``path`` if it still names ``pid``."""
    if read_pid(path) == pid:
        remove_file(path)


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_process(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; a process already gone is not an error."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def remove_stale_segments(directory: str = "/dev/shm") -> None:
    """Remove the stats segments of masters that no longer run."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parts = name.split(".")
        if (len(parts) == 3 and parts[0] == "fastproxy" and parts[2] == "stats"
                and parts[1].isdigit() and not alive(int(parts[1]))):
            remove_file(os.path.join(directory, name))
