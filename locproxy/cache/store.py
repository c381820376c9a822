"""The site cache in one directory, shared by the workers of a node.

Layout of ``cache_dir`` (owner-only, see ``files.py``)::

    entries/<key>   committed images
    fills/<key>     images being written; the filler holds an exclusive flock
    index.sqlite    entries (size, digest, fingerprint, last use, last scrub)
                    and the reservations of the fills in progress
    lock            taken while space is reserved, entries committed or removed

Keys are content addresses: a hash of the image id and its digest.

``begin(key, ...)`` is the one way in: under the cache's lock it returns a
``Hit`` (a committed entry), a ``Follow`` (a fill in progress), a new
``Fill`` (whole-image downloads only; its space reserved in the index
before the lock is released, so concurrent fills never miss each other and
the cap holds), or None: not cached. Entries are committed only after the
whole image matched its digest, with the fingerprint that read recorded.

**One guard for every failure** (``guard.py``): any error of the disk, the
index or a lock (a file system remounted read-only, ``fills/`` removed, a
full disk, a lock held by a stopped process beyond ``LOCK_TIMEOUT``) puts
the cache aside: ``begin`` then answers None at once and downloads go on as
without a cache, until the cache heals by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from typing import Any, Callable, TypeVar

from locproxy.bookkeeping import SharedFile
from locproxy.cache.files import CacheDirectory, try_lock
from locproxy.cache.fills import Fill, Follow, Hit
from locproxy.cache.guard import Guard
from locproxy.fingerprints import Fingerprint

LOG = logging.getLogger("locproxy.cache")

T = TypeVar("T")
Digest = tuple[str, str]

#: The longest wait for the cache's lock.
LOCK_TIMEOUT = 1.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cache_entries (key TEXT PRIMARY KEY, image TEXT, size INTEGER, digest TEXT,"
    " fingerprint BLOB, last_used REAL, verified REAL)",
    "CREATE TABLE IF NOT EXISTS cache_fills (key TEXT PRIMARY KEY, image TEXT, size INTEGER, started REAL)",
)


def cache_key(image_id: str, digest: Digest) -> str:
    text = f"{image_id}\0{digest[0].lower()}\0{digest[1].lower()}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class IndexFailing(OSError):
    """The index could not be read or written (see ``SharedFile``)."""


class SiteCache:
    def __init__(self, directory: str, max_size: int, *, verify_interval: float = 86400.0,
                 on_event: Callable[[str, int], None] | None = None) -> None:
        self.directory = directory
        self.max_size = max_size
        self.verify_interval = verify_interval
        self.dir = CacheDirectory(directory)
        self.guard = Guard(directory, self._open, on_event or (lambda event, amount: None))
        self.index = SharedFile(os.path.join(directory, "index.sqlite"), name="cache index",
                                on_error=lambda what: None)
        self._guarded("start", self.tidy, None)

    def _guarded(self, what: str, operation: Callable[[], T], default: T) -> T:
        return self.guard.run(what, operation, default)

    def _open(self) -> None:
        """(Re)open the directory and the index (which must be a regular file, never a link)."""
        self.dir.open()
        self.dir.check_index()
        if not self.index.open("cache", lambda db: [db.execute(statement) for statement in _SCHEMA], LOCK_TIMEOUT):
            raise IndexFailing(f"the index cannot be used: {self.index.degraded}")

    def probe(self) -> None:
        """A cheap look at the directory (``/healthcheck``): a removed
        directory or a read-only file system puts the cache aside now,
        before a download meets it."""
        self._guarded("probe", self.dir.check, None)

    @property
    def degraded(self) -> str | None:
        """The last error while the cache is aside (or its index fails), else None."""
        return self.guard.aside or self.index.degraded

    def _sql(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        ok, result = self.index.run("cache", operation)
        if not ok:
            raise IndexFailing(f"the index {self.index.degraded or 'failed'}")
        return result  # type: ignore[return-value]

    # -- the way in --------------------------------------------------------------------

    def begin(self, key: str, image_id: str, size: int, digest: Digest, *, whole: bool,
              stall: float = 10.0) -> Hit | Follow | Fill | None:
        """A hit, the fill in progress to follow, a new fill (``whole``
        downloads only), or None: not cached (too large, no room, aside)."""
        return self._guarded("begin", lambda: self._begin(key, image_id, size, digest, whole, stall), None)

    def _begin(self, key: str, image_id: str, size: int, digest: Digest, whole: bool,
               stall: float) -> Hit | Follow | Fill | None:
        hit = self._hit(key, size)
        if hit is not None:
            return hit
        with self.dir.locked(LOCK_TIMEOUT):
            hit = self._hit(key, size)  # committed since the first look
            if hit is not None:
                return hit
            follow = self._follow(key, size, stall)
            if follow is not None or not whole:
                return follow
            return self._start_fill(key, image_id, size, digest)

    def _hit(self, key: str, size: int) -> Hit | None:
        row = self._sql(lambda db: db.execute(
            "SELECT fingerprint FROM cache_entries WHERE key = ? AND size = ?", (key, size)).fetchone())
        if row is None:
            return None
        try:
            fd = self.dir.open_file(self.dir.entries, key)
        except FileNotFoundError:
            self._sql(lambda db: db.execute("DELETE FROM cache_entries WHERE key = ?", (key,)))
            return None
        if not try_lock(fd, exclusive=False) or os.fstat(fd).st_size != size:
            os.close(fd)  # being removed, or not what was committed
            return None
        now = time.time()
        self._sql(lambda db: db.execute("UPDATE cache_entries SET last_used = ? WHERE key = ?", (now, key)))
        fingerprint = _fingerprint(size, row[0])
        return Hit(self, key, os.fdopen(fd, "rb", buffering=0), size, fingerprint)

    def _follow(self, key: str, size: int, stall: float) -> Follow | None:
        """The live fill of ``key``; a dead filler's leftovers are removed. Call with the lock."""
        try:
            fd = self.dir.open_file(self.dir.fills, key)
        except FileNotFoundError:
            self._sql(lambda db: db.execute("DELETE FROM cache_fills WHERE key = ?", (key,)))
            return None
        if not try_lock(fd, exclusive=False):
            return Follow(key, size, fd, stall)  # its filler holds it
        os.close(fd)
        self._drop_fill(key)
        return None

    def _start_fill(self, key: str, image_id: str, size: int, digest: Digest) -> Fill | None:
        """Reserve room and create the fill; call with the lock."""
        if not self._make_room(size):
            return None
        fd = self.dir.open_file(self.dir.fills, key, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try_lock(fd, exclusive=True)  # just created: nobody else holds it
        now = time.time()
        try:
            self._sql(lambda db: db.execute("INSERT OR REPLACE INTO cache_fills VALUES (?, ?, ?, ?)",
                                            (key, image_id, size, now)))
        except BaseException:
            os.close(fd)
            self.dir.unlink(self.dir.fills, key)
            raise
        return Fill(self, key, image_id, size, f"{digest[0].lower()}:{digest[1].lower()}", fd)

    def follow_fill(self, fill: Fill, stall: float = 10.0) -> Follow | None:
        """The fill this process just started, to read as it grows."""
        return self._guarded("follow", lambda: Follow(fill.key, fill.size,
                                                      self.dir.open_file(self.dir.fills, fill.key), stall), None)

    # -- fills end -----------------------------------------------------------------

    def commit(self, fill: Fill, fingerprint: Fingerprint) -> bool:
        """The whole, verified ``fill`` becomes an entry (called by ``Fill.commit``)."""
        def commit() -> bool:
            os.fsync(fill.fd)
            now = time.time()
            with self.dir.locked(LOCK_TIMEOUT):
                self.dir.commit(fill.key)
                self._sql(lambda db: _replace_fill_by_entry(db, fill, fingerprint, now))
            self.guard.event("fill", fill.size)
            LOG.info("cache entry %s committed: image %s, %d bytes", fill.key, fill.image_id, fill.size)
            return True

        if self._guarded("commit", commit, False):
            return True
        self.abandon(fill)
        return False

    def abandon(self, fill: Fill) -> None:
        """An aborted fill leaves nothing behind (or only what ``tidy`` removes)."""
        self._guarded("abandon", lambda: self._drop_fill(fill.key), None)
        self.guard.event("fill_aborted", fill.written)

    def _drop_fill(self, key: str) -> None:
        self.dir.unlink(self.dir.fills, key)
        self._sql(lambda db: db.execute("DELETE FROM cache_fills WHERE key = ?", (key,)))
    # -- space ---------------------------------------------------------------------

    def _make_room(self, size: int) -> bool:
        """Room for ``size`` more bytes, by evicting least recently used
        entries no one reads; call with the lock."""
        if size > self.max_size:
            return False
        rows = self._sql(lambda db: db.execute("SELECT key, size FROM cache_entries ORDER BY last_used").fetchall())
        used = sum(row[1] for row in rows) + self._reserved()
        for key, entry_size in rows:
            if used + size <= self.max_size:
                break
            if self._evict_if_unused(key):
                used -= entry_size
        return used + size <= self.max_size

    def _reserved(self) -> int:
        """Bytes reserved by live fills (dead ones are removed on the way)."""
        total = 0
        for key, size in self._sql(lambda db: db.execute("SELECT key, size FROM cache_fills").fetchall()):
            follow = self._follow(key, size, 0.0)
            if follow is not None:
                follow.close()
                total += size
        return total

    def _evict_if_unused(self, key: str) -> bool:
        try:
            fd = self.dir.open_file(self.dir.entries, key)
        except FileNotFoundError:
            self._forget(key)
            return True
        try:
            if not try_lock(fd, exclusive=True):
                return False  # being read
            size = os.fstat(fd).st_size
            self.dir.unlink(self.dir.entries, key)
            self._forget(key)
        finally:
            os.close(fd)
        self.guard.event("eviction", size)
        return True

    def _forget(self, key: str) -> None:
        self._sql(lambda db: db.execute("DELETE FROM cache_entries WHERE key = ?", (key,)))

    # -- removal ---------------------------------------------------------------------

    def remove(self, key: str, why: str) -> None:
        """Remove an entry now, even while it is read (readers keep their
        open file; every block they send is still checked)."""
        def remove() -> None:
            with self.dir.locked(LOCK_TIMEOUT):
                self.dir.unlink(self.dir.entries, key)
                self._forget(key)

        self._guarded("remove", remove, None)
        LOG.error("cache entry %s removed: %s", key, why)

    def evict(self, key: str) -> bool:
        """Remove an entry unless it is being read; True if removed."""
        def evict() -> bool:
            with self.dir.locked(LOCK_TIMEOUT):
                return self._evict_if_unused(key)

        return self._guarded("evict", evict, False)

    def keys_of(self, image_id: str | None = None) -> list[str]:
        rows = self._guarded("list", lambda: self._sql(lambda db: db.execute(
            "SELECT key FROM cache_entries" + ("" if image_id is None else " WHERE image = ?"),
            () if image_id is None else (image_id,)).fetchall()), [])
        return [row[0] for row in rows]

    def drop_image(self, image_id: str) -> int:
        """The image was deleted upstream: its entries go, read or not."""
        keys = self.keys_of(image_id)
        for key in keys:
            self.remove(key, f"image {image_id} was deleted")
        return len(keys)

    def tidy(self) -> None:
        """Orphans out: files without an index row (an index lost or
        replaced) and rows without a file; fills no live filler holds."""
        with self.dir.locked(LOCK_TIMEOUT):
            known = set(self._sql(lambda db: [row[0] for row in db.execute("SELECT key FROM cache_entries")]))
            present = set(self.dir.names(self.dir.entries))
            for key in present - known:
                self._remove_orphan(key)
            for key in known - present:
                self._forget(key)
            for key in self.dir.names(self.dir.fills):
                follow = self._follow(key, 0, 0.0)
                if follow is not None:
                    follow.close()

    def _remove_orphan(self, key: str) -> None:
        try:
            fd = self.dir.open_file(self.dir.entries, key)
            size = os.fstat(fd).st_size
            os.close(fd)
        except OSError:
            size = 0
        self.dir.unlink(self.dir.entries, key)
        self.guard.event("orphan", size)
        LOG.warning("cache: %s in %s had no index entry: removed", key, self.directory)

    # -- what is there -----------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(bytes committed, entries)."""
        row = self._guarded("usage", lambda: self._sql(lambda db: db.execute(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cache_entries").fetchone()), None)
        return (row[0], row[1]) if row else (0, 0)

    def list(self) -> list[dict[str, Any]]:
        rows = self._guarded("list", lambda: self._sql(lambda db: db.execute(
            "SELECT key, image, size, last_used, verified FROM cache_entries ORDER BY last_used DESC").fetchall()),
            [])
        return [dict(zip(("key", "image", "size", "last_used", "verified"), row)) for row in rows]

    def evict_image(self, image_id: str | None) -> tuple[int, int]:
        """(removed, busy) entries of ``image_id`` (None: every entry)."""
        keys = self.keys_of(image_id)
        removed = sum(self.evict(key) for key in keys)
        return removed, len(keys) - removed

    def clear(self) -> tuple[int, int]:
        return self.evict_image(None)

    # -- scrubbing ---------------------------------------------------------------------

    def scrub_due(self, key: str) -> tuple[str, str] | None:
        """The entry's digest when its last full check is older than
        ``verify_interval`` (a background scrub is due), else None."""
        row = self._guarded("scrub", lambda: self._sql(lambda db: db.execute(
            "SELECT digest, verified FROM cache_entries WHERE key = ?", (key,)).fetchone()), None)
        if row is None or time.time() - (row[1] or 0) <= self.verify_interval:
            return None
        algorithm, _, value = str(row[0]).partition(":")
        return algorithm, value

    def scrubbed(self, key: str) -> None:
        now = time.time()
        self._guarded("scrub", lambda: self._sql(lambda db: db.execute(
            "UPDATE cache_entries SET verified = ? WHERE key = ?", (now, key))), None)


def _replace_fill_by_entry(db: sqlite3.Connection, fill: Fill, fingerprint: Fingerprint, now: float) -> None:
    db.execute("BEGIN IMMEDIATE")  # one transaction: never both rows, never neither
    db.execute("DELETE FROM cache_fills WHERE key = ?", (fill.key,))
    db.execute("INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?)",
               (fill.key, fill.image_id, fill.size, fill.digest, fingerprint.blocks, now, now))
    db.execute("COMMIT")


def _fingerprint(size: int, blocks: Any) -> Fingerprint | None:
    try:
        return None if blocks is None else Fingerprint(size, bytes(blocks))
    except (TypeError, ValueError):
        return None
