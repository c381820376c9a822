"""Backends: open one image location for reading a byte range.

``Backends.open(url, start, length, total_size)`` either raises
``BackendError`` before the first byte, or returns a ``BackendStream`` that
yields exactly ``length`` bytes (or raises ``BackendError`` mid-stream). The
download path tries locations in order and falls back on ``BackendError``
raised by ``open``; a mid-stream error must abort the client response, never
end it as if complete.

Readers are declared, not dispatched: ``READERS`` is the table of them, each
row naming its URL schemes, its own options (a frozen dataclass, parsed at
load by the parsers it declares) and how to build it. Adding a backend is
one module, one row and its tests. What may be read at all is decided by
each reader's guards (``locproxy.guards``: file roots, allowed hosts, rbd
clusters), without I/O. A reader whose row says ``for_caller`` also gets
the download's ``Caller`` (the client's own token) for locations only the
client may read; every other reader never sees it. Only the http and s3 readers and
``locproxy.transport`` import urllib3; only the rbd reader imports the
rados/rbd bindings, and only when a cluster is configured.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping
from urllib.parse import SplitResult, urlsplit

from locproxy.download.backends import file, http, rbd, s3, swift
from locproxy.download.backends.base import NOBODY, BackendError, BackendStream, Caller, Reader
from locproxy.failures import Failure
from locproxy.urls import backend_label

__all__ = ["NOBODY", "READERS", "BackendError", "BackendStream", "Backends", "Caller", "Reader", "reader_options"]

LOG = logging.getLogger(__package__)  # one logger for all the backends

#: Every reader, in the order they are built (a reader may use those before it).
READERS: tuple[Reader, ...] = (file.READER, http.READER, rbd.READER, s3.READER, swift.READER)


def reader_options(values: Mapping[str, Mapping[str, Any]] = {}) -> tuple[tuple[str, Any], ...]:
    """Each reader's options from ``{reader name: {field: parsed value}}``
    (defaults for the rest): what ``FilterSettings.readers`` holds."""
    return tuple((reader.name, reader.options(**values.get(reader.name, {}))) for reader in READERS)


class Backends:
    """The readers of one configuration, by scheme."""

    def __init__(self, options: tuple[tuple[str, Any], ...], common: Any) -> None:
        if common.chunk_size < 1 or common.pool_maxsize < 1:
            raise ValueError("chunk_size and pool_maxsize must be >= 1")
        given = dict(options)
        self.readers: dict[str, Any] = {}
        self._by_scheme: dict[str, tuple[Any, bool]] = {}  # scheme -> (reader, gets the Caller)
        for reader in READERS:
            built = reader.build(given.get(reader.name) or reader.options(), common, self.readers)
            self.readers[reader.name] = built
            self._by_scheme.update(dict.fromkeys(reader.schemes, (built, reader.for_caller)))

    @classmethod
    def from_settings(cls, settings: Any) -> Backends:
        """From a ``config.FilterSettings``."""
        return cls(settings.readers, settings.backends)

    def clear(self) -> None:
        """Close pooled connections (idle ones; in-flight ones when released)."""
        for reader in self.readers.values():
            getattr(reader, "clear", lambda: None)()

    def readable(self, url: str, caller: Caller = NOBODY) -> bool:
        """Whether ``open`` may try ``url`` (for ``caller``): no I/O, so the file may still be missing."""
        try:
            self._check(url, "", caller)
        except BackendError:
            return False
        return True

    def _check(self, url: str, label: str, caller: Caller) -> tuple[Any, SplitResult, dict[str, Caller]]:
        """The reader for ``url`` and what it is called with, after refusing
        what may never be read."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
        except (ValueError, AttributeError):
            raise BackendError(label, "invalid URL", Failure.INVALID_URL) from None
        reader, for_caller = self._by_scheme.get(scheme, (None, False))
        if reader is None:
            raise BackendError(label, "unsupported scheme", Failure.NOT_ALLOWED)
        extra = {"caller": caller} if for_caller else {}
        reader.check(url, parts, label, **extra)
        return reader, parts, extra

    def open(self, url: str, start: int, length: int, total_size: int | None,
             caller: Caller = NOBODY) -> BackendStream:
        """Open ``length`` bytes at ``start``; raise ``BackendError`` before the first byte.

        ``total_size`` is the image size when known (checked against the
        file size or the backend's Content-Range). ``start >= 0``,
        ``length >= 1`` and ``start + length <= total_size`` are the caller's
        job (an empty or unsatisfiable range needs no backend): ValueError.
        ``caller``: the download's client, for the readers that read as it.
        """
        if start < 0 or length < 1 or (total_size is not None and start + length > total_size):
            raise ValueError(f"bad range: start={start} length={length} total_size={total_size}")
        label = backend_label(url)
        try:
            reader, parts, extra = self._check(url, label, caller)
            return reader.open(parts, label, start, length, total_size, **extra)
        except BackendError as error:
            LOG.debug("not reading from %s: %s", label, error.reason)
            raise
