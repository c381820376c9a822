"""``file://`` locations: local files under the configured roots.

Opened files are unbuffered and positioned at the start of the range, so the
download path can hand them to ``wsgi.file_wrapper`` (sendfile) instead of
reading them itself.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Mapping
from urllib.parse import SplitResult

from locproxy.download.backends.base import BackendError, BackendStream, Reader
from locproxy.failures import Failure
from locproxy.guards import FileRoots

LOG = logging.getLogger(__package__)  # one logger for all the backends

# O_NONBLOCK: opening a FIFO for reading blocks until a writer appears, so a
# hostile location pointing at a FIFO under a root would hang a worker. With
# O_NONBLOCK the open returns at once and the regular-file check refuses it.
# O_NOFOLLOW: the final component must not have become a symlink since
# realpath() (intermediate components are covered by the dev/inode check).
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, "error")


class FileStream(BackendStream):
    def __init__(self, label: str, fileobj: BinaryIO, start: int, length: int, chunk_size: int) -> None:
        super().__init__(label, start, length, chunk_size)
        self.fileobj = fileobj

    def _chunks(self) -> Iterator[bytes]:
        fileobj = self.fileobj
        assert fileobj is not None
        while self._sent < self.length and not self._closed:
            want = min(self._chunk_size, self.length - self._sent)
            try:
                # Unbuffered FileIO: one read(2) into a fresh bytes object,
                # no intermediate copy (measured faster than readinto + bytes()).
                chunk = fileobj.read(want)
            except OSError as error:
                raise BackendError(self.label, f"read error ({errno_name(error)}) at byte {self.position}",
                                   Failure.OTHER) from None
            if not chunk:
                # The size was checked at open, so the file shrank under us.
                raise BackendError(self.label, f"ended early at byte {self.position}", Failure.TRUNCATED)
            self._sent += len(chunk)
            yield chunk
        if self._closed and self._sent < self.length:
            raise BackendError(self.label, "stream closed")

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self.fileobj is not None:
            self.fileobj.close()


@dataclass(frozen=True)
class FileOptions:
    roots: FileRoots = FileRoots()


class FileBackend:
    """Opens ``file://`` locations inside ``roots``."""

    def __init__(self, options: FileOptions, common: Any, built: Mapping[str, Any] = {}) -> None:
        self.roots = options.roots
        self.chunk_size = common.chunk_size

    def check(self, url: str, parts: SplitResult, label: str) -> None:
        """Refuse, without I/O, what may never be read."""
        if not self.roots:
            raise BackendError(label, "file locations not enabled (no file_roots)", Failure.NOT_ALLOWED)
        # file://host/path names a file on another machine; Glance would
        # even read it as the *relative* path "host/path". Only the local
        # forms file:///path and file://localhost/path are accepted.
        if parts.netloc.lower() not in ("", "localhost"):
            raise BackendError(label, "file URL with a host", Failure.NOT_ALLOWED)
        if "?" in url or "#" in url:
            raise BackendError(label, "file URL with a query or fragment", Failure.NOT_ALLOWED)
        if not parts.path.startswith("/") or "\x00" in parts.path:
            raise BackendError(label, "invalid file path", Failure.INVALID_URL)

    def open(self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None) -> FileStream:
        # Literal path: "%2e%2e" is a directory named "%2e%2e", not "..".
        try:
            real = os.path.realpath(parts.path)
        except (OSError, ValueError):
            raise BackendError(label, "invalid file path", Failure.INVALID_URL) from None
        if not self.roots.contain(real):
            raise BackendError(label, "outside file roots", Failure.NOT_ALLOWED)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise BackendError(label, "file not found", Failure.MISSING) from None
        except PermissionError:
            raise BackendError(label, "permission denied", Failure.NOT_ALLOWED) from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                # O_NOFOLLOW: the last component became a symlink after realpath().
                raise BackendError(label, "file changed while opening", Failure.NOT_ALLOWED) from None
            raise BackendError(label, f"cannot open file ({errno_name(error)})") from None
        try:
            fileobj = _checked_file(fd, real, label, start, length, total_size)
        except BaseException:
            os.close(fd)
            raise
        LOG.debug("reading %s bytes %s+%s", label, start, length)
        return FileStream(label, fileobj, start, length, self.chunk_size)


def _checked_file(fd: int, real: str, label: str, start: int, length: int, total_size: int | None) -> BinaryIO:
    """Check the opened file, then wrap it; the caller closes ``fd`` on error."""
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        raise BackendError(label, "not a regular file", Failure.NOT_ALLOWED)
    # The realpath check and the open are two steps: if a directory on the
    # way was swapped for a symlink in between, the fd names another file
    # than the checked path does now. Narrows the race; it cannot close it,
    # which is why roots must not be writable by untrusted users.
    try:
        checked = os.stat(real)
    except OSError:
        raise BackendError(label, "file changed while opening", Failure.NOT_ALLOWED) from None
    if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
        raise BackendError(label, "file changed while opening", Failure.NOT_ALLOWED)
    if total_size is not None and opened.st_size != total_size:
        raise BackendError(label, f"size mismatch (file has {opened.st_size} bytes, image {total_size})",
                           Failure.SIZE_MISMATCH)
    if start + length > opened.st_size:
        raise BackendError(label, f"range beyond end of file ({opened.st_size} bytes)", Failure.SIZE_MISMATCH)
    os.set_blocking(fd, True)  # O_NONBLOCK was only for the open()
    # Unbuffered: reads go straight to read(2), and the fd offset is the file
    # offset, which is what sendfile-based file_wrappers use.
    fileobj = os.fdopen(fd, "rb", buffering=0)
    try:
        fileobj.seek(start)
    except BaseException:
        fileobj.close()
        raise
    return fileobj


READER = Reader("file", frozenset({"file"}), FileOptions, {"file_roots": ("roots", FileRoots.parse)}, FileBackend)
