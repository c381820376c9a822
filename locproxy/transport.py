"""HTTP plumbing shared by the sidecar proxy (to the upstream) and the http
backends: connection pools, one taxonomy of failures, and the retry-once rule.

* ``LazyPoolManager``: process-wide connection pools, created lazily after
  fork (a ``PoolManager`` must not cross a fork: its sockets and locks would
  be shared by workers).
* ``classify``: a urllib3 or socket error as a ``locproxy.failures.Failure``
  kind, from which logs, client messages and metric labels are made.
* ``urlopen_retrying``: a pooled keep-alive connection that the peer closed
  just as it was reused breaks before any status line; a request that may be
  replayed goes once more, on a new connection.

Every pool manager made here also keeps query strings (signed URLs:
``temp_url_sig``, ``X-Amz-Signature``) out of urllib3's request log.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable, Tuple, Type, Union

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from locproxy.failures import Failure, text_of

LOG = logging.getLogger(__name__)


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


def classify(error: BaseException, mid_body: bool = False) -> Failure:
    """The kind of a urllib3 or socket error; ``mid_body`` when it broke a
    response body that had started."""
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    # Order matters: NewConnectionError subclasses ConnectTimeoutError.
    if isinstance(error, EmptyPoolError):
        return Failure.POOL_EXHAUSTED
    if isinstance(error, NameResolutionError):
        return Failure.NAME_RESOLUTION
    if isinstance(error, NewConnectionError):
        return Failure.REFUSED if caused_by(error, ConnectionRefusedError) else Failure.UNREACHABLE
    if isinstance(error, ConnectTimeoutError):
        return Failure.CONNECT_TIMEOUT
    if isinstance(error, (ReadTimeoutError, TimeoutError)) or caused_by(error, ReadTimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, SSLError):
        return Failure.TLS
    if caused_by(error, ConnectionResetError):
        return Failure.RESET
    if isinstance(error, ProtocolError) or caused_by(error, ProtocolError):
        if caused_by(error, (TimeoutError, socket.timeout)):
            return Failure.TIMEOUT if mid_body else Failure.SEND_TIMEOUT
        return Failure.TRUNCATED if mid_body else Failure.CLOSED
    if isinstance(error, ValueError):  # http.client.InvalidURL, urllib3.LocationValueError
        return Failure.INVALID_URL
    if isinstance(error, HTTPError):
        return Failure.BAD_RESPONSE
    if isinstance(error, OSError):
        return Failure.UNREACHABLE if not mid_body else Failure.RESET
    return Failure.OTHER


def describe(error: BaseException, position: int | None = None) -> tuple[Failure, str]:
    """``(kind, short credential-free text)``; ``position`` is the absolute
    offset reached when the error broke a body (None before the response)."""
    kind = classify(error, mid_body=position is not None)
    text = text_of(kind, type(error).__name__)
    return kind, text if position is None else f"{text} at byte {position}"


class LazyPoolManager:
    """One ``urllib3.PoolManager`` per process, built on first ``get()``.

    ``pool_classes`` replaces the manager's pool class per scheme (the
    backends' pools hand their sockets to the watchdog)."""

    def __init__(self, pool_classes: dict[str, type] | None = None, **pool_kwargs: Any) -> None:
        _scrub_urllib3_queries()
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


def urlopen_retrying(pool: urllib3.HTTPConnectionPool, method: str, target: str, *,
                     replayable: Callable[[], bool], label: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """``pool.urlopen`` (never redirected, never retried by urllib3, the body
    not preloaded), sent once more when the connection broke before any
    status line and ``replayable()`` says the request may go again (a bodiless
    safe request, RFC 9110 section 9.2.2). Timeouts are never retried."""
    for attempt in (1, 2):
        try:
            return pool.urlopen(method, target, retries=False, redirect=False, assert_same_host=False,
                                preload_content=False, decode_content=False, release_conn=False, **kwargs)
        except ProtocolError:
            # Typically a pooled keep-alive connection the peer closed (or
            # left stray bytes on) just as we reused it: urllib3 discarded it.
            if attempt == 2 or not replayable():
                raise
            LOG.debug("%s %s: connection closed before answering; retrying once", method, label)
    raise AssertionError("unreachable")


class _QueryScrubber(logging.Filter):
    """Drops the query string of request targets in urllib3's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.split("?", 1)[0] if isinstance(arg, str) and arg.startswith("/") else arg for arg in record.args
            )
        return True


_SCRUBBER = _QueryScrubber()


def _scrub_urllib3_queries() -> None:
    """Install the scrubber on urllib3's request log (once: filters are a set)."""
    logging.getLogger("urllib3.connectionpool").addFilter(_SCRUBBER)
