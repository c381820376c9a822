"""The location orders shown to each client, so that a JSON-patch index
means the copy the client saw.

A client that read ``locations`` through locproxy addresses them by their
position in *that* response (``remove /locations/0`` after
``glance location-delete`` looked the URL up). The order it saw depended on
the strategy, on ``?prefer=``, on what the ``measured`` strategy had learnt
in that worker at that moment, and on the settings before a ``config_file``
switch: none of it can be recomputed reliably at PATCH time. So every image
response that shows ``locations`` is remembered here: per client and image,
when each order was last shown. A PATCH is translated with the order this
client was shown last, and refused (409) when that is not known or no longer
fits the image (see ``locproxy.rewrite.translate_patch``). A client that
read the image twice and patches from the older read is on its own, as with
Glance alone.

Locations are remembered by *token* (``locproxy.rewrite.location_token``):
a short hash of their URL with credentials removed, so no URL or secret is
stored. Clients are told apart by
a hash of their credential headers (``client_key``).

Records live in memory (per process) and, with ``metrics_file``, in that
sqlite file too, so every worker of a node knows what any of them showed
(required for translation across workers). They expire after ``ttl``
seconds. Bookkeeping rules apply (``locproxy.bookkeeping``): a failing file
only means fewer records found, which makes a PATCH refused, never misapplied.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Mapping

from locproxy.bookkeeping import KeptInFile, SharedFile

#: Records kept in memory per process; the least recently shown go first.
MEMORY_RECORDS = 100_000
#: Request headers that tell one client (and its credentials) from another.
CLIENT_HEADERS = ("X-Auth-Token", "Authorization", "Cookie", "X-User-Id", "X-Project-Id")

Key = tuple[str, str, str]  # (client, image id, tokens joined)


def client_key(headers: Mapping[str, str]) -> str:
    """Who is asking, as a hash of the credential headers (never stored as such)."""
    material = "\0".join(headers.get(name, "") for name in CLIENT_HEADERS)
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:24]


_SCHEMA = ("CREATE TABLE IF NOT EXISTS shown_orders (client TEXT, image TEXT, tokens TEXT, shown REAL,"
           " PRIMARY KEY (client, image, tokens))")


class ShownOrders(KeptInFile):
    """Remembers when each order of an image's locations was last shown to
    each client. Every response is written (about 30 µs for one image, 2 ms
    for a page of 1,000 here): exact times are what tells the last read."""

    def __init__(self, path: str | None = None, ttl: float = 3600.0, *,
                 on_error: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._memory: OrderedDict[Key, float] = OrderedDict()  # (client, image, tokens) -> when shown
        self._file: SharedFile | None = None
        self._pruned_at = float("-inf")
        if path:
            self._file = SharedFile(path, on_error=on_error)
            self._file.open("shown_orders", lambda db: db.execute(_SCHEMA))

    def remember(self, client: str, shown: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        """Record ``(image id, tokens in the order shown)`` pairs of one response."""
        now = self.clock()
        rows = [(client, image_id, ",".join(tokens), now) for image_id, tokens in shown]
        if not rows:
            return
        with self._lock:
            for client_, image_id, tokens, _ in rows:
                key = (client_, image_id, tokens)
                self._memory[key] = now
                self._memory.move_to_end(key)
            while len(self._memory) > MEMORY_RECORDS:
                self._memory.popitem(last=False)
        if self._file is not None:
            self._file.run("shown_orders", lambda db: self._write(db, rows, now))

    def recall(self, client: str, image_id: str) -> tuple[str, ...] | None:
        """The order of this image's location tokens this client was shown
        last within ``ttl`` seconds, or None if there is none."""
        since = self.clock() - self.ttl
        found: dict[str, float] = {}
        with self._lock:
            for (owner, image, tokens), shown in self._memory.items():
                if owner == client and image == image_id and shown >= since:
                    found[tokens] = shown
        if self._file is not None:
            _ok, rows = self._file.run("shown_orders", lambda db: db.execute(
                "SELECT tokens, shown FROM shown_orders WHERE client = ? AND image = ? AND shown >= ?",
                (client, image_id, since)).fetchall())
            for tokens, shown in rows or ():
                found[tokens] = max(shown, found.get(tokens, shown))
        if not found:
            return None
        last = max(found, key=found.__getitem__)
        return tuple(last.split(",")) if last else ()

    def _write(self, db: sqlite3.Connection, rows: list[tuple], now: float) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO shown_orders VALUES (?, ?, ?, ?)", rows)
            if now - self._pruned_at > 60:
                self._pruned_at = now
                db.execute("DELETE FROM shown_orders WHERE shown < ?", (now - self.ttl,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
