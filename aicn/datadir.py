"""The data directory's lock: one aicn process at a time per directory.

Two nodes on one data directory would share ``peer.key`` (one peer ID on two
hosts) and write one ``aicn.db``.  A running node, and ``aicn init`` while it
writes, hold an exclusive ``flock`` on ``<data dir>/aicn.lock``, which holds
the holder's pid for the error message of the next one.  The kernel drops the
lock when the process ends, however it ends, so a stale file never blocks a
start (unlike a pid file); the file itself stays.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "DataDirLockError", "DataDirLock"]

LOCK_FILE = "aicn.lock"


class DataDirLockError(Exception):
    """The data directory is locked by another process, or cannot be locked."""


class DataDirLock:
    """An exclusive lock on ``directory`` (the directory must exist).

    :meth:`acquire` raises :class:`DataDirLockError` naming the holder's pid
    and the lock file when another process holds it; :meth:`release` (or
    leaving a ``with`` block) lets it go.  Locks are per open file, so a
    second lock on the same directory fails in the same process too.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "DataDirLock":
        """Take the lock (without waiting) and write our pid into the file."""
        if self._file is not None:
            return self
        try:
            # Python opens files close-on-exec (PEP 446): a child we spawn does
            # not inherit the lock and keep it after we exit.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirLockError(
                f"cannot open lock file {str(self.path)!r}: {exc.strerror or exc}") from None
        lock_file = os.fdopen(fd, "r+", encoding="ascii", errors="replace")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = lock_file.read(32).strip()
            lock_file.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLockError(
                    f"data directory {str(self.path.parent)!r} is in use by another aicn process "
                    f"(pid {holder or 'unknown'}, lock {str(self.path)!r}); stop it or choose another "
                    "data directory"
                ) from None
            raise DataDirLockError(f"cannot lock {str(self.path)!r}: {exc.strerror or exc}") from None
        self._file = lock_file
        self.write_pid()
        return self

    def write_pid(self) -> None:
        """(Re)write our pid, e.g. after twistd has forked into a daemon."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        """Let the lock go (idempotent).  The file stays: removing it could let a
        process that has it open and one that creates it anew both hold "the" lock."""
        lock_file, self._file = self._file, None
        if lock_file is None:
            return
        try:
            lock_file.seek(0)
            lock_file.truncate()
        finally:
            lock_file.close()  # closing the file drops the flock

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
