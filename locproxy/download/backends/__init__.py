"""Backends: open one image location for reading a byte range.

``Backends.open(url, start, length, total_size)`` either raises
``BackendError`` before the first byte, or returns a ``BackendStream`` that
yields exactly ``length`` bytes (or raises ``BackendError`` mid-stream). The
download path tries locations in order and falls back on ``BackendError``
raised by ``open``; a mid-stream error must abort the client response, never
end it as if complete.

What may be read at all is decided by the guards (``locproxy.guards``: file
roots, allowed hosts, rbd clusters); each scheme has its reader
(``file.py``, ``http.py``, ``rbd.py``, ``s3.py``). Only the http and s3
readers and ``locproxy.transport`` import urllib3; only the rbd reader
imports the rados/rbd bindings, and only when a cluster is configured.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable
from urllib.parse import SplitResult, urlsplit

from locproxy.credentials import S3Credentials
from locproxy.download.backends.base import BackendError, BackendStream
from locproxy.download.backends.file import FileBackend
from locproxy.download.backends.http import HTTPBackend
from locproxy.download.backends.rbd import RbdBackend
from locproxy.download.backends.s3 import S3Backend
from locproxy.failures import Failure
from locproxy.guards import AllowedHosts, FileRoots, RbdClusters
from locproxy.urls import S3_SCHEMES, backend_label

__all__ = ["AllowedHosts", "BackendError", "BackendStream", "Backends", "FileRoots"]

LOG = logging.getLogger(__package__)  # one logger for all the backends


class Backends:
    """Opens locations under the configured file roots and allowed hosts."""

    def __init__(
        self,
        *,
        file_roots: FileRoots | Iterable[str],
        allowed_hosts: AllowedHosts | Iterable[str],
        chunk_size: int,
        connect_timeout: float,
        read_timeout: float,
        pool_maxsize: int,
        ca_file: str | None = None,
        first_byte_timeout: float = 10.0,
        min_rate: int = 0,
        rate_window: float = 10.0,
        rbd_clusters: RbdClusters = RbdClusters(),
        rbd_default_cluster: str = "",
        rbd_default_pool: str = "",
        rbd_block_size: int = 4 * 1024 * 1024,
        rbd_readahead: int = 4,
        rbd_op_timeout: float = 30.0,
        s3_credentials: S3Credentials = S3Credentials(),
        s3_default_scheme: str = "https",
        s3_region: str = "us-east-1",
    ) -> None:
        if chunk_size < 1 or pool_maxsize < 1:
            raise ValueError("chunk_size and pool_maxsize must be >= 1")
        roots = file_roots if isinstance(file_roots, FileRoots) else FileRoots.of(file_roots)
        allowed = (allowed_hosts if isinstance(allowed_hosts, AllowedHosts)
                   else AllowedHosts.parse("allowed_hosts", list(allowed_hosts)))
        self.file = FileBackend(roots, chunk_size)
        self.http = HTTPBackend(allowed, chunk_size=chunk_size, connect_timeout=connect_timeout,
                                read_timeout=read_timeout, pool_maxsize=pool_maxsize, ca_file=ca_file,
                                first_byte_timeout=first_byte_timeout, min_rate=min_rate, rate_window=rate_window)
        self.rbd = RbdBackend(rbd_clusters, default_cluster=rbd_default_cluster, default_pool=rbd_default_pool,
                              block_size=rbd_block_size, readahead=rbd_readahead, op_timeout=rbd_op_timeout,
                              connect_timeout=connect_timeout)
        self.s3 = S3Backend(allowed, s3_credentials, self.http, default_scheme=s3_default_scheme, region=s3_region)

    @classmethod
    def from_settings(cls, settings: Any) -> Backends:
        """From a ``config.FilterSettings``."""
        security, backends = settings.security, settings.backends
        return cls(
            file_roots=security.file_roots,
            allowed_hosts=security.allowed_hosts,
            chunk_size=backends.chunk_size,
            connect_timeout=backends.connect_timeout,
            read_timeout=backends.read_timeout,
            pool_maxsize=backends.pool_maxsize,
            ca_file=security.backend_ca_file or None,
            first_byte_timeout=backends.first_byte_timeout,
            min_rate=backends.min_rate,
            rate_window=backends.rate_window,
            rbd_clusters=security.rbd_clusters,
            rbd_default_cluster=backends.rbd_default_cluster,
            rbd_default_pool=backends.rbd_default_pool,
            rbd_block_size=backends.rbd_block_size,
            rbd_readahead=backends.rbd_readahead,
            rbd_op_timeout=backends.rbd_op_timeout,
            s3_credentials=security.s3_credentials,
            s3_default_scheme=backends.s3_default_scheme,
            s3_region=backends.s3_region,
        )

    def clear(self) -> None:
        """Close pooled connections (idle ones; in-flight ones when released)."""
        self.http.clear()

    def readable(self, url: str) -> bool:
        """Whether ``open`` may try ``url``: no I/O, so the file may still be missing."""
        try:
            self._check(url, "")
        except BackendError:
            return False
        return True

    def _check(self, url: str, label: str) -> tuple[FileBackend | HTTPBackend | RbdBackend | S3Backend, SplitResult]:
        """The reader for ``url``, after refusing what may never be read."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
        except (ValueError, AttributeError):
            raise BackendError(label, "invalid URL", Failure.INVALID_URL) from None
        if scheme == "file":
            self.file.check(url, parts, label)
            return self.file, parts
        if scheme in ("http", "https"):
            self.http.check(url, parts, label)
            return self.http, parts
        if scheme == "rbd":
            self.rbd.check(url, parts, label)
            return self.rbd, parts
        if scheme in S3_SCHEMES:
            self.s3.check(url, parts, label)
            return self.s3, parts
        raise BackendError(label, "unsupported scheme", Failure.NOT_ALLOWED)

    def open(self, url: str, start: int, length: int, total_size: int | None) -> BackendStream:
        """Open ``length`` bytes at ``start``; raise ``BackendError`` before the first byte.

        ``total_size`` is the image size when known (checked against the
        file size or the backend's Content-Range). ``start >= 0``,
        ``length >= 1`` and ``start + length <= total_size`` are the caller's
        job (an empty or unsatisfiable range needs no backend): ValueError.
        """
        if start < 0 or length < 1 or (total_size is not None and start + length > total_size):
            raise ValueError(f"bad range: start={start} length={length} total_size={total_size}")
        label = backend_label(url)
        try:
            reader, parts = self._check(url, label)
            return reader.open(parts, label, start, length, total_size)
        except BackendError as error:
            LOG.debug("not reading from %s: %s", label, error.reason)
            raise
