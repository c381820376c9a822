"""urllib3 plumbing shared by the proxy and the backends.

``LazyPoolManager``: process-wide connection pools, created lazily after
fork (a ``PoolManager`` must not cross a fork: its sockets and locks would be
shared by workers). ``caused_by``: urllib3 error classification. Importing
this module also keeps query strings (signed URLs: ``temp_url_sig``,
``X-Amz-Signature``) out of urllib3's request log.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Tuple, Type, Union

import urllib3


class LazyPoolManager:
    """One ``urllib3.PoolManager`` per process, built on first ``get()``."""

    def __init__(self, pool_classes: dict[str, type] | None = None, **pool_kwargs: Any) -> None:
        self._pool_classes = pool_classes
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
                if self._pool_classes:
                    self._manager.pool_classes_by_scheme = self._pool_classes
                self._pid = pid
            return self._manager

    def clear(self) -> None:
        """Close every pooled connection (tests use this to check for leaks)."""
        with self._lock:
            if self._manager is not None:
                self._manager.clear()


def caused_by(error: BaseException, kind: Union[Type[BaseException], Tuple[Type[BaseException], ...]]) -> bool:
    """Whether ``kind`` is anywhere in the chain: urllib3 wraps socket errors
    as ``__cause__``, ``__context__`` or a constructor argument."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        pending.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        pending.extend(linked for linked in (current.__cause__, current.__context__) if linked is not None)
    return False


class _QueryScrubber(logging.Filter):
    """Drops the query string of request targets in urllib3's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.split("?", 1)[0] if isinstance(arg, str) and arg.startswith("/") else arg for arg in record.args
            )
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_QueryScrubber())
