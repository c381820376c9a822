"""Process-wide urllib3 connection pools, created lazily after fork.

A ``PoolManager`` must not cross a fork (its sockets and locks would be shared
by workers), so each process builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import urllib3


class LazyPoolManager:
    """One ``urllib3.PoolManager`` per process, built on first ``get()``."""

    def __init__(self, **pool_kwargs: Any) -> None:
        self._kwargs = pool_kwargs
        self._lock = threading.Lock()
        self._pid = 0
        self._manager: urllib3.PoolManager | None = None

    def get(self) -> urllib3.PoolManager:
        manager, pid = self._manager, os.getpid()
        if manager is not None and self._pid == pid:
            return manager
        with self._lock:
            if self._manager is None or self._pid != pid:
                self._manager = urllib3.PoolManager(**self._kwargs)
                self._pid = pid
            return self._manager

    def clear(self) -> None:
        """Close every pooled connection (tests use this to check for leaks)."""
        with self._lock:
            if self._manager is not None:
                self._manager.clear()
