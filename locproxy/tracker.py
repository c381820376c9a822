"""What this node has learnt about each backend: speed and health.

Each node is at its own network distance from each backend, so locproxy
learns from its own downloads: time to first byte and throughput (EWMA), and
failures. This is local knowledge, never sent to the image API nor shown in
its responses. Standard library only, so clients can read it too.

Storage is in memory (per process), or a small sqlite file (``metrics_file``)
shared by every worker process and thread on the node and kept across
restarts; sqlite's locking makes each update atomic. When the file fails
(disk full, a lock held by a stopped worker...) the tracker carries on from
what this process holds in memory (``locproxy.bookkeeping``): learning is
bookkeeping and never fails a download.

Health rule (a circuit breaker per backend, and per copy):

* a failure from a backend (before the first byte or mid-stream) adds one to
  its consecutive failures; a completed, verified transfer resets them;
* at ``failure_threshold`` consecutive failures the backend is *demoted* for
  ``cooldown`` seconds: every strategy's download order tries it only after
  all the others;
* bytes that do not match the image's digest say that *copy* is bad, not its
  backend: the copy (the location) is demoted at once, and the backend only
  once ``corrupt_images`` distinct images mismatched there within
  ``corrupt_window`` seconds (one image with a wrong recorded hash cannot
  demote a backend shared by everyone);
* when a cool-down ends the backend (or copy) takes its normal place again;
  the next download from it is the probe: success clears the record, another
  failure demotes it again for twice as long (up to ``max_cooldown``);
* while a backend has failures, one attempt at a time tests it (per
  process): others go to other copies first, so a backend that died costs
  at most ``failure_threshold`` failed attempts before it is demoted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator

from locproxy.bookkeeping import SharedFile, open_read_only

#: Transfers smaller than this say little about throughput.
MIN_THROUGHPUT_SAMPLE = 256 * 1024
#: Distinct corrupt images remembered per backend.
MAX_CORRUPT_IMAGES = 16
#: First-byte samples of one backend held until its next write (see ``Tracker.record_first_byte``).
MAX_PENDING_SAMPLES = 8


@dataclass(frozen=True)
class BackendStats:
    """One backend's (or copy's) record. Times are seconds; ``demoted_until``
    and the times in ``corrupt_images`` are epoch times."""

    key: str
    ttfb: float | None = None
    throughput: float | None = None  # bytes per second
    samples: int = 0
    failures: int = 0  # consecutive
    total_failures: int = 0
    demoted_until: float = 0.0
    cooldown: float = 0.0  # length of the next demotion; 0 = the base cool-down
    updated: float = 0.0
    corrupt_images: tuple[tuple[str, float], ...] = ()  # (image id, when), most recent last

    def demoted(self, now: float) -> bool:
        return self.demoted_until > now


@dataclass(frozen=True)
class HealthRule:
    alpha: float = 0.3  # EWMA weight of a new sample
    failure_threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    corrupt_images: int = 3  # distinct images with bad bytes that demote a whole backend
    corrupt_window: float = 3600.0


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


class Tracker:
    """Records download events and answers ``estimate``/``demoted`` queries.

    ``on_error(what)`` is told of every storage failure (for metrics);
    ``read_only`` opens an existing file without ever writing (``locproxy
    stats``).
    """

    def __init__(self, path: str | None = None, rule: HealthRule = HealthRule(),
                 clock: Callable[[], float] = time.time, *,
                 on_error: Callable[[str], None] | None = None, read_only: bool = False) -> None:
        self.path = path
        self.rule = rule
        self.clock = clock
        self._attempts: dict[str, int] = {}  # backend -> attempts opening it now, in this process
        self._attempts_lock = threading.Lock()
        self._pending: dict[str, tuple[float, ...]] = {}  # backend -> first-byte samples not written yet
        self._pending_lock = threading.Lock()
        self._store: _Store
        if path and read_only:
            self._store = _ReadOnlyStore(path)
        elif path:
            self._store = _SqliteStore(path, on_error)
        else:
            self._store = _MemoryStore()

    # -- events --------------------------------------------------------------

    def record_first_byte(self, key: str, seconds: float) -> None:
        """A first byte from ``key`` after ``seconds``. Held in this process
        and written with the next event of ``key`` (its transfer's end, a
        failure...), or at ``close()``: it is learnt on every download's
        path to its first byte, where one write of the shared file would be
        the biggest cost after the image API's answer. This process's
        queries see it at once; other workers with that next write."""
        with self._pending_lock:
            self._pending[key] = (self._pending.get(key, ()) + (seconds,))[-MAX_PENDING_SAMPLES:]

    def record_transfer(self, key: str, nbytes: int, seconds: float) -> None:
        """A transfer from ``key`` completed (and verified): learn its
        throughput, clear its failures."""

        def apply(stats: BackendStats) -> BackendStats:
            throughput = stats.throughput
            if nbytes >= MIN_THROUGHPUT_SAMPLE and seconds > 0:
                throughput = _ewma(throughput, nbytes / seconds, self.rule.alpha)
            return replace(stats, throughput=throughput, samples=stats.samples + 1, failures=0,
                           demoted_until=0.0, cooldown=0.0)

        self._update(key, apply)

    def record_success(self, key: str) -> None:
        """A copy served good bytes: forget its failures (no throughput sample)."""
        if key in self._store.snapshot():
            self._update(key, lambda stats: replace(stats, failures=0, demoted_until=0.0, cooldown=0.0))

    def record_failure(self, key: str, at_once: bool = False) -> BackendStats:
        """A failure from ``key`` (``at_once``: demote without waiting for the
        threshold); returns the new record (``demoted`` tells if it was)."""
        now = self.clock()
        return self._update(key, lambda stats: self._failed(stats, now, at_once))

    def record_corrupt(self, key: str, copy_key: str, image_id: str) -> tuple[BackendStats, BackendStats]:
        """Bytes of ``image_id`` read from the copy ``copy_key`` of backend
        ``key`` did not match its digest: the copy is demoted at once, the
        backend once enough distinct images went wrong there. Returns the new
        (backend, copy) records."""
        rule, now = self.rule, self.clock()

        def backend(stats: BackendStats) -> BackendStats:
            recent = tuple((image, when) for image, when in stats.corrupt_images
                           if image != image_id and now - when < rule.corrupt_window)
            recent = (recent + ((image_id, now),))[-MAX_CORRUPT_IMAGES:]
            stats = replace(stats, corrupt_images=recent)
            if len(recent) >= rule.corrupt_images:
                return self._failed(stats, now, at_once=True)
            return replace(stats, total_failures=stats.total_failures + 1)

        copy = self._update(copy_key, lambda stats: self._failed(stats, now, at_once=True))
        return self._update(key, backend), copy

    def _failed(self, stats: BackendStats, now: float, at_once: bool) -> BackendStats:
        rule = self.rule
        failures = max(stats.failures + 1, rule.failure_threshold if at_once else 0)
        stats = replace(stats, failures=failures, total_failures=stats.total_failures + 1)
        if failures >= rule.failure_threshold and not stats.demoted(now):
            cooldown = stats.cooldown or rule.cooldown
            stats = replace(stats, demoted_until=now + cooldown, cooldown=min(cooldown * 2, rule.max_cooldown))
        return stats

    def _update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        now = self.clock()
        with self._pending_lock:
            samples = self._pending.pop(key, ())
        return self._store.update(key, lambda stats: replace(apply(self._with_samples(stats, samples)), updated=now))

    def _with_samples(self, stats: BackendStats, samples: tuple[float, ...]) -> BackendStats:
        ttfb = stats.ttfb
        for seconds in samples:
            ttfb = _ewma(ttfb, seconds, self.rule.alpha)
        return stats if ttfb == stats.ttfb else replace(stats, ttfb=ttfb)

    # -- queries -------------------------------------------------------------

    def stats(self) -> dict[str, BackendStats]:
        """What is learnt, this process's first-byte samples not written yet included."""
        snapshot = self._store.snapshot()
        if not self._pending:
            return snapshot
        with self._pending_lock:
            pending = dict(self._pending)
        return {**snapshot, **{key: self._with_samples(snapshot.get(key) or BackendStats(key), samples)
                               for key, samples in pending.items()}}

    def demoted(self, *keys: str) -> bool:
        """Whether any of ``keys`` (a backend, a copy) goes after the others
        now: demoted, or failing and being tried by another attempt of this
        process already (half-open: one attempt at a time tests a failing
        backend, so a dead one costs at most ``failure_threshold`` failures)."""
        snapshot, now = self._store.snapshot(), self.clock()
        for key in keys:
            stats = snapshot.get(key)
            if stats is not None and (stats.demoted(now) or (stats.failures and self._attempts.get(key))):
                return True
        return False

    @contextmanager
    def attempt(self, key: str) -> Iterator[None]:
        """An attempt at ``key`` is opening it (see ``demoted``)."""
        with self._attempts_lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
        try:
            yield
        finally:
            with self._attempts_lock:
                self._attempts[key] -= 1
                if not self._attempts[key]:
                    del self._attempts[key]

    def estimate(self, key: str) -> tuple[float | None, float | None] | None:
        """``(ttfb, throughput)`` learnt for ``key``, or None if never seen."""
        stats, samples = self._store.snapshot().get(key), self._pending.get(key)
        if samples:
            stats = self._with_samples(stats or BackendStats(key), samples)
        return None if stats is None else (stats.ttfb, stats.throughput)

    @property
    def degraded(self) -> str | None:
        """Why the shared file is being left alone, or None when all is well."""
        return self._store.degraded

    def close(self) -> None:
        """Write the samples still held, then close the store."""
        if not isinstance(self._store, _ReadOnlyStore):
            for key in list(self._pending):
                self._update(key, lambda stats: stats)
        self._store.close()


# -- storage -------------------------------------------------------------------

class _Store:
    degraded: str | None = None

    def update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        raise NotImplementedError

    def snapshot(self) -> dict[str, BackendStats]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _MemoryStore(_Store):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, BackendStats] = {}

    def update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        with self._lock:
            stats = self._records[key] = apply(self._records.get(key) or BackendStats(key))
            return stats

    def snapshot(self) -> dict[str, BackendStats]:
        return dict(self._records)


_FIELDS = tuple(field.name for field in fields(BackendStats))
_COLUMNS = ", ".join(_FIELDS)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS backends (key TEXT PRIMARY KEY, ttfb REAL, throughput REAL,"
           " samples INTEGER, failures INTEGER, total_failures INTEGER, demoted_until REAL,"
           " cooldown REAL, updated REAL, corrupt_images TEXT)")


def _create_schema(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(backends)")}
    if "corrupt_images" not in columns:  # a file written by an earlier version
        db.execute("ALTER TABLE backends ADD COLUMN corrupt_images TEXT")


def _from_row(row: tuple) -> BackendStats:
    values = dict(zip(_FIELDS, row))
    values["corrupt_images"] = tuple(tuple(item) for item in json.loads(values["corrupt_images"] or "[]"))
    return BackendStats(**values)


def _to_row(stats: BackendStats) -> tuple:
    return tuple(json.dumps(stats.corrupt_images) if name == "corrupt_images" else getattr(stats, name)
                 for name in _FIELDS)


def _read_all(db: sqlite3.Connection) -> dict[str, BackendStats]:
    return {row[0]: _from_row(row) for row in db.execute(f"SELECT {_COLUMNS} FROM backends")}


class _SqliteStore(_Store):
    """One row per backend in the shared file. Reads are cached for
    ``refresh`` seconds: ordering runs on every request and must not touch
    the disk each time. While the file fails, updates apply to the cache, so
    this process goes on learning and demoting on its own."""

    def __init__(self, path: str, on_error: Callable[[str], None] | None, refresh: float = 1.0) -> None:
        self.file = SharedFile(path, on_error=on_error)
        self.file.open("tracker", _create_schema)
        self.refresh = refresh
        self._lock = threading.Lock()
        self._cache: dict[str, BackendStats] = {}
        self._cached_at = float("-inf")

    @property
    def degraded(self) -> str | None:  # type: ignore[override]
        return self.file.degraded

    def update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        def write(db: sqlite3.Connection) -> BackendStats:
            db.execute("BEGIN IMMEDIATE")  # the write lock before reading: no lost updates across processes
            try:
                row = db.execute(f"SELECT {_COLUMNS} FROM backends WHERE key = ?", (key,)).fetchone()
                stats = apply(_from_row(row) if row else BackendStats(key))
                db.execute(f"INSERT OR REPLACE INTO backends ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})",
                           _to_row(stats))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return stats

        written, stats = self.file.run("tracker", write)
        with self._lock:
            if not written:
                stats = apply(self._cache.get(key) or BackendStats(key))
                self._cache = {**self._cache, key: stats}  # callers iterate snapshots: replace, never mutate
            else:
                self._cached_at = float("-inf")  # this process sees its own writes at once
        assert stats is not None
        return stats

    def snapshot(self) -> dict[str, BackendStats]:
        if time.monotonic() - self._cached_at >= self.refresh:
            read, rows = self.file.run("tracker", _read_all)
            with self._lock:
                self._cached_at = time.monotonic()
                if read and rows is not None:
                    self._cache = rows
        return self._cache

    def close(self) -> None:
        self.file.close()


class _ReadOnlyStore(_Store):
    """The shared file as it is on disk, never written (``locproxy stats``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def snapshot(self) -> dict[str, BackendStats]:
        db = open_read_only(self.path)
        try:
            return _read_all(db)
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return {}
            raise
        finally:
            db.close()

    def update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        raise PermissionError("this tracker was opened read-only")


def format_table(stats: dict[str, BackendStats], now: float) -> str:
    """What ``locproxy stats`` prints: one aligned row per backend (and copy)."""
    header = ("backend", "first byte", "throughput", "downloads", "failures", "state")
    rows = [header, *iter_table(stats, now)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + ([] if stats else ["(nothing learnt yet)"]))


def read_table(path: str, now: float | None = None) -> str:
    """``format_table`` of a metrics_file, opened read-only."""
    tracker = Tracker(path, read_only=True)
    try:
        return format_table(tracker.stats(), time.time() if now is None else now)
    finally:
        tracker.close()


def iter_table(stats: dict[str, BackendStats], now: float) -> Iterator[tuple[str, ...]]:
    """Rows for ``locproxy stats``: backend, ttfb, throughput, samples, failures, state."""
    for key in sorted(stats):
        record = stats[key]
        state = f"demoted {record.demoted_until - now:.0f} s more" if record.demoted(now) else "healthy"
        if record.corrupt_images:
            state += f", {len(record.corrupt_images)} corrupt image(s)"
        yield (
            key,
            "-" if record.ttfb is None else f"{record.ttfb * 1000:.1f} ms",
            "-" if record.throughput is None else f"{record.throughput / 1e6:.1f} MB/s",
            str(record.samples),
            f"{record.failures} ({record.total_failures} total)",
            state,
        )
