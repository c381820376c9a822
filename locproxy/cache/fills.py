"""What a site cache entry is while it is read or written: a committed
entry opened for a hit (``Hit``), a fill being written (``Fill``), and a
fill read as it grows (``Follow``)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol

from locproxy.cache.files import try_lock
from locproxy.cache.guard import Guard
from locproxy.fingerprints import Fingerprint

LOG = logging.getLogger("locproxy.cache")

#: How often a follower looks for new bytes of a growing fill.
FOLLOW_POLL = 0.005


class Index(Protocol):
    """What a hit or a fill asks of its cache (``store.SiteCache``)."""

    guard: Guard

    def remove(self, key: str, why: str) -> None: ...
    def commit(self, fill: Fill, fingerprint: Fingerprint) -> bool: ...
    def abandon(self, fill: Fill) -> None: ...


@dataclass
class Hit:
    """A committed entry, opened with a shared lock (eviction passes it by
    while this file is open; a corrupt entry is removed all the same)."""

    cache: Index
    key: str
    fileobj: BinaryIO
    size: int
    fingerprint: Fingerprint | None

    def rejected(self) -> None:
        """A block of it is not the image's: removed, under the cache's lock."""
        self.cache.remove(self.key, "a block does not match the image's fingerprint")


class FillerGone(Exception):
    """The fill a follower reads stopped (its filler died, aborted or stalled) before the end."""

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"the cache fill {why} at byte {offset}")
        self.offset, self.why = offset, why


class Fill:
    """One image being written to the cache by its filler (one thread).
    The exclusive lock on the file tells followers it is alive."""

    def __init__(self, cache: Index, key: str, image_id: str, size: int, digest: str, fd: int) -> None:
        self.cache, self.key, self.image_id, self.size, self.digest, self.fd = cache, key, image_id, size, digest, fd
        self.written = 0
        self.done = False
        self.error: OSError | None = None  # what stopped a write

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; an ``OSError`` (a full disk, say) stops the fill
        (the caller aborts it) and is the cache's error like any other: once
        the fill is gone, the guard counts it and puts the cache aside."""
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
                self.written += written
        except OSError as error:
            self.error = error
            raise

    def commit(self, fingerprint: Fingerprint) -> bool:
        """Make the whole, verified image an entry; False if that failed."""
        if self.done or self.written != self.size:
            self.abort()
            return False
        self.done = True
        try:
            return self.cache.commit(self, fingerprint)
        finally:
            self._close()

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.cache.abandon(self)  # before the guard puts the cache aside: a full disk gets its bytes back
            self._close()
            if self.error is not None:
                self.cache.guard.failed("fill", self.error)

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock: followers see the end
            self.fd = -1


class Follow:
    """A fill in progress, read as it grows."""

    def __init__(self, key: str, size: int, fd: int, stall: float) -> None:
        self.key, self.size, self.fd, self.stall = key, size, fd, stall

    def chunks(self, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` as they are written; ``FillerGone`` if the
        fill ends before ``end`` or makes no progress for ``stall`` seconds."""
        offset, idle_since = start, time.monotonic()
        while offset < end:
            chunk = os.pread(self.fd, min(chunk_size, end - offset), offset)
            if chunk:
                offset += len(chunk)
                idle_since = time.monotonic()
                yield chunk
                continue
            if not self._filler_alive():
                if not self._committed():
                    raise FillerGone(offset, "stopped")
                continue  # committed since the read: the rest is there
            if time.monotonic() - idle_since > self.stall:
                raise FillerGone(offset, f"made no progress for {self.stall:g} s")
            time.sleep(FOLLOW_POLL)

    def _filler_alive(self) -> bool:
        """The filler's exclusive lock is held (a shared one taken here then
        marks the file in use, as a hit's does, until it is closed)."""
        return not try_lock(self.fd, exclusive=False)

    def _committed(self) -> bool:
        """Renamed into the entries whole (an aborted fill is unlinked)."""
        status = os.fstat(self.fd)
        return status.st_nlink > 0 and status.st_size == self.size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
