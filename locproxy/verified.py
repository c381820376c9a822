"""Copies whose bytes matched their image's digest: verified once, then
streamed without hashing, by every worker and after restarts.

A copy is the same copy only while its *identity* is unchanged:

* a file: device, inode, size, modification and change time (a copy
  rewritten in place with its mtime restored has a new ctime: ``utime``
  cannot set that);
* an http copy: its URL (credentials removed), a validator the backend sent
  (a strong ``ETag``, else ``Last-Modified``: RFC 9110 section 8.8) and its
  length. A backend that sends no validator gives no identity: its copies
  are verified on every download.

Records say "this identity held these bytes: this digest". They live in
memory and, with ``metrics_file``, in that sqlite file, shared by the workers
and kept across restarts. A mismatch anywhere forgets the copy. Bookkeeping
rules apply (``locproxy.bookkeeping``): when the file fails, a record not
found only costs a verification, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

from locproxy.bookkeeping import SharedFile

Identity = Sequence[object]
Digest = tuple[str, str]

#: Records kept per process, and in the shared file.
CAPACITY = 100_000

_SCHEMA = "CREATE TABLE IF NOT EXISTS verified_copies (copy TEXT PRIMARY KEY, digest TEXT, verified REAL)"


def _key(identity: Identity) -> str:
    return hashlib.sha256(repr(tuple(identity)).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _value(digest: Digest) -> str:
    return f"{digest[0].lower()}:{digest[1].lower()}"


class VerifiedCopies:
    """Which copy identities were verified against which digest."""

    def __init__(self, path: str | None = None, *, on_error: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, str] = OrderedDict()
        self._file: SharedFile | None = None
        self._pruned_at = float("-inf")
        if path:
            self._file = SharedFile(path, on_error=on_error)
            self._file.open("verified_copies", lambda db: db.execute(_SCHEMA))

    def contains(self, identity: Identity | None, digest: Digest) -> bool:
        """Whether this copy, as it is now, was verified to hold ``digest``."""
        if identity is None:
            return False
        key, value = _key(identity), _value(digest)
        with self._lock:
            if self._memory.get(key) == value:
                self._memory.move_to_end(key)
                return True
        if self._file is None:
            return False
        _ok, row = self._file.run("verified_copies", lambda db: db.execute(
            "SELECT digest FROM verified_copies WHERE copy = ?", (key,)).fetchone())
        if row is None or row[0] != value:
            return False
        self._remember(key, value)  # verified by another worker, or before a restart
        return True

    def add(self, identity: Identity | None, digest: Digest) -> None:
        if identity is None:
            return
        key, value = _key(identity), _value(digest)
        self._remember(key, value)
        if self._file is not None:
            self._file.run("verified_copies", lambda db: self._write(db, key, value))

    def forget(self, identity: Identity | None) -> None:
        """A mismatch: this copy is never trusted on the strength of earlier checks."""
        if identity is None:
            return
        key = _key(identity)
        with self._lock:
            self._memory.pop(key, None)
        if self._file is not None:
            self._file.run("verified_copies", lambda db: db.execute(
                "DELETE FROM verified_copies WHERE copy = ?", (key,)))

    def _remember(self, key: str, value: str) -> None:
        with self._lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > CAPACITY:
                self._memory.popitem(last=False)

    def _write(self, db: sqlite3.Connection, key: str, value: str) -> None:
        now = time.time()
        db.execute("INSERT OR REPLACE INTO verified_copies VALUES (?, ?, ?)", (key, value, now))
        if now - self._pruned_at > 3600:  # keep the most recent CAPACITY records
            self._pruned_at = now
            db.execute("DELETE FROM verified_copies WHERE copy NOT IN "
                       "(SELECT copy FROM verified_copies ORDER BY verified DESC LIMIT ?)", (CAPACITY,))

    @property
    def degraded(self) -> str | None:
        return None if self._file is None else self._file.degraded

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
