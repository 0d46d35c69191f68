"""Files the master creates in shared directories, created so that nobody can redirect them.

The stats segment lives in /dev/shm and the pidfile often in /run or /tmp:
directories where another local user may have planted a symbolic link or a
file under the name we are about to use. ``create_new`` therefore never
follows a link and never opens what is already there: an existing entry
(a stale file of ours, or a planted link) is removed and the file made anew
with ``O_EXCL``; one that we may not remove (another user's, in a sticky
directory) makes the call fail instead.
"""

from __future__ import annotations

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
