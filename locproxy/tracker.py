"""What this node has learnt about each backend: speed and health.

Each node is at its own network distance from each backend, so locproxy
learns from its own downloads: time to first byte and throughput (EWMA), and
failures. This is local knowledge, never sent to the image API nor shown in
its responses. Standard library only, so clients can read it too.

Storage is in memory (per process), or a small sqlite file (``metrics_file``)
shared by every worker process and thread on the node and kept across
restarts; sqlite's locking makes each update atomic.

Health rule (a circuit breaker per backend):

* a download that fails from a backend (before the first byte or mid-stream)
  adds one to its consecutive failures; a completed transfer resets them;
* at ``failure_threshold`` consecutive failures, or at once on a checksum
  mismatch, the backend is *demoted* for ``cooldown`` seconds: every
  strategy's download order tries it only after all the others;
* when the cool-down ends the backend takes its normal place again; the next
  download from it is the probe: success clears the record, another failure
  demotes it again for twice as long (up to ``max_cooldown``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

#: Transfers smaller than this say little about throughput.
MIN_THROUGHPUT_SAMPLE = 256 * 1024


@dataclass(frozen=True)
class BackendStats:
    """One backend's record. Times are seconds; ``demoted_until`` is epoch time."""

    key: str
    ttfb: float | None = None
    throughput: float | None = None  # bytes per second
    samples: int = 0
    failures: int = 0  # consecutive
    total_failures: int = 0
    demoted_until: float = 0.0
    cooldown: float = 0.0  # length of the next demotion; 0 = the base cool-down
    updated: float = 0.0

    def demoted(self, now: float) -> bool:
        return self.demoted_until > now


@dataclass(frozen=True)
class HealthRule:
    alpha: float = 0.3  # EWMA weight of a new sample
    failure_threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


class Tracker:
    """Records download events and answers ``estimate``/``demoted`` queries."""

    def __init__(self, path: str | None = None, rule: HealthRule = HealthRule(),
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.rule = rule
        self.clock = clock
        self._store: _Store = _SqliteStore(path) if path else _MemoryStore()

    # -- events --------------------------------------------------------------

    def record_first_byte(self, key: str, seconds: float) -> None:
        self._update(key, lambda stats: replace(stats, ttfb=_ewma(stats.ttfb, seconds, self.rule.alpha)))

    def record_transfer(self, key: str, nbytes: int, seconds: float) -> None:
        """A transfer from ``key`` completed: learn its throughput, clear failures."""

        def apply(stats: BackendStats) -> BackendStats:
            throughput = stats.throughput
            if nbytes >= MIN_THROUGHPUT_SAMPLE and seconds > 0:
                throughput = _ewma(throughput, nbytes / seconds, self.rule.alpha)
            return replace(stats, throughput=throughput, samples=stats.samples + 1, failures=0,
                           demoted_until=0.0, cooldown=0.0)

        self._update(key, apply)

    def record_failure(self, key: str, corrupt: bool = False) -> BackendStats:
        """A failure from ``key``; returns the new record (``demoted`` tells if it was)."""
        rule, now = self.rule, self.clock()

        def apply(stats: BackendStats) -> BackendStats:
            failures = max(stats.failures + 1, rule.failure_threshold if corrupt else 0)
            stats = replace(stats, failures=failures, total_failures=stats.total_failures + 1)
            if failures >= rule.failure_threshold and not stats.demoted(now):
                cooldown = stats.cooldown or rule.cooldown
                stats = replace(stats, demoted_until=now + cooldown,
                                cooldown=min(cooldown * 2, rule.max_cooldown))
            return stats

        return self._update(key, apply)

    def _update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        now = self.clock()
        return self._store.update(key, lambda stats: replace(apply(stats), updated=now))

    # -- queries -------------------------------------------------------------

    def stats(self) -> dict[str, BackendStats]:
        return self._store.snapshot()

    def demoted(self, key: str) -> bool:
        stats = self._store.snapshot().get(key)
        return stats is not None and stats.demoted(self.clock())

    def estimate(self, key: str) -> tuple[float | None, float | None] | None:
        """``(ttfb, throughput)`` learnt for ``key``, or None if never seen."""
        stats = self._store.snapshot().get(key)
        return None if stats is None else (stats.ttfb, stats.throughput)

    def close(self) -> None:
        self._store.close()


# -- storage -------------------------------------------------------------------

class _Store:
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


_FIELDS = ("key", "ttfb", "throughput", "samples", "failures", "total_failures", "demoted_until",
           "cooldown", "updated")


class _SqliteStore(_Store):
    """One row per backend, one connection per process (behind a lock: writes
    are tiny and rare next to the downloads they describe). Reads are cached
    for ``refresh`` seconds: ordering runs on every request and must not touch
    the disk each time."""

    def __init__(self, path: str, refresh: float = 1.0) -> None:
        self.path = path
        self.refresh = refresh
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._cache: dict[str, BackendStats] = {}
        self._cached_at = float("-inf")
        with self._lock:
            self._connection().execute(
                "CREATE TABLE IF NOT EXISTS backends (key TEXT PRIMARY KEY, ttfb REAL, throughput REAL,"
                " samples INTEGER, failures INTEGER, total_failures INTEGER, demoted_until REAL,"
                " cooldown REAL, updated REAL)"
            )

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a connection must not cross a fork); call with the lock."""
        if self._db is None or self._pid != os.getpid():
            self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._pid = os.getpid()
        return self._db

    def update(self, key: str, apply: Callable[[BackendStats], BackendStats]) -> BackendStats:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # the write lock before reading: no lost updates across processes
            try:
                row = db.execute(f"SELECT {', '.join(_FIELDS)} FROM backends WHERE key = ?", (key,)).fetchone()
                stats = apply(BackendStats(*row) if row else BackendStats(key))
                db.execute(
                    f"INSERT OR REPLACE INTO backends ({', '.join(_FIELDS)})"
                    f" VALUES ({', '.join('?' * len(_FIELDS))})",
                    tuple(getattr(stats, name) for name in _FIELDS),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._cached_at = float("-inf")  # this process sees its own writes at once
            return stats

    def snapshot(self) -> dict[str, BackendStats]:
        if time.monotonic() - self._cached_at >= self.refresh:
            with self._lock:
                rows = self._connection().execute(f"SELECT {', '.join(_FIELDS)} FROM backends").fetchall()
                self._cache = {row[0]: BackendStats(*row) for row in rows}
                self._cached_at = time.monotonic()
        return self._cache

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None


def iter_table(stats: dict[str, BackendStats], now: float) -> Iterator[tuple[str, ...]]:
    """Rows for ``locproxy stats``: backend, ttfb, throughput, samples, failures, state."""
    for key in sorted(stats):
        record = stats[key]
        yield (
            key,
            "-" if record.ttfb is None else f"{record.ttfb * 1000:.1f} ms",
            "-" if record.throughput is None else f"{record.throughput / 1e6:.1f} MB/s",
            str(record.samples),
            f"{record.failures} ({record.total_failures} total)",
            f"demoted {record.demoted_until - now:.0f} s more" if record.demoted(now) else "healthy",
        )
