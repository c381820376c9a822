"""The shared SQLite files (``metrics_file``: the tracker and the shown
orders), as tests see them: a clock to drive their records, a lock held by
"another process", and a store used while that lock is held.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class Clock:
    """A settable clock for ``clock=`` parameters: ``clock.now += 10``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the SQLite file at ``path`` (as a stopped
    worker in the middle of a write would) until the block ends."""
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def used_while_locked(open_store: Callable[..., Any], path: str | Path) -> Iterator[tuple[Any, list[str]]]:
    """``open_store(path, on_error=...)`` (a ``Tracker``, ``ShownOrders``),
    then the file locked by another holder for the block: yields the store
    and the list of errors it reported; closes the store afterwards."""
    errors: list[str] = []
    store = open_store(str(path), on_error=errors.append)
    try:
        with locked(path):
            yield store, errors
    finally:
        store.close()
