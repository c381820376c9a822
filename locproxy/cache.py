"""A site image cache: each image read from a backend once, then served
from local disk, verified, within a hard size cap.

Layout of ``cache_dir``::

    entries/<key>          committed images (sendfile'd to clients)
    fills/<key>.<size>     images being written (the size reserved for them)
    index.sqlite           what is committed: size, identity, last use, last full check
    lock                   taken while space is reserved or freed

Keys are content addresses: a hash of the image id and its digest
(``os_hash_algo`` and ``os_hash_value``). An active image's data never
changes, and a re-uploaded or deleted-and-recreated image has another
digest, so an image never gets another image's bytes.

The promises, and how they are kept:

* **Only verified bytes are committed.** A fill is written beside the
  client's download (``Fill.write``) and committed (fsync, atomic rename)
  only after the whole body matched the digest; a mismatch, a client that
  goes away, a full disk or a crash leaves no committed entry. Write errors
  only stop the fill, never the download. Stale fills are removed at start.
* **One backend read per image, across threads and workers.** The filler
  holds an exclusive ``flock`` on its fill file; other requests for the same
  image follow the growing file (``Follow``) instead of going to a backend.
  If the filler dies (its lock is gone, the file incomplete), the follower
  resumes from the backends at the offset it reached, and takes the fill
  over.
* **A hard cap.** Space is reserved before a fill starts, under the cache's
  lock: least recently used entries are removed first, never one being read
  (readers hold a shared ``flock`` on it), and an image that cannot fit is
  served without being cached.
* **Never a corrupt entry served whole.** Each hit checks the entry's
  identity (device, inode, size, mtime, ctime as committed); the first hit in
  a process, and any hit after ``verify_interval``, re-hashes it while
  serving (a mismatch aborts the download and removes the entry).

Every request is still authorised by the upstream first; the cache only
changes where the bytes come from. Bookkeeping rules apply to the index
(``locproxy.bookkeeping``): when it fails, the cache steps aside and
downloads go on as without it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from locproxy.bookkeeping import SharedFile

LOG = logging.getLogger(__name__)

Digest = tuple[str, str]

#: How often a follower looks for new bytes of a growing fill.
FOLLOW_POLL = 0.01
#: How long a follower waits for bytes from a live filler before giving up on it.
FOLLOW_STALL = 60.0

#: ``SiteCache.fill``: the entry was committed meanwhile.
COMMITTED = "committed"

_SCHEMA = ("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, image TEXT, size INTEGER, identity TEXT,"
           " last_used REAL, verified REAL)")


def cache_key(image_id: str, digest: Digest) -> str:
    text = f"{image_id}\0{digest[0].lower()}\0{digest[1].lower()}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _identity(fd: int) -> list[int]:
    stat = os.fstat(fd)
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


@dataclass
class Entry:
    """A committed image, opened with a shared lock (eviction skips it
    while this file object is open)."""

    key: str
    fileobj: BinaryIO
    size: int
    verify: bool  # re-hash it while serving (first use in this process, or due)


class SiteCache:
    """The cache in one directory, shared by the workers of a node."""

    def __init__(self, directory: str, max_size: int, *, verify_interval: float = 86400.0,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        self.directory = directory
        self.max_size = max_size
        self.verify_interval = verify_interval
        self.on_event = on_event or (lambda event, amount: None)
        self.entries = os.path.join(directory, "entries")
        self.fills = os.path.join(directory, "fills")
        for path in (self.entries, self.fills):
            os.makedirs(path, exist_ok=True)
        self.index = SharedFile(os.path.join(directory, "index.sqlite"), on_error=lambda what: None)
        self.index.open("cache", lambda db: db.execute(_SCHEMA))
        self._verified_here: set[str] = set()  # entries this process has hashed whole
        self._lock = threading.Lock()
        self.remove_stale_fills()

    @property
    def degraded(self) -> str | None:
        return self.index.degraded

    # -- hits ----------------------------------------------------------------------

    def lookup(self, key: str, size: int) -> Entry | None:
        """The committed entry for ``key``, opened for reading, or None."""
        ok, row = self.index.run("cache", lambda db: db.execute(
            "SELECT identity, verified FROM entries WHERE key = ?", (key,)).fetchone())
        if not ok or row is None:
            return None
        try:
            fileobj = open(os.path.join(self.entries, key), "rb", buffering=0)
        except OSError:
            self._forget(key)
            return None
        try:
            fcntl.flock(fileobj.fileno(), fcntl.LOCK_SH)
            if _identity(fileobj.fileno()) != json.loads(row[0]) or os.fstat(fileobj.fileno()).st_size != size:
                LOG.error("cache entry %s changed on disk since it was committed: removed", key)
                fileobj.close()
                self.evict(key)
                return None
        except BaseException:
            fileobj.close()
            raise
        due = time.time() - (row[1] or 0) > self.verify_interval
        with self._lock:
            verify = key not in self._verified_here or due
        now = time.time()
        self.index.run("cache", lambda db: db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key)))
        return Entry(key, fileobj, size, verify)

    def verified(self, key: str) -> None:
        """The entry was hashed whole and matched."""
        with self._lock:
            self._verified_here.add(key)
        now = time.time()
        self.index.run("cache", lambda db: db.execute("UPDATE entries SET verified = ? WHERE key = ?", (now, key)))

    def corrupt(self, key: str) -> None:
        LOG.error("cache entry %s does not match its digest: removed", key)
        self.evict(key)

    # -- fills ---------------------------------------------------------------------

    def fill(self, key: str, image_id: str, size: int) -> Fill | Follow | str | None:
        """Start filling ``key``, or follow the fill already running;
        ``COMMITTED`` when a fill ended since the caller's lookup (look again);
        None when the image cannot be cached (too large, no space, a failing disk)."""
        path = os.path.join(self.fills, f"{key}.{size}")
        follow = self._follow(key, path, size)
        if follow is not None:
            return follow
        if os.path.exists(os.path.join(self.entries, key)):
            return COMMITTED
        if not self._reserve(size):
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # another filler won the race: follow it
            self._unreserve()
            return self._follow(key, path, size)
        except OSError as error:
            LOG.warning("cache: cannot start a fill: %s", error)
            self._unreserve()
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return Fill(self, key, image_id, size, path, fd)

    def following(self, key: str, size: int) -> Follow | None:
        """The fill of ``key`` in progress, to read as it grows; None if there is none."""
        return self._follow(key, os.path.join(self.fills, f"{key}.{size}"), size)

    def _follow(self, key: str, path: str, size: int) -> Follow | None:
        try:
            fileobj = open(path, "rb", buffering=0)
        except OSError:
            return None
        try:
            fcntl.flock(fileobj.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # locked by a live filler: follow it
            return Follow(self, key, path, size, fileobj)
        # Nobody fills it: a crashed filler's leftover.
        fcntl.flock(fileobj.fileno(), fcntl.LOCK_UN)
        fileobj.close()
        self._remove_if_unlocked(path)
        return None

    def take_over(self, follow: Follow) -> Fill | None:
        """The filler ``follow`` read from died: continue its fill, if no one else did."""
        try:
            fd = os.open(follow.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.fstat(follow.fileobj.fileno()).st_ino:
                raise OSError("another fill")
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            return None
        return Fill(self, follow.key, "", follow.size, follow.path, fd)

    def _commit(self, fill: Fill) -> bool:
        entry = os.path.join(self.entries, fill.key)
        try:
            os.fsync(fill.fd)
            os.rename(fill.path, entry)
            dir_fd = os.open(self.entries, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself is durable
            finally:
                os.close(dir_fd)
            identity = json.dumps(_identity(fill.fd))
        except OSError as error:
            LOG.warning("cache: cannot commit %s: %s", fill.key, error)
            return False
        now = time.time()
        ok, _ = self.index.run("cache", lambda db: db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
            (fill.key, fill.image_id, fill.size, identity, now, now)))
        if not ok:
            _unlink(entry)
            return False
        with self._lock:
            self._verified_here.add(fill.key)
        self.on_event("fill", fill.size)
        return True

    # -- space ---------------------------------------------------------------------

    def _reserve(self, size: int) -> bool:
        """Room for ``size`` more bytes, made by evicting what is least
        recently used and not being read; False if it cannot be made."""
        if size > self.max_size:
            return False
        with self._locked():
            ok, rows = self.index.run("cache", lambda db: db.execute(
                "SELECT key, size FROM entries ORDER BY last_used").fetchall())
            if not ok:
                return False
            used = sum(row[1] for row in rows) + self._filling()
            for key, entry_size in rows:
                if used + size <= self.max_size:
                    break
                if self._evict_if_unused(key):
                    used -= entry_size
            return used + size <= self.max_size

    def _unreserve(self) -> None:
        """Nothing to do: a reservation is the fill file itself."""

    def _filling(self) -> int:
        """Bytes reserved by fills in progress (their names carry their size)."""
        total = 0
        for name in os.listdir(self.fills):
            size = name.rpartition(".")[2]
            total += int(size) if size.isdigit() else 0
        return total

    def usage(self) -> tuple[int, int]:
        """(bytes committed, entries)."""
        ok, row = self.index.run("cache", lambda db: db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM entries").fetchone())
        return (row[0], row[1]) if ok and row else (0, 0)

    def list(self) -> list[dict[str, Any]]:
        ok, rows = self.index.run("cache", lambda db: db.execute(
            "SELECT key, image, size, last_used, verified FROM entries ORDER BY last_used DESC").fetchall())
        return [dict(zip(("key", "image", "size", "last_used", "verified"), row)) for row in rows or ()]

    def evict(self, key: str) -> bool:
        """Remove an entry unless it is being read; True if removed."""
        with self._locked():
            return self._evict_if_unused(key)

    def evict_image(self, image_id: str) -> tuple[int, int]:
        """(removed, busy) entries of ``image_id``."""
        ok, rows = self.index.run("cache", lambda db: db.execute(
            "SELECT key FROM entries WHERE image = ?", (image_id,)).fetchall())
        removed = sum(self.evict(row[0]) for row in rows or ())
        return removed, len(rows or ()) - removed

    def clear(self) -> tuple[int, int]:
        """(removed, busy) of every entry."""
        keys = [entry["key"] for entry in self.list()]
        removed = sum(self.evict(key) for key in keys)
        return removed, len(keys) - removed

    def _evict_if_unused(self, key: str) -> bool:
        path = os.path.join(self.entries, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._forget(key)
            return True
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # being read
        try:
            size = os.fstat(fd).st_size
            _unlink(path)
            self._forget(key)
        finally:
            os.close(fd)
        self.on_event("eviction", size)
        return True

    def _forget(self, key: str) -> None:
        self.index.run("cache", lambda db: db.execute("DELETE FROM entries WHERE key = ?", (key,)))

    def remove_stale_fills(self) -> None:
        """Fills no process holds (a crash, a kill -9): removed at start."""
        for name in os.listdir(self.fills):
            self._remove_if_unlocked(os.path.join(self.fills, name))

    @staticmethod
    def _remove_if_unlocked(path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _unlink(path)
        except OSError:
            pass  # a live filler holds it
        finally:
            os.close(fd)

    class _CacheLock:
        def __init__(self, path: str) -> None:
            self.path = path

        def __enter__(self) -> None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

        def __exit__(self, *exc_info: Any) -> None:
            os.close(self.fd)

    def _locked(self) -> SiteCache._CacheLock:
        return self._CacheLock(os.path.join(self.directory, "lock"))


class Fill:
    """One image being written to the cache beside its download."""

    def __init__(self, cache: SiteCache, key: str, image_id: str, size: int, path: str, fd: int) -> None:
        self.cache, self.key, self.image_id, self.size, self.path, self.fd = cache, key, image_id, size, path, fd
        self.written = os.fstat(fd).st_size
        self.failed = False

    def write(self, offset: int, chunk: bytes) -> None:
        """Append ``chunk`` (at ``offset`` of the image); a write error stops
        the fill, never the download."""
        if self.failed or offset + len(chunk) <= self.written:
            return
        if offset != self.written:  # a gap: nothing to commit any more
            self.abort()
            return
        try:
            os.write(self.fd, chunk)
            self.written += len(chunk)
        except OSError as error:
            LOG.warning("cache: fill of %s stopped at byte %d: %s", self.key, self.written,
                        errno.errorcode.get(error.errno or 0, error))
            self.abort()

    def finish(self, verified: bool) -> bool:
        """Commit if the whole image was written and verified; else abort."""
        if self.failed:
            return False
        if not verified or self.written != self.size:
            self.abort()
            return False
        committed = self.cache._commit(self)
        self._close()
        return committed

    def abort(self) -> None:
        if not self.failed:
            self.failed = True
            _unlink(self.path)
            self.cache.on_event("fill_aborted", self.written)
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock: followers see the end
            self.fd = -1


class FillerGone(Exception):
    """The fill a follower reads from stopped before the end of the image."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"the cache fill stopped at byte {offset}")
        self.offset = offset


class Follow:
    """A fill in progress, read as it grows (another request is filling it)."""

    def __init__(self, cache: SiteCache, key: str, path: str, size: int, fileobj: BinaryIO) -> None:
        self.cache, self.key, self.path, self.size, self.fileobj = cache, key, path, size, fileobj

    def chunks(self, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` as they are written; ``FillerGone`` if the
        filler stops (dies, or aborts) before ``end``."""
        fd, offset, waited = self.fileobj.fileno(), start, 0.0
        while offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if chunk:
                offset += len(chunk)
                waited = 0.0
                yield chunk
                continue
            if not self._filler_alive() and os.fstat(fd).st_size <= offset:
                raise FillerGone(offset)
            if waited > FOLLOW_STALL:
                raise FillerGone(offset)
            time.sleep(FOLLOW_POLL)
            waited += FOLLOW_POLL

    def _filler_alive(self) -> bool:
        try:
            fcntl.flock(self.fileobj.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(self.fileobj.fileno(), fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        self.fileobj.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_index_read_only(directory: str) -> sqlite3.Connection:
    from locproxy.bookkeeping import open_read_only

    return open_read_only(os.path.join(directory, "index.sqlite"))
