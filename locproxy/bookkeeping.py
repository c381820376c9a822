"""The shared sqlite file behind locproxy's bookkeeping, and the rule that
bookkeeping never hurts the job it describes.

What is learnt about backends (``locproxy.tracker``) and the location orders
shown to clients (``locproxy.shown``) live in one sqlite file
(``metrics_file``), shared by every worker process of a node. A failure of that
file (disk full, a lock held by a stopped worker, a file made read-only under
us) must never fail, abort or noticeably slow a download or a response:

* every operation on the file goes through ``SharedFile.run``, which catches
  sqlite and OS errors, logs the first one as a WARNING (then at most one a
  minute), counts them, and reports the failure to its caller, who carries on
  from memory;
* after a failure the file is left alone for ``retry_after`` seconds, so a
  lock held forever costs one ``busy_timeout`` per interval and process, not
  one per request;
* ``degraded`` tells ``/healthcheck`` while the file is failing.

Standard library only, like the tracker that uses it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Callable, TypeVar
from urllib.parse import quote

LOG = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a write may wait for another process's lock. Writes are a few
#: rows; contention between healthy workers lasts microseconds.
BUSY_TIMEOUT = 0.2
#: How long loading waits for another worker loading the same file.
LOAD_TIMEOUT = 10.0
#: Seconds the file is left alone after a failure.
RETRY_AFTER = 30.0
#: Seconds between two WARNINGs about the same file.
LOG_INTERVAL = 60.0

_ERRORS = (sqlite3.Error, OSError)


class SharedFile:
    """One sqlite file, one connection per process, every use guarded.

    ``on_error(what)`` is called (guarded too) for each failure, e.g. to count
    it in Prometheus; ``what`` names the user ("tracker", "shown_orders").
    """

    def __init__(self, path: str, *, on_error: Callable[[str], None] | None = None, name: str = "metrics_file",
                 busy_timeout: float = BUSY_TIMEOUT, retry_after: float = RETRY_AFTER) -> None:
        self.path = path
        self.name = name  # what the file is to an operator, in the log
        self.on_error = on_error
        self.busy_timeout = busy_timeout
        self.retry_after = retry_after
        self.errors = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._failing_until = 0.0
        self._last_error = ""
        self._logged_at = float("-inf")
        self._setup: Callable[[sqlite3.Connection], None] | None = None

    # -- use -----------------------------------------------------------------

    def run(self, what: str, operation: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """``(True, result)`` of ``operation(connection)``, or ``(False, None)``
        when the file failed now or recently. Never raises sqlite or OS errors."""
        if time.monotonic() < self._failing_until:
            return False, None
        with self._lock:
            try:
                return True, operation(self._connection())
            except _ERRORS as error:
                self._failed(what, error)
                return False, None

    def open(self, what: str, setup: Callable[[sqlite3.Connection], None], timeout: float = LOAD_TIMEOUT) -> bool:
        """At load: run ``setup`` (schema) and prove the file is writable.

        Workers that load at the same moment wait for each other here (up to
        ``LOAD_TIMEOUT``), not the ``busy_timeout`` of requests. A file that
        fails (corrupt, locked for longer, made read-only) is a bookkeeping
        failure like any other, never a refusal: a worker that starts while
        it fails, first or a replacement, degrades as running ones do, and
        ``setup`` runs again when the file is retried. (Options that can
        never work are refused earlier, by the option's parser.) False if
        it failed.
        """
        self._setup = setup
        with self._lock:
            try:
                self._connection(timeout)
                return True
            except _ERRORS as error:
                self._failed(what, error)
                return False

    @property
    def degraded(self) -> str | None:
        """The last error while the file is being left alone, else None."""
        return self._last_error if time.monotonic() < self._failing_until else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    # -- internals -----------------------------------------------------------

    def _connection(self, timeout: float | None = None) -> sqlite3.Connection:
        """This process's connection (one must not cross a fork), set up on
        first use and after a failure; call with the lock."""
        if self._db is None or self._pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=timeout or self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                db.execute("PRAGMA synchronous=NORMAL")
                if self._setup is not None:
                    self._setup(db)
                    db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file
                    db.execute("ROLLBACK")
                db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            except BaseException:
                db.close()
                raise
            self._db, self._pid = db, os.getpid()
        return self._db

    def _failed(self, what: str, error: BaseException) -> None:
        self.errors += 1
        self._failing_until = time.monotonic() + self.retry_after
        self._last_error = f"{what}: {type(error).__name__}: {error}"
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except _ERRORS:
                pass
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None  # a fresh connection, set up again, when the file is retried
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            self._logged_at = now
            LOG.warning("%s %s failed (%s); carrying on from memory, retrying in %.0f s "
                        "(%d errors so far)", self.name, self.path, self._last_error, self.retry_after, self.errors)
        if self.on_error is not None:
            try:
                self.on_error(what)
            except Exception:  # noqa: BLE001 - counting must not fail either
                LOG.debug("bookkeeping error hook failed", exc_info=True)


def open_read_only(path: str) -> sqlite3.Connection:
    """A connection that never writes, for ``locproxy stats``: works on a
    read-only file or directory (``immutable`` when even the WAL index
    cannot be opened)."""
    uri = "file:" + quote(os.path.abspath(path))
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        db.execute("SELECT 1 FROM sqlite_master").fetchall()
        return db
    except sqlite3.OperationalError:
        db.close()
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


class KeptInFile:
    """A store kept in memory and, with a ``metrics_file``, in its
    ``SharedFile`` too (``_file``): what is failing, and closing it."""

    _file: SharedFile | None = None

    @property
    def degraded(self) -> str | None:
        return None if self._file is None else self._file.degraded

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
