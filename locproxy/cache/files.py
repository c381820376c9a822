"""The site cache's directory, as the cache may touch it: owner-only,
never through a symlink, every lock wait bounded.

* Directories are ``0700`` and files ``0600``: no other local user can
  read an image, plant a file or hold a lock.
* Every file under ``cache_dir`` is opened relative to the descriptor of its
  directory with ``O_NOFOLLOW``, and the directories themselves are opened
  with ``O_DIRECTORY | O_NOFOLLOW``: a symlink planted in place of an entry,
  a fill or ``fills/`` itself is refused (``ELOOP``/``ENOTDIR``), never
  followed. (``cache_dir`` itself is the operator's path, and may be a link.)
* ``flock`` waits are bounded (``locked``): a lock held by a stopped process
  costs a bounded wait and an error the cache's guard handles, never a hung
  download.

Everything here raises ``OSError`` (``LockTimeout`` included): the caller,
``SiteCache``, turns any of them into "the cache steps aside".
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager
from typing import Callable, Iterator

#: Open flags of every file of the cache.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LockTimeout(OSError):
    """A lock stayed held longer than the cache waits."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(errno.EWOULDBLOCK, f"{what} still locked after {seconds:g} s")


def try_lock(fd: int, exclusive: bool) -> bool:
    """Take a lock without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_within(fd: int, exclusive: bool, timeout: float, what: str) -> None:
    """Take a lock, waiting at most ``timeout`` seconds (``LockTimeout``)."""
    deadline = time.monotonic() + timeout
    while not try_lock(fd, exclusive):
        if time.monotonic() >= deadline:
            raise LockTimeout(what, timeout)
        time.sleep(0.005)


def is_site_cache(path: str) -> bool:
    """Whether ``path`` holds a cache this module made (operators' commands
    refuse any other path rather than create a cache there)."""
    def is_a(name: str, kind: Callable[[int], bool]) -> bool:
        try:
            return kind(os.lstat(os.path.join(path, name)).st_mode)
        except OSError:
            return False
    return os.path.isdir(path) and is_a("index.sqlite", stat.S_ISREG) and is_a("entries", stat.S_ISDIR)


class CacheDirectory:
    """``cache_dir`` with its ``entries/`` and ``fills/``, opened safely."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.root = self.entries = self.fills = -1

    def open(self) -> None:
        """(Re)open the directories, creating what is missing, owner-only
        (again after a failure: ``fills/`` may have been removed under us)."""
        self.close()
        self.root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _private(self.root)
        self.entries = self._subdirectory("entries")
        self.fills = self._subdirectory("fills")

    def _subdirectory(self, name: str) -> int:
        try:
            os.mkdir(name, 0o700, dir_fd=self.root)
        except FileExistsError:
            pass
        fd = os.open(name, _DIRECTORY, dir_fd=self.root)
        _private(fd)
        return fd

    def check(self) -> None:
        """Cheap: ``OSError`` if a directory was removed under us, or the
        file system is full or went read-only. Opening the lock file for
        writing sees what ``statvfs`` does not: since Linux 6.x an ext4
        error under ``errors=remount-ro`` leaves the mount "rw,emergency_ro"
        (EROFS on every write, ST_RDONLY unset)."""
        for fd in (self.root, self.entries, self.fills):
            if os.fstat(fd).st_nlink == 0:
                raise OSError(errno.ENOENT, "a directory of the cache was removed")
        space = os.fstatvfs(self.root)
        if space.f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, "the cache's file system is read-only")
        if space.f_bavail == 0:
            raise OSError(errno.ENOSPC, "the cache's file system is full")
        os.close(self.open_file(self.root, "lock", os.O_RDWR | os.O_CREAT))

    def close(self) -> None:
        for name in ("root", "entries", "fills"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def check_index(self) -> None:
        """The index is opened by path (sqlite's way): it must be a regular
        file, owner-only (sqlite gives its -wal and -shm the same mode)."""
        os.close(self.open_file(self.root, "index.sqlite", os.O_RDWR | os.O_CREAT))
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            try:
                fd = self.open_file(self.root, name)
            except FileNotFoundError:
                continue
            try:
                _private(fd)
            finally:
                os.close(fd)

    # -- files -----------------------------------------------------------------

    def open_file(self, directory: int, name: str, flags: int = os.O_RDONLY) -> int:
        """A descriptor of ``name`` in ``directory`` (never through a symlink;
        a new file is created ``0600``)."""
        fd = os.open(name, flags | _NOFOLLOW, 0o600, dir_fd=directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        return fd

    def names(self, directory: int) -> list[str]:
        return os.listdir(directory)

    def unlink(self, directory: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass

    def commit(self, name: str) -> None:
        """Move a complete fill to the entries, durably."""
        os.rename(name, name, src_dir_fd=self.fills, dst_dir_fd=self.entries)
        os.fsync(self.entries)

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """The cache-wide lock (reservations, commits, evictions), waited for at most ``timeout``."""
        fd = self.open_file(self.root, "lock", os.O_RDWR | os.O_CREAT)
        try:
            lock_within(fd, True, timeout, "the cache lock")
            yield
        finally:
            os.close(fd)


def _private(fd: int) -> None:
    """Owner-only, for a file or directory this process owns."""
    status = os.fstat(fd)
    if status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) & 0o077:
        os.fchmod(fd, stat.S_IMODE(status.st_mode) & 0o700)
