"""The one guard of every operation of the site cache on its disk, its
index and its locks: an error puts the cache aside, never in a download's way.

``Guard.run(what, operation, default)`` returns ``operation()``, or
``default`` if it raised ``OSError`` or ``sqlite3.Error`` (a lock waited for
too long is an ``OSError`` too: ``files.LockTimeout``). After an error the
cache stays aside for ``RETRY_AFTER`` seconds (``run`` answers ``default``
at once), the error is logged (at most once a minute) and counted
(``on_event("error", 0)``), and ``degraded`` says why; the first operation
after the back-off reopens the cache first (``reopen``), so it heals by
itself once its directory works again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, TypeVar

LOG = logging.getLogger("locproxy.cache")

T = TypeVar("T")

#: Seconds the cache stays aside after an error.
RETRY_AFTER = 30.0
LOG_INTERVAL = 60.0
ERRORS = (OSError, sqlite3.Error)


class Guard:
    def __init__(self, directory: str, reopen: Callable[[], None], on_event: Callable[[str, int], None]) -> None:
        self.directory, self.reopen, self.on_event = directory, reopen, on_event
        self.errors = 0
        self._aside_until = 0.0
        self._last_error = ""
        self._logged_at = float("-inf")
        self._closed = True  # opened by the first operation: a start that fails degrades, as later failures do

    def run(self, what: str, operation: Callable[[], T], default: T) -> T:
        if time.monotonic() < self._aside_until:
            return default
        try:
            if self._closed:
                self.reopen()
                self._closed = False
            return operation()
        except ERRORS as error:
            self.failed(what, error)
            return default

    def failed(self, what: str, error: BaseException) -> None:
        self.errors += 1
        self._closed = True
        self._aside_until = time.monotonic() + RETRY_AFTER
        self._last_error = f"{what}: {type(error).__name__}: {error}"
        self.event("error", 0)
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            self._logged_at = now
            LOG.warning("site cache %s failed (%s); downloads go on without it, retrying in %.0f s "
                        "(%d errors so far)", self.directory, self._last_error, RETRY_AFTER, self.errors)

    @property
    def aside(self) -> str | None:
        """The last error while the cache is aside, else None."""
        return self._last_error if time.monotonic() < self._aside_until else None

    def event(self, event: str, amount: int) -> None:
        try:
            self.on_event(event, amount)
        except Exception:  # noqa: BLE001 - counting must not fail the cache
            LOG.debug("cache event hook failed", exc_info=True)
